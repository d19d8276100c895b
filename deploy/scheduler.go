package deploy

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/flakeship/flakeship/config"
)

// scheduler is what waits and what runs: per target at most one deploy
// running and one waiting, and up to MaxParallel targets running at once.
// Its lock guards the in-memory deploys it holds (the waiting and running
// ones), and is never held across a store write: a deploy's owner (the
// intake's committer for a new or waiting deploy, the runner for a running
// one, recovery at start) computes a change under the lock, stores it without
// the lock, and applies it under the lock again (Queue.move).
type scheduler struct {
	mu          sync.Mutex
	closed      bool
	slots       map[string]*slot
	active      int // deploys running now
	maxParallel int
	runs        sync.WaitGroup
	// runCtx is the parent of every deploy's fetch and build; cancelRuns
	// cancels them when the grace period of Shutdown runs out.
	runCtx     context.Context
	cancelRuns context.CancelFunc
}

// slot is the scheduling state of one target.
type slot struct {
	target  config.Target
	running *run
	pending *Deploy
	// held is not nil while a group commit that may supersede pending is
	// being stored: pending neither starts nor is cancelled until then, and
	// held is closed when the commit is applied.
	held chan struct{}
}

// run is a deploy being worked on, with the means to cancel it.
type run struct {
	deploy *Deploy
	cancel context.CancelCauseFunc
	// moving is the state the deploy is being moved to while that move is
	// stored, so Cancel refuses a deploy that is entering activation.
	moving State
}

func newScheduler(targets []config.Target, maxParallel int) *scheduler {
	s := &scheduler{slots: make(map[string]*slot, len(targets)), maxParallel: maxParallel}
	for _, t := range targets {
		s.slots[t.Name] = &slot{target: t}
	}
	s.runCtx, s.cancelRuns = context.WithCancel(context.Background())
	return s
}

// hold marks the targets whose waiting deploy a group commit of names may
// supersede, and returns those deploys by target. It returns false once the
// scheduler is closed.
func (s *scheduler) hold(names []string) (map[string]*Deploy, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, false
	}
	held := map[string]*Deploy{}
	for _, name := range names {
		sl := s.slots[name]
		if sl.pending != nil && sl.held == nil {
			held[name] = sl.pending
			sl.held = make(chan struct{})
		}
	}
	return held, true
}

// releaseLocked ends the holds of hold (a second release does nothing).
func (s *scheduler) releaseLocked(held map[string]*Deploy) {
	for name := range held {
		if sl := s.slots[name]; sl.held != nil {
			close(sl.held)
			sl.held = nil
		}
	}
}

// release is releaseLocked taking the lock.
func (s *scheduler) release(held map[string]*Deploy) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.releaseLocked(held)
}

// waitingLocked is the number of targets with a deploy waiting.
func (s *scheduler) waitingLocked() int {
	n := 0
	for _, sl := range s.slots {
		if sl.pending != nil {
			n++
		}
	}
	return n
}

// findLocked returns the waiting or running deploy id, or nil.
func (s *scheduler) findLocked(id int64) *Deploy {
	for _, sl := range s.slots {
		if sl.pending != nil && sl.pending.ID == id {
			return sl.pending
		}
		if sl.running != nil && sl.running.deploy.ID == id {
			return sl.running.deploy
		}
	}
	return nil
}

// state returns d's state and whether d is still waiting or running.
func (s *scheduler) state(d *Deploy) (State, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return d.State, s.findLocked(d.ID) == d
}

// find returns the waiting or running deploy id, or nil.
func (s *scheduler) find(id int64) *Deploy {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.findLocked(id)
}

// edit changes fields of a deploy the caller owns, under the lock that
// readers of it take.
func (s *scheduler) edit(change func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	change()
}

// dispatch starts the waiting deploys of idle targets, oldest first, while
// fewer than MaxParallel run; execute is run for each in a goroutine of its
// own, and done after it, before the next dispatch.
func (q *Queue) dispatch() {
	q.sched.mu.Lock()
	defer q.sched.mu.Unlock()
	q.dispatchLocked()
}

func (q *Queue) dispatchLocked() {
	s := q.sched
	if s.closed {
		return
	}
	for s.active < s.maxParallel {
		var next *slot
		for _, sl := range s.slots {
			if sl.running == nil && sl.pending != nil && sl.held == nil &&
				(next == nil || sl.pending.ID < next.pending.ID) {
				next = sl
			}
		}
		if next == nil {
			return
		}
		d := next.pending
		next.pending = nil
		q.observeWaitingLocked()
		ctx, cancel := context.WithCancelCause(s.runCtx)
		next.running = &run{deploy: d, cancel: cancel}
		s.active++
		s.runs.Add(1)
		go func(sl *slot) {
			defer s.runs.Done()
			q.execute(ctx, sl.target, d)
			cancel(nil)
			s.mu.Lock()
			sl.running = nil
			s.active--
			q.dispatchLocked()
			s.mu.Unlock()
			// Log followers wait for the deploy to be done with, not only
			// ended: its log is closed and whole now.
			q.streams.wake(d.ID)
		}(next)
	}
}

// observeWaitingLocked tells the observer how many targets have a deploy
// waiting.
func (q *Queue) observeWaitingLocked() {
	if q.observer != nil {
		q.observer.Waiting(q.sched.waitingLocked())
	}
}

// Cancel cancels a queued deploy, or a running one that is still fetching or
// building (activation is never cut short: it would leave the unit half
// switched). It returns ErrNotFound for an unknown deploy and a
// *TransitionError for one that cannot be cancelled any more.
func (q *Queue) Cancel(ctx context.Context, id int64) error {
	for {
		d, wait, err := q.takeForCancel(id)
		switch {
		case errors.Is(err, errCancelRequested):
			return nil
		case err != nil:
			return err
		case wait != nil:
			// A group commit may be superseding it: ask again once that
			// commit is applied.
			select {
			case <-wait:
				continue
			case <-ctx.Done():
				return fmt.Errorf("cancel deploy %d: %w", id, ctx.Err())
			}
		case d != nil:
			// d is no longer waiting: this call owns it now.
			return q.move(ctx, d, Cancelled, "cancelled by request", true)
		}
		stored, err := q.store.Get(ctx, id)
		if err != nil {
			return fmt.Errorf("cancel deploy %d: %w", id, err)
		}
		return &TransitionError{From: stored.State, To: Cancelled}
	}
}

// takeForCancel finds deploy id: a waiting one is taken out of its slot and
// returned; a running one is cancelled (nil, nil, nil) or refused; a held
// one returns the channel to wait on. Nothing found: all nil.
func (q *Queue) takeForCancel(id int64) (*Deploy, <-chan struct{}, error) {
	s := q.sched
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, sl := range s.slots {
		if p := sl.pending; p != nil && p.ID == id {
			if sl.held != nil {
				return nil, sl.held, nil
			}
			sl.pending = nil
			q.observeWaitingLocked()
			return p, nil, nil
		}
		if r := sl.running; r != nil && r.deploy.ID == id {
			state := r.deploy.State
			if r.moving != "" {
				state = r.moving
			}
			if !state.CanMove(Cancelled) {
				return nil, nil, &TransitionError{From: state, To: Cancelled}
			}
			r.cancel(errCancelled)
			return nil, nil, errCancelRequested
		}
	}
	return nil, nil, nil
}

// errCancelRequested is takeForCancel's answer for a running deploy whose
// fetch or build was told to stop.
var errCancelRequested = errors.New("cancel requested")
