package server

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/flakeship/flakeship/deploy"
)

// The log streams: GET /api/deploys/{id}/log?follow=1 (api.go) and the
// deploy page's Server-Sent Events, GET /deploys/{id}/events. Both are
// written by a fasthttp stream writer after their handler has returned, and
// follow the deploy through deploy.Queue.WriteLog, which wakes on the
// deploy's own announcements (a transition, a log line, its end), never on a
// timer. A stream ends when its deploy ends, its client hangs up (noticed at
// once: the connection is watched for its close, see watchHangUp), or the
// server shuts down. At most maxStreamsPerDeploy follow one deploy and
// maxStreams follow in all; more are answered 503.

const (
	// maxStreamsPerDeploy and maxStreams bound the log streams that follow
	// a deploy: each holds a connection and its deploy's log file open
	// until the deploy ends or its client leaves, 2 file descriptors and
	// some 64 KiB of heap (measured). 32 watchers of one deploy is more
	// than a team has; 512 in all is 1,024 files, far below the file limit
	// Go sets itself (the hard limit, 524,288 under systemd).
	maxStreamsPerDeploy = 32
	maxStreams          = 512
	// streamRetryAfter is the Retry-After of a stream refused at a limit
	// or at a shutdown.
	streamRetryAfter = 10 * time.Second

	// sseHeartbeat is how often an idle event stream writes a comment, so
	// that proxies keep it open.
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
// has returned: it bounds how many follow (see maxStreamsPerDeploy), and
// Shutdown ends them (they would otherwise keep their connection busy until
// their deploy ends) and waits for them.
type streams struct {
	ctx    context.Context
	cancel context.CancelFunc
	// perDeploy and total are the limits of following streams.
	perDeploy, total int

	mu       sync.Mutex
	closed   bool
	n        int           // streams running, following or not
	follows  int           // following streams running
	byDeploy map[int64]int // following streams running, by deploy; no zeros
	wg       sync.WaitGroup
}

func newStreams(perDeploy, total int) *streams {
	ctx, cancel := context.WithCancel(context.Background())
	return &streams{ctx: ctx, cancel: cancel, perDeploy: perDeploy, total: total, byDeploy: map[int64]int{}}
}

// start registers a new stream of deploy id's log and returns the context
// it runs under and the func to call when it ends. A following stream
// counts against the limits. It returns deploy.ErrClosed once stop was
// called, and a 503 error at a limit.
func (st *streams) start(id int64, follow bool) (ctx context.Context, done func(), err error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	switch {
	case st.closed:
		return nil, nil, deploy.ErrClosed
	case follow && st.byDeploy[id] >= st.perDeploy:
		return nil, nil, unavailable("deploy %d has %d log streams open, the most it may have: try again later", id, st.perDeploy)
	case follow && st.follows >= st.total:
		return nil, nil, unavailable("flakeship has %d log streams open, the most it serves: try again later", st.total)
	}
	st.wg.Add(1)
	st.n++
	if follow {
		st.follows++
		st.byDeploy[id]++
	}
	return st.ctx, func() {
		st.mu.Lock()
		st.n--
		if follow {
			st.follows--
			if st.byDeploy[id]--; st.byDeploy[id] == 0 {
				delete(st.byDeploy, id)
			}
		}
		st.mu.Unlock()
		st.wg.Done()
	}, nil
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

// errClientGone is the cause a stream's context ends with when its client
// hung up.
var errClientGone = errors.New("the client went away")

// refuseStream answers a stream that may not start now (err from
// streams.start): 503 with a Retry-After, as JSON.
func (s *Server) refuseStream(c *fiber.Ctx, id int64, err error) error {
	c.Set(fiber.HeaderRetryAfter, strconv.Itoa(int(streamRetryAfter/time.Second)))
	// A flood of refused streams is logged at most once per interval.
	s.overload.note(s.log, "streams", "log stream refused", "deploy_id", id, "err", err)
	return s.writeError(c, s.log, err)
}

// watchHangUp returns a context that ends with cause errClientGone when the
// client closes conn (or when ctx ends), and stop, which ends the watching
// and waits for it; call stop before the stream writer returns.
//
// fasthttp writes a streamed body from a pipe the stream writer fills, and
// learns that the client left only when a write to the connection fails:
// a stream that has nothing to write would hold its connection, its
// goroutines and its buffers until its deploy ends. Nothing else reads the
// connection while the answer is written, so a read here sees the client's
// close at once (EOF or a reset), as net/http's background read does. The
// answer is sent with Connection: close (closeAfterStream), so that whatever
// the client sends meanwhile, read and dropped here, is not taken for its
// next request. A client that half-closes its side after the request is
// taken to have gone, as net/http takes it.
func watchHangUp(ctx context.Context, conn net.Conn) (context.Context, func()) {
	ctx, cancel := context.WithCancelCause(ctx)
	var stopping atomic.Bool
	watched := make(chan struct{})
	// fasthttp set a read deadline for the request; the stream may be
	// much longer.
	if err := conn.SetReadDeadline(time.Time{}); err != nil {
		cancel(errClientGone)
		close(watched)
	} else {
		go func() {
			defer close(watched)
			var buf [512]byte
			for {
				if _, err := conn.Read(buf[:]); err != nil {
					if !stopping.Load() {
						cancel(errClientGone)
					}
					return
				}
			}
		}()
	}
	return ctx, func() {
		stopping.Store(true)
		// A deadline in the past ends the blocked read at once; an error
		// means the connection is closed, and the read has ended too.
		_ = conn.SetReadDeadline(time.Unix(1, 0))
		<-watched
		cancel(nil)
	}
}

// closeAfterStream closes the connection after the answer: its stream
// writer reads the connection (watchHangUp), so no next request may come
// on it.
func closeAfterStream(c *fiber.Ctx) {
	c.Context().SetConnectionClose()
}

// deployEvents answers GET /deploys/{id}/events with Server-Sent Events:
// "log" events carry the lines added to the log (one data line each; the
// event id is the byte offset in the log after them, so a reconnecting
// EventSource resumes where it stopped), "state" events the deploy's state
// and its changes, and "end" its final state once it ended. The stream
// starts at the offset query parameter (what the page already shows) or the
// Last-Event-ID header, and ends when the deploy ends, the client goes away
// or the server shuts down. Like the API's log stream it moves the
// connection's write deadline ahead before each write (see deployLog), so
// WriteTimeout bounds each event, not the whole stream. A stream that does
// not start is answered by errors.go, as JSON.
func (s *Server) deployEvents(c *fiber.Ctx) error {
	if !s.canRead(s.sessionOf(c)) {
		return unauthorized("log in to read this flakeship's deploys")
	}
	id, ok := parseID(c.Params("id"))
	if !ok {
		return notFound("no such deploy")
	}
	ctx, cancel := context.WithTimeout(context.Background(), submitTimeout)
	defer cancel()
	_, err := s.operator.Get(ctx, id)
	if errors.Is(err, deploy.ErrNotFound) {
		return notFound("no such deploy")
	}
	if err != nil {
		return fmt.Errorf("event stream of deploy %d: %w", id, err)
	}
	from := c.Get("Last-Event-ID")
	if from == "" {
		from = c.Query("offset")
	}
	skip, err := strconv.ParseInt(from, 10, 64)
	if err != nil || skip < 0 {
		skip = 0
	}
	streamCtx, done, err := s.streams.start(id, true)
	if err != nil {
		return s.refuseStream(c, id, err)
	}

	c.Set(fiber.HeaderContentType, "text/event-stream")
	c.Set(fiber.HeaderCacheControl, "no-store")
	c.Set("X-Accel-Buffering", "no") // nginx: pass each event on at once
	closeAfterStream(c)
	// Taken now: neither fiber's nor fasthttp's context may be used once
	// the handler has returned.
	conn := c.Context().Conn()
	st := &sseStream{out: &deadlineWriter{conn: conn, timeout: s.app.Server().WriteTimeout}, skip: skip}
	c.Context().SetBodyStreamWriter(func(w *bufio.Writer) {
		defer done()
		st.out.w = w
		ctx, stop := watchHangUp(streamCtx, conn)
		s.streamEvents(ctx, id, st)
		stop()
		// fasthttp writes the end of the answer after this returns:
		// give that the full write timeout too.
		st.out.extend()
	})
	return nil
}

// streamEvents writes deploy id's events to st until the deploy ends, a
// write fails or the client hangs up, or ctx ends (the server shuts down).
func (s *Server) streamEvents(ctx context.Context, id int64, st *sseStream) {
	log := s.log.With("deploy_id", id)
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	if err := st.open(); err != nil {
		log.Debug("event stream ended: the client went away", "err", err)
		return
	}
	beatCtx, stopBeat := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		st.heartbeat(beatCtx, cancel)
	}()
	err := s.operator.WriteLog(ctx, id, st, true)
	stopBeat()
	wg.Wait()
	switch {
	case st.out.failed || errors.Is(context.Cause(ctx), errClientGone):
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
	// The deploy ended, its log is whole, and its final state was told.
	if err := st.finish(); err != nil {
		log.Debug("event stream ended: the client went away", "err", err)
	}
}

// sseStream writes Server-Sent Events to a streamed answer. Its Write takes
// a deploy log's bytes (from Operator.WriteLog) and sends each complete line
// as a data line of a "log" event; its WriteState sends a "state" event. It
// is safe for concurrent use.
type sseStream struct {
	mu      sync.Mutex
	out     *deadlineWriter
	skip    int64        // bytes of the log the client has already
	offset  int64        // bytes of the log consumed: skipped or sent
	partial []byte       // the start of a line not yet whole
	state   deploy.State // the last state sent
}

// stateData is the data of "state" and "end" events.
type stateData struct {
	State    deploy.State `json:"state"`
	Terminal bool         `json:"terminal"`
}

// open starts the stream with the reconnect delay.
func (e *sseStream) open() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	fmt.Fprintf(e.out, "retry: %d\n\n", sseRetryMillis)
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

// WriteState implements deploy.StateWriter: a "state" event, flushed.
func (e *sseStream) WriteState(state deploy.State) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.state = state
	if err := e.eventLocked("state", state); err != nil {
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

// heartbeat writes a comment, which clients ignore, every sseHeartbeat
// until ctx ends; a failed write ends the stream with errClientGone.
func (e *sseStream) heartbeat(ctx context.Context, stop context.CancelCauseFunc) {
	beat := time.NewTicker(sseHeartbeat)
	defer beat.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-beat.C:
			if err := e.comment("keep-alive"); err != nil {
				stop(errClientGone)
				return
			}
		}
	}
}

// comment writes and flushes an SSE comment.
func (e *sseStream) comment(text string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, err := fmt.Fprintf(e.out, ": %s\n\n", text); err != nil {
		return err
	}
	return e.out.Flush()
}

// finish sends what is left of the log (a last line without a newline),
// the final state again and "end".
func (e *sseStream) finish() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.partial) > 0 {
		if err := e.logLocked(append(e.partial, '\n')); err != nil {
			return err
		}
		e.partial = nil
	}
	if err := e.eventLocked("state", e.state); err != nil {
		return err
	}
	if err := e.eventLocked("end", e.state); err != nil {
		return err
	}
	return e.out.Flush()
}
