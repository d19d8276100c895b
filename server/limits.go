package server

import (
	"fmt"
	"net/http"
	"strconv"
	"sync/atomic"
	"syscall"

	"github.com/gofiber/fiber/v2"
)

// How flakeship stays up under load. Every connection costs a file
// descriptor, and the process has RLIMIT_NOFILE of them for everything:
// SQLite's files, git's pack files and connections, nix's and systemctl's
// pipes, deploy logs. So the number of connections is capped below that
// limit (LimitsFor), at three levels:
//
//   - connections (conns.go): at most Conns open at once, at most
//     ConnsPerClient from one address. At the cap a new connection takes the
//     place of the one that has waited longest for a request, or, when none
//     waits, of the one that has been sending its request longest; only
//     when every connection is being answered is it refused (503).
//   - requests: at most Requests page, API and metrics requests are handled
//     at once, and at most Streams log and event streams run (503 beyond).
//   - webhook deliveries are not counted by either: whatever the pages, the
//     API and the streams hold, at least Conns - Requests - Streams
//     connections are left for deliveries, and an idle or slow connection
//     never keeps one out.

// Limits bound what clients may hold at once; LimitsFor derives them from
// the process's open-file limit.
type Limits struct {
	// Conns is how many connections may be open at once.
	Conns int
	// ConnsPerClient is how many of them one client may hold: an IPv4
	// address, or an IPv6 /64. Loopback clients are not counted: behind a
	// reverse proxy on the same machine every client has its address.
	ConnsPerClient int
	// Requests is how many page, API and metrics requests are handled at
	// once; webhook deliveries and /healthz are not counted.
	Requests int
	// Streams is how many log streams (?follow=1) and event streams run at
	// once; each also holds the deploy's log file open.
	Streams int
	// Refusing is how many refused connections are answered at once (each
	// for at most a second); beyond that a refused connection is closed
	// without an answer.
	Refusing int
}

// The parts of the open-file limit that LimitsFor keeps for other uses than
// connections, and the bounds of what it derives.
const (
	// fdReserve is for standard streams, the Go runtime, the listener,
	// SQLite's database, journal and shared-memory files for each of its
	// connections, and the forges' API connections.
	fdReserve = 64
	// fdPerDeploy is what one running deploy may hold: its log, git's pack
	// files and connection, nix's and systemctl's pipes.
	fdPerDeploy = 32
	// maxConns bounds the connections whatever the file limit: an idle
	// connection costs some 10 KiB of memory, and a deploy server needs
	// far fewer.
	maxConns = 4096
	// minConns is the floor for a file limit too small for the reserve; a
	// limit that small will fail elsewhere first.
	minConns = 16
	// A browser opens at most 6 connections to a host, plus one per event
	// stream; a forge delivers one push at a time per hook.
	minConnsPerClient = 4
	maxConnsPerClient = 64
	minRequests       = 8
	maxRequests       = 256
	maxRefusing       = 32
)

// LimitsFor derives the limits from the open-file limit and the number of
// deploys that run at once (FLAKESHIP_MAX_PARALLEL). A quarter of the limit,
// and at least fdReserve and fdPerDeploy for each deploy, is kept for other
// uses; of the rest, three quarters go to connections, an eighth to the log
// files that streams hold, an eighth to answering refused connections.
func LimitsFor(fileLimit uint64, maxParallel int) Limits {
	reserve := uint64(fdReserve + fdPerDeploy*max(maxParallel, 1))
	reserve = max(reserve, fileLimit/4)
	var spare uint64
	if fileLimit > reserve {
		spare = fileLimit - reserve
	}
	conns := clampInt(spare/4*3, minConns, maxConns)
	return Limits{
		Conns:          conns,
		ConnsPerClient: clampInt(uint64(conns/8), minConnsPerClient, maxConnsPerClient),
		Requests:       clampInt(uint64(conns/4), minRequests, maxRequests),
		Streams:        clampInt(spare/8, 1, max(conns/4, 1)),
		Refusing:       clampInt(spare/8, 1, maxRefusing),
	}
}

// clampInt returns n within lo and hi.
func clampInt(n uint64, lo, hi int) int {
	switch {
	case n < uint64(lo):
		return lo
	case n > uint64(hi):
		return hi
	}
	return int(n)
}

// openFileLimit returns the process's RLIMIT_NOFILE (Go raises the soft
// limit to the hard one at start-up).
func openFileLimit() (uint64, error) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, fmt.Errorf("read the open-file limit: %w", err)
	}
	return rl.Cur, nil
}

// gate counts what runs at once, up to a bound; it never waits.
type gate struct {
	max int64
	n   atomic.Int64
}

func newGate(max int) *gate { return &gate{max: int64(max)} }

// enter takes a place, or returns false when all are taken.
func (g *gate) enter() bool {
	if g.n.Add(1) > g.max {
		g.n.Add(-1)
		return false
	}
	return true
}

// leave gives back a place taken by enter.
func (g *gate) leave() { g.n.Add(-1) }

// busyRetryAfter is the Retry-After, in seconds, of a 503 for load.
const busyRetryAfter = 1

// busy is the 503 of a request refused for load.
func busy(format string, args ...any) error {
	return &requestError{http.StatusServiceUnavailable, fmt.Sprintf(format, args...)}
}

// admit is the first handler of every request. It marks the connection as
// answering (conns.go: it can no longer be taken over), counts page, API
// and metrics requests against Requests, and gives back the memory of a
// large request body once the request is answered (bodies.go).
func (s *Server) admit(c *fiber.Ctx) error {
	if lc, ok := c.Context().Conn().(*limitedConn); ok {
		lc.answering()
	}
	defer s.releaseBody(c.Request())
	if _, hook := hookKind(c.Method(), c.Path()); hook || c.Path() == "/healthz" {
		return c.Next()
	}
	if !s.requests.enter() {
		s.overload.note(s.log, "requests", "request refused: too many page, API and metrics requests at once", "limit", s.limits.Requests)
		c.Set(fiber.HeaderRetryAfter, strconv.Itoa(busyRetryAfter))
		return s.writeError(c, s.log, busy("flakeship is busy: too many requests at once, try again shortly"))
	}
	defer s.requests.leave()
	return c.Next()
}
