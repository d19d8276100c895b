package server

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/valyala/fasthttp"
)

// Request bodies: only a webhook delivery may be large (FLAKESHIP_BODY_LIMIT);
// every other request's body is refused over otherBodyLimit. The limit is
// chosen from the request's method and path as soon as its headers have
// arrived, so a Content-Length over it is answered 413 before any of the body
// is read, and a chunked body is cut off at the limit. A large body's memory
// is given back to the system once its request is answered.

const (
	// otherBodyLimit is the largest body of any request but a webhook
	// delivery: a login form or an API call is a few hundred bytes.
	otherBodyLimit = 1 << 20
	// keptBodyBuffer is the largest body buffer a connection keeps for its
	// next request; a larger one is dropped once its request is answered.
	keptBodyBuffer = 64 << 10
	// reclaimAfter is how many bytes of dropped body buffers call for
	// giving memory back to the system.
	reclaimAfter = 8 << 20
	// reclaimGap is the least time between two reclaims: each is a full
	// garbage collection.
	reclaimGap = time.Second
)

// requestConfig is fasthttp's HeaderReceived hook: it sets the body limit
// of the request whose headers have just arrived.
func (s *Server) requestConfig(h *fasthttp.RequestHeader) fasthttp.RequestConfig {
	uri := fasthttp.AcquireURI()
	defer fasthttp.ReleaseURI(uri)
	// What fiber routes by: the path as sent, of an origin-form or an
	// absolute-form request target.
	limit := otherBodyLimit
	if err := uri.Parse(nil, h.RequestURI()); err == nil {
		limit = s.bodyLimitFor(string(h.Method()), string(uri.PathOriginal()))
	}
	return fasthttp.RequestConfig{MaxRequestBodySize: limit}
}

// tooLarge is the message of a 413. A body over its limit by its
// Content-Length is refused with the request's headers at hand; a chunked
// body is cut off while it is read, and fasthttp then forgets the request,
// method and path included, so its message names both limits.
func (s *Server) tooLarge(c *fiber.Ctx) string {
	if c.Request().Header.ContentLength() > 0 {
		return fmt.Sprintf("body exceeds %d bytes", s.bodyLimitFor(c.Method(), c.Path()))
	}
	return fmt.Sprintf("body exceeds the limit: %d bytes for a webhook, %d for any other request", s.bodyLimit, otherBodyLimit)
}

// bodyLimitFor returns the body limit of a request by its method and path.
func (s *Server) bodyLimitFor(method, path string) int {
	if _, ok := hookKind(method, path); ok {
		return s.bodyLimit
	}
	return otherBodyLimit
}

// releaseBody drops the request's body buffer if it is larger than a
// connection keeps, and has the memory given back to the system. fasthttp
// would otherwise keep the buffer with the connection's request, and pool
// it after, until garbage collections that an idle server does not run.
func (s *Server) releaseBody(req *fasthttp.Request) {
	n := cap(req.Body())
	if n <= keptBodyBuffer {
		return
	}
	req.ReleaseBody(keptBodyBuffer)
	s.reclaim.dropped(n)
}

// reclaimer gives the memory of dropped body buffers back to the system:
// once reclaimAfter bytes were dropped, a goroutine runs a garbage
// collection that returns free memory (debug.FreeOSMemory), at most once per
// reclaimGap, until no more is dropped.
type reclaimer struct {
	after int
	gap   time.Duration
	free  func()

	mu      sync.Mutex
	pending int  // bytes dropped since the last reclaim began
	running bool // the goroutine runs
	stopped bool
	stop    chan struct{}
	wg      sync.WaitGroup
}

func newReclaimer() *reclaimer {
	return &reclaimer{after: reclaimAfter, gap: reclaimGap, free: debug.FreeOSMemory, stop: make(chan struct{})}
}

// dropped records n bytes of dropped buffers and starts a reclaim if they
// call for one.
func (r *reclaimer) dropped(n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pending += n
	if r.running || r.stopped || r.pending < r.after {
		return
	}
	r.running = true
	r.wg.Add(1)
	go r.run()
}

// run reclaims while buffers keep being dropped, then ends.
func (r *reclaimer) run() {
	defer r.wg.Done()
	for {
		r.mu.Lock()
		if r.pending < r.after || r.stopped {
			r.running = false
			r.mu.Unlock()
			return
		}
		r.pending = 0
		r.mu.Unlock()
		r.free()
		select {
		case <-r.stop:
		case <-time.After(r.gap):
		}
	}
}

// shutdown ends the reclaims and waits, until ctx ends, for the last one.
func (r *reclaimer) shutdown(ctx context.Context) error {
	r.mu.Lock()
	if !r.stopped {
		r.stopped = true
		close(r.stop)
	}
	r.mu.Unlock()
	done := make(chan struct{})
	go func() {
		r.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return errors.New("memory reclaim still running")
	}
}
