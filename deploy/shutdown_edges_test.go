package deploy_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flakeship/flakeship/builder"
	"github.com/flakeship/flakeship/config"
	"github.com/flakeship/flakeship/deploy"
	"github.com/flakeship/flakeship/forge"
	"github.com/flakeship/flakeship/store"
)

// TestShutdownAfterTheGraceStopsTheRunningDeployAndSkipsIdleTargets shuts
// the queue down with its grace period already over while one target's
// deploy is held in its fetch and another target is idle: Shutdown returns,
// the running deploy is cut short and left in its running state for the
// retry on the next start, as after a crash, and its log says so.
func TestShutdownAfterTheGraceStopsTheRunningDeployAndSkipsIdleTargets(t *testing.T) {
	state := t.TempDir()
	cfg := &config.Config{StateDir: state, PublicURL: "https://deploy.example.test", MaxParallel: 2, Nix: "nix"}
	for _, name := range []string{"app", "web"} {
		cfg.Targets = append(cfg.Targets, config.Target{
			Name: name, Forge: "github", Repo: "acme/" + name,
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
	// The fetch is never released: only the shutdown ends it.
	fetches := gatedFetcher{Fetcher: builder.NewFetcher(log), release: make(chan struct{})}
	nix := &builder.Nix{Binary: cfg.Nix}
	q, err := deploy.New(deploy.Options{
		Config: cfg, Store: sqlite, Fetcher: fetches, Builder: nix,
		Switcher: func(s builder.Spec) (builder.Switcher, error) { return builder.NewSwitcher(s, nix, log) },
		Log:      log, PruneEvery: -1,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Start(ctx); err != nil {
		t.Fatal(err)
	}
	d, _, err := q.SubmitPush(ctx, "app", forge.PushEvent{Forge: forge.GitHub, DeliveryID: "d-1", Repo: "acme/app",
		Branch: "main", SHA: fmt.Sprintf("%040x", 1), Pusher: "octocat"})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		got, err := q.Get(ctx, d.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.State == deploy.Fetching {
			break
		}
		if got.State.Terminal() || time.Now().After(deadline) {
			t.Fatalf("deploy %d is %s, want it held in its fetch", d.ID, got.State)
		}
		time.Sleep(5 * time.Millisecond)
	}

	over, cancel := context.WithCancel(context.Background())
	cancel() // the grace period is over before it began
	done := make(chan error, 1)
	go func() { done <- q.Shutdown(over) }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("shutdown: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("Shutdown did not return 60s after its grace period was over")
	}

	stored, err := sqlite.Get(ctx, d.ID)
	if err != nil {
		t.Fatal(err)
	}
	if stored.State != deploy.Fetching {
		t.Errorf("stored deploy %d is %s, want it left fetching for the retry on the next start", d.ID, stored.State)
	}
	b, err := os.ReadFile(q.LogPath(d.ID))
	if err != nil {
		t.Fatal(err)
	}
	if want := "== fetch interrupted: flakeship is stopping"; !strings.Contains(string(b), want) {
		t.Errorf("deploy log lacks %q:\n%s", want, b)
	}
}
