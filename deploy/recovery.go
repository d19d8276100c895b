package deploy

import (
	"context"
	"fmt"
	"sort"

	"github.com/flakeship/flakeship/forge"
)

// Start recovers what a previous run left: queued deploys are queued again
// (the newest per target; older ones end superseded), and a deploy that was
// running is marked interrupted and retried once with a new deploy of the same
// commit. Then it starts work: the status senders, the intake, the waiting
// deploys and the pruning.
func (q *Queue) Start(ctx context.Context) error {
	q.statuses.start()
	queued, err := q.recover(ctx)
	if err != nil {
		return err
	}
	if err := q.statuses.resend(ctx, q.fillURL); err != nil {
		return err
	}
	if err := q.requeue(ctx, queued); err != nil {
		return err
	}
	q.intake.start()
	q.dispatch()
	q.pruner.start(q)
	return nil
}

// recover ends what cannot go on (deploys of removed targets, deploys a
// stop interrupted) and returns the deploys to queue again by target,
// oldest first, retries of interrupted deploys among them. Nothing runs
// yet: recovery owns every deploy it reads.
func (q *Queue) recover(ctx context.Context) (map[string][]*Deploy, error) {
	unfinished, err := q.store.Unfinished(ctx)
	if err != nil {
		return nil, fmt.Errorf("recover deploys: %w", err)
	}
	queued := map[string][]*Deploy{}
	var interrupted []*Deploy
	for _, d := range unfinished {
		switch _, ok := q.target(d.Target); {
		case !ok:
			// The target was removed from the configuration.
			if err := q.move(ctx, d, Cancelled, "target "+d.Target+" is no longer configured", true); err != nil {
				return nil, err
			}
		case d.State == Queued:
			queued[d.Target] = append(queued[d.Target], d)
		default:
			interrupted = append(interrupted, d)
		}
	}
	for _, d := range interrupted {
		retry, err := q.interrupted(ctx, d, len(queued[d.Target]) == 0)
		if err != nil {
			return nil, err
		}
		if retry != nil {
			queued[d.Target] = append(queued[d.Target], retry)
		}
	}
	return queued, nil
}

// interrupted ends d, which a stop cut short, and stores its retry (a new
// deploy of the same commit), returned, when it may have one: it is not a
// retry itself and nothing newer waits for its target (nothingQueued).
func (q *Queue) interrupted(ctx context.Context, d *Deploy, nothingQueued bool) (*Deploy, error) {
	was := d.State
	q.resetCache(d.Target)
	msg := fmt.Sprintf("flakeship stopped while the deploy was %s", was)
	retry := d.Trigger != TriggerRetry && nothingQueued
	if !retry && d.Trigger == TriggerRetry {
		msg += " (after a retry: not retried again)"
	}
	if err := q.move(ctx, d, Interrupted, msg, !retry); err != nil {
		return nil, err
	}
	q.log.Warn("deploy interrupted by a stop", "target", d.Target, "deploy_id", d.ID,
		"sha", forge.ShortSHA(d.SHA), "state", was, "retry", retry)
	if !retry {
		return nil, nil
	}
	// Its retry reports on the same commit; this one owes no status.
	if err := q.store.MarkStatusPosted(ctx, d.ID); err != nil {
		return nil, fmt.Errorf("recover deploys: %w", err)
	}
	nd := &Deploy{
		Target: d.Target, Forge: d.Forge, Repo: d.Repo, Branch: d.Branch, SHA: d.SHA,
		Trigger: TriggerRetry, State: Queued, CreatedAt: q.now().UTC(),
		Author: d.Author, Message: d.Message, Pusher: d.Pusher, RetryOf: &d.ID,
	}
	if err := q.store.Create(ctx, nd); err != nil {
		return nil, fmt.Errorf("store retry of deploy %d: %w", d.ID, err)
	}
	return nd, nil
}

// requeue makes the newest recovered deploy of each target wait again,
// and ends each older one superseded by the next (targets in name order,
// deploys in id order).
func (q *Queue) requeue(ctx context.Context, queued map[string][]*Deploy) error {
	names := make([]string, 0, len(queued))
	for name := range queued {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		ds := queued[name]
		sort.SliceStable(ds, func(i, j int) bool { return ds[i].ID < ds[j].ID })
		for i, d := range ds {
			q.fillURL(d)
			q.statuses.notify(d)
			if i == len(ds)-1 {
				break
			}
			_, next, err := q.superseded(d, ds[i+1])
			if err != nil {
				return err
			}
			if err := q.store.Update(ctx, next); err != nil {
				return fmt.Errorf("record deploy %d %s: %w", next.ID, Superseded, err)
			}
			from := d.State
			*d = *next
			q.announce(d, from, true)
		}
		newest := ds[len(ds)-1]
		q.sched.mu.Lock()
		q.sched.slots[name].pending = newest
		q.observeWaitingLocked()
		q.sched.mu.Unlock()
	}
	return nil
}
