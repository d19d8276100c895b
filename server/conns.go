package server

import (
	"container/list"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/valyala/fasthttp"
)

// The connection side of limits.go: a listener that never gives up on a
// failed accept and caps the connections it hands to fasthttp.

const (
	// acceptBackoffMin and acceptBackoffMax bound the wait after a failed
	// accept; it doubles while accepting keeps failing.
	acceptBackoffMin = 5 * time.Millisecond
	acceptBackoffMax = time.Second
	// refuseTimeout bounds answering a refused connection.
	refuseTimeout = time.Second
	// refuseDrain is how much of a refused connection's request is read
	// and dropped before it is closed: closing with unread bytes would
	// reset the connection, and the client could lose the answer.
	refuseDrain = 64 << 10
	// loadLogEvery is how often at most each kind of load event is logged.
	loadLogEvery = 10 * time.Second
)

// Connection states, as far as taking a connection's place goes.
const (
	// connWaiting: no byte of a request has arrived since the connection
	// opened or its last answer was sent.
	connWaiting int32 = iota
	// connReading: a request is arriving.
	connReading
	// connAnswering: a handler runs or its answer is being written.
	connAnswering
	// connClosed: closed, no longer counted.
	connClosed
)

// connLimiter wraps the server's listener: Accept retries failed accepts
// (running out of file descriptors is a reason to wait, never to stop) and
// caps the connections open at once, in all and per client.
type connLimiter struct {
	net.Listener
	limits Limits
	log    *slog.Logger
	notes  *rareLog

	closed   chan struct{} // closed by Close
	closeErr error
	once     sync.Once
	refusing *gate          // refused connections being answered
	wg       sync.WaitGroup // the goroutines answering refused connections

	refused map[int]refusalAnswer // the answers to a refused connection, by status

	mu      sync.Mutex
	open    int                // connections counted
	clients map[netip.Addr]int // open connections by clientOf; loopback is not counted
	waiting *list.List         // of *limitedConn in connWaiting, longest waiting first
	reading *list.List         // of *limitedConn in connReading, longest reading first
	waited  bool               // wait was called: refuse starts no more answers
}

// refusalAnswer is the whole HTTP answer to a connection refused at accept.
type refusalAnswer []byte

func newConnLimiter(ln net.Listener, limits Limits, log *slog.Logger, notes *rareLog) *connLimiter {
	l := &connLimiter{
		Listener: ln,
		limits:   limits,
		log:      log,
		notes:    notes,
		closed:   make(chan struct{}),
		refusing: newGate(limits.Refusing),
		clients:  map[netip.Addr]int{},
		waiting:  list.New(),
		reading:  list.New(),
	}
	l.refused = map[int]refusalAnswer{
		http.StatusTooManyRequests:    refusal(http.StatusTooManyRequests, fmt.Sprintf("too many connections from this address (at most %d at once): close some and try again", limits.ConnsPerClient)),
		http.StatusServiceUnavailable: refusal(http.StatusServiceUnavailable, "flakeship is busy: too many connections at once, try again shortly"),
	}
	return l
}

// refusal renders the answer to a refused connection: JSON in the shape of
// every error answer (errors.go), with Retry-After, closing the connection.
func refusal(status int, msg string) refusalAnswer {
	body, err := json.Marshal(errorAnswer{Error: msg})
	if err != nil {
		panic(err) // a struct of one string: cannot happen
	}
	return refusalAnswer(fmt.Sprintf("HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"+
		"Retry-After: %d\r\nConnection: close\r\n\r\n%s", status, http.StatusText(status), len(body), busyRetryAfter, body))
}

// Accept returns the next connection that may be served. A failed accept
// is retried after a wait (growing to a second) unless the listener is
// closed or the error cannot pass; a connection beyond the caps takes the
// place of another one or is refused, and Accept goes on.
func (l *connLimiter) Accept() (net.Conn, error) {
	backoff := time.Duration(0)
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			if !retryAccept(err) {
				return nil, err
			}
			backoff = min(max(2*backoff, acceptBackoffMin), acceptBackoffMax)
			l.notes.note(l.log, "accept", "accepting connections fails; retrying", "err", err, "retry_in", backoff)
			select {
			case <-l.closed:
				return nil, net.ErrClosed
			case <-time.After(backoff):
			}
			continue
		}
		backoff = 0
		if lc := l.admit(c); lc != nil {
			return lc, nil
		}
	}
}

// retryAccept tells whether a failed accept is worth retrying: all but a
// closed listener and the errors of a listener that is not one.
func retryAccept(err error) bool {
	if errors.Is(err, net.ErrClosed) {
		return false
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		switch errno {
		case syscall.EBADF, syscall.EINVAL, syscall.ENOTSOCK, syscall.EOPNOTSUPP, syscall.EFAULT:
			return false
		}
	}
	return true
}

// clientOf is what connections are counted by: the IPv4 address, or the /64
// of an IPv6 address; ok is false for loopback and unknown addresses, which
// are not counted per client.
func clientOf(addr net.Addr) (client netip.Addr, ok bool) {
	ap, err := netip.ParseAddrPort(addr.String())
	if err != nil {
		return netip.Addr{}, false
	}
	a := ap.Addr().Unmap()
	if a.IsLoopback() || !a.IsValid() {
		return netip.Addr{}, false
	}
	if a.Is6() {
		p, err := a.Prefix(64)
		if err != nil {
			return netip.Addr{}, false
		}
		a = p.Addr()
	}
	return a, true
}

// admit counts c, making room by closing another connection if it must, or
// refuses it (and returns nil).
func (l *connLimiter) admit(c net.Conn) *limitedConn {
	client, perClient := clientOf(c.RemoteAddr())
	l.mu.Lock()
	if perClient && l.clients[client] >= l.limits.ConnsPerClient {
		l.mu.Unlock()
		l.notes.note(l.log, "client", "connection refused: too many from one client",
			"client", client.String(), "limit", l.limits.ConnsPerClient)
		l.refuse(c, http.StatusTooManyRequests)
		return nil
	}
	var (
		evicted      *limitedConn
		evictedState int32
	)
	if l.open >= l.limits.Conns {
		evicted = l.oldestLocked()
		if evicted == nil {
			l.mu.Unlock()
			l.notes.note(l.log, "busy", "connection refused: every connection is being answered", "limit", l.limits.Conns)
			l.refuse(c, http.StatusServiceUnavailable)
			return nil
		}
		evictedState = evicted.state.Load()
		l.dropLocked(evicted)
	}
	lc := &limitedConn{Conn: c, l: l, client: client, perClient: perClient}
	l.open++
	if perClient {
		l.clients[client]++
	}
	lc.elem = l.waiting.PushBack(lc)
	l.mu.Unlock()
	if evicted != nil {
		l.notes.note(l.log, "evict", "connection closed to make room: the connection cap is reached",
			"limit", l.limits.Conns, "state", stateName(evictedState))
		// Its server goroutine sees the read fail and ends; its Close
		// then finds it no longer counted.
		evicted.Conn.Close()
	}
	return lc
}

// oldestLocked returns the connection whose place a new one takes: the one
// that has waited longest for a request, else the one whose request has been
// arriving longest; nil when every connection is being answered.
func (l *connLimiter) oldestLocked() *limitedConn {
	for _, q := range []*list.List{l.waiting, l.reading} {
		if e := q.Front(); e != nil {
			return e.Value.(*limitedConn)
		}
	}
	return nil
}

// dropLocked stops counting lc.
func (l *connLimiter) dropLocked(lc *limitedConn) {
	switch lc.state.Swap(connClosed) {
	case connClosed:
		return
	case connWaiting:
		l.waiting.Remove(lc.elem)
	case connReading:
		l.reading.Remove(lc.elem)
	}
	lc.elem = nil
	l.open--
	if lc.perClient {
		if l.clients[lc.client]--; l.clients[lc.client] <= 0 {
			delete(l.clients, lc.client)
		}
	}
}

// move puts lc in state to (connWaiting, connReading or
// connAnswering) unless it is closed.
func (l *connLimiter) move(lc *limitedConn, to int32) {
	l.mu.Lock()
	defer l.mu.Unlock()
	from := lc.state.Load()
	if from == connClosed || from == to {
		return
	}
	switch from {
	case connWaiting:
		l.waiting.Remove(lc.elem)
	case connReading:
		l.reading.Remove(lc.elem)
	}
	lc.elem = nil
	switch to {
	case connWaiting:
		lc.elem = l.waiting.PushBack(lc)
	case connReading:
		lc.elem = l.reading.PushBack(lc)
	}
	lc.state.Store(to)
}

// refuse answers c with the refusal of status and closes it, in a goroutine
// of its own so that Accept never waits on a client; with Refusing answers
// already under way it closes c at once.
func (l *connLimiter) refuse(c net.Conn, status int) {
	if !l.refusing.enter() {
		c.Close()
		return
	}
	l.mu.Lock()
	if l.waited {
		l.mu.Unlock()
		l.refusing.leave()
		c.Close()
		return
	}
	l.wg.Add(1)
	l.mu.Unlock()
	go func() {
		defer l.wg.Done()
		defer l.refusing.leave()
		defer c.Close()
		if err := c.SetDeadline(time.Now().Add(refuseTimeout)); err != nil {
			return
		}
		if _, err := c.Write(l.refused[status]); err != nil {
			return
		}
		// Send the end of the answer, then read what the client sent until
		// it closes too or the deadline passes.
		if cw, ok := c.(interface{ CloseWrite() error }); ok {
			if cw.CloseWrite() == nil {
				_, _ = io.Copy(io.Discard, io.LimitReader(c, refuseDrain))
			}
		}
	}()
}

// Close closes the listener and ends a wait after a failed accept.
func (l *connLimiter) Close() error {
	l.once.Do(func() {
		close(l.closed)
		l.closeErr = l.Listener.Close()
	})
	return l.closeErr
}

// wait waits, until ctx ends, for the refused connections' answers; a
// connection refused from now on is closed without one.
func (l *connLimiter) wait(ctx context.Context) error {
	l.mu.Lock()
	l.waited = true
	l.mu.Unlock()
	done := make(chan struct{})
	go func() {
		l.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return errors.New("refused connections still being answered")
	}
}

// count returns the connections counted and the per-client counts, for
// tests.
func (l *connLimiter) count() (open int, clients map[netip.Addr]int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	clients = make(map[netip.Addr]int, len(l.clients))
	for k, v := range l.clients {
		clients[k] = v
	}
	return l.open, clients
}

// connState is fasthttp's ConnState hook: a connection that has sent its
// answer waits for the next request; one that starts on a request already
// buffered (pipelined) is reading it. The first request's StateActive comes
// before any byte has arrived, so a new connection stays waiting until its
// first Read returns bytes.
func connState(c net.Conn, st fasthttp.ConnState) {
	lc, ok := c.(*limitedConn)
	if !ok {
		return
	}
	switch st {
	case fasthttp.StateIdle:
		lc.served.Store(true)
		lc.l.move(lc, connWaiting)
	case fasthttp.StateActive:
		if lc.served.Load() {
			lc.l.move(lc, connReading)
		}
	}
}

func stateName(s int32) string {
	switch s {
	case connWaiting:
		return "waiting"
	case connReading:
		return "reading"
	case connAnswering:
		return "answering"
	}
	return "closed"
}

// takenOver tells whether the connection of a request was closed to make
// room for another: nobody is left to answer.
func takenOver(c net.Conn) bool {
	lc, ok := c.(*limitedConn)
	return ok && lc.state.Load() == connClosed
}

// limitedConn is a connection counted by a connLimiter.
type limitedConn struct {
	net.Conn
	l         *connLimiter
	client    netip.Addr
	perClient bool         // counted in l.clients under client
	state     atomic.Int32 // connWaiting...; changed under l.mu
	served    atomic.Bool  // an answer has been sent on it
	elem      *list.Element
}

// Read marks a waiting connection as reading once bytes arrive.
func (c *limitedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 && c.state.Load() == connWaiting {
		c.l.move(c, connReading)
	}
	return n, err
}

// answering marks the connection as being answered: its place can no
// longer be taken.
func (c *limitedConn) answering() {
	if c.state.Load() != connAnswering {
		c.l.move(c, connAnswering)
	}
}

// Close closes the connection and stops counting it.
func (c *limitedConn) Close() error {
	c.l.mu.Lock()
	c.l.dropLocked(c)
	c.l.mu.Unlock()
	return c.Conn.Close()
}

// rareLog logs each kind of load event at most once per interval: a flood
// of connections must not become a flood of log lines. Each line counts the
// events of its kind since the previous line.
type rareLog struct {
	every time.Duration
	now   func() time.Time

	mu    sync.Mutex
	kinds map[string]*rareKind
}

type rareKind struct {
	last   time.Time
	missed int
}

func newRareLog(every time.Duration, now func() time.Time) *rareLog {
	return &rareLog{every: every, now: now, kinds: map[string]*rareKind{}}
}

// note logs msg at Warn with args, unless an event of kind was logged less
// than the interval ago; then it only counts it.
func (r *rareLog) note(log *slog.Logger, kind, msg string, args ...any) {
	r.mu.Lock()
	k, ok := r.kinds[kind]
	if !ok {
		k = &rareKind{}
		r.kinds[kind] = k
	}
	now := r.now()
	if !k.last.IsZero() && now.Sub(k.last) < r.every {
		k.missed++
		r.mu.Unlock()
		return
	}
	count := k.missed + 1
	k.last, k.missed = now, 0
	r.mu.Unlock()
	log.Warn(msg, append(args, "count", count)...)
}
