package deploy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/flakeship/flakeship/builder"
	"github.com/flakeship/flakeship/config"
	"github.com/flakeship/flakeship/forge"
	"github.com/flakeship/flakeship/notifier"
)

// Fetcher fetches one commit of a target (builder.Fetcher).
type Fetcher interface {
	Fetch(ctx context.Context, s builder.Spec, sha string, log io.Writer) (builder.Checkout, error)
	// ResolveBranch returns the head of a branch of the target's repository.
	ResolveBranch(ctx context.Context, s builder.Spec, branch string) (string, error)
	// IsAncestor reports whether one commit is in the history of another,
	// in the cache of a checkout.
	IsAncestor(ctx context.Context, c builder.Checkout, ancestor, descendant string) (bool, error)
}

// Builder builds a fetched commit (builder.Nix).
type Builder interface {
	Build(ctx context.Context, s builder.Spec, c builder.Checkout, log io.Writer) (outPath string, err error)
	// ResetCache drops what a build cut short may have left half written.
	ResetCache(s builder.Spec) error
}

// SwitcherFunc makes the Switcher for a target's activation mode
// (builder.NewSwitcher).
type SwitcherFunc func(s builder.Spec) (builder.Switcher, error)

// Options configure a Queue. Config, Store, Fetcher, Builder, Switcher and Log
// are required.
type Options struct {
	Config    *config.Config
	Store     Store
	Fetcher   Fetcher
	Builder   Builder
	Switcher  SwitcherFunc
	Notifiers map[string]notifier.Notifier // by target name; missing: no statuses
	Log       *slog.Logger
	Now       func() time.Time // default time.Now
	// Observer is told of every transition and of the number of waiting
	// deploys (metrics); nil tells no one.
	Observer Observer
	// PruneEvery is how often old deploys are pruned (Prune) after the
	// first time, at Start: 0 means hourly; a negative value turns the
	// pruning off, leaving Prune to the caller.
	PruneEvery time.Duration
}

// ErrUnknownTarget is returned for a target name that is not configured.
var ErrUnknownTarget = errors.New("unknown target")

// ErrClosed is returned by SubmitPush after Shutdown began.
var ErrClosed = errors.New("deploy queue is shutting down")

// Queue runs deploys: one per target at a time, up to MaxParallel targets at
// once. A deploy submitted while its target is busy waits; a newer one
// submitted meanwhile replaces it, and the replaced one ends superseded.
type Queue struct {
	cfg      *config.Config
	store    Store
	fetcher  Fetcher
	builder  Builder
	switcher SwitcherFunc
	log      *slog.Logger
	now      func() time.Time
	secrets  []string
	observer Observer // may be nil

	senders map[string]*statusSender

	// intake holds submissions waiting for the next group commit
	// (commitIntake); committing is true while some submission leads one.
	intakeMu   sync.Mutex
	intake     []*submission
	committing bool

	mu      sync.Mutex
	closed  bool
	targets map[string]*targetQueue
	active  int // deploys running now
	runs    sync.WaitGroup
	live    map[int64]*logFile      // logs of running deploys
	watch   map[int64]chan struct{} // per active deploy: closed at its next change (follow.go)

	// stopCtx ends the status senders; runCtx is the parent of every
	// deploy's fetch and build (cancelled when the grace period of Shutdown
	// runs out).
	runCtx     context.Context
	cancelRuns context.CancelFunc
	stopCtx    context.Context
	stopSend   context.CancelFunc
	senderWG   sync.WaitGroup

	// pruneEvery is Options.PruneEvery; stopPrune ends the pruning that
	// pruneWG waits for.
	pruneEvery time.Duration
	stopPrune  context.CancelFunc
	pruneWG    sync.WaitGroup
	// pruneMu guards pruneBatch, the most deploys deleted in one store
	// transaction, and pruneHook, which tests set to see each batch.
	pruneMu    sync.Mutex
	pruneBatch int
	pruneHook  func(ids []int64)
}

// targetQueue is the scheduling state of one target.
type targetQueue struct {
	target  config.Target
	running *run
	pending *Deploy
}

// run is a deploy being worked on, with the means to cancel it.
type run struct {
	deploy *Deploy
	cancel context.CancelCauseFunc
}

// errCancelled and errShutdown are the causes a running deploy is cancelled
// with.
var (
	errCancelled = errors.New("cancelled by request")
	errShutdown  = errors.New("flakeship is shutting down")
)

// New makes a Queue. Call Start to recover stored deploys and begin work.
func New(opts Options) (*Queue, error) {
	if opts.Config == nil || opts.Store == nil || opts.Fetcher == nil || opts.Builder == nil ||
		opts.Switcher == nil || opts.Log == nil {
		return nil, errors.New("deploy.New: Config, Store, Fetcher, Builder, Switcher and Log are required")
	}
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	q := &Queue{
		cfg:      opts.Config,
		store:    opts.Store,
		fetcher:  opts.Fetcher,
		builder:  opts.Builder,
		switcher: opts.Switcher,
		log:      opts.Log,
		now:      now,
		observer: opts.Observer,
		senders:  map[string]*statusSender{},
		targets:  map[string]*targetQueue{},
		live:     map[int64]*logFile{},
		watch:    map[int64]chan struct{}{},

		pruneEvery: opts.PruneEvery,
		pruneBatch: pruneBatch,
	}
	if q.pruneEvery == 0 {
		q.pruneEvery = pruneEvery
	}
	q.secrets = append(q.secrets, opts.Config.AdminToken.Reveal(), opts.Config.ReadToken.Reveal())
	for _, s := range opts.Config.NixSecrets {
		q.secrets = append(q.secrets, s.Tokens()...)
	}
	for _, t := range opts.Config.Targets {
		q.targets[t.Name] = &targetQueue{target: t}
		q.secrets = append(q.secrets, t.Token.Reveal(), t.WebhookSecret.Reveal())
		if n, ok := opts.Notifiers[t.Name]; ok && n != nil {
			q.senders[t.Name] = newStatusSender(n, opts.Log.With("target", t.Name), now, q.statusPosted)
		}
	}
	q.runCtx, q.cancelRuns = context.WithCancel(context.Background())
	q.stopCtx, q.stopSend = context.WithCancel(context.Background())
	return q, nil
}

// Start recovers what a previous run left: queued deploys are queued again
// (the newest per target; older ones end superseded), and a deploy that was
// running is marked interrupted and retried once with a new deploy of the same
// commit. Then it starts work.
func (q *Queue) Start(ctx context.Context) error {
	for name, s := range q.senders {
		q.senderWG.Add(1)
		go func(name string, s *statusSender) {
			defer q.senderWG.Done()
			s.run(q.stopCtx)
		}(name, s)
	}
	unfinished, err := q.store.Unfinished(ctx)
	if err != nil {
		return fmt.Errorf("recover deploys: %w", err)
	}
	queued := map[string][]*Deploy{}
	var interrupted []*Deploy
	for _, d := range unfinished {
		if _, ok := q.targets[d.Target]; !ok {
			// The target was removed from the configuration.
			d.Error = "target " + d.Target + " is no longer configured"
			if err := q.finish(ctx, d, Cancelled); err != nil {
				return err
			}
			continue
		}
		if d.State == Queued {
			queued[d.Target] = append(queued[d.Target], d)
			continue
		}
		interrupted = append(interrupted, d)
	}
	for _, d := range interrupted {
		was := d.State
		q.resetCache(d.Target)
		d.Error = fmt.Sprintf("flakeship stopped while the deploy was %s", was)
		retry := d.Trigger != TriggerRetry && len(queued[d.Target]) == 0
		if !retry && d.Trigger == TriggerRetry {
			d.Error += " (after a retry: not retried again)"
		}
		if err := q.transition(ctx, d, Interrupted, !retry); err != nil {
			return err
		}
		if retry {
			// Its retry reports on the same commit; this one owes no status.
			if err := q.store.MarkStatusPosted(ctx, d.ID); err != nil {
				return fmt.Errorf("recover deploys: %w", err)
			}
		}
		q.log.Warn("deploy interrupted by a stop", "target", d.Target, "deploy_id", d.ID,
			"sha", short(d.SHA), "state", was, "retry", retry)
		if !retry {
			continue
		}
		nd := &Deploy{
			Target: d.Target, Forge: d.Forge, Repo: d.Repo, Branch: d.Branch, SHA: d.SHA,
			Trigger: TriggerRetry, State: Queued, CreatedAt: q.now().UTC(),
			Author: d.Author, Message: d.Message, Pusher: d.Pusher, RetryOf: &d.ID,
		}
		if err := q.store.Create(ctx, nd); err != nil {
			return fmt.Errorf("store retry of deploy %d: %w", d.ID, err)
		}
		q.fillURL(nd)
		queued[d.Target] = append(queued[d.Target], nd)
	}
	if err := q.resendStatuses(ctx); err != nil {
		return err
	}
	names := make([]string, 0, len(queued))
	for name := range queued {
		names = append(names, name)
	}
	sort.Strings(names)
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, name := range names {
		for _, d := range queued[name] {
			q.fillURL(d)
			q.notify(d)
			if err := q.enqueueLocked(ctx, d); err != nil {
				return err
			}
		}
	}
	q.dispatchLocked()
	if q.pruneEvery > 0 {
		pruneCtx, stop := context.WithCancel(context.Background())
		q.stopPrune = stop
		q.pruneWG.Add(1)
		go func() {
			defer q.pruneWG.Done()
			q.pruneLoop(pruneCtx, q.pruneEvery)
		}()
	}
	return nil
}

// SubmitPush stores a deploy of ev for the named target, with ev's delivery
// id in the same transaction, and queues it. For a delivery id seen before it
// returns the first deploy and duplicate=true and stores nothing.
func (q *Queue) SubmitPush(ctx context.Context, target string, ev forge.PushEvent) (*Deploy, bool, error) {
	tq, ok := q.targets[target]
	if !ok {
		return nil, false, fmt.Errorf("submit push: %w %q", ErrUnknownTarget, target)
	}
	if err := config.ValidateSHA(ev.SHA); err != nil {
		return nil, false, fmt.Errorf("submit push: %w", err)
	}
	d := &Deploy{
		Target: tq.target.Name, Forge: ev.Forge, Repo: tq.target.Repo, Branch: ev.Branch, SHA: ev.SHA,
		Trigger: TriggerPush, State: Queued, CreatedAt: q.now().UTC(),
		Author: clipText(ev.Author, maxName), Message: clipText(ev.Message, maxMessage),
		Pusher: clipText(ev.Pusher, maxName), DeliveryID: ev.DeliveryID,
	}
	return q.submit(ctx, d)
}

func (q *Queue) submit(ctx context.Context, d *Deploy) (*Deploy, bool, error) {
	sub := &submission{deploy: d, wake: make(chan bool, 1)}
	q.intakeMu.Lock()
	q.intake = append(q.intake, sub)
	lead := !q.committing
	q.committing = true
	q.intakeMu.Unlock()
	if !lead {
		// Another submission leads the commit: it stores this one with its
		// own, or hands the lead on to this one.
		lead = <-sub.wake
	}
	if lead {
		q.commitIntake(ctx, sub)
	}
	return sub.out, sub.duplicate, sub.err
}

// submission is a deploy waiting in the intake to be stored and queued, and
// then what became of it.
type submission struct {
	deploy *Deploy
	// wake receives one value: false when the submission was committed (or
	// failed) by another's commit, true when it is to lead the next commit.
	wake chan bool

	out       *Deploy // a copy of the stored deploy, or the first of its delivery
	duplicate bool
	sameAs    *submission // the earlier submission of the same delivery in the batch
	err       error
}

// commitIntake stores and queues every submission waiting in the intake
// (self among them) with one transaction, wakes their submitters, and hands
// the lead to the first submission that arrived meanwhile, if any: group
// commit. Each commit's sync is shared by all that waited during the
// previous one, and nobody is answered before the sync that made their
// deploy durable.
func (q *Queue) commitIntake(ctx context.Context, self *submission) {
	// The queue's lock is taken first, so that deploys that arrive while a
	// running deploy records a transition join this commit.
	q.mu.Lock()
	q.intakeMu.Lock()
	batch := q.intake
	q.intake = nil
	q.intakeMu.Unlock()
	// Whatever happens to the commit, even a panic, every submitter of the
	// batch is answered and the lead passes on: nobody waits for good.
	defer q.passLead(batch, self)
	defer q.mu.Unlock()
	defer func() {
		if p := recover(); p != nil {
			for _, sub := range batch {
				if sub.out == nil && sub.err == nil {
					sub.err = fmt.Errorf("submit push: commit failed: %v", p)
				}
			}
			panic(p)
		}
	}()
	// One leader's request going away must not fail the others.
	q.commitLocked(context.WithoutCancel(ctx), batch)
}

// passLead wakes the submitters of a committed batch (but self, the
// leader) and hands the lead to the first submission that arrived during
// the commit, or ends the leading if none did.
func (q *Queue) passLead(batch []*submission, self *submission) {
	for _, sub := range batch {
		if sub != self {
			sub.wake <- false
		}
	}
	q.intakeMu.Lock()
	defer q.intakeMu.Unlock()
	if len(q.intake) > 0 {
		q.intake[0].wake <- true
	} else {
		q.committing = false
	}
}

// commitLocked stores the deploys of batch with their delivery ids in one
// transaction, together with the superseding of the deploys they replace,
// and only then queues them (in the order they were submitted) and records
// what became of each submission. The caller holds q.mu.
func (q *Queue) commitLocked(ctx context.Context, batch []*submission) {
	if q.closed {
		for _, sub := range batch {
			sub.err = ErrClosed
		}
		return
	}
	defer q.observeCommit(len(batch), time.Now())
	var (
		created []*submission
		plan    []supersession
	)
	err := q.store.Batch(ctx, func(tx StoreTx) error {
		var err error
		if created, err = q.newDeploys(ctx, tx, batch); err != nil || len(created) == 0 {
			return err
		}
		if plan, err = q.planSupersessions(created); err != nil {
			return err
		}
		// Each new deploy is stored as it ends up: a deploy superseded
		// within the batch is written once, superseded, not queued and then
		// changed. Only a deploy that waited before the batch is updated.
		final := make(map[*Deploy]*Deploy, len(plan))
		for _, p := range plan {
			if p.next != nil {
				final[p.old] = p.next
			}
		}
		// Newest first, so that the deploy a superseded one names is
		// stored before it.
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
	})
	if err != nil {
		for _, sub := range batch {
			sub.duplicate = false
			sub.err = fmt.Errorf("submit push: %w", err)
		}
		return
	}

	for i, sub := range created {
		d := sub.deploy
		q.log.Info("deploy queued", "target", d.Target, "deploy_id", d.ID, "sha", short(d.SHA),
			"trigger", d.Trigger, "delivery_id", d.DeliveryID)
		q.notify(d)
		p := plan[i]
		if p.next != nil {
			from := p.old.State
			*p.old = *p.next
			q.announce(p.old, from, true)
		}
		q.targets[d.Target].pending = p.pending
	}
	q.observeWaitingLocked()
	q.dispatchLocked()

	for _, sub := range batch {
		switch {
		case !sub.duplicate:
			out := *sub.deploy
			sub.out = &out
		case sub.sameAs != nil:
			out := *sub.sameAs.deploy
			sub.out = &out
		default:
			sub.out, sub.err = q.firstOfDelivery(ctx, sub.deploy.ID)
		}
	}
}

// deliveryKey identifies a delivery to one target.
type deliveryKey struct {
	forge              forge.Kind
	deliveryID, target string
}

// newDeploys sorts batch into duplicates (a delivery stored before, or
// submitted earlier in the batch) and new deploys, and gives the new ones
// their ids, in order, from the store's next id. The caller holds q.mu.
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
// same list. It changes nothing. The caller holds q.mu.
func (q *Queue) planSupersessions(created []*submission) ([]supersession, error) {
	plan := make([]supersession, 0, len(created))
	waiting := map[string]*Deploy{}
	for _, sub := range created {
		d := sub.deploy
		old, planned := waiting[d.Target]
		if !planned {
			old = q.targets[d.Target].pending
		}
		p := supersession{pending: d}
		if old != nil {
			next, err := q.superseded(old, d)
			if err != nil {
				return nil, err
			}
			p.pending = d
			if old.ID > d.ID {
				p.pending = old
			}
			p.old, p.next = next.loser, next.deploy
		}
		waiting[d.Target] = p.pending
		plan = append(plan, p)
	}
	return plan, nil
}

// supersededDeploy is the older of two deploys that would both wait, as it
// ends superseded by the newer one.
type supersededDeploy struct {
	loser  *Deploy // the deploy itself, unchanged
	deploy *Deploy // a copy, superseded
}

// superseded returns the older (lower id) of a and b as it ends superseded
// by the newer, without changing either.
func (q *Queue) superseded(a, b *Deploy) (supersededDeploy, error) {
	loser, winner := a, b
	if loser.ID > winner.ID {
		loser, winner = winner, loser
	}
	next := *loser
	by := winner.ID
	next.SupersededBy = &by
	next.describeSHA = winner.SHA
	next.Error = fmt.Sprintf("superseded by deploy %d (%s)", winner.ID, short(winner.SHA))
	if err := next.Advance(Superseded, q.now()); err != nil {
		return supersededDeploy{}, fmt.Errorf("deploy %d: %w", loser.ID, err)
	}
	return supersededDeploy{loser: loser, deploy: &next}, nil
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

// enqueueLocked makes d (stored already) the target's pending deploy,
// superseding the one that waited before it. Start uses it for the deploys
// it recovers; new submissions go through commitLocked.
func (q *Queue) enqueueLocked(ctx context.Context, d *Deploy) error {
	tq := q.targets[d.Target]
	if old := tq.pending; old != nil {
		next, err := q.superseded(old, d)
		if err != nil {
			return err
		}
		if next.loser == d {
			d = old
		}
		if err := q.store.Update(ctx, next.deploy); err != nil {
			return fmt.Errorf("record deploy %d %s: %w", next.deploy.ID, Superseded, err)
		}
		from := next.loser.State
		*next.loser = *next.deploy
		q.announce(next.loser, from, true)
	}
	tq.pending = d
	q.observeWaitingLocked()
	return nil
}

// observeWaitingLocked tells the observer how many targets have a deploy
// waiting.
func (q *Queue) observeWaitingLocked() {
	if q.observer == nil {
		return
	}
	n := 0
	for _, tq := range q.targets {
		if tq.pending != nil {
			n++
		}
	}
	q.observer.Waiting(n)
}

// dispatchLocked starts the pending deploys of idle targets, oldest first,
// while fewer than MaxParallel run.
func (q *Queue) dispatchLocked() {
	if q.closed {
		return
	}
	for q.active < q.cfg.MaxParallel {
		var next *targetQueue
		for _, tq := range q.targets {
			if tq.running == nil && tq.pending != nil && (next == nil || tq.pending.ID < next.pending.ID) {
				next = tq
			}
		}
		if next == nil {
			return
		}
		d := next.pending
		next.pending = nil
		q.observeWaitingLocked()
		ctx, cancel := context.WithCancelCause(q.runCtx)
		next.running = &run{deploy: d, cancel: cancel}
		q.active++
		q.runs.Add(1)
		go func(tq *targetQueue) {
			defer q.runs.Done()
			q.execute(ctx, tq.target, d)
			cancel(nil)
			q.mu.Lock()
			tq.running = nil
			q.active--
			// Log followers wait for the deploy to be done with, not only
			// ended: its log is closed and whole now.
			q.wakeLocked(d.ID)
			q.dispatchLocked()
			q.mu.Unlock()
		}(next)
	}
}

// Cancel cancels a queued deploy, or a running one that is still fetching or
// building (activation is never cut short: it would leave the unit half
// switched). It returns ErrNotFound for an unknown deploy and a
// *TransitionError for one that cannot be cancelled any more.
func (q *Queue) Cancel(ctx context.Context, id int64) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, tq := range q.targets {
		if p := tq.pending; p != nil && p.ID == id {
			tq.pending = nil
			q.observeWaitingLocked()
			p.Error = "cancelled by request"
			return q.transition(ctx, p, Cancelled, true)
		}
		if r := tq.running; r != nil && r.deploy.ID == id {
			if !r.deploy.State.CanMove(Cancelled) {
				return &TransitionError{From: r.deploy.State, To: Cancelled}
			}
			r.cancel(errCancelled)
			return nil
		}
	}
	d, err := q.store.Get(ctx, id)
	if err != nil {
		return fmt.Errorf("cancel deploy %d: %w", id, err)
	}
	return &TransitionError{From: d.State, To: Cancelled}
}

// Get returns a stored deploy.
func (q *Queue) Get(ctx context.Context, id int64) (*Deploy, error) {
	d, err := q.store.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	q.fillURL(d)
	return d, nil
}

// List returns stored deploys, newest first.
func (q *Queue) List(ctx context.Context, f Filter) ([]*Deploy, error) {
	ds, err := q.store.List(ctx, f)
	if err != nil {
		return nil, err
	}
	for _, d := range ds {
		q.fillURL(d)
	}
	return ds, nil
}

// LogPath returns the file that holds deploy id's log.
func (q *Queue) LogPath(id int64) string { return logPath(q.cfg.StateDir, id) }

// Shutdown stops intake, lets running deploys finish until ctx ends, then
// cancels their fetch or build (their records stay as they are, and the next
// Start marks them interrupted and retries them), waits for them, and gives
// the forge a last chance to receive the final statuses. Queued deploys stay
// queued for the next start.
func (q *Queue) Shutdown(ctx context.Context) error {
	q.mu.Lock()
	q.closed = true
	stopPrune := q.stopPrune
	q.mu.Unlock()
	if stopPrune != nil {
		stopPrune()
	}
	q.pruneWG.Wait()

	done := make(chan struct{})
	go func() {
		q.runs.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		q.log.Warn("grace period over, interrupting running deploys")
		q.mu.Lock()
		for _, tq := range q.targets {
			if tq.running != nil {
				tq.running.cancel(errShutdown)
			}
		}
		q.mu.Unlock()
		q.cancelRuns()
		<-done
	}
	q.cancelRuns()

	flushCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var errs []error
	for _, s := range q.senders {
		if err := s.flush(flushCtx); err != nil {
			errs = append(errs, err)
		}
	}
	q.stopSend()
	q.senderWG.Wait()
	return errors.Join(errs...)
}

// transition moves d to state s, stores it, posts its commit status if post
// is true, and logs it: the one place deploy states change. The caller holds
// q.mu (or is Start, before any deploy runs).
func (q *Queue) transition(ctx context.Context, d *Deploy, s State, post bool) error {
	from := d.State
	if err := d.Advance(s, q.now()); err != nil {
		return fmt.Errorf("deploy %d: %w", d.ID, err)
	}
	if err := q.store.Update(ctx, d); err != nil {
		return fmt.Errorf("record deploy %d %s: %w", d.ID, s, err)
	}
	q.announce(d, from, post)
	return nil
}

// announce tells everyone of d's stored move from state from: the forge
// (if post), log followers, the log and the observer. The caller holds q.mu
// (or is Start).
func (q *Queue) announce(d *Deploy, from State, post bool) {
	if post {
		q.notify(d)
	}
	q.wakeLocked(d.ID)
	q.log.Info("deploy state changed", "target", d.Target, "deploy_id", d.ID, "sha", short(d.SHA),
		"from", from, "state", d.State)
	if q.observer != nil {
		q.observer.Transition(d, from)
	}
}

// finish ends d in state s (used for deploys that never ran).
func (q *Queue) finish(ctx context.Context, d *Deploy, s State) error {
	return q.transition(ctx, d, s, true)
}

// notify posts d's commit status for its current state.
func (q *Queue) notify(d *Deploy) {
	s, ok := q.senders[d.Target]
	if !ok {
		return
	}
	tq := q.targets[d.Target]
	s.send(forge.Status{
		Repo:        tq.target.Repo,
		SHA:         d.SHA,
		Context:     tq.target.StatusContext,
		Description: describe(d),
		TargetURL:   d.URL,
		State:       d.State.CommitState(),
	}, d.ID, d.State.Terminal())
}

// statusResendWindow is how far back Start looks for final statuses that
// never reached the forge (flakeship stopped, or the forge was down).
const statusResendWindow = 24 * time.Hour

// resendStatuses posts again the final statuses that a stop kept from the
// forge, except where a newer deploy of the same commit has spoken since.
func (q *Queue) resendStatuses(ctx context.Context) error {
	owed, err := q.store.Unposted(ctx, q.now().Add(-statusResendWindow))
	if err != nil {
		return fmt.Errorf("recover commit statuses: %w", err)
	}
	newest := map[string]map[string]int64{} // target -> sha -> newest deploy id
	for _, d := range owed {
		if _, ok := q.senders[d.Target]; !ok {
			continue
		}
		if newest[d.Target] == nil {
			recent, err := q.store.List(ctx, Filter{Target: d.Target, Limit: 1000})
			if err != nil {
				return fmt.Errorf("recover commit statuses: %w", err)
			}
			newest[d.Target] = map[string]int64{}
			for _, r := range recent {
				if r.ID > newest[d.Target][r.SHA] {
					newest[d.Target][r.SHA] = r.ID
				}
			}
		}
		if newest[d.Target][d.SHA] > d.ID {
			continue
		}
		q.fillURL(d)
		q.log.Info("posting a commit status owed since the last stop", "target", d.Target,
			"deploy_id", d.ID, "sha", short(d.SHA), "state", d.State)
		q.notify(d)
	}
	return nil
}

// statusPosted records that deploy id's final status reached the forge.
func (q *Queue) statusPosted(id int64) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := q.store.MarkStatusPosted(ctx, id); err != nil {
		q.log.Warn("commit status delivery not recorded", "deploy_id", id, "err", err)
	}
}

// resetCache drops the build cache of a target whose build was cut short.
func (q *Queue) resetCache(target string) {
	tq, ok := q.targets[target]
	if !ok {
		return
	}
	if err := q.builder.ResetCache(SpecFor(tq.target, q.cfg)); err != nil {
		q.log.Warn("build cache not reset", "target", target, "err", err)
	}
}

func (q *Queue) fillURL(d *Deploy) {
	d.URL = q.cfg.PublicURL + "/deploys/" + strconv.FormatInt(d.ID, 10)
}
