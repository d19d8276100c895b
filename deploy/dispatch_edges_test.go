package deploy_test

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"

	"github.com/flakeship/flakeship/deploy"
	"github.com/flakeship/flakeship/forge"
	"github.com/flakeship/flakeship/internal/queuetest"
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
	ctx := context.Background()
	rec := &dispatchRecorder{}
	release := make(chan struct{})
	// api sorts before web: map order or name order would start api first.
	_, q := queuetest.Start(t, edgeConfig(t, 1, "app", "api", "web"), slog.New(slog.DiscardHandler),
		queuetest.Options{PruneEvery: -1, Fetcher: holdFetches(release), Observer: rec})
	released := false
	t.Cleanup(func() { // before the queue's shutdown
		if !released {
			close(release)
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

	close(release)
	released = true
	for _, id := range ids {
		waitEnded(t, q, id)
	}
	_, order := rec.state()
	if want := []string{"app", "web", "api"}; fmt.Sprint(order) != fmt.Sprint(want) {
		t.Errorf("deploys began to fetch in the order %v, want %v (the oldest waiting first)", order, want)
	}
	if !t.Failed() {
		t.Logf("MAX_PARALLEL=1: 0, 1, 2 deploys waiting after each push; fetched in the order %v", order)
	}
}
