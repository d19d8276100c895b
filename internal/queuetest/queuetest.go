// Package queuetest starts a real deploy queue for tests: a SQLite store in
// the configuration's state dir, the real fetcher, nix builder and
// switchers, started, and stopped when the test ends. The tests of the
// server, the command line and the queue itself drive it.
package queuetest

import (
	"context"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/flakeship/flakeship/builder"
	"github.com/flakeship/flakeship/config"
	"github.com/flakeship/flakeship/deploy"
	"github.com/flakeship/flakeship/notifier"
	"github.com/flakeship/flakeship/store"
)

// Options are what a test may change of the queue.
type Options struct {
	Notifiers map[string]notifier.Notifier // by target; nil posts no statuses
	// Grace is how long the shutdown at the end of the test lets running
	// deploys finish before it cuts their fetch or build short; 0 means
	// 30s.
	Grace time.Duration
	// Now is the queue's clock; nil is the real one.
	Now func() time.Time
	// PruneEvery is deploy.Options.PruneEvery: 0 prunes at the start and
	// hourly, a negative value only when the test calls Prune.
	PruneEvery time.Duration
	// Store, if set, wraps the SQLite store the queue is given (to hold or
	// fail a commit where the test says).
	Store func(*store.Store) deploy.Store
	// Fetcher, if set, wraps the real fetcher (to hold a fetch until the
	// test lets it go).
	Fetcher func(deploy.Fetcher) deploy.Fetcher
	// Observer is deploy.Options.Observer.
	Observer deploy.Observer
}

// Start opens the store at <cfg.StateDir>/flakeship.db and starts a queue
// on it with the real builder. Both are closed when t ends; a shutdown
// error fails t.
func Start(t testing.TB, cfg *config.Config, log *slog.Logger, o Options) (*store.Store, *deploy.Queue) {
	t.Helper()
	st, err := store.Open(context.Background(), filepath.Join(cfg.StateDir, "flakeship.db"), log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	var queueStore deploy.Store = st
	if o.Store != nil {
		queueStore = o.Store(st)
	}
	var fetcher deploy.Fetcher = builder.NewFetcher(log)
	if o.Fetcher != nil {
		fetcher = o.Fetcher(fetcher)
	}
	nix := &builder.Nix{Binary: cfg.Nix, Flags: cfg.NixFlags}
	q, err := deploy.New(deploy.Options{
		Config: cfg, Store: queueStore, Fetcher: fetcher, Builder: nix,
		Switcher:  func(s builder.Spec) (builder.Switcher, error) { return builder.NewSwitcher(s, nix, log) },
		Notifiers: o.Notifiers, Log: log, Now: o.Now, PruneEvery: o.PruneEvery, Observer: o.Observer,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	grace := o.Grace
	if grace == 0 {
		grace = 30 * time.Second
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), grace)
		defer cancel()
		if err := q.Shutdown(ctx); err != nil {
			t.Errorf("queue shutdown: %v", err)
		}
	})
	return st, q
}
