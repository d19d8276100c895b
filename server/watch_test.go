package server

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flakeship/flakeship/deploy"
	"github.com/flakeship/flakeship/internal/testenv"
)

// Waiting on what a deploy announces: the tests follow a deploy through
// deploy.Queue.WriteLog, which wakes on the deploy's own transitions, log
// lines and end, and wait for the line, or the end, they need. No test hopes to
// catch a state within a time window, or needs a build to still be running
// when it looks: a build that must run for a while waits at a
// testenv.Gate the test holds. The deadlines here are a safety net against
// a hang, never a speed goal.

// deployWatch is what a follower of one deploy has been told so far.
type deployWatch struct {
	id      int64
	mu      sync.Mutex
	changed chan struct{} // closed, and replaced, at each announcement
	states  []deploy.State
	log     strings.Builder
	ended   bool  // WriteLog returned: the deploy ended (or the test did)
	err     error // what WriteLog returned
}

// watchDeploy follows deploy id of q until it ends or the test does.
func watchDeploy(t *testing.T, q *deploy.Queue, id int64) *deployWatch {
	t.Helper()
	w := &deployWatch{id: id, changed: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		err := q.WriteLog(ctx, id, w, true)
		w.mu.Lock()
		defer w.mu.Unlock()
		w.ended, w.err = true, err
		w.announceLocked()
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return w
}

func (w *deployWatch) announceLocked() {
	close(w.changed)
	w.changed = make(chan struct{})
}

// Write takes a piece of the deploy's log.
func (w *deployWatch) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.log.Write(p)
	w.announceLocked()
	return len(p), nil
}

// WriteState takes the deploy's state (deploy.StateWriter).
func (w *deployWatch) WriteState(s deploy.State) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.states = append(w.states, s)
	w.announceLocked()
	return nil
}

// until waits until cond, called with w's lock held, holds after an
// announcement, failing t with what when the follow ends first or nothing
// comes within pageDeadline.
func (w *deployWatch) until(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(pageDeadline)
	defer deadline.Stop()
	for {
		w.mu.Lock()
		ok, ended, changed := cond(), w.ended, w.changed
		w.mu.Unlock()
		if ok {
			return
		}
		if ended {
			t.Fatalf("deploy %d: %s; its follow ended first (%v) with states %v and log:\n%s", w.id, what, w.err, w.states, w.Log())
		}
		select {
		case <-changed:
		case <-deadline.C:
			t.Fatalf("deploy %d: %s; nothing came within %s; states %v, log:\n%s", w.id, what, pageDeadline, w.states, w.Log())
		}
	}
}

// untilLine waits until the deploy's log has a line containing s.
func (w *deployWatch) untilLine(t *testing.T, s string) {
	t.Helper()
	w.until(t, fmt.Sprintf("its log never had %q", s), func() bool { return strings.Contains(w.log.String(), s) })
}

// Log returns the log told so far.
func (w *deployWatch) Log() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.log.String()
}

// waitDeployEnd waits, by following it, until deploy id of q has ended,
// and returns it as it ended.
func waitDeployEnd(t *testing.T, q *deploy.Queue, id int64) *deploy.Deploy {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), pageDeadline)
	defer cancel()
	// WriteLog returns when the deploy ends, or when ctx does.
	if err := q.WriteLog(ctx, id, io.Discard, true); err != nil {
		t.Fatalf("following deploy %d: %v", id, err)
	}
	d, err := q.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if !d.State.Terminal() {
		t.Fatalf("deploy %d still %s after %s", id, d.State, pageDeadline)
	}
	return d
}

// logSink is a rig's slog output: a testenv.Buffer that announces each
// write, so that a test can wait for a log line.
type logSink struct {
	testenv.Buffer
	mu      sync.Mutex
	changed chan struct{} // closed, and replaced, at each write
}

func newLogSink() *logSink { return &logSink{changed: make(chan struct{})} }

// Write implements io.Writer.
func (s *logSink) Write(p []byte) (int, error) {
	n, err := s.Buffer.Write(p)
	s.mu.Lock()
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
	return n, err
}

// waitFor waits until the log has want, failing t if it does not come
// within pageDeadline.
func (s *logSink) waitFor(t *testing.T, want string) {
	t.Helper()
	deadline := time.NewTimer(pageDeadline)
	defer deadline.Stop()
	for {
		s.mu.Lock()
		changed := s.changed
		s.mu.Unlock()
		if strings.Contains(s.String(), want) {
			return
		}
		select {
		case <-changed:
		case <-deadline.C:
			t.Fatalf("the log never had %q within %s:\n%s", want, pageDeadline, s.String())
		}
	}
}

// stateDir returns a new state directory for a rig, removed when t ends.
// It is on tmpfs (/dev/shm) where there is one: a rig's store commits each
// delivery and each transition, and on a disk each commit waits for its
// fsync, which makes a test that stores a thousand deploys wait seconds for
// nothing it checks. Durability is the store's own tests' business, and
// the root end-to-end tests run flakeship on a disk.
func stateDir(t *testing.T) string {
	t.Helper()
	if fi, err := os.Stat("/dev/shm"); err != nil || !fi.IsDir() {
		return t.TempDir()
	}
	dir, err := os.MkdirTemp("/dev/shm", "flakeship-test-")
	if err != nil {
		return t.TempDir()
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("remove the state directory: %v", err)
		}
	})
	return dir
}

// nixSystem is this machine's nix system, asked of nix once for all the
// tests of the package (it cannot change while they run).
var nixSystem struct {
	once   sync.Once
	system string
}

// system returns testenv.System, which the first caller asks nix for.
func system(t *testing.T) string {
	t.Helper()
	nixSystem.once.Do(func() { nixSystem.system = testenv.System(t) })
	if nixSystem.system == "" {
		t.Fatal("nix did not say its system (see the first test that asked)")
	}
	return nixSystem.system
}

// nowhereURL returns a clone URL on 127.0.0.1 with no repository behind it:
// its server answers every request 404, which the fetcher takes as final,
// so a deploy that starts fails at its fetch at once, not after the
// retries, seconds apart, that a refused connection is given.
func nowhereURL(t *testing.T) string {
	t.Helper()
	srv := httptest.NewServer(http.NotFoundHandler())
	t.Cleanup(srv.Close)
	return srv.URL + "/nowhere.git"
}
