package server

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/flakeship/flakeship/config"
	"github.com/flakeship/flakeship/deploy"
)

// The sessions of the pages. Logging in with a token at /login makes a
// session: 32 random bytes, which the browser's cookie carries. The store
// keeps only their SHA-256, with the session's role and a fingerprint of
// the token it was made with, so a session survives a restart, logging out
// ends it in every browser that holds a copy of the cookie, and a session
// ends by itself when it is idle too long, when it is too old, or when its
// token changes. The forms of a session carry a CSRF token derived from the
// session id.

const (
	// sessionCookieName is the session cookie over plain http.
	sessionCookieName = "flakeship_session"
	// secureSessionCookieName is the session cookie when the public URL is
	// https: a browser keeps a __Host- cookie only if it is Secure, for
	// Path=/ and without Domain, so no other site, not even a sibling
	// subdomain, can set or shadow it.
	secureSessionCookieName = "__Host-flakeship_session"
	// sessionIDBytes is the size of a session id: guessing one is
	// hopeless.
	sessionIDBytes = 32
	// sessionIdle ends a session that was not used for this long.
	sessionIdle = 12 * time.Hour
	// sessionMaxAge ends a session this long after its login, used or not.
	sessionMaxAge = 7 * 24 * time.Hour
	// sessionTouchEvery is how stale a session's last use may be before a
	// request records it again: a page view does not write to the store
	// each time, and idleness is measured to the minute.
	sessionTouchEvery = time.Minute
	// maxSessions bounds the stored sessions; a login beyond it ends the
	// sessions last seen longest ago.
	maxSessions = 10000
	// csrfField is the form field of the CSRF token.
	csrfField = "csrf"
)

// The roles of a session.
const (
	roleAdmin = "admin" // made with the admin token: reads and acts
	roleRead  = "read"  // made with the read token: reads
)

// The labels of the MACs sessions use, so that no MAC can stand for another.
const (
	// fingerprintLabel is what a token's fingerprint is the MAC of, keyed
	// by the token.
	fingerprintLabel = "flakeship session token fingerprint v1"
	// csrfLabel is what a session's CSRF token is the MAC of, keyed by the
	// session id.
	csrfLabel = "flakeship csrf v1"
)

// sessionLocal is the fiber local that holds a request's session lookup,
// so the store is asked once per request.
const sessionLocal = "flakeship.session"

// errSessionLookup answers a request whose session could not be read from
// the store: the cause is in the log, written when the lookup failed.
var errSessionLookup = &requestError{http.StatusInternalServerError, "internal error"}

// session is what a request's session cookie allows.
type session struct {
	id    []byte // the session's random id; nil without a valid session
	admin bool   // logged in with the admin token: may act
	read  bool   // logged in with either token: may read
}

// sessionLookup is a request's session, or why it could not be read.
type sessionLookup struct {
	sess session
	err  error
}

// fingerprint is the MAC of fingerprintLabel keyed by token: it tells
// whether a session was made with the token configured now without
// storing the token. nil for an unset token.
func fingerprint(token config.Secret) []byte {
	if !token.IsSet() {
		return nil
	}
	m := hmac.New(sha256.New, []byte(token.Reveal()))
	m.Write([]byte(fingerprintLabel))
	return m.Sum(nil)
}

// sessionHash is what the store keeps of a session id.
func sessionHash(id []byte) []byte {
	h := sha256.Sum256(id)
	return h[:]
}

// newSessionID returns a random session id and the cookie value that
// carries it.
func newSessionID() ([]byte, string) {
	id := make([]byte, sessionIDBytes)
	rand.Read(id) // never returns an error; crashes the program if the system's source fails
	return id, base64.RawURLEncoding.EncodeToString(id)
}

// parseSessionID returns the session id a cookie value carries, or false
// for a value no login made.
func parseSessionID(value string) ([]byte, bool) {
	if len(value) != base64.RawURLEncoding.EncodedLen(sessionIDBytes) {
		return nil, false
	}
	// Strict: one id has one spelling.
	id, err := base64.RawURLEncoding.Strict().DecodeString(value)
	if err != nil || len(id) != sessionIDBytes {
		return nil, false
	}
	return id, true
}

// sessionCookie is the name of the session cookie.
func (s *Server) sessionCookie() string {
	if s.secureCookie {
		return secureSessionCookieName
	}
	return sessionCookieName
}

// sessionOf returns the request's session for showing a page: none when
// the request has none, or when it could not be read from the store (the
// lookup logged why). Guards use checkedSession.
func (s *Server) sessionOf(c *fiber.Ctx) session {
	sess, _ := s.checkedSession(c)
	return sess
}

// checkedSession returns the request's session, or errSessionLookup when
// the store could not be asked. A session that ended is deleted here. The
// answer is kept for the rest of the request.
func (s *Server) checkedSession(c *fiber.Ctx) (session, error) {
	if l, ok := c.Locals(sessionLocal).(*sessionLookup); ok {
		return l.sess, l.err
	}
	sess, err := s.lookupSession(c)
	if err != nil {
		s.log.Error("look up session", "method", c.Method(), "path", clip(c.Path()), "err", err)
		sess, err = session{}, errSessionLookup
	}
	c.Locals(sessionLocal, &sessionLookup{sess: sess, err: err})
	return sess, err
}

// lookupSession reads the session the request's cookie names from the
// store and checks that it has not ended; it records the session's use.
func (s *Server) lookupSession(c *fiber.Ctx) (session, error) {
	if s.sessions == nil {
		return session{}, nil
	}
	id, ok := parseSessionID(c.Cookies(s.sessionCookie()))
	if !ok {
		return session{}, nil
	}
	hash := sessionHash(id)
	ctx, cancel := context.WithTimeout(context.Background(), submitTimeout)
	defer cancel()
	rec, err := s.sessions.Session(ctx, hash)
	if errors.Is(err, deploy.ErrNotFound) {
		return session{}, nil
	}
	if err != nil {
		return session{}, err
	}
	now := s.now()
	if why := s.sessionEnded(rec, now); why != "" {
		if err := s.sessions.DeleteSession(ctx, hash); err != nil {
			return session{}, fmt.Errorf("end session: %w", err)
		}
		s.log.Info("session ended", "role", rec.Role, "reason", why)
		return session{}, nil
	}
	if now.Sub(rec.LastSeen) >= sessionTouchEvery {
		if err := s.sessions.TouchSession(ctx, hash, now); err != nil {
			return session{}, err
		}
	}
	return session{id: id, admin: rec.Role == roleAdmin, read: true}, nil
}

// sessionEnded says why rec may not be used at now, or "" if it may.
func (s *Server) sessionEnded(rec deploy.Session, now time.Time) string {
	var want []byte
	switch rec.Role {
	case roleAdmin:
		want = s.adminPrint
	case roleRead:
		want = s.readPrint
	}
	switch {
	case want == nil:
		return "its token is not configured any more"
	case !hmac.Equal(rec.Fingerprint, want):
		return "its token changed"
	case !now.Before(rec.LastSeen.Add(sessionIdle)):
		return "idle too long"
	case !now.Before(rec.CreatedAt.Add(sessionMaxAge)):
		return "too old"
	}
	return ""
}

// sessionLimits are what a login ends of the stored sessions at now.
func (s *Server) sessionLimits(now time.Time) deploy.SessionLimits {
	l := deploy.SessionLimits{
		IdleBefore:    now.Add(-sessionIdle),
		CreatedBefore: now.Add(-sessionMaxAge),
		Max:           maxSessions,
	}
	for _, f := range [][]byte{s.adminPrint, s.readPrint} {
		if f != nil {
			l.Fingerprints = append(l.Fingerprints, f)
		}
	}
	return l
}

// canRead reports whether sess may read the pages: always when no read
// token is configured.
func (s *Server) canRead(sess session) bool {
	return sess.read || !s.cfg.ReadToken.IsSet()
}

// csrfToken is the CSRF token of sess's forms, the MAC of a fixed label
// keyed by the session id; "" without a session.
func (s *Server) csrfToken(sess session) string {
	if sess.id == nil {
		return ""
	}
	m := hmac.New(sha256.New, sess.id)
	m.Write([]byte(csrfLabel))
	return hex.EncodeToString(m.Sum(nil))
}

// formValue returns a field of the request's url-encoded form body; the
// query is never read, so nothing a form carries can come from a URL.
func formValue(c *fiber.Ctx, name string) string {
	return string(c.Request().PostArgs().Peek(name))
}

// checkForm refuses a POST form that came from another site: its Origin (or
// Referer) names another host, or its CSRF token is not sess's.
func (s *Server) checkForm(c *fiber.Ctx, sess session) error {
	if !s.sameOrigin(c) {
		return forbidden("this form was sent from another site")
	}
	want := s.csrfToken(sess)
	if want == "" || !hmac.Equal([]byte(formValue(c, csrfField)), []byte(want)) {
		return forbidden("the form's CSRF token is missing or out of date: reload the page and try again")
	}
	return nil
}

// sameOrigin reports whether the request's Origin header, or its Referer
// when it has no Origin, names this server: the host the request was sent
// to, or the public URL's. A request with neither header passes; the CSRF
// token still guards it.
func (s *Server) sameOrigin(c *fiber.Ctx) bool {
	for _, h := range []string{fiber.HeaderOrigin, fiber.HeaderReferer} {
		v := c.Get(h)
		if v == "" {
			continue
		}
		u, err := url.Parse(v)
		if err != nil || u.Host == "" {
			return false // includes "Origin: null"
		}
		if strings.EqualFold(u.Host, string(c.Request().Host())) {
			return true
		}
		pub, err := url.Parse(s.cfg.PublicURL)
		return err == nil && pub.Host != "" && strings.EqualFold(u.Host, pub.Host)
	}
	return true
}

// setSession sets (or, with value "", clears) the session cookie: HttpOnly,
// SameSite=Strict, Path=/, and Secure (with the __Host- name) when the
// public URL is https. It lives as long as the browser runs; the store
// decides how long the session does.
func (s *Server) setSession(c *fiber.Ctx, value string) {
	ck := &fiber.Cookie{
		Name:     s.sessionCookie(),
		Value:    value,
		Path:     "/",
		HTTPOnly: true,
		SameSite: fiber.CookieSameSiteStrictMode,
		Secure:   s.secureCookie,
	}
	if value == "" {
		ck.Expires = time.Unix(0, 0)
	}
	c.Cookie(ck)
}

// requirePageRead sends a request without the session a read token asks
// for to the login page.
func (s *Server) requirePageRead(c *fiber.Ctx) error {
	sess, err := s.checkedSession(c)
	if err != nil {
		return s.pageError(c, err)
	}
	if s.canRead(sess) {
		return c.Next()
	}
	return c.Redirect("/login?next="+url.QueryEscape(c.OriginalURL()), http.StatusSeeOther)
}

// operatorForm checks that a POST comes from an operator's page: write
// actions are enabled, the session is an admin one, and the form is not
// forged.
func (s *Server) operatorForm(c *fiber.Ctx) error {
	if !s.cfg.AdminToken.IsSet() {
		return forbidden("the write actions are disabled: no admin token is configured")
	}
	sess, err := s.checkedSession(c)
	if err != nil {
		return err
	}
	if !sess.admin {
		return forbidden("log in with the admin token first")
	}
	return s.checkForm(c, sess)
}

// loginPage is the body of login.html.
type loginPage struct {
	Enabled      bool // some token is configured
	AdminEnabled bool
	ReadEnabled  bool
	Next         string
	Error        string
}

func (s *Server) loginBody(next, msg string) loginPage {
	return loginPage{
		Enabled:      s.cfg.AdminToken.IsSet() || s.cfg.ReadToken.IsSet(),
		AdminEnabled: s.cfg.AdminToken.IsSet(),
		ReadEnabled:  s.cfg.ReadToken.IsSet(),
		Next:         safeNext(next),
		Error:        msg,
	}
}

// queryTokenMessage tells someone who put a token in the URL what to do.
const queryTokenMessage = "A token is never taken from the URL (URLs end up in browser history and proxy logs): type it into the form."

// loginPage answers GET /login with the token form.
func (s *Server) loginPage(c *fiber.Ctx) error {
	if refuseQueryToken(c) != nil {
		return s.render(c, http.StatusBadRequest, "login.html", s.base(c, s.sessionOf(c), "Log in"),
			s.loginBody(c.Query("next"), queryTokenMessage))
	}
	return s.render(c, http.StatusOK, "login.html", s.base(c, s.sessionOf(c), "Log in"), s.loginBody(c.Query("next"), ""))
}

// login answers POST /login: the admin token (from the form body, never the
// URL) makes an operator session, the read token a reading one. The token
// is compared in constant time; a new random session replaces the one the
// browser had.
func (s *Server) login(c *fiber.Ctx) error {
	next := safeNext(formValue(c, "next"))
	if refuseQueryToken(c) != nil {
		// Refused before it is looked at: a token in a URL is never used,
		// right or wrong, and not counted as a guess.
		return s.render(c, http.StatusBadRequest, "login.html", s.base(c, s.sessionOf(c), "Log in"),
			s.loginBody(next, queryTokenMessage))
	}
	if !s.cfg.AdminToken.IsSet() && !s.cfg.ReadToken.IsSet() {
		return s.render(c, http.StatusForbidden, "login.html", s.base(c, session{}, "Log in"), s.loginBody(next, ""))
	}
	if s.sessions == nil {
		return s.pageError(c, forbidden("logging in is not available on this server"))
	}
	if !s.sameOrigin(c) {
		return s.pageError(c, forbidden("this form was sent from another site"))
	}
	client := s.clientIP(c)
	if wait := s.authFailures.retryAfter(client); wait > 0 {
		// The same bound as the API's: wrong tokens from one client,
		// through either door, count together.
		secs := int(math.Ceil(wait.Seconds()))
		c.Set(fiber.HeaderRetryAfter, strconv.Itoa(secs))
		return s.render(c, http.StatusTooManyRequests, "login.html", s.base(c, s.sessionOf(c), "Log in"),
			s.loginBody(next, fmt.Sprintf("Too many wrong tokens from this address: try again in %ds.", secs)))
	}
	tok := formValue(c, "token")
	var role string
	var fp []byte
	switch {
	case tokenEqual(tok, s.cfg.AdminToken):
		role, fp = roleAdmin, s.adminPrint
	case tokenEqual(tok, s.cfg.ReadToken):
		role, fp = roleRead, s.readPrint
	default:
		s.authFailures.fail(client)
		s.log.Warn("wrong token", "client", client, "method", c.Method(), "path", c.Path())
		return s.render(c, http.StatusUnauthorized, "login.html", s.base(c, s.sessionOf(c), "Log in"),
			s.loginBody(next, "That token is not right."))
	}

	ctx, cancel := context.WithTimeout(context.Background(), submitTimeout)
	defer cancel()
	// A session the browser had ends: the new one is not one an attacker
	// could have planted before the login.
	old, err := s.checkedSession(c)
	if err != nil {
		return s.pageError(c, err)
	}
	if old.id != nil {
		if err := s.sessions.DeleteSession(ctx, sessionHash(old.id)); err != nil {
			return s.pageError(c, fmt.Errorf("login: end the previous session: %w", err))
		}
	}
	id, value := newSessionID()
	now := s.now()
	rec := deploy.Session{IDHash: sessionHash(id), Role: role, Fingerprint: fp, CreatedAt: now, LastSeen: now}
	if err := s.sessions.CreateSession(ctx, rec, s.sessionLimits(now)); err != nil {
		return s.pageError(c, fmt.Errorf("login: %w", err))
	}
	s.setSession(c, value)
	s.log.Info("page login", "role", role, "client", client)
	return c.Redirect(next, http.StatusSeeOther)
}

// logout answers POST /logout: it ends the session in the store, so a copy
// of the cookie in any other browser is refused too, and clears the
// cookie.
func (s *Server) logout(c *fiber.Ctx) error {
	sess, err := s.checkedSession(c)
	if err != nil {
		return s.pageError(c, err)
	}
	if sess.read {
		if err := s.checkForm(c, sess); err != nil {
			return s.pageError(c, err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), submitTimeout)
		defer cancel()
		if err := s.sessions.DeleteSession(ctx, sessionHash(sess.id)); err != nil {
			return s.pageError(c, fmt.Errorf("logout: %w", err))
		}
		s.log.Info("page logout", "admin", sess.admin, "client", s.clientIP(c))
	}
	s.setSession(c, "")
	return c.Redirect("/", http.StatusSeeOther)
}

// safeNext returns next if it is a path on this server, else "/". A
// control character anywhere refuses it: url.Parse checks only the part
// before a "#", and a CR or LF in a Location header is an injected header.
func safeNext(next string) string {
	if !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") || strings.HasPrefix(next, "/\\") {
		return "/"
	}
	for i := 0; i < len(next); i++ {
		if c := next[i]; c < ' ' || c == 0x7f {
			return "/"
		}
	}
	u, err := url.Parse(next)
	if err != nil || u.Host != "" || u.Scheme != "" {
		return "/"
	}
	return strings.Clone(next)
}
