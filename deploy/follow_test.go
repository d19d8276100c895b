package deploy_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flakeship/flakeship/builder"
	"github.com/flakeship/flakeship/deploy"
	"github.com/flakeship/flakeship/store"
)

// gatedBuilder is the real nix builder behind a gate the test holds: Build
// writes a line to the deploy's log, says that it waits, and builds only
// once the gate is open.
type gatedBuilder struct {
	deploy.Builder
	waiting chan struct{} // receives once per build that waits at the gate
	gate    chan struct{} // closed by the test
}

func (g *gatedBuilder) Build(ctx context.Context, s builder.Spec, c builder.Checkout, log io.Writer) (string, error) {
	fmt.Fprintln(log, "waiting at the gate")
	g.waiting <- struct{}{}
	select {
	case <-g.gate:
	case <-ctx.Done():
		return "", ctx.Err()
	}
	fmt.Fprintln(log, "through the gate")
	return g.Builder.Build(ctx, s, c, log)
}

// frozenStore is the real store whose reads can be frozen: a frozen read
// fails and is counted. A follower that looked at the store to learn what
// its deploy does would learn nothing once it is frozen.
type frozenStore struct {
	*store.Store
	gets        atomic.Int64 // Get calls, frozen or not
	frozen      atomic.Bool
	frozenReads atomic.Int64
}

var errFrozen = errors.New("the store is frozen for reads")

func (s *frozenStore) read() error {
	if s.frozen.Load() {
		s.frozenReads.Add(1)
		return errFrozen
	}
	return nil
}

func (s *frozenStore) Get(ctx context.Context, id int64) (*deploy.Deploy, error) {
	s.gets.Add(1)
	if err := s.read(); err != nil {
		return nil, err
	}
	return s.Store.Get(ctx, id)
}

func (s *frozenStore) List(ctx context.Context, f deploy.Filter) ([]*deploy.Deploy, error) {
	if err := s.read(); err != nil {
		return nil, err
	}
	return s.Store.List(ctx, f)
}

func (s *frozenStore) LastSucceeded(ctx context.Context, target string) (*deploy.Deploy, error) {
	if err := s.read(); err != nil {
		return nil, err
	}
	return s.Store.LastSucceeded(ctx, target)
}

// follower records what WriteLog gives it, in order: "state <s>" for each
// state and the log's bytes.
type follower struct {
	mu     sync.Mutex
	states []string
	log    strings.Builder
}

func (f *follower) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.log.Write(p)
}

func (f *follower) WriteState(s deploy.State) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.states = append(f.states, string(s))
	return nil
}

func (f *follower) seen() (states, log string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return strings.Join(f.states, ","), f.log.String()
}

// follow runs WriteLog with follow in the background; the channel gets its
// result.
func follow(q *deploy.Queue, id int64, f *follower) <-chan error {
	done := make(chan error, 1)
	go func() { done <- q.WriteLog(context.Background(), id, f, true) }()
	return done
}

// waitSeen waits, bounded, until cond holds for what f has seen.
func waitSeen(t *testing.T, f *follower, what string, cond func(states, log string) bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		states, log := f.seen()
		if cond(states, log) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the follower never saw %s; it saw states %s and the log:\n%s", what, states, log)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestFollowerWakesOnTheDeploysOwnEventsNotTheStore(t *testing.T) {
	t.Parallel()
	r := newRig(t, "app")
	sha, next := r.commit(true), r.commit(true)
	st := &frozenStore{Store: r.store}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	nix := &builder.Nix{Binary: r.cfg.Nix, Flags: r.cfg.NixFlags}
	gate := &gatedBuilder{Builder: nix, waiting: make(chan struct{}, 1), gate: make(chan struct{})}
	q, err := deploy.New(deploy.Options{
		Config: r.cfg, Store: st, Fetcher: builder.NewFetcher(log), Builder: gate,
		Switcher: func(s builder.Spec) (builder.Switcher, error) { return builder.NewSwitcher(s, nix, log) },
		Log:      log,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		q.Shutdown(ctx)
	})
	ctx := context.Background()
	running, err := q.Deploy(ctx, "app", deploy.ManualRequest{SHA: sha})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-gate.waiting:
	case <-time.After(60 * time.Second):
		t.Fatal("the build never reached the gate")
	}
	waiting, err := q.Deploy(ctx, "app", deploy.ManualRequest{SHA: next})
	if err != nil {
		t.Fatal(err)
	}

	// Two followers: of the deploy held at its build, and of the one
	// queued behind it. Each reads the store once, as it starts.
	before := st.gets.Load()
	var onRunning, onWaiting follower
	runDone, waitDone := follow(q, running.ID, &onRunning), follow(q, waiting.ID, &onWaiting)
	waitSeen(t, &onRunning, "the build waiting", func(states, log string) bool {
		return states == "building" && strings.Contains(log, "waiting at the gate\n")
	})
	waitSeen(t, &onWaiting, "the queued state", func(states, _ string) bool { return states == "queued" })
	if n := st.gets.Load() - before; n != 2 {
		t.Fatalf("two followers read the store %d times as they started, want 2", n)
	}

	// From here on a read of the store fails: what the followers learn
	// comes from the queue's own announcements.
	st.frozen.Store(true)
	if err := q.Cancel(ctx, waiting.ID); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-waitDone:
		if err != nil {
			t.Fatalf("following the cancelled deploy: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the follower of a cancelled deploy never returned")
	}
	if states, _ := onWaiting.seen(); states != "queued,cancelled" {
		t.Errorf("the follower of the queued deploy saw states %s, want queued,cancelled", states)
	}

	close(gate.gate)
	select {
	case err := <-runDone:
		if err != nil {
			t.Fatalf("following the running deploy: %v", err)
		}
	case <-time.After(60 * time.Second):
		states, log := onRunning.seen()
		t.Fatalf("the follower never returned; it saw %s and:\n%s", states, log)
	}
	states, followed := onRunning.seen()
	// States that follow each other quickly may reach a follower as the
	// last of them; those it sees are in order, and the last is the end.
	if !inOrder(states, "building,activating,verifying,succeeded") ||
		!strings.HasPrefix(states, "building,") || !strings.HasSuffix(states, ",succeeded") {
		t.Errorf("the follower saw states %s, want building, then any of activating,verifying, then succeeded", states)
	}
	for _, want := range []string{"through the gate\n", "== deployed " + sha[:7]} {
		if !strings.Contains(followed, want) {
			t.Errorf("the followed log lacks %q:\n%s", want, followed)
		}
	}
	if n := st.frozenReads.Load(); n != 0 {
		t.Errorf("the store was read %d times while frozen", n)
	}

	st.frozen.Store(false)
	var whole strings.Builder
	if err := q.WriteLog(ctx, running.ID, &whole, false); err != nil {
		t.Fatal(err)
	}
	if whole.String() != followed {
		t.Errorf("the followed log differs from the whole log:\n%s\nwant:\n%s", followed, whole.String())
	}
}

// inOrder reports whether the comma-separated list got is all, or some in
// the same order, of the list all.
func inOrder(got, all string) bool {
	rest := strings.Split(all, ",")
	for _, g := range strings.Split(got, ",") {
		for len(rest) > 0 && rest[0] != g {
			rest = rest[1:]
		}
		if len(rest) == 0 {
			return false
		}
		rest = rest[1:]
	}
	return true
}
