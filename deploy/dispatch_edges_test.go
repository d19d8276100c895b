package deploy_test

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/flakeship/flakeship/builder"
	"github.com/flakeship/flakeship/config"
	"github.com/flakeship/flakeship/deploy"
	"github.com/flakeship/flakeship/forge"
	"github.com/flakeship/flakeship/store"
)

// dispatchRecorder is a deploy.Observer that keeps the last count of
// waiting deploys and the targets in the order their deploys began to
// fetch.
type dispatchRecorder struct {
	mu       sync.Mutex
	waiting  int
	fetching []string
}

func (r *dispatchRecorder) Transition(d *deploy.Deploy, from deploy.State) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if d.State == deploy.Fetching {
		r.fetching = append(r.fetching, d.Target)
	}
}

func (r *dispatchRecorder) Waiting(n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.waiting = n
}

func (r *dispatchRecorder) state() (int, []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.waiting, append([]string(nil), r.fetching...)
}

// TestMaxParallelHoldsOtherTargetsAndTheOldestGoesNext runs with
// MAX_PARALLEL=1: while app's deploy is held in its fetch, pushes to web
// and then api wait (the queue dispatches within SubmitPush, so the count
// of waiting deploys is final when it returns); once app's deploy ends, the
// older waiting deploy (web's) starts first.
func TestMaxParallelHoldsOtherTargetsAndTheOldestGoesNext(t *testing.T) {
	state := t.TempDir()
	cfg := &config.Config{StateDir: state, PublicURL: "https://deploy.example.test", MaxParallel: 1, Nix: "nix"}
	// api sorts before web: map order or name order would start api first.
	for _, name := range []string{"app", "api", "web"} {
		cfg.Targets = append(cfg.Targets, config.Target{
			Name: name, Forge: "github", Repo: "acme/" + name,
			// Nothing to fetch: each deploy fails once its fetch is let go.
			CloneURL: filepath.Join(state, "no-such-repo"), Branch: "main",
			Attr: "packages.x86_64-linux.default", Activate: config.ActivateNone,
			Profile: filepath.Join(state, "profiles", name), HealthTimeout: 5 * time.Second,
			BuildTimeout: time.Minute, WebhookSecret: "hook-secret", StatusContext: "flakeship/" + name,
		})
	}
	log := slog.New(slog.DiscardHandler)
	ctx := context.Background()
	sqlite, err := store.Open(ctx, filepath.Join(state, "flakeship.db"), log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sqlite.Close() })
	rec := &dispatchRecorder{}
	fetches := gatedFetcher{Fetcher: builder.NewFetcher(log), release: make(chan struct{})}
	nix := &builder.Nix{Binary: cfg.Nix}
	q, err := deploy.New(deploy.Options{
		Config: cfg, Store: sqlite, Fetcher: fetches, Builder: nix,
		Switcher: func(s builder.Spec) (builder.Switcher, error) { return builder.NewSwitcher(s, nix, log) },
		Log:      log, PruneEvery: -1, Observer: rec,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Start(ctx); err != nil {
		t.Fatal(err)
	}
	released := false
	t.Cleanup(func() {
		if !released {
			close(fetches.release)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := q.Shutdown(ctx); err != nil {
			t.Errorf("queue shutdown: %v", err)
		}
	})
	var ids []int64
	for i, target := range []string{"app", "web", "api"} {
		ev := forge.PushEvent{Forge: forge.GitHub, DeliveryID: fmt.Sprintf("delivery-%d", i), Repo: "acme/" + target,
			Branch: "main", SHA: fmt.Sprintf("%040x", i+1), Pusher: "octocat"}
		d, _, err := q.SubmitPush(ctx, target, ev)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, d.ID)
		if waiting, _ := rec.state(); waiting != i {
			t.Fatalf("after the push to %s, %d deploys wait; want %d (MAX_PARALLEL=1, app's deploy is running)", target, waiting, i)
		}
	}

	close(fetches.release)
	released = true
	for _, id := range ids {
		waitFor := time.Now().Add(60 * time.Second)
		for {
			d, err := q.Get(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			if d.State.Terminal() {
				break
			}
			if time.Now().After(waitFor) {
				t.Fatalf("deploy %d still %s after 60s", id, d.State)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	_, order := rec.state()
	if want := []string{"app", "web", "api"}; fmt.Sprint(order) != fmt.Sprint(want) {
		t.Errorf("deploys began to fetch in the order %v, want %v (the oldest waiting first)", order, want)
	}
	if !t.Failed() {
		t.Logf("MAX_PARALLEL=1: 0, 1, 2 deploys waiting after each push; fetched in the order %v", order)
	}
}
