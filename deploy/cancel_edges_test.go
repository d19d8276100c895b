package deploy_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/flakeship/flakeship/deploy"
	"github.com/flakeship/flakeship/forge"
	"github.com/flakeship/flakeship/internal/queuetest"
	"github.com/flakeship/flakeship/store"
)

// TestCancelOfAnotherDeployLeavesTheRunningOneAlone cancels deploys other
// than the one running (one never made, one that ended) while a deploy is
// held in its fetch: each is refused, and the running deploy goes on to
// its own end (here: failed, there is nothing to fetch), never cancelled.
func TestCancelOfAnotherDeployLeavesTheRunningOneAlone(t *testing.T) {
	cfg := edgeConfig(t, 1, "app")
	log := slog.New(slog.DiscardHandler)
	ctx := context.Background()
	sqlite, err := store.Open(ctx, filepath.Join(cfg.StateDir, "flakeship.db"), log)
	if err != nil {
		t.Fatal(err)
	}
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
	if err := sqlite.Close(); err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	_, q := queuetest.Start(t, cfg, log, queuetest.Options{PruneEvery: -1, Fetcher: holdFetches(release)})
	released := false
	t.Cleanup(func() { // before the queue's shutdown
		if !released {
			close(release)
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
	close(release)
	released = true
	if d := waitEnded(t, q, running.ID); d.State == deploy.Cancelled {
		t.Errorf("the running deploy ended cancelled (%s): a cancel of another deploy reached it", d.Error)
	} else {
		t.Logf("the running deploy ended %s, not cancelled, after cancels of deploys %d and %d", d.State, running.ID+100, ended.ID)
	}
}
