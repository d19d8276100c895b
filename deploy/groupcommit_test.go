package deploy_test

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/flakeship/flakeship/deploy"
	"github.com/flakeship/flakeship/store"
)

// heldStore is the real store, with a gate in front of Batch (to let
// submissions pile up behind a commit), a record of how many deploys each
// Batch created, and a way to make the next Batch fail.
type heldStore struct {
	*store.Store

	mu      sync.Mutex
	gate    chan struct{} // Batch waits until it is closed; nil: no wait
	held    chan struct{} // receives when a Batch begins to wait at the gate
	creates []int         // deploys created by each Batch that committed
	fail    error         // the next Batch's fn fails with it
	panics  bool          // the next Batch panics (before writing anything)
}

func (h *heldStore) hold() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.gate = make(chan struct{})
	h.held = make(chan struct{}, 1)
}

func (h *heldStore) release() {
	h.mu.Lock()
	defer h.mu.Unlock()
	close(h.gate)
	h.gate = nil
}

func (h *heldStore) failNext(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.fail = err
}

func (h *heldStore) batches() []int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]int(nil), h.creates...)
}

func (h *heldStore) Batch(ctx context.Context, fn func(tx deploy.StoreTx) error) error {
	h.mu.Lock()
	gate, held, fail, panics := h.gate, h.held, h.fail, h.panics
	h.fail, h.panics = nil, false
	h.mu.Unlock()
	if gate != nil {
		held <- struct{}{}
		<-gate
	}
	if panics {
		panic("the store broke")
	}
	n := 0
	err := h.Store.Batch(ctx, func(tx deploy.StoreTx) error {
		if err := fn(countingTx{tx, &n}); err != nil {
			return err
		}
		return fail
	})
	if err == nil {
		h.mu.Lock()
		h.creates = append(h.creates, n)
		h.mu.Unlock()
	}
	return err
}

// countingTx counts the deploys a transaction created.
type countingTx struct {
	deploy.StoreTx
	n *int
}

func (c countingTx) Create(ctx context.Context, d *deploy.Deploy) error {
	err := c.StoreTx.Create(ctx, d)
	if err == nil {
		*c.n++
	}
	return err
}

// submitted is what one SubmitPush gave.
type submitted struct {
	delivery string
	deploy   *deploy.Deploy
	dup      bool
	err      error
}

// busyHeldQueue starts a queue on a heldStore over the rig's store, and
// makes its target busy: the first push (of sha, a slow build) runs at once.
func busyHeldQueue(t *testing.T) (q *deploy.Queue, held *heldStore, sha string, running *deploy.Deploy) {
	t.Helper()
	r := newRig(t, "app")
	sha = r.commitSlow()
	held = &heldStore{Store: r.store}
	q = r.newQueueOn(held)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		q.Shutdown(ctx)
	})
	running, _, err := q.SubmitPush(context.Background(), "app", push(sha, "d-running"))
	if err != nil {
		t.Fatal(err)
	}
	return q, held, sha, running
}

func TestQueueCommitsThePushesThatWaitTogether(t *testing.T) {
	q, held, sha, running := busyHeldQueue(t)
	ctx := context.Background()

	// The next push leads a commit that is held; 20 pushes arrive meanwhile,
	// two of them the same delivery.
	held.hold()
	results := make(chan submitted, 32)
	submit := func(delivery string) {
		d, dup, err := q.SubmitPush(ctx, "app", push(sha, delivery))
		results <- submitted{delivery, d, dup, err}
	}
	go submit("d-lead")
	select {
	case <-held.held: // the leader's commit waits at the gate
	case <-time.After(10 * time.Second):
		t.Fatal("the first push's commit never began")
	}
	deliveries := []string{"d-same", "d-same"}
	for i := range 18 {
		deliveries = append(deliveries, fmt.Sprintf("d-%d", i))
	}
	for _, delivery := range deliveries {
		go submit(delivery)
	}
	waitIntake(t, q, len(deliveries))
	held.release()

	var got []submitted
	for range len(deliveries) + 1 {
		got = append(got, <-results)
	}
	if b := held.batches(); len(b) != 3 || b[0] != 1 || b[1] != 1 || b[2] != 19 {
		t.Fatalf("deploys created per commit = %v, want [1 1 19]: the 20 waiting pushes (one of them twice) in one commit", b)
	}
	byDelivery := map[string][]submitted{}
	for _, s := range got {
		if s.err != nil {
			t.Fatalf("%s: %v", s.delivery, s.err)
		}
		byDelivery[s.delivery] = append(byDelivery[s.delivery], s)
	}
	same := byDelivery["d-same"]
	if len(same) != 2 || same[0].deploy.ID != same[1].deploy.ID || same[0].dup == same[1].dup {
		t.Errorf("one delivery twice in a commit gave %+v and %+v: want one deploy, once a duplicate", same[0], same[1])
	}

	// Stored: one deploy per delivery; every one but the newest superseded
	// by the next, in the order they were submitted; the newest waits.
	all, err := q.List(ctx, deploy.Filter{Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	var waiting []*deploy.Deploy
	for _, d := range all {
		if d.ID != running.ID {
			waiting = append(waiting, d)
		}
	}
	if len(waiting) != 20 {
		t.Fatalf("%d deploys stored besides the running one, want 20 (19 deliveries and the leader)", len(waiting))
	}
	sort.Slice(waiting, func(i, j int) bool { return waiting[i].ID < waiting[j].ID })
	for i, d := range waiting[:len(waiting)-1] {
		next := waiting[i+1]
		if d.State != deploy.Superseded || d.SupersededBy == nil || *d.SupersededBy != next.ID {
			t.Errorf("deploy %d (%s) is %s, superseded by %v; want superseded by %d",
				d.ID, d.DeliveryID, d.State, d.SupersededBy, next.ID)
		}
	}
	newest := waiting[len(waiting)-1]
	if newest.State != deploy.Queued {
		t.Errorf("the newest deploy %d is %s, want queued", newest.ID, newest.State)
	}
	// Each is answered as it was when its commit ended: the leader's alone
	// (queued then), the others' together.
	for _, s := range got {
		if s.dup {
			continue
		}
		if s.delivery == "d-lead" {
			if s.deploy.State != deploy.Queued {
				t.Errorf("the leading push was answered %s, want queued", s.deploy.State)
			}
			continue
		}
		stored, err := q.Get(ctx, s.deploy.ID)
		if err != nil {
			t.Fatal(err)
		}
		if s.deploy.State != stored.State || s.deploy.URL != stored.URL {
			t.Errorf("%s was answered %s %q, but is stored %s %q", s.delivery, s.deploy.State, s.deploy.URL, stored.State, stored.URL)
		}
	}

	// A commit that fails stores nothing, answers an error, and leaves the
	// waiting deploy waiting; the same delivery then stores.
	boom := errors.New("disk full")
	held.failNext(boom)
	if _, _, err := q.SubmitPush(ctx, "app", push(sha, "d-after")); !errors.Is(err, boom) {
		t.Fatalf("a push whose commit failed gave %v, want the store's error", err)
	}
	if d, err := q.Get(ctx, newest.ID); err != nil || d.State != deploy.Queued {
		t.Fatalf("after a failed commit the waiting deploy is %+v (%v), want queued", d, err)
	}
	if n, err := q.List(ctx, deploy.Filter{Limit: 100}); err != nil || len(n) != len(all) {
		t.Fatalf("after a failed commit %d deploys are stored (%v), want %d", len(n), err, len(all))
	}
	after, dup, err := q.SubmitPush(ctx, "app", push(sha, "d-after"))
	if err != nil || dup {
		t.Fatalf("the delivery again after a failed commit: dup=%v err=%v", dup, err)
	}
	if d, err := q.Get(ctx, newest.ID); err != nil || d.State != deploy.Superseded || *d.SupersededBy != after.ID {
		t.Fatalf("after the next push the waiting deploy is %+v (%v), want superseded by %d", d, err, after.ID)
	}
	waitEnd(t, q, running.ID)
	waitEnd(t, q, after.ID)
}

// waitIntake waits until n submissions wait for the next group commit.
func waitIntake(t *testing.T, q *deploy.Queue, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for q.IntakeLen() != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d submissions wait, want %d", q.IntakeLen(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestQueueSurvivesACommitThatPanics(t *testing.T) {
	q, held, sha, running := busyHeldQueue(t)
	ctx := context.Background()

	// The leader's commit waits at the gate with another push behind it,
	// then panics.
	held.hold()
	held.mu.Lock()
	held.panics = true
	held.mu.Unlock()
	leader := make(chan any, 1)
	go func() {
		defer func() { leader <- recover() }()
		q.SubmitPush(ctx, "app", push(sha, "d-lead"))
	}()
	select {
	case <-held.held:
	case <-time.After(10 * time.Second):
		t.Fatal("the leader's commit never began")
	}
	follower := make(chan submitted, 1)
	go func() {
		d, dup, err := q.SubmitPush(ctx, "app", push(sha, "d-follow"))
		follower <- submitted{"d-follow", d, dup, err}
	}()
	waitIntake(t, q, 1)
	held.release()

	if p := <-leader; p == nil {
		t.Error("the leader's SubmitPush returned; want the store's panic")
	}
	select {
	case s := <-follower:
		// It waited in the intake and leads the next commit, or was in
		// the broken one and gets an error: either way it is answered.
		if s.err == nil && s.deploy == nil {
			t.Errorf("the follower got neither a deploy nor an error")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the push behind a commit that panicked was never answered")
	}
	// The queue still takes pushes.
	after, _, err := q.SubmitPush(ctx, "app", push(sha, "d-after"))
	if err != nil {
		t.Fatalf("a push after the panic: %v", err)
	}
	waitEnd(t, q, running.ID)
	waitEnd(t, q, after.ID)
}
