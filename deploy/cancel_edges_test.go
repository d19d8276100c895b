package deploy_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/flakeship/flakeship/builder"
	"github.com/flakeship/flakeship/config"
	"github.com/flakeship/flakeship/deploy"
	"github.com/flakeship/flakeship/forge"
	"github.com/flakeship/flakeship/store"
)

// TestCancelOfAnotherDeployLeavesTheRunningOneAlone cancels deploys other
// than the one running (one never made, one that ended) while a deploy is
// held in its fetch: each is refused, and the running deploy goes on to
// its own end (here: failed, there is nothing to fetch), never cancelled.
func TestCancelOfAnotherDeployLeavesTheRunningOneAlone(t *testing.T) {
	state := t.TempDir()
	cfg := &config.Config{StateDir: state, PublicURL: "https://deploy.example.test", MaxParallel: 1, Nix: "nix"}
	cfg.Targets = []config.Target{{
		Name: "app", Forge: "github", Repo: "acme/app",
		CloneURL: filepath.Join(state, "no-such-repo"), Branch: "main",
		Attr: "packages.x86_64-linux.default", Activate: config.ActivateNone,
		Profile: filepath.Join(state, "profiles", "app"), HealthTimeout: 5 * time.Second,
		BuildTimeout: time.Minute, WebhookSecret: "hook-secret", StatusContext: "flakeship/app",
	}}
	log := slog.New(slog.DiscardHandler)
	ctx := context.Background()
	sqlite, err := store.Open(ctx, filepath.Join(state, "flakeship.db"), log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sqlite.Close() })
	// A deploy that ended before this queue started.
	ended := &deploy.Deploy{Target: "app", Forge: forge.GitHub, Repo: "acme/app", Branch: "main",
		SHA: fmt.Sprintf("%040x", 1), Trigger: deploy.TriggerPush, State: deploy.Queued, CreatedAt: time.Now()}
	if err := sqlite.Create(ctx, ended); err != nil {
		t.Fatal(err)
	}
	if err := ended.Advance(deploy.Cancelled, time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := sqlite.Update(ctx, ended); err != nil {
		t.Fatal(err)
	}
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
	running, _, err := q.SubmitPush(ctx, "app", forge.PushEvent{Forge: forge.GitHub, DeliveryID: "d-2", Repo: "acme/app",
		Branch: "main", SHA: fmt.Sprintf("%040x", 2), Pusher: "octocat"})
	if err != nil {
		t.Fatal(err)
	}

	if err := q.Cancel(ctx, running.ID+100); !errors.Is(err, deploy.ErrNotFound) {
		t.Errorf("cancel of a deploy never made: %v, want not found", err)
	}
	var te *deploy.TransitionError
	if err := q.Cancel(ctx, ended.ID); !errors.As(err, &te) {
		t.Errorf("cancel of a deploy that ended: %v, want a transition error", err)
	}
	close(fetches.release)
	released = true
	deadline := time.Now().Add(60 * time.Second)
	for {
		d, err := q.Get(ctx, running.ID)
		if err != nil {
			t.Fatal(err)
		}
		if d.State.Terminal() {
			if d.State == deploy.Cancelled {
				t.Errorf("the running deploy ended cancelled (%s): a cancel of another deploy reached it", d.Error)
			} else {
				t.Logf("the running deploy ended %s, not cancelled, after cancels of deploys %d and %d", d.State, running.ID+100, ended.ID)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("deploy %d still %s after 60s", running.ID, d.State)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
