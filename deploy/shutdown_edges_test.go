package deploy_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/flakeship/flakeship/deploy"
	"github.com/flakeship/flakeship/forge"
	"github.com/flakeship/flakeship/internal/queuetest"
)

// TestShutdownAfterTheGraceStopsTheRunningDeployAndSkipsIdleTargets shuts
// the queue down with its grace period already over while one target's
// deploy is held in its fetch and another target is idle: Shutdown returns,
// the running deploy is cut short and left in its running state for the
// retry on the next start, as after a crash, and its log says so.
func TestShutdownAfterTheGraceStopsTheRunningDeployAndSkipsIdleTargets(t *testing.T) {
	ctx := context.Background()
	// The fetch is never released: only the shutdown ends it. (The
	// queue's own shutdown at the end of the test finds it shut down.)
	sqlite, q := queuetest.Start(t, edgeConfig(t, 2, "app", "web"), slog.New(slog.DiscardHandler),
		queuetest.Options{PruneEvery: -1, Fetcher: holdFetches(make(chan struct{}))})
	d, _, err := q.SubmitPush(ctx, "app", forge.PushEvent{Forge: forge.GitHub, DeliveryID: "d-1", Repo: "acme/app",
		Branch: "main", SHA: fmt.Sprintf("%040x", 1), Pusher: "octocat"})
	if err != nil {
		t.Fatal(err)
	}
	waitCond(t, "the deploy held in its fetch", func() bool {
		got, err := q.Get(ctx, d.ID)
		if err != nil || got.State.Terminal() {
			t.Fatalf("deploy %d: %+v, %v; want it held in its fetch", d.ID, got, err)
		}
		return got.State == deploy.Fetching
	})

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
