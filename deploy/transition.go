package deploy

import (
	"context"
	"fmt"
	"time"

	"github.com/flakeship/flakeship/forge"
)

// changed returns a copy of d moved to state to, with the one-line error
// msg when msg is not empty. It is the one place deploy states change: every
// change is made here, stored, and then applied and announced (move, or a
// group commit for the deploys it supersedes).
func changed(d *Deploy, to State, msg string, now time.Time) (*Deploy, error) {
	next := *d
	next.Steps = append([]Step(nil), d.Steps...)
	if msg != "" {
		next.Error = msg
	}
	if err := next.Advance(to, now); err != nil {
		return nil, fmt.Errorf("deploy %d: %w", d.ID, err)
	}
	return &next, nil
}

// move moves d to state to, stores it, applies it to d, and announces it
// (posting its commit status if post). The caller owns d: no one else
// changes it meanwhile (the runner owns a running deploy; a waiting one
// taken out of its slot is owned by whoever took it). The scheduler's lock
// is held only to read and to apply, never across the store write.
func (q *Queue) move(ctx context.Context, d *Deploy, to State, msg string, post bool) error {
	s := q.sched
	s.mu.Lock()
	next, err := changed(d, to, msg, q.now())
	r := s.runOf(d)
	if err == nil && r != nil {
		r.moving = to
	}
	s.mu.Unlock()
	if err != nil {
		return err
	}
	err = q.store.Update(ctx, next)
	s.mu.Lock()
	if r != nil {
		r.moving = ""
	}
	from := d.State
	if err == nil {
		*d = *next
	}
	s.mu.Unlock()
	if err != nil {
		return fmt.Errorf("record deploy %d %s: %w", d.ID, to, err)
	}
	q.announce(d, from, post)
	return nil
}

// runOf returns the run of d if d is running. The caller holds s.mu.
func (s *scheduler) runOf(d *Deploy) *run {
	if sl, ok := s.slots[d.Target]; ok && sl.running != nil && sl.running.deploy == d {
		return sl.running
	}
	return nil
}

// announce tells everyone of d's stored move from state from: the forge
// (if post), log followers, the log and the observer.
func (q *Queue) announce(d *Deploy, from State, post bool) {
	if post {
		q.statuses.notify(d)
	}
	q.streams.wake(d.ID)
	q.log.Info("deploy state changed", "target", d.Target, "deploy_id", d.ID, "sha", forge.ShortSHA(d.SHA),
		"from", from, "state", d.State)
	if q.observer != nil {
		q.observer.Transition(d, from)
	}
}
