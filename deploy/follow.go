package deploy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
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

	// The deploy as the scheduler holds it while it waits or runs: its
	// state is read from here, under the scheduler's lock, and is still
	// right after the scheduler let go of it (a change is applied to it,
	// under that lock, only once stored).
	d := q.sched.find(id)
	if d == nil && !stored.State.Terminal() {
		// It ended (or started) between the two looks: the store has
		// its latest state.
		if stored, err = q.store.Get(ctx, id); err != nil {
			return fmt.Errorf("log of deploy %d: %w", id, err)
		}
	}
	state, told := stored.State, State("")
	for {
		var woken, grew <-chan struct{}
		active := false
		if d != nil {
			// Watch first, then look: a change after the look wakes us.
			woken, grew = q.streams.watch(id)
			state, active = q.sched.state(d)
			if !active {
				q.streams.wake(id)
			}
		}
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

// streams is what log followers wait on: per deploy a channel closed at its
// next change, and the open logs of running deploys. It has a lock of its
// own, taken after the scheduler's if both are.
type streams struct {
	mu       sync.Mutex
	watchers map[int64]chan struct{}
	live     map[int64]*logFile
}

func newStreams() *streams {
	return &streams{watchers: map[int64]chan struct{}{}, live: map[int64]*logFile{}}
}

// watch returns a channel closed at deploy id's next change, and one closed
// when its log grows (nil while it has no open log).
func (s *streams) watch(id int64) (woken, grew <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ch, ok := s.watchers[id]
	if !ok {
		ch = make(chan struct{})
		s.watchers[id] = ch
	}
	if lf := s.live[id]; lf != nil {
		grew = lf.grew()
	}
	return ch, grew
}

// wake tells deploy id's followers that it changed.
func (s *streams) wake(id int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ch, ok := s.watchers[id]; ok {
		close(ch)
		delete(s.watchers, id)
	}
}

// open makes lf the open log of deploy id (nil: it has none any more) and
// wakes its followers, who now wait for its log too.
func (s *streams) open(id int64, lf *logFile) {
	s.mu.Lock()
	if lf == nil {
		delete(s.live, id)
	} else {
		s.live[id] = lf
	}
	s.mu.Unlock()
	s.wake(id)
}
