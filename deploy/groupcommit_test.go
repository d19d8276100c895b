package deploy_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flakeship/flakeship/builder"
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
	inTx    *txHold       // holds every Batch after its writes, before its commit; nil: no hold

	// commits counts the Batches whose transaction committed: it moves
	// only once the store's COMMIT has returned.
	commits atomic.Int64
}

// txHold holds each Batch of a heldStore inside its transaction, once its
// writes are done and before its commit, one Batch at a time: the held
// Batch sends the number of deploys it wrote on written, and commits when
// the test sends on next, or once free is closed.
type txHold struct {
	written  chan int
	next     chan struct{}
	free     chan struct{}
	freeOnce sync.Once
}

// holdInTx holds every later Batch inside its transaction (txHold).
func (h *heldStore) holdInTx() *txHold {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.inTx = &txHold{written: make(chan int), next: make(chan struct{}), free: make(chan struct{})}
	return h.inTx
}

// wait is the held Batch's side: it says what it wrote and waits to commit.
func (x *txHold) wait(created int) {
	select {
	case x.written <- created:
	case <-x.free:
		return
	}
	select {
	case <-x.next:
	case <-x.free:
	}
}

// waitWritten waits until a Batch is held with its writes done, and returns
// how many deploys it wrote.
func (x *txHold) waitWritten(t *testing.T) int {
	t.Helper()
	select {
	case n := <-x.written:
		return n
	case <-time.After(2 * time.Minute): // a safety net, not a window
		t.Fatal("no commit reached the hold within 2 minutes")
		return 0
	}
}

// commit lets the held Batch commit.
func (x *txHold) commit(t *testing.T) {
	t.Helper()
	select {
	case x.next <- struct{}{}:
	case <-time.After(2 * time.Minute):
		t.Fatal("no commit held to let through")
	}
}

// release lets every Batch through, held now or later.
func (x *txHold) release() { x.freeOnce.Do(func() { close(x.free) }) }

func (h *heldStore) hold() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.gate = make(chan struct{})
	h.held = make(chan struct{}, 1)
}

func (h *heldStore) release() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.gate != nil {
		close(h.gate)
	}
	h.gate = nil
}

// releaseAll lets every Batch through, held at the gate or in its
// transaction, now or later: a test that stops early must not leave the
// queue's Shutdown waiting for a held commit (Shutdown waits for the
// commit under way).
func (h *heldStore) releaseAll() {
	h.release()
	h.mu.Lock()
	inTx := h.inTx
	h.mu.Unlock()
	if inTx != nil {
		inTx.release()
	}
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
	gate, held, fail, panics, inTx := h.gate, h.held, h.fail, h.panics, h.inTx
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
		if inTx != nil {
			inTx.wait(n)
		}
		return fail
	})
	if err == nil {
		h.commits.Add(1)
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
// makes its target busy: the first push (of sha) runs at once, and its
// build waits at a gate until the test opens build.
func busyHeldQueue(t *testing.T) (q *deploy.Queue, held *heldStore, sha string, running *deploy.Deploy, build *buildGate) {
	t.Helper()
	r := newRig(t, "app")
	sha = r.commit(true)
	build = r.holdBuild(sha)
	held = &heldStore{Store: r.store}
	q = r.newQueueOn(held)
	t.Cleanup(func() {
		// Nothing held may outlast a test that stopped early: Shutdown
		// waits for the commit under way.
		held.releaseAll()
		r.gates.openAll()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		q.Shutdown(ctx)
	})
	running, _, err := q.SubmitPush(context.Background(), "app", push(sha, "d-running"))
	if err != nil {
		t.Fatal(err)
	}
	return q, held, sha, running, build
}

func TestQueueCommitsThePushesThatWaitTogether(t *testing.T) {
	t.Parallel()
	q, held, sha, running, build := busyHeldQueue(t)
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
	case <-time.After(2 * time.Minute):
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
	if len(results) != 0 {
		t.Fatalf("%d pushes were answered while the commit that holds them had not begun", len(results))
	}
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
		if s.err != nil || s.deploy == nil {
			t.Fatalf("%s: answered %+v, %v; want a deploy", s.delivery, s.deploy, s.err)
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
	build.open()
	waitEnd(t, q, running.ID)
	waitEnd(t, q, after.ID)
}

// waitIntake waits until n submissions wait for the next group commit.
func waitIntake(t *testing.T, q *deploy.Queue, n int) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute) // a safety net: they join at once
	for q.IntakeLen() != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d submissions wait, want %d", q.IntakeLen(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestQueueSurvivesACommitThatPanics(t *testing.T) {
	t.Parallel()
	q, held, sha, running, build := busyHeldQueue(t)
	ctx := context.Background()

	// The first push's commit waits at the gate with another push behind
	// it, then panics.
	held.hold()
	held.mu.Lock()
	held.panics = true
	held.mu.Unlock()
	type outcome struct {
		err      error
		panicked any
	}
	leader := make(chan outcome, 1)
	go func() {
		var o outcome
		defer func() { o.panicked = recover(); leader <- o }()
		_, _, o.err = q.SubmitPush(ctx, "app", push(sha, "d-lead"))
	}()
	select {
	case <-held.held:
	case <-time.After(2 * time.Minute):
		t.Fatal("the leader's commit never began")
	}
	follower := make(chan submitted, 1)
	go func() {
		d, dup, err := q.SubmitPush(ctx, "app", push(sha, "d-follow"))
		follower <- submitted{"d-follow", d, dup, err}
	}()
	waitIntake(t, q, 1)
	held.release()

	// The committer recovers: the push of the commit that panicked gets
	// an error, and the server is not ended by the panic.
	if o := <-leader; o.panicked != nil || o.err == nil || !strings.Contains(o.err.Error(), "commit failed") {
		t.Errorf("the push whose commit panicked: error %v, panic %v; want a commit failed error", o.err, o.panicked)
	}
	select {
	case s := <-follower:
		// It waited in the intake and is in the next commit, or was in
		// the broken one and gets an error: either way it is answered.
		if s.err == nil && s.deploy == nil {
			t.Errorf("the follower got neither a deploy nor an error")
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("the push behind a commit that panicked was never answered")
	}
	// The queue still takes pushes.
	after, _, err := q.SubmitPush(ctx, "app", push(sha, "d-after"))
	if err != nil {
		t.Fatalf("a push after the panic: %v", err)
	}
	build.open()
	waitEnd(t, q, running.ID)
	waitEnd(t, q, after.ID)
}

// TestQueueAnswersNoPushBeforeItsCommit holds each intake commit inside its
// transaction, after the batch's writes and before its COMMIT: a push that
// leads a commit, and the pushes that wait in the intake meanwhile, are
// answered only once the commit that holds their deploy has returned, and
// what they are answered with is in the database as a second store opened on
// the same file reads it.
func TestQueueAnswersNoPushBeforeItsCommit(t *testing.T) {
	t.Parallel()
	r := newRig(t, "app")
	sha := r.commit(true)
	ctx := context.Background()
	// Opened before any commit is held: opening reads the schema.
	other, err := store.Open(ctx, filepath.Join(r.cfg.StateDir, "flakeship.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { other.Close() })
	held := &heldStore{Store: r.store}
	hold := held.holdInTx()
	q := r.queueWith(held, builder.NewFetcher(slog.New(slog.DiscardHandler)), nil, -1, nil)
	// Registered after the queue's shutdown, so it runs first: a test that
	// stops early leaves no held commit for Shutdown to wait on.
	t.Cleanup(hold.release)

	// answered is one SubmitPush's answer, with the number of commits that
	// had returned when it came.
	type answered struct {
		submitted
		commits int64
	}
	const joining = 20
	answers := make(chan answered, joining+1)
	submit := func(delivery string) {
		d, dup, err := q.SubmitPush(ctx, "app", push(sha, delivery))
		answers <- answered{submitted{delivery, d, dup, err}, held.commits.Load()}
	}
	visible := func() int {
		t.Helper()
		ds, err := other.List(ctx, deploy.Filter{Limit: 1000})
		if err != nil {
			t.Fatal(err)
		}
		return len(ds)
	}

	// The first push leads a commit, which is held with its deploy written.
	go submit("d-lead")
	if n := hold.waitWritten(t); n != 1 {
		t.Fatalf("the first commit wrote %d deploys, want 1: the leading push's", n)
	}
	// 20 pushes arrive meanwhile and wait in the intake.
	for i := range joining {
		go submit(fmt.Sprintf("d-%d", i))
	}
	waitIntake(t, q, joining)
	if n := len(answers); n != 0 {
		a := <-answers
		t.Fatalf("%d of %d pushes were answered while the commit of the first was held (%s: %+v dup=%v err=%v)",
			n, joining+1, a.delivery, a.deploy, a.dup, a.err)
	}
	if n := visible(); n != 0 {
		t.Fatalf("a second store reads %d deploys while the first commit is held, want 0: the hold is not before the commit", n)
	}
	t.Logf("first commit held after its writes: %d pushes wait in the intake, 0 of %d answered, 0 deploys committed",
		joining, joining+1)

	// The first commit returns; the waiting pushes' commit is held in turn.
	hold.commit(t)
	if n := hold.waitWritten(t); n != joining {
		t.Fatalf("the second commit wrote %d deploys, want the %d that waited", n, joining)
	}
	var got []answered
	for len(answers) > 0 {
		got = append(got, <-answers)
	}
	for _, a := range got {
		if a.delivery != "d-lead" {
			t.Fatalf("%s was answered (%+v dup=%v err=%v) while the commit that holds it was held", a.delivery, a.deploy, a.dup, a.err)
		}
	}
	if n := visible(); n != 1 {
		t.Fatalf("a second store reads %d deploys while the second commit is held, want 1 (the first commit's)", n)
	}
	t.Logf("second commit held after its writes: %d of %d pushes answered (the first), 1 deploy committed",
		len(got), joining+1)
	hold.commit(t)

	for len(got) < joining+1 {
		select {
		case a := <-answers:
			got = append(got, a)
		case <-time.After(2 * time.Minute): // a safety net: they are answered at once
			t.Fatalf("%d of %d pushes answered after both commits returned", len(got), joining+1)
		}
	}
	ids := map[int64]string{}
	for _, a := range got {
		if a.err != nil || a.dup || a.deploy == nil || a.deploy.ID == 0 {
			t.Errorf("%s was answered %+v dup=%v err=%v, want a new deploy", a.delivery, a.deploy, a.dup, a.err)
			continue
		}
		// The lead's commit is the first; the others' the second.
		if want := map[bool]int64{true: 1, false: 2}[a.delivery == "d-lead"]; a.commits < want {
			t.Errorf("%s was answered when %d commits had returned, want %d: before its own", a.delivery, a.commits, want)
		}
		if prev, ok := ids[a.deploy.ID]; ok {
			t.Errorf("%s and %s were both answered deploy %d", prev, a.delivery, a.deploy.ID)
		}
		ids[a.deploy.ID] = a.delivery
		d, err := other.Get(ctx, a.deploy.ID)
		if err != nil || d.DeliveryID != a.delivery || d.SHA != sha {
			t.Errorf("%s was answered deploy %d, which a second store reads as %+v (%v)", a.delivery, a.deploy.ID, d, err)
		}
	}
	if n := visible(); n != joining+1 {
		t.Errorf("a second store reads %d deploys, want %d", n, joining+1)
	}
	if b := held.batches(); !slices.Equal(b, []int{1, joining}) {
		t.Errorf("deploys created per commit = %v, want [1 %d]", b, joining)
	}
	t.Logf("after both commits: %d pushes answered, each with a new deploy that a second store reads; commits %v",
		len(got), held.batches())
}
