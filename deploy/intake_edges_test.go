package deploy_test

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/flakeship/flakeship/deploy"
	"github.com/flakeship/flakeship/forge"
	"github.com/flakeship/flakeship/internal/queuetest"
	"github.com/flakeship/flakeship/store"
)

// panickyStore is the real store whose first Batch waits until the test lets
// it go, and whose second Batch panics (as a bug in a driver or in the
// queue's own batch function would).
type panickyStore struct {
	*store.Store
	first   chan struct{} // closed by the test to let the first batch commit
	mu      sync.Mutex
	batches int
}

func (s *panickyStore) Batch(ctx context.Context, fn func(tx deploy.StoreTx) error) error {
	s.mu.Lock()
	s.batches++
	n := s.batches
	s.mu.Unlock()
	switch n {
	case 1:
		<-s.first
	case 2:
		panic("batch exploded")
	}
	return s.Store.Batch(ctx, fn)
}

// TestAPanicInAGroupCommitAnswersEverySubmitterWithAnError holds one group
// commit while two more pushes wait in the intake, then lets the next
// commit, which holds both, panic: the committer recovers, and each push
// gets an error (never a nil deploy with no error, which the webhook would
// answer as stored, and never the panic itself, which would end the
// server), and the intake goes on working.
func TestAPanicInAGroupCommitAnswersEverySubmitterWithAnError(t *testing.T) {
	ctx := context.Background()
	var st *panickyStore
	sqlite, q := queuetest.Start(t, edgeConfig(t, 1, "app"), slog.New(slog.DiscardHandler), queuetest.Options{
		PruneEvery: -1,
		Store: func(s *store.Store) deploy.Store {
			st = &panickyStore{Store: s, first: make(chan struct{})}
			return st
		},
	})

	type answer struct {
		d        *deploy.Deploy
		err      error
		panicked any
	}
	submit := func(n int) (a answer) {
		defer func() { a.panicked = recover() }()
		ev := forge.PushEvent{Forge: forge.GitHub, DeliveryID: fmt.Sprintf("delivery-%d", n), Repo: "acme/app",
			Branch: "main", SHA: fmt.Sprintf("%040x", n), Pusher: "octocat"}
		a.d, _, a.err = q.SubmitPush(ctx, "app", ev)
		return a
	}

	first := make(chan answer, 1)
	go func() { first <- submit(1) }()
	// The first push leads a commit that waits in Batch; two more wait in
	// the intake for it, to be committed together next.
	waitIntake := func(n int) {
		t.Helper()
		waitCond(t, fmt.Sprintf("%d submissions in the intake", n), func() bool { return q.IntakeLen() == n })
	}
	waitCond(t, "the first commit in Batch", func() bool { return st.batchesSoFar() == 1 })
	rest := make(chan answer, 2)
	go func() { rest <- submit(2) }()
	waitIntake(1)
	go func() { rest <- submit(3) }()
	waitIntake(2)
	close(st.first)

	if a := <-first; a.err != nil || a.panicked != nil || a.d == nil {
		t.Fatalf("the push whose commit went through: %+v", a)
	}
	var panicked, refused int
	for range 2 {
		a := <-rest
		switch {
		case a.panicked != nil:
			panicked++
			t.Errorf("a push of the commit that panicked got the panic: %v", a.panicked)
		case a.err != nil && strings.Contains(a.err.Error(), "commit failed: batch exploded"):
			refused++
		default:
			t.Errorf("a push of the commit that panicked was answered %+v, want an error", a)
		}
	}
	if panicked != 0 || refused != 2 {
		t.Errorf("%d pushes panicked and %d were refused, want 0 and 2", panicked, refused)
	}

	// Nobody waits for good: the committer goes on and the next push is
	// stored.
	if a := submit(4); a.err != nil || a.panicked != nil || a.d == nil {
		t.Fatalf("a push after the panic: %+v", a)
	} else if _, err := sqlite.Get(ctx, a.d.ID); err != nil {
		t.Errorf("the push after the panic is not stored: %v", err)
	}
	all, err := sqlite.List(ctx, deploy.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 2 {
		t.Errorf("%d deploys stored, want 2: the commit that panicked stored nothing", len(all))
	}
	if !t.Failed() {
		t.Logf("a commit of 2 pushes panicked: both refused with an error; the next push was stored")
	}
}

func (s *panickyStore) batchesSoFar() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.batches
}

// gatedStore is the real store whose Batch number hold (counting from 1)
// waits until the test closes release.
type gatedStore struct {
	*store.Store
	hold    int
	release chan struct{}
	mu      sync.Mutex
	batches int
}

func (s *gatedStore) Batch(ctx context.Context, fn func(tx deploy.StoreTx) error) error {
	s.mu.Lock()
	s.batches++
	n := s.batches
	s.mu.Unlock()
	if n == s.hold {
		<-s.release
	}
	return s.Store.Batch(ctx, fn)
}

func (s *gatedStore) batchesSoFar() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.batches
}

// TestOneCommitSupersedesTheWaitingDeploysOfEveryTarget has a deploy
// waiting on each of two targets (app behind its running deploy, api for a
// free slot) when one group commit brings a newer push for each: both
// waiting deploys must be stored superseded, not only the first, or a
// restart would queue the other again.
func TestOneCommitSupersedesTheWaitingDeploysOfEveryTarget(t *testing.T) {
	ctx := context.Background()
	var st *gatedStore
	release := make(chan struct{})
	sqlite, q := queuetest.Start(t, edgeConfig(t, 1, "app", "api"), slog.New(slog.DiscardHandler), queuetest.Options{
		PruneEvery: -1,
		Store: func(s *store.Store) deploy.Store {
			st = &gatedStore{Store: s, hold: 4, release: make(chan struct{})}
			return st
		},
		Fetcher: holdFetches(release),
	})
	t.Cleanup(func() { close(release) }) // before the queue's shutdown
	submit := func(target string, n int) *deploy.Deploy {
		t.Helper()
		ev := forge.PushEvent{Forge: forge.GitHub, DeliveryID: fmt.Sprintf("delivery-%d", n), Repo: "acme/" + target,
			Branch: "main", SHA: fmt.Sprintf("%040x", n), Pusher: "octocat"}
		d, _, err := q.SubmitPush(ctx, target, ev)
		if err != nil {
			t.Errorf("push %d to %s: %v", n, target, err) // not Fatal: some run in goroutines
		}
		return d
	}

	submit("app", 1)             // batch 1: runs, held in its fetch
	appWaits := submit("app", 2) // batch 2: waits behind it
	apiWaits := submit("api", 3) // batch 3: waits for the one slot
	// Batch 4 (a redelivery) is held while a newer push for each target
	// waits in the intake: batch 5 brings both.
	go submit("app", 2)
	waitCond(t, "the redelivery's commit in Batch", func() bool { return st.batchesSoFar() == 4 })
	done := make(chan struct{})
	go func() {
		defer close(done)
		var wg sync.WaitGroup
		for _, p := range []struct {
			target string
			n      int
		}{{"app", 4}, {"api", 5}} {
			wg.Add(1)
			go func() { defer wg.Done(); submit(p.target, p.n) }()
		}
		wg.Wait()
	}()
	waitCond(t, "two pushes in the intake", func() bool { return q.IntakeLen() == 2 })
	close(st.release)
	<-done
	if n := st.batchesSoFar(); n != 5 {
		t.Fatalf("%d group commits, want 5 (the two newer pushes in one)", n)
	}
	for _, old := range []*deploy.Deploy{appWaits, apiWaits} {
		got, err := sqlite.Get(ctx, old.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.State != deploy.Superseded {
			t.Errorf("stored deploy %d of %s: %s, want superseded", got.ID, got.Target, got.State)
		}
	}
	if !t.Failed() {
		t.Logf("one commit of 2 pushes superseded the waiting deploys %d (app) and %d (api) in the store", appWaits.ID, apiWaits.ID)
	}
}
