package deploy

import (
	"context"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"time"

	"github.com/flakeship/flakeship/forge"
)

// intake records new deploys durably: submitters add a submission and wait;
// one committer goroutine takes whatever waits and stores it with one
// transaction (group commit), so each sync of the disk is shared by every
// submission that arrived during the one before. Nobody is answered before
// the commit that made their deploy durable, and no lock is held across
// the commit: new submissions keep arriving while it syncs.
type intake struct {
	commit func(batch []*submission)
	log    *slog.Logger

	mu      sync.Mutex
	waiting []*submission
	closed  bool
	started bool
	kick    chan struct{} // capacity 1: something waits
	quit    chan struct{} // closed by close
	ended   chan struct{} // closed when the committer has ended
}

// submission is a deploy waiting in the intake to be stored and queued, and
// then what became of it.
type submission struct {
	deploy *Deploy
	done   chan struct{} // closed once out or err is set

	out       *Deploy // a copy of the stored deploy, or the first of its delivery
	duplicate bool
	sameAs    *submission // the earlier submission of the same delivery in the batch
	err       error
}

func newIntake(commit func([]*submission), log *slog.Logger) *intake {
	return &intake{
		commit: commit,
		log:    log,
		kick:   make(chan struct{}, 1),
		quit:   make(chan struct{}),
		ended:  make(chan struct{}),
	}
}

// start starts the committer.
func (in *intake) start() {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.started || in.closed {
		return
	}
	in.started = true
	go in.loop()
}

// submit adds d and waits until it is stored (or refused).
func (in *intake) submit(d *Deploy) (*Deploy, bool, error) {
	sub := &submission{deploy: d, done: make(chan struct{})}
	in.mu.Lock()
	if in.closed {
		in.mu.Unlock()
		return nil, false, ErrClosed
	}
	in.waiting = append(in.waiting, sub)
	in.mu.Unlock()
	select {
	case in.kick <- struct{}{}:
	default: // the committer is told already
	}
	<-sub.done
	return sub.out, sub.duplicate, sub.err
}

// take returns and empties what waits.
func (in *intake) take() []*submission {
	in.mu.Lock()
	defer in.mu.Unlock()
	batch := in.waiting
	in.waiting = nil
	return batch
}

// len is the number of submissions waiting for the next commit.
func (in *intake) len() int {
	in.mu.Lock()
	defer in.mu.Unlock()
	return len(in.waiting)
}

func (in *intake) loop() {
	defer close(in.ended)
	for {
		select {
		case <-in.kick:
			if batch := in.take(); len(batch) > 0 {
				in.commitSafely(batch)
			}
		case <-in.quit:
			for _, sub := range in.take() {
				sub.err = ErrClosed
				close(sub.done)
			}
			return
		}
	}
}

// commitSafely commits batch and answers every submitter of it, even when
// the commit panics: the panic is logged with its stack, each submitter
// gets an error, and the intake goes on (the store rolled the transaction
// back).
func (in *intake) commitSafely(batch []*submission) {
	defer func() {
		if p := recover(); p != nil {
			in.log.Error("group commit failed with a panic", "panic", p, "stack", string(debug.Stack()))
			for _, sub := range batch {
				if sub.out == nil && sub.err == nil {
					sub.err = fmt.Errorf("submit push: commit failed: %v", p)
				}
			}
		}
		for _, sub := range batch {
			close(sub.done)
		}
	}()
	in.commit(batch)
}

// close refuses new submissions, answers those that wait with ErrClosed,
// and waits for a commit under way to end.
func (in *intake) close() {
	in.mu.Lock()
	wasClosed, started := in.closed, in.started
	in.closed = true
	in.mu.Unlock()
	if wasClosed {
		return
	}
	close(in.quit)
	if started {
		<-in.ended
		return
	}
	for _, sub := range in.take() {
		sub.err = ErrClosed
		close(sub.done)
	}
}

// commitBatch stores the deploys of batch with their delivery ids in one
// transaction, together with the superseding of the deploys they replace,
// and only then queues them (in the order they were submitted) and records
// what became of each submission. It runs on the intake's committer.
func (q *Queue) commitBatch(batch []*submission) {
	start := time.Now()
	defer func() { q.observeCommit(len(batch), start) }()
	ctx := context.Background()
	held, ok := q.sched.hold(targetsOf(batch))
	if !ok {
		for _, sub := range batch {
			sub.err = ErrClosed
		}
		return
	}
	// A panic or a failed commit leaves the waiting deploys as they were.
	defer q.sched.release(held)
	var (
		created []*submission
		plan    []supersession
	)
	err := q.store.Batch(ctx, func(tx StoreTx) error {
		var err error
		if created, err = q.newDeploys(ctx, tx, batch); err != nil || len(created) == 0 {
			return err
		}
		if plan, err = q.planSupersessions(created, held); err != nil {
			return err
		}
		return writeBatch(ctx, tx, created, plan)
	})
	if err != nil {
		for _, sub := range batch {
			sub.duplicate = false
			sub.err = fmt.Errorf("submit push: %w", err)
		}
		return
	}
	q.queueCommitted(batch, created, plan, held)
	for _, sub := range batch {
		if sub.out == nil {
			sub.out, sub.err = q.firstOfDelivery(ctx, sub.deploy.ID)
		}
	}
}

// queueCommitted makes the committed new deploys wait (the newest of each
// target), applies and announces the supersessions, and dispatches. Each new
// deploy's queued status is posted before any runner can take it up.
//
// The answer of each submission is copied from its deploy under the
// scheduler's lock, as applied (a deploy the batch superseded answers
// superseded), before a runner can change it; a redelivery of a deploy
// stored before the batch is left to the caller (out stays nil).
func (q *Queue) queueCommitted(batch, created []*submission, plan []supersession, held map[string]*Deploy) {
	for _, sub := range created {
		d := sub.deploy
		q.log.Info("deploy queued", "target", d.Target, "deploy_id", d.ID, "sha", forge.ShortSHA(d.SHA),
			"trigger", d.Trigger, "delivery_id", d.DeliveryID)
		q.statuses.notify(d)
	}
	type moved struct {
		d    *Deploy
		from State
	}
	var superseded []moved
	s := q.sched
	s.mu.Lock()
	for i, sub := range created {
		p := plan[i]
		if p.next != nil {
			superseded = append(superseded, moved{p.old, p.old.State})
			*p.old = *p.next
		}
		s.slots[sub.deploy.Target].pending = p.pending
	}
	s.releaseLocked(held)
	q.observeWaitingLocked()
	for _, sub := range batch {
		switch {
		case !sub.duplicate:
			out := *sub.deploy
			sub.out = &out
		case sub.sameAs != nil:
			out := *sub.sameAs.deploy
			sub.out = &out
		}
	}
	s.mu.Unlock()
	// The superseded deploys are out of every slot now: only this
	// goroutine sees them.
	for _, m := range superseded {
		q.announce(m.d, m.from, true)
	}
	q.dispatch()
}

// targetsOf lists the targets of batch's deploys.
func targetsOf(batch []*submission) []string {
	seen := map[string]bool{}
	var names []string
	for _, sub := range batch {
		if name := sub.deploy.Target; !seen[name] {
			seen[name] = true
			names = append(names, name)
		}
	}
	return names
}

// writeBatch stores the new deploys as each ends up (a deploy superseded
// within the batch is written once, superseded, not queued and then
// changed) and updates the deploys that waited before the batch and are
// superseded by it.
func writeBatch(ctx context.Context, tx StoreTx, created []*submission, plan []supersession) error {
	final := make(map[*Deploy]*Deploy, len(plan))
	for _, p := range plan {
		if p.next != nil {
			final[p.old] = p.next
		}
	}
	// Newest first, so that the deploy a superseded one names is stored
	// before it.
	isNew := make(map[*Deploy]bool, len(created))
	for i := len(created) - 1; i >= 0; i-- {
		d := created[i].deploy
		isNew[d] = true
		if f, ok := final[d]; ok {
			d = f
		}
		if err := tx.Create(ctx, d); err != nil {
			return err
		}
	}
	for _, p := range plan {
		if p.next != nil && !isNew[p.old] {
			if err := tx.Update(ctx, p.next); err != nil {
				return err
			}
		}
	}
	return nil
}

// deliveryKey identifies a delivery to one target.
type deliveryKey struct {
	forge              forge.Kind
	deliveryID, target string
}

// newDeploys sorts batch into duplicates (a delivery stored before, or
// submitted earlier in the batch) and new deploys, and gives the new ones
// their ids, in order, from the store's next id.
func (q *Queue) newDeploys(ctx context.Context, tx StoreTx, batch []*submission) ([]*submission, error) {
	var created []*submission
	first := map[deliveryKey]*submission{}
	for _, sub := range batch {
		sub.duplicate, sub.sameAs = false, nil
		d := sub.deploy
		if d.DeliveryID != "" {
			key := deliveryKey{d.Forge, d.DeliveryID, d.Target}
			if f, ok := first[key]; ok {
				sub.duplicate, sub.sameAs = true, f
				continue
			}
			id, err := tx.Delivered(ctx, d.Forge, d.DeliveryID, d.Target)
			if err != nil {
				return nil, err
			}
			if id != 0 {
				sub.duplicate, d.ID = true, id
				continue
			}
			first[key] = sub
		}
		created = append(created, sub)
	}
	if len(created) == 0 {
		return nil, nil
	}
	next, err := tx.NextID(ctx)
	if err != nil {
		return nil, err
	}
	for i, sub := range created {
		sub.deploy.ID = next + int64(i)
		q.fillURL(sub.deploy)
	}
	return created, nil
}

// supersession is what queueing one new deploy does to its target: pending
// is the deploy that waits afterwards, the newer of the new one and the one
// that waited before; that one, old, ends superseded as next says (a copy,
// applied only once it is stored). old and next are nil when none waited.
type supersession struct {
	pending   *Deploy
	old, next *Deploy
}

// planSupersessions says, for each new deploy in order, which deploy it
// leaves waiting and which it supersedes, counting the earlier ones of the
// same list; held has what waited before, by target. It changes nothing.
func (q *Queue) planSupersessions(created []*submission, held map[string]*Deploy) ([]supersession, error) {
	plan := make([]supersession, 0, len(created))
	waiting := map[string]*Deploy{}
	for _, sub := range created {
		d := sub.deploy
		old, planned := waiting[d.Target]
		if !planned {
			old = held[d.Target]
		}
		p := supersession{pending: d}
		if old != nil {
			loser, next, err := q.superseded(old, d)
			if err != nil {
				return nil, err
			}
			if loser == d {
				p.pending = old
			}
			p.old, p.next = loser, next
		}
		waiting[d.Target] = p.pending
		plan = append(plan, p)
	}
	return plan, nil
}

// superseded returns the older (lower id) of a and b, and a copy of it as it
// ends superseded by the newer, without changing either.
func (q *Queue) superseded(a, b *Deploy) (loser, next *Deploy, err error) {
	loser, winner := a, b
	if loser.ID > winner.ID {
		loser, winner = winner, loser
	}
	next, err = changed(loser, Superseded,
		fmt.Sprintf("superseded by deploy %d (%s)", winner.ID, forge.ShortSHA(winner.SHA)), q.now())
	if err != nil {
		return nil, nil, err
	}
	by := winner.ID
	next.SupersededBy = &by
	next.statusText = "Superseded by " + forge.ShortSHA(winner.SHA)
	return loser, next, nil
}

// firstOfDelivery returns deploy id, the first of a delivery that came
// again, from the store.
func (q *Queue) firstOfDelivery(ctx context.Context, id int64) (*Deploy, error) {
	first, err := q.store.Get(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("submit push: load first deploy of delivery: %w", err)
	}
	q.fillURL(first)
	return first, nil
}
