package deploy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/flakeship/flakeship/forge"
	"github.com/flakeship/flakeship/notifier"
)

// The status retry policy: waits double from statusRetryInitial up to
// statusRetryMax (about a minute of tries while a forge is briefly down,
// then one try every 15 to 30 s), and a status is tried until it has waited
// statusRetryFor.
const (
	statusRetryInitial = 500 * time.Millisecond
	statusRetryMax     = 30 * time.Second
	statusRetryFor     = time.Hour
)

// statusPolicy is the one retry policy of commit status posts. The notifier
// makes one attempt and says what its error means (notifier.Temporary); the
// status sender asks next after every failed attempt. Beside it, the only
// second chance is Queue.Start posting again the final statuses a stop or a
// long outage kept from the forge.
type statusPolicy struct {
	initial time.Duration // backoff wait after the first failed attempt
	max     time.Duration // longest backoff wait; a forge's ask may be longer
	maxAge  time.Duration // a status refused for now after waiting this long is given up
}

// next decides what follows failed attempt number tries (from 1) of a status
// that has waited age since it was sent:
//
//   - a final refusal (a wrong token, an unknown repository or commit, an
//     invalid status; see notifier.Temporary) is given up at once: again is
//     false;
//   - so is a status that has waited maxAge: the forge has been down or
//     limited for that long;
//   - otherwise again is true, after wait: the backoff (doubling from
//     initial to max, with jitter between half and all of it, so that many
//     retries do not arrive together), or what the forge asked for
//     (Retry-After, a rate limit's reset: up to an hour) if that is longer.
//     forgeAsked says the forge named a wait, which nothing cuts short:
//     asking sooner is refused again, and GitHub may ban an integration
//     that keeps asking while limited.
//
// The attempt after the last wait is made even when it falls past maxAge,
// so a forge that asks for an hour is waited out once.
func (p statusPolicy) next(err error, tries int, age time.Duration) (wait time.Duration, forgeAsked, again bool) {
	temporary, ask := notifier.Temporary(err)
	if !temporary || age >= p.maxAge {
		return 0, false, false
	}
	d := p.initial
	for i := 1; i < tries && d < p.max; i++ {
		d *= 2
	}
	d = min(d, p.max)
	d = d/2 + rand.N(d/2+1)
	return max(d, ask), ask > 0, true
}

// statusSender posts one target's commit statuses in the background, in
// order, so a slow or unreachable forge never holds up a deploy. A status
// waiting to be posted is replaced by a newer one of the same commit, context
// and state (two "pending" descriptions: only the newer is worth posting), so
// the forge still sees pending before the final state. A failed post is
// tried again as statusPolicy says; while it waits, so do the statuses sent
// after it (they go to the same forge with the same token, and must not
// overtake it).
type statusSender struct {
	n      notifier.Notifier
	posted func(deployID int64) // called when a deploy's final status is settled on the forge
	log    *slog.Logger
	now    func() time.Time
	after  func(time.Duration) <-chan time.Time // time.After; tests step it
	policy statusPolicy

	mu      sync.Mutex
	waiting map[string]queuedStatus
	order   []string
	wake    chan struct{} // a status was sent
	hurry   chan struct{} // flush: cut the backoff short
	idle    chan struct{} // closed and replaced whenever the queue drains
}

type queuedStatus struct {
	status   forge.Status
	since    time.Time
	deployID int64
	final    bool // the deploy's last status
	tries    int  // failed attempts so far
}

func newStatusSender(n notifier.Notifier, log *slog.Logger, now func() time.Time, posted func(int64)) *statusSender {
	return &statusSender{
		n:       n,
		posted:  posted,
		log:     log,
		now:     now,
		after:   time.After,
		policy:  statusPolicy{initial: statusRetryInitial, max: statusRetryMax, maxAge: statusRetryFor},
		waiting: map[string]queuedStatus{},
		wake:    make(chan struct{}, 1),
		hurry:   make(chan struct{}, 1),
		idle:    make(chan struct{}),
	}
}

func statusKey(s forge.Status) string {
	return s.SHA + "\x00" + s.Context + "\x00" + string(s.State)
}

// send queues s, replacing a waiting status of the same commit, context and
// state.
func (ss *statusSender) send(s forge.Status, deployID int64, final bool) {
	ss.mu.Lock()
	k := statusKey(s)
	if _, ok := ss.waiting[k]; ok {
		// The replaced status moves to the end: the newest status of a
		// commit must be the last one posted, or a "pending" sent after
		// an "error" of the same commit could be left standing.
		ss.order = slices.DeleteFunc(ss.order, func(o string) bool { return o == k })
	}
	ss.order = append(ss.order, k)
	ss.waiting[k] = queuedStatus{status: s, since: ss.now(), deployID: deployID, final: final}
	ss.mu.Unlock()
	nudge(ss.wake)
}

// nudge wakes whoever waits on c, unless a wake-up is already pending.
func nudge(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// pop takes the oldest waiting status.
func (ss *statusSender) pop() (queuedStatus, bool) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	for len(ss.order) > 0 {
		k := ss.order[0]
		ss.order = ss.order[1:]
		if q, ok := ss.waiting[k]; ok {
			delete(ss.waiting, k)
			return q, true
		}
	}
	close(ss.idle)
	ss.idle = make(chan struct{})
	return queuedStatus{}, false
}

// requeue puts back a status to be tried again, unless a newer one of the
// same key arrived meanwhile. It goes to the front: statuses of one commit
// must reach the forge in the order they were sent.
func (ss *statusSender) requeue(q queuedStatus) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	k := statusKey(q.status)
	if _, newer := ss.waiting[k]; newer {
		return
	}
	ss.waiting[k] = q
	ss.order = append([]string{k}, ss.order...)
}

// state returns a channel closed the next time the queue is found empty, and
// how many statuses wait.
func (ss *statusSender) state() (<-chan struct{}, int) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.idle, len(ss.waiting)
}

// run posts statuses until ctx ends.
func (ss *statusSender) run(ctx context.Context) {
	var retry <-chan time.Time // set while a failed post waits to be tried again
	forgeAsked := false        // that wait is the forge's, not to be cut short
	for {
		if retry == nil {
			wait, asked, failed := ss.postWaiting(ctx)
			if ctx.Err() != nil {
				return
			}
			if failed {
				retry, forgeAsked = ss.after(wait), asked
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-ss.wake: // posted now, unless a wait is on: then with it
		case <-ss.hurry:
			if !forgeAsked {
				retry = nil
			}
		case <-retry:
			retry = nil
		}
	}
}

// postWaiting posts what waits, oldest first, until nothing waits or a post
// fails for now; then it says how long to wait before trying again, and
// whether the forge asked for that wait.
func (ss *statusSender) postWaiting(ctx context.Context) (wait time.Duration, forgeAsked, failed bool) {
	for {
		q, ok := ss.pop()
		if !ok {
			return 0, false, false
		}
		err := ss.n.SetStatus(ctx, q.status)
		if err == nil {
			ss.settled(q)
			continue
		}
		if ctx.Err() != nil {
			ss.requeue(q)
			return 0, false, true
		}
		q.tries++
		age := ss.now().Sub(q.since)
		wait, forgeAsked, again := ss.policy.next(err, q.tries, age)
		log := ss.log.With("repo", q.status.Repo, "sha", forge.ShortSHA(q.status.SHA), "state", q.status.State,
			"attempt", q.tries, "err", err)
		if again {
			log.Warn("commit status not delivered, will retry", "retry_in", wait)
			ss.requeue(q)
			return wait, forgeAsked, true
		}
		if temporary, _ := notifier.Temporary(err); temporary {
			log.Error("commit status not posted", "gave_up", "still refused after "+age.Round(time.Second).String())
			continue
		}
		log.Error("commit status not posted", "gave_up", "refused for good")
		if errors.Is(err, notifier.ErrUnknownCommit) {
			// No post, now or after a restart, makes the forge learn of a
			// commit it does not have: the status counts as settled, so
			// that Start does not post it again. Other final refusals (a
			// wrong token, a repository out of reach) are left for Start:
			// a restart with a corrected setting may post them.
			ss.settled(q)
		}
	}
}

// settled reports a final status the forge has settled to the queue, which
// records it so that Start does not post it again.
func (ss *statusSender) settled(q queuedStatus) {
	if q.final && ss.posted != nil {
		ss.posted(q.deployID)
	}
}

// flush gives every waiting status a last chance and waits until none is
// left or ctx ends: a backoff wait is cut short, but a wait the forge asked
// for is kept (posting sooner would be refused again). A status still
// refused keeps being tried as the policy says until ctx ends; the final
// ones the forge never took are posted again by the next Start.
func (ss *statusSender) flush(ctx context.Context) error {
	idle, _ := ss.state()
	nudge(ss.hurry)
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		_, left := ss.state()
		return fmt.Errorf("flush commit statuses: %d not posted: %w", left, ctx.Err())
	}
}
