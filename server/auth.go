package server

import (
	"container/list"
	"crypto/subtle"
	"math"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/flakeship/flakeship/config"
)

// The bounds of failed token attempts: after maxAuthFailures wrong tokens
// from one client within authWindow (counted from its first failure), every
// request of that client that needs a token is answered 429 until the window
// has passed, even one with the right token. At most maxAuthClients clients
// are tracked; a new one pushes out the one whose window began first.
//
// A client is the address clientIP finds: behind a trusted proxy the one
// X-Forwarded-For names, so one client's guesses never lock out another.
// The right token is refused too while its client is blocked: were it let
// through, a blocked client would still learn from each answer whether its
// guess was right (429 or not), at full speed, and the bound would protect
// nothing. flakeship does not require long tokens, so the bound is what
// stands between a short one and a guesser. A blocked operator waits for
// the window (Retry-After), or restarts flakeship, which forgets the counts;
// an operator already logged in to the pages is not held up, since a
// session needs no token.
const (
	maxAuthFailures = 10
	authWindow      = time.Minute
	maxAuthClients  = 10000
)

// bearerChallenge is the WWW-Authenticate answer to a request without a
// token (RFC 6750); a wrong token adds error="invalid_token".
const bearerChallenge = `Bearer realm="flakeship"`

// requireRead lets a request through when reading is open (no read token is
// configured) or when it carries the read or the admin token as a bearer
// token. A wrong token counts as a failed attempt of the client.
func (s *Server) requireRead(c *fiber.Ctx) error {
	if err := refuseQueryToken(c); err != nil {
		return s.writeError(c, s.log, err)
	}
	if !s.cfg.ReadToken.IsSet() {
		return c.Next()
	}
	return s.checkToken(c, "a read token", func(tok string) verdict {
		if tokenEqual(tok, s.cfg.ReadToken) || tokenEqual(tok, s.cfg.AdminToken) {
			return tokenRight
		}
		return tokenWrong
	})
}

// requireAdmin lets a request through only with the admin token. Without a
// configured admin token every write is refused (403).
func (s *Server) requireAdmin(c *fiber.Ctx) error {
	if err := refuseQueryToken(c); err != nil {
		return s.writeError(c, s.log, err)
	}
	if !s.cfg.AdminToken.IsSet() {
		return s.writeError(c, s.log, forbidden("the write API is disabled: set FLAKESHIP_ADMIN_TOKEN"))
	}
	return s.checkToken(c, "the admin token", func(tok string) verdict {
		switch {
		case tokenEqual(tok, s.cfg.AdminToken):
			return tokenRight
		case tokenEqual(tok, s.cfg.ReadToken):
			return tokenReadOnly
		}
		return tokenWrong
	})
}

// verdict is what a guard makes of a presented token.
type verdict int

const (
	// tokenWrong is answered 401 and counted against the client.
	tokenWrong verdict = iota
	// tokenRight lets the request through.
	tokenRight
	// tokenReadOnly is the read token on a write: a valid token that may
	// not do this, answered 403 and not counted.
	tokenReadOnly
)

// checkToken is the part of requireRead and requireAdmin that reads the
// bearer token. A client with too many failed attempts is answered 429
// before its token is looked at, a request without a token 401; judge
// decides the rest.
func (s *Server) checkToken(c *fiber.Ctx, what string, judge func(tok string) verdict) error {
	client := s.clientIP(c)
	if wait := s.authFailures.retryAfter(client); wait > 0 {
		secs := int(math.Ceil(wait.Seconds()))
		c.Set(fiber.HeaderRetryAfter, strconv.Itoa(secs))
		return s.writeError(c, s.log, tooManyRequests("too many wrong tokens from this address: retry in %ds", secs))
	}
	tok, ok := bearer(c.Get(fiber.HeaderAuthorization))
	if !ok {
		c.Set(fiber.HeaderWWWAuthenticate, bearerChallenge)
		return s.writeError(c, s.log, unauthorized("this needs "+what+": Authorization: Bearer <token>"))
	}
	switch judge(tok) {
	case tokenRight:
		return c.Next()
	case tokenReadOnly:
		c.Set(fiber.HeaderWWWAuthenticate, bearerChallenge+`, error="insufficient_scope"`)
		return s.writeError(c, s.log, forbidden("the read token cannot change anything: use the admin token"))
	}
	s.authFailures.fail(client)
	s.log.Warn("wrong token", "client", client, "method", c.Method(), "path", clip(c.Path()))
	c.Set(fiber.HeaderWWWAuthenticate, bearerChallenge+`, error="invalid_token"`)
	return s.writeError(c, s.log, unauthorized("wrong token"))
}

// refuseQueryToken refuses a token in the URL: URLs end up in proxy logs,
// shell history and Referer headers. It answers 400 even when the header
// carries the right token, so the habit is caught at once.
func refuseQueryToken(c *fiber.Ctx) error {
	args := c.Context().QueryArgs()
	if args.Has("token") || args.Has("access_token") {
		return badRequest("tokens go in the Authorization header, never in the URL")
	}
	return nil
}

// bearer takes the token out of an Authorization header.
func bearer(h string) (string, bool) {
	scheme, tok, ok := strings.Cut(h, " ")
	tok = strings.TrimSpace(tok)
	if !ok || !strings.EqualFold(scheme, "Bearer") || tok == "" {
		return "", false
	}
	return tok, true
}

// tokenEqual compares a presented token with a configured one in constant
// time; an unset token matches nothing.
func tokenEqual(got string, want config.Secret) bool {
	if !want.IsSet() {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(got), []byte(want.Reveal())) == 1
}

// failureLimiter counts failed token attempts per client address in fixed
// windows that begin at a client's first failure. A success resets nothing:
// a client that knows the token gains no fresh guesses for others behind
// the same address. Memory is bounded by max clients.
type failureLimiter struct {
	limit  int           // failures allowed per window
	window time.Duration // length of a window
	max    int           // clients tracked at most
	now    func() time.Time

	mu      sync.Mutex
	clients map[string]*list.Element // of *clientFailures, by clientKey
	order   *list.List               // oldest window first
}

// clientFailures is one client's failures in its current window.
type clientFailures struct {
	key   string
	since time.Time // start of the window
	n     int
}

func newFailureLimiter(limit int, window time.Duration, max int, now func() time.Time) *failureLimiter {
	return &failureLimiter{
		limit: limit, window: window, max: max, now: now,
		clients: map[string]*list.Element{}, order: list.New(),
	}
}

// retryAfter returns how long the client at ip must wait before its token
// is looked at again, or 0.
func (l *failureLimiter) retryAfter(ip string) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	l.expireLocked(now)
	e, ok := l.clients[clientKey(ip)]
	if !ok {
		return 0
	}
	f := e.Value.(*clientFailures)
	if f.n < l.limit {
		return 0
	}
	return f.since.Add(l.window).Sub(now)
}

// fail records one failed attempt of the client at ip.
func (l *failureLimiter) fail(ip string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	l.expireLocked(now)
	key := clientKey(ip)
	if e, ok := l.clients[key]; ok {
		e.Value.(*clientFailures).n++
		return
	}
	for l.order.Len() >= l.max {
		oldest := l.order.Front()
		delete(l.clients, oldest.Value.(*clientFailures).key)
		l.order.Remove(oldest)
	}
	l.clients[key] = l.order.PushBack(&clientFailures{key: key, since: now, n: 1})
}

// expireLocked drops the clients whose window has passed. The list is in
// order of window start, so they are at its front.
func (l *failureLimiter) expireLocked(now time.Time) {
	for e := l.order.Front(); e != nil; e = l.order.Front() {
		f := e.Value.(*clientFailures)
		if now.Before(f.since.Add(l.window)) {
			return
		}
		delete(l.clients, f.key)
		l.order.Remove(e)
	}
}

// tracked returns how many clients are tracked, for tests.
func (l *failureLimiter) tracked() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.clients)
}

// clientKey is what failures are counted by: an IPv4 address, or the /64
// network of an IPv6 address (one host commonly holds a whole /64, so
// counting single v6 addresses would give it endless fresh guesses).
func clientKey(ip string) string {
	addr := net.ParseIP(ip)
	if addr == nil || addr.To4() != nil {
		return ip
	}
	return addr.Mask(net.CIDRMask(64, 128)).String() + "/64"
}

// clientIP returns the address of the client a request comes from, which
// wrong tokens are counted against and logs name. It is the connection's
// peer, unless the peer is a trusted proxy (FLAKESHIP_TRUSTED_PROXIES):
// then it is the client X-Forwarded-For names (realClient).
func (s *Server) clientIP(c *fiber.Ctx) string {
	peer := peerAddr(c)
	forwarded := c.Request().Header.PeekAll(fiber.HeaderXForwardedFor)
	if len(s.cfg.TrustedProxies) == 0 {
		if len(forwarded) > 0 {
			s.forwardedWarning.Do(func() {
				s.log.Warn("requests carry X-Forwarded-For, but no proxy is trusted (FLAKESHIP_TRUSTED_PROXIES): "+
					"wrong tokens count against the proxy's address, which every client behind it shares", "peer", peer.String())
			})
		}
		return peer.String()
	}
	values := make([]string, len(forwarded))
	for i, v := range forwarded {
		values[i] = string(v)
	}
	return realClient(peer, values, s.trusted).String()
}

// peerAddr is the address of the connection's other end.
func peerAddr(c *fiber.Ctx) netip.Addr {
	a, _ := netip.AddrFromSlice(c.Context().RemoteIP())
	return a.Unmap()
}

// trusted reports whether a is a trusted proxy.
func (s *Server) trusted(a netip.Addr) bool {
	for _, p := range s.cfg.TrustedProxies {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// realClient returns the client a request from peer comes from, given the
// values of its X-Forwarded-For headers (in order). Each proxy appends the
// address it was connected from, so the header is read from the right:
// past the addresses of trusted proxies, the first other address is the
// client; what lies left of it, anyone may have written. When peer is not
// trusted, the header is not read: anyone may send one. When every address
// is trusted, the leftmost is the client; an entry that is not an address
// stops the walk at the last address read.
func realClient(peer netip.Addr, forwarded []string, trusted func(netip.Addr) bool) netip.Addr {
	if !trusted(peer) {
		return peer
	}
	client := peer
	for i := len(forwarded) - 1; i >= 0; i-- {
		entries := strings.Split(forwarded[i], ",")
		for j := len(entries) - 1; j >= 0; j-- {
			a, ok := forwardedAddr(strings.TrimSpace(entries[j]))
			if !ok {
				return client
			}
			client = a
			if !trusted(a) {
				return a
			}
		}
	}
	return client
}

// forwardedAddr reads one X-Forwarded-For entry: an IP address, or one
// with a port as some proxies write it ("192.0.2.1:4711", "[2001:db8::1]:4711").
func forwardedAddr(entry string) (netip.Addr, bool) {
	a, err := netip.ParseAddr(entry)
	if err != nil {
		ap, perr := netip.ParseAddrPort(entry)
		if perr != nil {
			return netip.Addr{}, false
		}
		a = ap.Addr()
	}
	return a.Unmap().WithZone(""), true
}
