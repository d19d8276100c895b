package server

import (
	"bytes"
	"context"
	"crypto/rand"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/gofiber/fiber/v2/middleware/filesystem"

	"github.com/flakeship/flakeship/deploy"
	"github.com/flakeship/flakeship/forge"
)

// The HTML pages: / lists the targets and recent deploys, /deploys/{id}
// shows one deploy with its log, live over Server-Sent Events from
// /deploys/{id}/events while it runs. An operator who logged in with the
// admin token at /login (sessions.go) gets redeploy, rollback and cancel
// buttons; those forms carry a CSRF token. With a read token configured,
// every page needs a session. Everything is rendered with html/template:
// log lines and commit messages are untrusted.

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// pageTemplates are the parsed pages, each with the layout; read-only after
// package initialisation.
var pageTemplates = parsePages("index.html", "deploy.html", "login.html", "error.html")

const (
	// recentDeploys is how many deploys the index page lists.
	recentDeploys = 50
	// pageLogLimit is how much of a log the deploy page renders: the end of
	// a longer log, with a note and the raw log's link for the rest.
	pageLogLimit = 1 << 20
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
		// Not pageError: that renders a page too.
		return s.writeError(c, s.log, fmt.Errorf("render page %s: %w", name, err))
	}
	c.Set(fiber.HeaderContentType, fiber.MIMETextHTMLCharsetUTF8)
	c.Set(fiber.HeaderCacheControl, "no-store")
	c.Set(fiber.HeaderXContentTypeOptions, "nosniff")
	c.Set(fiber.HeaderReferrerPolicy, "same-origin")
	c.Set(fiber.HeaderContentSecurityPolicy, fmt.Sprintf("default-src 'none'; style-src 'self'; img-src 'self'; "+
		"script-src 'nonce-%s'; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'", b.Nonce))
	return c.Status(status).Send(buf.Bytes())
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
		ID: d.ID, Target: d.Target, SHA: d.SHA, Short: forge.ShortSHA(d.SHA), Trigger: d.Trigger, State: d.State,
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
			CurrentSHA: t.CurrentSHA, CurrentShort: forge.ShortSHA(t.CurrentSHA), Generation: t.Generation,
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
		D: d, Short: forge.ShortSHA(d.SHA),
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
	title := fmt.Sprintf("Deploy %d: %s %s", id, d.Target, forge.ShortSHA(d.SHA))
	return s.render(c, http.StatusOK, "deploy.html", s.base(c, s.sessionOf(c), title), body)
}

// parseID reads a deploy id from a path.
func parseID(p string) (int64, bool) {
	// As the server writes ids: no sign, no leading zero, so that one
	// deploy has one URL.
	if p == "" || p[0] < '1' || p[0] > '9' {
		return 0, false
	}
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
		"sha", forge.ShortSHA(d.SHA), "of_deploy", id)
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
	s.log.Info("rollback requested from the page", "target", name, "deploy_id", d.ID, "sha", forge.ShortSHA(d.SHA))
	return c.Redirect(fmt.Sprintf("/deploys/%d", d.ID), http.StatusSeeOther)
}
