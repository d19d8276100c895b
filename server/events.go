package server

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/flakeship/flakeship/deploy"
)

// The log streams: GET /api/deploys/{id}/log (api.go) and the deploy
// page's Server-Sent Events, GET /deploys/{id}/events. Both are written by
// a fasthttp stream writer after their handler has returned.

const (
	// sseStatePoll is how often an event stream looks at its deploy's
	// state.
	sseStatePoll = 500 * time.Millisecond
	// sseHeartbeat is how often an idle event stream writes a comment, so
	// that a client that went away is noticed and proxies keep it open.
	sseHeartbeat = 15 * time.Second
	// sseRetryMillis is the reconnect delay an EventSource is told.
	sseRetryMillis = 3000
	// sseMaxLine is the longest partial line an event stream holds back
	// before it sends it as a line of its own.
	sseMaxLine = 64 << 10
)

// deadlineWriter is what a log stream writes to: fasthttp's buffered body
// writer, whose pieces fasthttp copies to the connection. Before each write
// and flush it moves the connection's write deadline timeout ahead (see
// deployLog).
type deadlineWriter struct {
	w       *bufio.Writer
	conn    net.Conn
	timeout time.Duration // the server's WriteTimeout; 0: none
	failed  bool          // a write or flush to the client failed
}

// Write implements io.Writer.
func (d *deadlineWriter) Write(p []byte) (int, error) {
	d.extend()
	n, err := d.w.Write(p)
	if err != nil {
		d.failed = true
	}
	return n, err
}

// Flush sends what is buffered; WriteLog calls it after each piece.
func (d *deadlineWriter) Flush() error {
	d.extend()
	if err := d.w.Flush(); err != nil {
		d.failed = true
		return err
	}
	return nil
}

func (d *deadlineWriter) extend() {
	if d.timeout > 0 {
		// An error means the connection is closed; the write that
		// follows reports it.
		_ = d.conn.SetWriteDeadline(time.Now().Add(d.timeout))
	}
}

// streams keeps track of the log streams, which run after their handler
// has returned: Shutdown ends them (they would otherwise keep their
// connection busy until their deploy ends) and waits for them.
type streams struct {
	ctx    context.Context
	cancel context.CancelFunc
	mu     sync.Mutex
	closed bool
	n      int // streams running
	wg     sync.WaitGroup
}

func newStreams() *streams {
	ctx, cancel := context.WithCancel(context.Background())
	return &streams{ctx: ctx, cancel: cancel}
}

// start registers a new stream and returns the context it runs under and
// the func to call when it ends; ok is false once stop was called.
func (st *streams) start() (ctx context.Context, done func(), ok bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.closed {
		return nil, nil, false
	}
	st.wg.Add(1)
	st.n++
	return st.ctx, func() {
		st.mu.Lock()
		st.n--
		st.mu.Unlock()
		st.wg.Done()
	}, true
}

// count returns how many streams run, for tests.
func (st *streams) count() int {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.n
}

// stop ends every stream and refuses new ones.
func (st *streams) stop() {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.closed = true
	st.cancel()
}

// wait waits until every stream has ended, or ctx ends.
func (st *streams) wait(ctx context.Context) error {
	ended := make(chan struct{})
	go func() {
		st.wg.Wait()
		close(ended)
	}()
	select {
	case <-ended:
		return nil
	case <-ctx.Done():
		return errors.New("log streams still running")
	}
}

// deployEvents answers GET /deploys/{id}/events with Server-Sent Events:
// "log" events carry the lines added to the log (one data line each; the
// event id is the byte offset in the log after them, so a reconnecting
// EventSource resumes where it stopped), "state" events the deploy's new
// state, and "end" its final state once it ended. The stream starts at the
// offset query parameter (what the page already shows) or the Last-Event-ID
// header, and ends when the deploy ends, the client goes away or the server
// shuts down. Like the API's log stream it moves the connection's write
// deadline ahead before each write (see deployLog), so WriteTimeout bounds
// each event, not the whole stream.
func (s *Server) deployEvents(c *fiber.Ctx) error {
	plain := func(status int, msg string) error {
		c.Set(fiber.HeaderContentType, fiber.MIMETextPlainCharsetUTF8)
		return c.Status(status).SendString(msg + "\n")
	}
	if !s.canRead(s.sessionOf(c)) {
		return plain(http.StatusUnauthorized, "log in to read this flakeship's deploys")
	}
	id, ok := parseID(c.Params("id"))
	if !ok {
		return plain(http.StatusNotFound, "no such deploy")
	}
	ctx, cancel := context.WithTimeout(context.Background(), submitTimeout)
	defer cancel()
	d, err := s.operator.Get(ctx, id)
	if errors.Is(err, deploy.ErrNotFound) {
		return plain(http.StatusNotFound, "no such deploy")
	}
	if err != nil {
		s.log.Error("event stream failed", "deploy_id", id, "err", err)
		return plain(http.StatusInternalServerError, "internal error")
	}
	from := c.Get("Last-Event-ID")
	if from == "" {
		from = c.Query("offset")
	}
	skip, err := strconv.ParseInt(from, 10, 64)
	if err != nil || skip < 0 {
		skip = 0
	}
	streamCtx, done, ok := s.streams.start()
	if !ok {
		return plain(http.StatusServiceUnavailable, "flakeship is shutting down")
	}

	c.Set(fiber.HeaderContentType, "text/event-stream")
	c.Set(fiber.HeaderCacheControl, "no-store")
	c.Set("X-Accel-Buffering", "no") // nginx: pass each event on at once
	// Taken now: neither fiber's nor fasthttp's context may be used once
	// the handler has returned.
	st := &sseStream{out: &deadlineWriter{conn: c.Context().Conn(), timeout: s.app.Server().WriteTimeout}, skip: skip}
	state := d.State
	c.Context().SetBodyStreamWriter(func(w *bufio.Writer) {
		defer done()
		st.out.w = w
		s.streamEvents(streamCtx, id, state, st)
		// fasthttp writes the end of the answer after this returns:
		// give that the full write timeout too.
		st.out.extend()
	})
	return nil
}

// streamEvents writes deploy id's events to st until the deploy ends, a
// write fails (the client went away) or ctx ends (the server shuts down).
func (s *Server) streamEvents(ctx context.Context, id int64, state deploy.State, st *sseStream) {
	log := s.log.With("deploy_id", id)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if err := st.open(state); err != nil {
		log.Debug("event stream ended: the client went away", "err", err)
		return
	}
	watchCtx, stopWatch := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.watchDeploy(watchCtx, cancel, id, state, st)
	}()
	err := s.operator.WriteLog(ctx, id, st, true)
	stopWatch()
	wg.Wait()
	switch {
	case st.out.failed:
		log.Debug("event stream ended: the client went away", "err", err)
		return
	case err != nil:
		log.Warn("event stream cut short", "err", err)
		return
	case ctx.Err() != nil:
		// The server shuts down: the EventSource reconnects, when it
		// can, from the last event id.
		return
	}
	// The deploy ended, and its log is whole.
	endCtx, endCancel := context.WithTimeout(context.Background(), submitTimeout)
	defer endCancel()
	d, err := s.operator.Get(endCtx, id)
	if err != nil {
		log.Warn("event stream ends without the final state", "err", err)
		return
	}
	if err := st.finish(d.State); err != nil {
		log.Debug("event stream ended: the client went away", "err", err)
	}
}

// watchDeploy sends a "state" event whenever deploy id's state changes and a
// comment when the stream is idle, until ctx ends. It calls stop when a
// write fails: the client went away.
func (s *Server) watchDeploy(ctx context.Context, stop context.CancelFunc, id int64, last deploy.State, st *sseStream) {
	poll := time.NewTicker(sseStatePoll)
	defer poll.Stop()
	beat := time.NewTicker(sseHeartbeat)
	defer beat.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-beat.C:
			if err := st.comment("keep-alive"); err != nil {
				stop()
				return
			}
		case <-poll.C:
			getCtx, cancel := context.WithTimeout(ctx, submitTimeout)
			d, err := s.operator.Get(getCtx, id)
			cancel()
			if err != nil || d.State == last {
				// A failed look is tried again at the next tick.
				continue
			}
			last = d.State
			if err := st.event("state", d.State); err != nil {
				stop()
				return
			}
		}
	}
}

// sseStream writes Server-Sent Events to a streamed answer. Its Write takes
// a deploy log's bytes (from Operator.WriteLog) and sends each complete line
// as a data line of a "log" event. It is safe for concurrent use.
type sseStream struct {
	mu      sync.Mutex
	out     *deadlineWriter
	skip    int64  // bytes of the log the client has already
	offset  int64  // bytes of the log consumed: skipped or sent
	partial []byte // the start of a line not yet whole
}

// stateData is the data of "state" and "end" events.
type stateData struct {
	State    deploy.State `json:"state"`
	Terminal bool         `json:"terminal"`
}

// open starts the stream: the reconnect delay, then the current state.
func (e *sseStream) open(state deploy.State) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	fmt.Fprintf(e.out, "retry: %d\n\n", sseRetryMillis)
	if err := e.eventLocked("state", state); err != nil {
		return err
	}
	return e.out.Flush()
}

// Write implements io.Writer.
func (e *sseStream) Write(p []byte) (int, error) {
	n := len(p)
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.skip > 0 {
		k := min(e.skip, int64(len(p)))
		p = p[k:]
		e.skip -= k
		e.offset += k
	}
	e.partial = append(e.partial, p...)
	end := bytes.LastIndexByte(e.partial, '\n') + 1
	if end == 0 && len(e.partial) > sseMaxLine {
		end = len(e.partial)
	}
	if end == 0 {
		return n, nil
	}
	if err := e.logLocked(e.partial[:end]); err != nil {
		return 0, err
	}
	e.partial = append(e.partial[:0], e.partial[end:]...)
	return n, nil
}

// logLocked writes chunk, whole lines, as one "log" event; the caller holds
// e.mu. A carriage return would end an SSE line early, so it is dropped.
func (e *sseStream) logLocked(chunk []byte) error {
	e.offset += int64(len(chunk))
	var b bytes.Buffer
	fmt.Fprintf(&b, "id: %d\nevent: log\n", e.offset)
	for _, line := range strings.Split(strings.TrimSuffix(string(chunk), "\n"), "\n") {
		b.WriteString("data: ")
		b.WriteString(strings.ReplaceAll(line, "\r", ""))
		b.WriteByte('\n')
	}
	b.WriteByte('\n')
	_, err := e.out.Write(b.Bytes())
	return err
}

// Flush implements the flusher Operator.WriteLog calls after each piece.
func (e *sseStream) Flush() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.out.Flush()
}

// event writes and flushes one "state" (or "end") event.
func (e *sseStream) event(name string, state deploy.State) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.eventLocked(name, state); err != nil {
		return err
	}
	return e.out.Flush()
}

func (e *sseStream) eventLocked(name string, state deploy.State) error {
	data, err := json.Marshal(stateData{State: state, Terminal: state.Terminal()})
	if err != nil {
		return fmt.Errorf("encode %s event: %w", name, err)
	}
	_, err = fmt.Fprintf(e.out, "event: %s\ndata: %s\n\n", name, data)
	return err
}

// comment writes and flushes an SSE comment, which clients ignore.
func (e *sseStream) comment(text string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, err := fmt.Fprintf(e.out, ": %s\n\n", text); err != nil {
		return err
	}
	return e.out.Flush()
}

// finish sends what is left of the log (a last line without a newline),
// the final state and "end".
func (e *sseStream) finish(state deploy.State) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.partial) > 0 {
		if err := e.logLocked(append(e.partial, '\n')); err != nil {
			return err
		}
		e.partial = nil
	}
	if err := e.eventLocked("state", state); err != nil {
		return err
	}
	if err := e.eventLocked("end", state); err != nil {
		return err
	}
	return e.out.Flush()
}
