package deploy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/flakeship/flakeship/forge"
	"github.com/flakeship/flakeship/notifier"
)

// statusSender posts one target's commit statuses in the background, in
// order, so a slow or unreachable forge never holds up a deploy. A status
// waiting to be posted is replaced by a newer one of the same commit, context
// and state (two "pending" descriptions: only the newer is worth posting), so
// the forge still sees pending before the final state. A status the notifier could not deliver (it retries on its
// own) is tried again later, until a newer one replaces it or it is older than
// maxAge.
type statusSender struct {
	n      notifier.Notifier
	posted func(deployID int64) // called when a deploy's final status was delivered
	log    *slog.Logger
	now    func() time.Time
	maxAge time.Duration
	retry  time.Duration

	mu      sync.Mutex
	waiting map[string]queuedStatus
	order   []string
	wake    chan struct{}
	idle    chan struct{} // closed and replaced whenever the queue drains
}

type queuedStatus struct {
	status   forge.Status
	since    time.Time
	deployID int64
	final    bool // the deploy's last status
}

func newStatusSender(n notifier.Notifier, log *slog.Logger, now func() time.Time, posted func(int64)) *statusSender {
	return &statusSender{
		n:       n,
		posted:  posted,
		log:     log,
		now:     now,
		maxAge:  time.Hour,
		retry:   5 * time.Second,
		waiting: map[string]queuedStatus{},
		wake:    make(chan struct{}, 1),
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
	select {
	case ss.wake <- struct{}{}:
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

// requeue puts back a status that could not be delivered, unless a newer one
// of the same key arrived meanwhile. It goes to the front: statuses of one
// commit must reach the forge in the order they were sent.
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

// idleChan returns a channel closed the next time the queue is found empty.
func (ss *statusSender) idleChan() <-chan struct{} {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.idle
}

// run posts statuses until ctx ends.
func (ss *statusSender) run(ctx context.Context) {
	for {
		failed := false
		for {
			q, ok := ss.pop()
			if !ok {
				break
			}
			if err := ss.n.SetStatus(ctx, q.status); err != nil {
				if ctx.Err() != nil {
					ss.requeue(q)
					return
				}
				if errors.Is(err, notifier.ErrUnknownCommit) {
					// No retry makes the forge learn of a commit it does
					// not have: the status is given up at once, and counted
					// as done so that no restart posts it again.
					ss.log.Error("commit status dropped: the forge does not have the commit", "repo", q.status.Repo,
						"sha", short(q.status.SHA), "state", q.status.State, "err", err)
					if q.final && ss.posted != nil {
						ss.posted(q.deployID)
					}
					continue
				}
				if ss.now().Sub(q.since) > ss.maxAge {
					ss.log.Error("commit status dropped after retries", "repo", q.status.Repo,
						"sha", short(q.status.SHA), "state", q.status.State, "err", err)
					continue
				}
				ss.log.Warn("commit status not delivered, will retry", "repo", q.status.Repo,
					"sha", short(q.status.SHA), "state", q.status.State, "err", err)
				ss.requeue(q)
				failed = true
				break
			}
			if q.final && ss.posted != nil {
				ss.posted(q.deployID)
			}
		}
		var retry <-chan time.Time
		if failed {
			retry = time.After(ss.retry)
		}
		select {
		case <-ctx.Done():
			return
		case <-ss.wake:
		case <-retry:
		}
	}
}

// flush waits until every waiting status was tried once more, or ctx ends.
func (ss *statusSender) flush(ctx context.Context) error {
	idle := ss.idleChan()
	select {
	case ss.wake <- struct{}{}:
	default:
	}
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("flush commit statuses: %w", ctx.Err())
	}
}

// short is the 7-character display form of a commit id.
func short(sha string) string {
	if len(sha) > 7 {
		return sha[:7]
	}
	return sha
}
