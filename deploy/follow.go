package deploy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
)

// Following a deploy: WriteLog copies a deploy's log and, with follow,
// blocks until the deploy itself announces something (a transition, a
// line added to its log, its end) rather than looking at the store or the
// log file on a timer. A follower costs nothing while its deploy is quiet,
// and reads the store as it starts only (twice if the deploy ends just
// then).

// StateWriter is a log writer that also wants the deploy's state. WriteLog
// calls WriteState with the deploy's state before it writes any of the log,
// and, when following, with its new state each time it changed, before the
// log written since; the last call has the state the deploy ended in.
// States that follow each other quickly may be told as the last of them.
type StateWriter interface {
	WriteState(s State) error
}

// WriteLog writes deploy id's log as it is now to w. With follow, it then
// writes each piece added until the deploy ends (or ctx ends), calling w's
// Flush() error, if it has one, after each piece. A queued deploy has no log
// yet: a follower waits for it to start. If w is a StateWriter it is also
// told of the deploy's state and its changes.
func (q *Queue) WriteLog(ctx context.Context, id int64, w io.Writer, follow bool) error {
	stored, err := q.store.Get(ctx, id)
	if err != nil {
		return fmt.Errorf("log of deploy %d: %w", id, err)
	}
	flush := func() error {
		if f, ok := w.(interface{ Flush() error }); ok {
			return f.Flush()
		}
		return nil
	}
	sw, _ := w.(StateWriter)
	var f *os.File
	defer func() {
		if f != nil {
			f.Close()
		}
	}()
	// copyNew writes what was added to the log file since the last call.
	copyNew := func() error {
		if f == nil {
			var err error
			f, err = os.Open(logPath(q.cfg.StateDir, id))
			if errors.Is(err, os.ErrNotExist) {
				return nil
			}
			if err != nil {
				return fmt.Errorf("log of deploy %d: %w", id, err)
			}
		}
		n, err := io.Copy(w, f)
		if err != nil {
			return fmt.Errorf("log of deploy %d: %w", id, err)
		}
		if n > 0 {
			return flush()
		}
		return nil
	}

	// The deploy as the queue holds it while it waits or runs: its state
	// is read from here, under q.mu, and is still right after the queue
	// let go of it (nothing changes a deploy but under q.mu).
	q.mu.Lock()
	d := q.activeLocked(id)
	q.mu.Unlock()
	if d == nil && !stored.State.Terminal() {
		// It ended between the look in the store and the one in the
		// queue (or the queue stopped): the store has how it ended.
		if stored, err = q.store.Get(ctx, id); err != nil {
			return fmt.Errorf("log of deploy %d: %w", id, err)
		}
	}
	state, told := stored.State, State("")
	for {
		var woken, grew <-chan struct{}
		q.mu.Lock()
		active := d != nil && q.activeLocked(id) == d
		if d != nil {
			state = d.State
		}
		if active {
			woken = q.watchLocked(id)
			if lf := q.live[id]; lf != nil {
				grew = lf.grew()
			}
		}
		q.mu.Unlock()
		if sw != nil && state != told {
			if err := sw.WriteState(state); err != nil {
				return fmt.Errorf("log of deploy %d: %w", id, err)
			}
			told = state
		}
		if err := copyNew(); err != nil {
			return err
		}
		if !follow || !active {
			// A deploy that is not active any more has closed its log,
			// so what was just copied is all of it.
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-woken:
		case <-grew:
		}
	}
}

// activeLocked returns deploy id while it waits or runs, else nil; the
// caller holds q.mu.
func (q *Queue) activeLocked(id int64) *Deploy {
	for _, tq := range q.targets {
		if tq.pending != nil && tq.pending.ID == id {
			return tq.pending
		}
		if tq.running != nil && tq.running.deploy.ID == id {
			return tq.running.deploy
		}
	}
	return nil
}

// watchLocked returns a channel that is closed when deploy id next changes
// state, opens its log, or is done with; the caller holds q.mu. Only a
// follower of an active deploy asks, and wakeLocked drops the channel, so
// the queue keeps at most one per active deploy.
func (q *Queue) watchLocked(id int64) <-chan struct{} {
	ch, ok := q.watch[id]
	if !ok {
		ch = make(chan struct{})
		q.watch[id] = ch
	}
	return ch
}

// wakeLocked wakes the followers of deploy id; the caller holds q.mu (or is
// Start, before anyone follows).
func (q *Queue) wakeLocked(id int64) {
	if ch, ok := q.watch[id]; ok {
		close(ch)
		delete(q.watch, id)
	}
}
