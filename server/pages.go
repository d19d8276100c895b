package server

import (
	"bufio"
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/gofiber/fiber/v2/middleware/filesystem"

	"github.com/flakeship/flakeship/config"
	"github.com/flakeship/flakeship/deploy"
)

// The HTML pages: / lists the targets and recent deploys, /deploys/{id}
// shows one deploy with its log, live over Server-Sent Events from
// /deploys/{id}/events while it runs. An operator who logged in with the
// admin token at /login gets redeploy, rollback and cancel buttons; those
// forms carry a CSRF token. With a read token configured, every page needs a
// session. Everything is rendered with html/template: log lines and commit
// messages are untrusted.

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// pageTemplates are the parsed pages, each with the layout; read-only after
// package initialisation.
var pageTemplates = parsePages("index.html", "deploy.html", "login.html", "error.html")

const (
	// sessionCookie holds a value derived from a token, never the token.
	sessionCookie = "flakeship_session"
	// csrfField is the form field of the CSRF token.
	csrfField = "csrf"
	// recentDeploys is how many deploys the index page lists.
	recentDeploys = 50
	// pageLogLimit is how much of a log the deploy page renders: the end of
	// a longer log, with a note and the raw log's link for the rest.
	pageLogLimit = 1 << 20
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

// parsePages parses each page together with layout.html.
func parsePages(names ...string) map[string]*template.Template {
	out := make(map[string]*template.Template, len(names))
	for _, name := range names {
		out[name] = template.Must(template.New(name).ParseFS(templateFS, "templates/layout.html", "templates/"+name))
	}
	return out
}

// pageRoutes sets up the HTML pages, their event streams, the login and the
// operator actions.
func (s *Server) pageRoutes(app *fiber.App) {
	static, err := fs.Sub(staticFS, "static")
	if err != nil {
		panic(err) // the directory is embedded above: cannot happen
	}
	app.Use("/static", filesystem.New(filesystem.Config{Root: http.FS(static), MaxAge: 3600}))

	app.Get("/login", s.loginPage)
	app.Post("/login", s.login)
	app.Post("/logout", s.logout)

	app.Get("/", s.requirePageRead, s.indexPage)
	app.Get("/deploys/:id", s.requirePageRead, s.deployPage)
	app.Get("/deploys/:id/events", s.deployEvents)

	app.Post("/deploys/:id/redeploy", s.pageRedeploy)
	app.Post("/deploys/:id/cancel", s.pageCancel)
	app.Post("/targets/:name/rollback", s.pageRollback)
}

// session is what a request's session cookie allows.
type session struct {
	value string // the cookie's value; "" without a valid session
	admin bool   // logged in with the admin token: may act
	read  bool   // logged in with either token: may read
}

// Session values are HMAC-SHA256 of a fixed label keyed with the token: the
// cookie proves the token was presented without holding it, and changing
// the token ends every session.
const (
	adminSessionLabel = "flakeship-session"
	readSessionLabel  = "flakeship-read-session"
)

// mac returns the hex HMAC-SHA256 of msg under key.
func mac(key config.Secret, msg string) string {
	m := hmac.New(sha256.New, []byte(key.Reveal()))
	m.Write([]byte(msg))
	return hex.EncodeToString(m.Sum(nil))
}

// sessionOf checks the request's session cookie in constant time.
func (s *Server) sessionOf(c *fiber.Ctx) session {
	got := []byte(c.Cookies(sessionCookie))
	if len(got) == 0 {
		return session{}
	}
	if s.cfg.AdminToken.IsSet() && hmac.Equal(got, []byte(mac(s.cfg.AdminToken, adminSessionLabel))) {
		return session{value: string(got), admin: true, read: true}
	}
	if s.cfg.ReadToken.IsSet() && hmac.Equal(got, []byte(mac(s.cfg.ReadToken, readSessionLabel))) {
		return session{value: string(got), read: true}
	}
	return session{}
}

// canRead reports whether sess may read the pages: always when no read
// token is configured.
func (s *Server) canRead(sess session) bool {
	return sess.read || !s.cfg.ReadToken.IsSet()
}

// csrfToken is the CSRF token of sess's forms, keyed with the token the
// session was made from; "" without a session.
func (s *Server) csrfToken(sess session) string {
	switch {
	case sess.admin:
		return mac(s.cfg.AdminToken, "csrf|"+sess.value)
	case sess.read:
		return mac(s.cfg.ReadToken, "csrf|"+sess.value)
	}
	return ""
}

// checkForm refuses a POST form that came from another site: its Origin (or
// Referer) names another host, or its CSRF token is not sess's.
func (s *Server) checkForm(c *fiber.Ctx, sess session) error {
	if !s.sameOrigin(c) {
		return forbidden("this form was sent from another site")
	}
	want := s.csrfToken(sess)
	if want == "" || !hmac.Equal([]byte(c.FormValue(csrfField)), []byte(want)) {
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
// SameSite=Strict, Path=/, and Secure when the public URL is https.
func (s *Server) setSession(c *fiber.Ctx, value string) {
	ck := &fiber.Cookie{
		Name:     sessionCookie,
		Value:    value,
		Path:     "/",
		HTTPOnly: true,
		SameSite: fiber.CookieSameSiteStrictMode,
		Secure:   strings.HasPrefix(strings.ToLower(s.cfg.PublicURL), "https://"),
	}
	if value == "" {
		ck.Expires = time.Unix(0, 0)
	}
	c.Cookie(ck)
}

// requirePageRead sends a request without the session a read token asks
// for to the login page.
func (s *Server) requirePageRead(c *fiber.Ctx) error {
	if s.canRead(s.sessionOf(c)) {
		return c.Next()
	}
	return c.Redirect("/login?next="+url.QueryEscape(c.OriginalURL()), http.StatusSeeOther)
}

// basePage is what the layout of every page needs.
type basePage struct {
	Title    string
	Nonce    string // of the page's inline script, in its Content-Security-Policy
	LoggedIn bool
	Operator bool   // an admin session: the action buttons show
	CanLogIn bool   // a token is configured
	CSRF     string // of the session's forms
	Path     string // where the login link returns to
}

// pageData is a page's template data: the layout's fields and the page's
// own in Body.
type pageData struct {
	basePage
	Body any
}

func (s *Server) base(c *fiber.Ctx, sess session, title string) basePage {
	return basePage{
		Title:    title,
		Nonce:    rand.Text(),
		LoggedIn: sess.read,
		Operator: sess.admin,
		CanLogIn: s.cfg.AdminToken.IsSet() || s.cfg.ReadToken.IsSet(),
		CSRF:     s.csrfToken(sess),
		Path:     strings.Clone(c.OriginalURL()),
	}
}

// render answers with page name. Pages are never cached, may only run
// their own inline script (by nonce) and are never framed.
func (s *Server) render(c *fiber.Ctx, status int, name string, b basePage, body any) error {
	var buf bytes.Buffer
	if err := pageTemplates[name].ExecuteTemplate(&buf, "layout", pageData{basePage: b, Body: body}); err != nil {
		s.log.Error("render page", "page", name, "err", err)
		c.Set(fiber.HeaderContentType, fiber.MIMETextPlainCharsetUTF8)
		return c.Status(http.StatusInternalServerError).SendString("internal error\n")
	}
	c.Set(fiber.HeaderContentType, fiber.MIMETextHTMLCharsetUTF8)
	c.Set(fiber.HeaderCacheControl, "no-store")
	c.Set(fiber.HeaderXContentTypeOptions, "nosniff")
	c.Set(fiber.HeaderReferrerPolicy, "same-origin")
	c.Set(fiber.HeaderContentSecurityPolicy, fmt.Sprintf("default-src 'none'; style-src 'self'; img-src 'self'; "+
		"script-src 'nonce-%s'; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'", b.Nonce))
	return c.Status(status).Send(buf.Bytes())
}

// errorPage is the body of error.html.
type errorPage struct {
	Status     int
	StatusText string
	Message    string
}

// pageError answers err as an HTML page with the status and message
// httpError gives it: the deploy queue's errors (404, 400, 409, 503) keep
// their one-line text, which names no secret; anything else is a 500 whose
// details go only to the log.
func (s *Server) pageError(c *fiber.Ctx, err error) error {
	status, msg, internal := s.httpError(err)
	if internal {
		s.log.Error("page failed", "method", c.Method(), "path", c.Path(), "err", err)
	}
	return s.render(c, status, "error.html", s.base(c, s.sessionOf(c), http.StatusText(status)),
		errorPage{Status: status, StatusText: http.StatusText(status), Message: msg})
}

// stamp is a time as the pages show it.
type stamp struct {
	Set   bool
	ISO   string // RFC 3339, for <time datetime>
	Clock string // 2006-01-02 15:04:05 UTC
	Age   string // "5m ago"
}

func stampOf(t *time.Time, now time.Time) stamp {
	if t == nil || t.IsZero() {
		return stamp{}
	}
	return stamp{
		Set:   true,
		ISO:   t.UTC().Format(time.RFC3339),
		Clock: t.UTC().Format("2006-01-02 15:04:05 UTC"),
		Age:   age(now.Sub(*t)),
	}
}

// age says how long ago something was, coarsely.
func age(d time.Duration) string {
	switch {
	case d < 5*time.Second:
		return "just now"
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d/time.Second))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d/time.Minute))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d/time.Hour))
	}
	return fmt.Sprintf("%dd ago", int(d/(24*time.Hour)))
}

// took is a duration as the pages show it: milliseconds under a second,
// tenths under ten seconds, whole seconds above.
func took(d time.Duration) string {
	switch {
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < 10*time.Second:
		return d.Round(100 * time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}

// durationOf is how long d ran, "... so far" while it runs, "" before it
// starts.
func durationOf(d *deploy.Deploy, now time.Time) string {
	switch {
	case d.StartedAt == nil:
		return ""
	case d.FinishedAt != nil:
		return took(d.FinishedAt.Sub(*d.StartedAt))
	case d.State.Terminal():
		return ""
	}
	return took(now.Sub(*d.StartedAt)) + " so far"
}

// deployRow is a deploy in a table.
type deployRow struct {
	ID       int64
	Target   string
	SHA      string
	Short    string
	Trigger  deploy.Trigger
	State    deploy.State
	Created  stamp
	Duration string
}

func rowOf(d *deploy.Deploy, now time.Time) deployRow {
	return deployRow{
		ID: d.ID, Target: d.Target, SHA: d.SHA, Short: short(d.SHA), Trigger: d.Trigger, State: d.State,
		Created: stampOf(&d.CreatedAt, now), Duration: durationOf(d, now),
	}
}

// targetRow is a target on the index page.
type targetRow struct {
	Name, Repo, Branch       string
	CurrentSHA, CurrentShort string
	Generation               int
	Last                     *deployRow
}

// indexPage is the body of index.html.
type indexPage struct {
	Targets []targetRow
	Deploys []deployRow
}

// indexPage answers GET /: the targets and the recent deploys.
func (s *Server) indexPage(c *fiber.Ctx) error {
	ctx, cancel := context.WithTimeout(context.Background(), submitTimeout)
	defer cancel()
	targets, err := s.operator.Targets(ctx)
	if err != nil {
		return s.pageError(c, fmt.Errorf("index page: %w", err))
	}
	deploys, err := s.operator.List(ctx, deploy.Filter{Limit: recentDeploys})
	if err != nil {
		return s.pageError(c, fmt.Errorf("index page: %w", err))
	}
	now := s.now()
	var body indexPage
	for _, t := range targets {
		row := targetRow{
			Name: t.Name, Repo: t.Repo, Branch: t.Branch,
			CurrentSHA: t.CurrentSHA, CurrentShort: short(t.CurrentSHA), Generation: t.Generation,
		}
		if t.LastDeploy != nil {
			last := rowOf(t.LastDeploy, now)
			row.Last = &last
		}
		body.Targets = append(body.Targets, row)
	}
	for _, d := range deploys {
		body.Deploys = append(body.Deploys, rowOf(d, now))
	}
	return s.render(c, http.StatusOK, "index.html", s.base(c, s.sessionOf(c), "Deploys"), body)
}

// stepRow is a step on the deploy page.
type stepRow struct {
	Name    string
	Started stamp
	Took    string
	OK      bool
	Running bool
}

// deployPage is the body of deploy.html.
type deployPage struct {
	D           *deploy.Deploy
	Short       string
	Created     stamp
	Started     stamp
	Finished    stamp
	Duration    string
	Steps       []stepRow
	Active      bool // not ended: the log is live
	CanRedeploy bool
	CanCancel   bool
	Log         string
	LogOmitted  int64
	LogError    string
	EventsURL   string
	RawLogURL   string
}

// deployPage answers GET /deploys/{id}: the deploy and its log as it is
// now; while it runs, a script follows the rest from /deploys/{id}/events.
func (s *Server) deployPage(c *fiber.Ctx) error {
	id, ok := parseID(c.Params("id"))
	if !ok {
		return s.pageError(c, notFound("there is no deploy %q", clip(c.Params("id"))))
	}
	ctx, cancel := context.WithTimeout(context.Background(), submitTimeout)
	defer cancel()
	d, err := s.operator.Get(ctx, id)
	if errors.Is(err, deploy.ErrNotFound) {
		return s.pageError(c, notFound("there is no deploy %d", id))
	}
	if err != nil {
		return s.pageError(c, fmt.Errorf("deploy page %d: %w", id, err))
	}
	now := s.now()
	tail := &logTail{limit: pageLogLimit}
	body := deployPage{
		D: d, Short: short(d.SHA),
		Created: stampOf(&d.CreatedAt, now), Started: stampOf(d.StartedAt, now), Finished: stampOf(d.FinishedAt, now),
		Duration:    durationOf(d, now),
		Active:      !d.State.Terminal(),
		CanRedeploy: d.State.Terminal(),
		CanCancel:   d.State.CanMove(deploy.Cancelled),
		RawLogURL:   fmt.Sprintf("/api/deploys/%d/log", id),
	}
	for _, st := range d.Steps {
		row := stepRow{Name: st.Name, Started: stampOf(&st.StartedAt, now), OK: st.OK}
		switch {
		case st.FinishedAt != nil:
			row.Took = took(st.FinishedAt.Sub(st.StartedAt))
		case body.Active:
			row.Running, row.Took = true, took(now.Sub(st.StartedAt))+" so far"
		}
		body.Steps = append(body.Steps, row)
	}
	if err := s.operator.WriteLog(ctx, id, tail, false); err != nil {
		s.log.Warn("deploy log unavailable", "deploy_id", id, "err", err)
		body.LogError = "The log could not be read; the raw log may have it."
	}
	body.Log, body.LogOmitted = tail.text()
	body.EventsURL = fmt.Sprintf("/deploys/%d/events?offset=%d", id, tail.total)
	title := fmt.Sprintf("Deploy %d: %s %s", id, d.Target, short(d.SHA))
	return s.render(c, http.StatusOK, "deploy.html", s.base(c, s.sessionOf(c), title), body)
}

// parseID reads a deploy id from a path.
func parseID(p string) (int64, bool) {
	id, err := strconv.ParseInt(p, 10, 64)
	return id, err == nil && id > 0
}

// logTail keeps the last limit bytes written to it, and counts them all.
type logTail struct {
	limit int
	total int64
	buf   []byte
}

// Write implements io.Writer.
func (t *logTail) Write(p []byte) (int, error) {
	t.total += int64(len(p))
	t.buf = append(t.buf, p...)
	if len(t.buf) > 2*t.limit {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-t.limit:]...)
	}
	return len(p), nil
}

// text returns what is kept, from the first whole line when the start was
// dropped, and how many bytes were left out before it.
func (t *logTail) text() (string, int64) {
	b := t.buf
	if len(b) > t.limit {
		b = b[len(b)-t.limit:]
	}
	omitted := t.total - int64(len(b))
	if omitted > 0 {
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
			omitted += int64(i + 1)
		}
	}
	return strings.ToValidUTF8(string(b), "\uFFFD"), omitted
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
	streamCtx, done, err := s.streams.start()
	switch {
	case errors.Is(err, errStreamsBusy):
		// The EventSource retries after its retry delay.
		s.overload.note(s.log, "streams", "stream refused: too many streams at once", "limit", s.limits.Streams)
		c.Set(fiber.HeaderRetryAfter, strconv.Itoa(busyRetryAfter))
		return plain(http.StatusServiceUnavailable, "flakeship is busy: too many streams at once, try again shortly")
	case err != nil:
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

// loginPage answers GET /login with the token form.
func (s *Server) loginPage(c *fiber.Ctx) error {
	return s.render(c, http.StatusOK, "login.html", s.base(c, s.sessionOf(c), "Log in"), s.loginBody(c.Query("next"), ""))
}

// login answers POST /login: the admin token makes an operator session,
// the read token a reading one. The token is compared in constant time and
// the cookie holds a value derived from it.
func (s *Server) login(c *fiber.Ctx) error {
	next := safeNext(c.FormValue("next"))
	if !s.cfg.AdminToken.IsSet() && !s.cfg.ReadToken.IsSet() {
		return s.render(c, http.StatusForbidden, "login.html", s.base(c, session{}, "Log in"), s.loginBody(next, ""))
	}
	if !s.sameOrigin(c) {
		return s.pageError(c, forbidden("this form was sent from another site"))
	}
	client := c.IP()
	if wait := s.authFailures.retryAfter(client); wait > 0 {
		// The same bound as the API's: wrong tokens from one address,
		// through either door, count together.
		secs := int(math.Ceil(wait.Seconds()))
		c.Set(fiber.HeaderRetryAfter, strconv.Itoa(secs))
		return s.render(c, http.StatusTooManyRequests, "login.html", s.base(c, s.sessionOf(c), "Log in"),
			s.loginBody(next, fmt.Sprintf("Too many wrong tokens from this address: try again in %ds.", secs)))
	}
	tok := c.FormValue("token")
	var value, role string
	switch {
	case tokenEqual(tok, s.cfg.AdminToken):
		value, role = mac(s.cfg.AdminToken, adminSessionLabel), "admin"
	case tokenEqual(tok, s.cfg.ReadToken):
		value, role = mac(s.cfg.ReadToken, readSessionLabel), "read"
	default:
		s.authFailures.fail(client)
		s.log.Warn("wrong token", "client", client, "method", c.Method(), "path", c.Path())
		return s.render(c, http.StatusUnauthorized, "login.html", s.base(c, s.sessionOf(c), "Log in"),
			s.loginBody(next, "That token is not right."))
	}
	s.setSession(c, value)
	s.log.Info("page login", "role", role, "client", client)
	return c.Redirect(next, http.StatusSeeOther)
}

// logout answers POST /logout: it clears the session cookie.
func (s *Server) logout(c *fiber.Ctx) error {
	if sess := s.sessionOf(c); sess.read {
		if err := s.checkForm(c, sess); err != nil {
			return s.pageError(c, err)
		}
	}
	s.setSession(c, "")
	return c.Redirect("/", http.StatusSeeOther)
}

// safeNext returns next if it is a path on this server, else "/".
func safeNext(next string) string {
	if !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") || strings.HasPrefix(next, "/\\") {
		return "/"
	}
	u, err := url.Parse(next)
	if err != nil || u.Host != "" || u.Scheme != "" {
		return "/"
	}
	return strings.Clone(next)
}

// operatorForm checks that a POST comes from an operator's page: write
// actions are enabled, the session is an admin one, and the form is not
// forged.
func (s *Server) operatorForm(c *fiber.Ctx) error {
	if !s.cfg.AdminToken.IsSet() {
		return forbidden("the write actions are disabled: no admin token is configured")
	}
	sess := s.sessionOf(c)
	if !sess.admin {
		return forbidden("log in with the admin token first")
	}
	return s.checkForm(c, sess)
}

// pageRedeploy answers POST /deploys/{id}/redeploy: a manual deploy of the
// same commit, then the new deploy's page.
func (s *Server) pageRedeploy(c *fiber.Ctx) error {
	if err := s.operatorForm(c); err != nil {
		return s.pageError(c, err)
	}
	id, ok := parseID(c.Params("id"))
	if !ok {
		return s.pageError(c, notFound("there is no deploy %q", clip(c.Params("id"))))
	}
	ctx, cancel := context.WithTimeout(context.Background(), submitTimeout)
	defer cancel()
	d, err := s.operator.Get(ctx, id)
	if err != nil {
		return s.pageError(c, fmt.Errorf("redeploy %d: %w", id, err))
	}
	nd, err := s.operator.Deploy(ctx, d.Target, deploy.ManualRequest{SHA: d.SHA})
	if err != nil {
		return s.pageError(c, err)
	}
	s.log.Info("redeploy requested from the page", "target", d.Target, "deploy_id", nd.ID,
		"sha", short(d.SHA), "of_deploy", id)
	return c.Redirect(fmt.Sprintf("/deploys/%d", nd.ID), http.StatusSeeOther)
}

// pageCancel answers POST /deploys/{id}/cancel, then shows the deploy.
func (s *Server) pageCancel(c *fiber.Ctx) error {
	if err := s.operatorForm(c); err != nil {
		return s.pageError(c, err)
	}
	id, ok := parseID(c.Params("id"))
	if !ok {
		return s.pageError(c, notFound("there is no deploy %q", clip(c.Params("id"))))
	}
	ctx, cancel := context.WithTimeout(context.Background(), submitTimeout)
	defer cancel()
	if err := s.operator.Cancel(ctx, id); err != nil {
		return s.pageError(c, err)
	}
	s.log.Info("cancel requested from the page", "deploy_id", id)
	return c.Redirect(fmt.Sprintf("/deploys/%d", id), http.StatusSeeOther)
}

// pageRollback answers POST /targets/{name}/rollback: a rollback deploy,
// then its page.
func (s *Server) pageRollback(c *fiber.Ctx) error {
	if err := s.operatorForm(c); err != nil {
		return s.pageError(c, err)
	}
	t, ok := s.cfg.Target(c.Params("name"))
	if !ok {
		return s.pageError(c, notFound("target %q is not configured", clip(c.Params("name"))))
	}
	// The configuration's copy of the name: fiber's params point into a
	// request buffer that is reused after the handler, and the queue keeps
	// the name.
	name := t.Name
	ctx, cancel := context.WithTimeout(context.Background(), submitTimeout)
	defer cancel()
	d, err := s.operator.Rollback(ctx, name)
	if err != nil {
		return s.pageError(c, err)
	}
	s.log.Info("rollback requested from the page", "target", name, "deploy_id", d.ID, "sha", short(d.SHA))
	return c.Redirect(fmt.Sprintf("/deploys/%d", d.ID), http.StatusSeeOther)
}
