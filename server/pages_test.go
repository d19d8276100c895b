package server

import (
	"bufio"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flakeship/flakeship/config"
	"github.com/flakeship/flakeship/deploy"
	"github.com/flakeship/flakeship/forge"
	"github.com/flakeship/flakeship/internal/gittest"
	"github.com/flakeship/flakeship/internal/queuetest"
	"github.com/flakeship/flakeship/internal/testenv"
	"github.com/flakeship/flakeship/store"
)

// The page tests run a real deploy queue of one build-only target
// (ACTIVATE=none) behind a real Server on 127.0.0.1: a real git server, the
// real fetcher, real nix builds, a real profile and a real SQLite store.

const (
	pageAdminToken = config.Secret("admin-token-pages-5d1e")
	pageReadToken  = config.Secret("read-token-pages-a07c")
	// pageDeadline bounds waits for a deploy or a stream; never a speed
	// goal.
	pageDeadline = 60 * time.Second
	// pageCookie is the session cookie's name: the rig's public URL is
	// https, so it is Secure and has the __Host- prefix.
	pageCookie = "__Host-flakeship_session"
)

// pageRigOptions configure newPageRig.
type pageRigOptions struct {
	admin, read config.Secret
	// writeTimeout, if not zero, replaces the server's 10 s WriteTimeout.
	writeTimeout time.Duration
	// now, if not nil, is the server's clock.
	now func() time.Time
	// trusted are the trusted proxies (FLAKESHIP_TRUSTED_PROXIES).
	trusted []netip.Prefix
	// metrics, if not nil, serves /metrics.
	metrics http.Handler
	// noSandbox builds without nix's sandbox, so that a build can wait at
	// a testenv.Gate.
	noSandbox bool
	// streamsPerDeploy and streams, if not zero, replace the limits of
	// following log streams.
	streamsPerDeploy, streams int
}

// pageRig is a running Server over a real deploy queue.
type pageRig struct {
	t      *testing.T
	opts   pageRigOptions
	cfg    *config.Config
	queue  *deploy.Queue
	store  *store.Store
	log    *slog.Logger
	repo   *gittest.Repo
	srv    *Server
	url    string
	client *http.Client
	logs   *logSink
	system string
	nonce  string
	n      int

	stopOnce sync.Once
	stopErr  error
	served   chan error
}

func newPageRig(t *testing.T, o pageRigOptions) *pageRig {
	t.Helper()
	testenv.Require(t, "git", "nix")
	state := stateDir(t)
	gs := gittest.NewServer(t)
	r := &pageRig{
		t:      t,
		opts:   o,
		repo:   gs.NewRepo(t, "app"),
		logs:   newLogSink(),
		system: system(t),
		nonce:  fmt.Sprintf("%x", time.Now().UnixNano()),
	}
	r.cfg = &config.Config{
		StateDir:       state,
		PublicURL:      "https://deploy.example.test",
		AdminToken:     o.admin,
		ReadToken:      o.read,
		MaxParallel:    1,
		Nix:            "nix",
		NixFlags:       testenv.NixFlags(),
		TrustedProxies: o.trusted,
		Targets: []config.Target{{
			Name: "app", Forge: "github", Repo: "acme/app", CloneURL: gs.URL("app"),
			Branch: "main", Attr: "packages." + r.system + ".default", Activate: config.ActivateNone,
			Profile: filepath.Join(state, "profiles", "app"), HealthTimeout: 5 * time.Second,
			BuildTimeout: time.Minute, WebhookSecret: "hook-secret", StatusContext: "flakeship/app",
		}},
	}
	if o.noSandbox {
		r.cfg.NixFlags = append(r.cfg.NixFlags, testenv.NoSandbox...)
	}
	r.log = slog.New(slog.NewTextHandler(r.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	r.store, r.queue = queuetest.Start(t, r.cfg, r.log, queuetest.Options{Grace: pageDeadline})
	r.serve(r.cfg)
	transport := &http.Transport{}
	r.client = &http.Client{
		Transport: transport,
		// Redirects are what the tests look at.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	t.Cleanup(func() {
		transport.CloseIdleConnections()
		if err := r.stop(); err != nil {
			t.Errorf("server stop: %v", err)
		}
	})
	return r
}

// serve starts a Server with cfg over the rig's queue and store on
// 127.0.0.1.
func (r *pageRig) serve(cfg *config.Config) {
	r.t.Helper()
	r.srv = New(Options{Config: cfg, Deployer: r.queue, Operator: r.queue, Sessions: r.store, Log: r.log,
		Now: r.opts.now, Metrics: r.opts.metrics})
	if r.opts.writeTimeout > 0 {
		r.srv.app.Server().WriteTimeout = r.opts.writeTimeout
	}
	if r.opts.streamsPerDeploy > 0 {
		r.srv.streams.perDeploy = r.opts.streamsPerDeploy
	}
	if r.opts.streams > 0 {
		r.srv.streams.total = r.opts.streams
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		r.t.Fatal(err)
	}
	r.served = make(chan error, 1)
	go func() { r.served <- r.srv.Listen(ln) }()
	r.url = "http://" + ln.Addr().String()
}

// restart stops the server and starts a new one over the same queue and
// store, with the rig's configuration changed by edit, as a restart of
// flakeship with another environment would.
func (r *pageRig) restart(edit func(cfg *config.Config)) {
	r.t.Helper()
	if err := r.stop(); err != nil {
		r.t.Fatalf("stop before the restart: %v", err)
	}
	cfg := *r.cfg
	edit(&cfg)
	r.stopOnce, r.stopErr = sync.Once{}, nil
	r.serve(&cfg)
}

// stop shuts the server down and waits for Listen to return; later calls
// return the first one's result.
func (r *pageRig) stop() error {
	r.stopOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), pageDeadline)
		defer cancel()
		if err := r.srv.Shutdown(ctx); err != nil {
			r.stopErr = err
			return
		}
		select {
		case r.stopErr = <-r.served:
		case <-ctx.Done():
			r.stopErr = fmt.Errorf("Listen did not return after Shutdown")
		}
	})
	return r.stopErr
}

// commit pushes a commit to main whose build runs script (which must write
// $out) and returns its sha.
func (r *pageRig) commit(script string) string {
	r.t.Helper()
	r.n++
	script = fmt.Sprintf(": %s %d; %s", r.nonce, r.n, script)
	flake := fmt.Sprintf(`{ outputs = { self }: { packages.%[1]s.default = derivation {
  name = "pages-test"; system = "%[1]s"; builder = "/bin/sh"; args = [ "-c" %[2]q ]; }; }; }
`, r.system, script)
	sha := r.repo.Commit(r.t, fmt.Sprintf("build %d", r.n), map[string]string{"flake.nix": flake})
	r.repo.Push(r.t, "main")
	return sha
}

// quick is a build that succeeds at once and prints a line of HTML, which
// the page must show as text.
const quick = `echo '<img src=x onerror=alert(1)>'; echo built > $out`

// ticking returns a build that prints "tick 1" to "tick n", waits at
// gate, prints "tick n+1" to "tick 2n" and succeeds: it runs, with ticks
// in its log, for as long as the test holds the gate.
func ticking(n int, gate *testenv.Gate) string {
	// No seq: a build has no PATH, only the shell's builtins.
	return fmt.Sprintf(`n=1; while [ $n -le %[1]d ]; do echo "tick $n"; n=$((n+1)); done; %[2]s; `+
		`while [ $n -le %[3]d ]; do echo "tick $n"; n=$((n+1)); done; echo built > $out`, n, gate.Script(), 2*n)
}

// tickRE finds the lines of a ticking build in a log.
var tickRE = regexp.MustCompile(`tick \d+$`)

// submit queues a push of sha with the given commit message.
func (r *pageRig) submit(sha, message string) int64 {
	r.t.Helper()
	d, dup, err := r.queue.SubmitPush(context.Background(), "app", forge.PushEvent{
		Forge: forge.GitHub, DeliveryID: fmt.Sprintf("delivery-%s-%d", r.nonce, r.n), Repo: "acme/app",
		Branch: "main", SHA: sha, Pusher: "octocat", Author: "Mona <mona@example.test>", Message: message,
	})
	if err != nil || dup {
		r.t.Fatalf("submit %s: dup=%v err=%v", sha[:7], dup, err)
	}
	return d.ID
}

// waitEnd waits until deploy id ends, following it, and returns it.
func (r *pageRig) waitEnd(id int64) *deploy.Deploy {
	r.t.Helper()
	d := waitDeployEnd(r.t, r.queue, id)
	if d.State == deploy.Failed {
		r.t.Logf("deploy %d failed: %s; its log:\n%s", id, d.Error, r.deployLog(id))
	}
	return d
}

// deployLog returns deploy id's log as it is now, for failure messages.
func (r *pageRig) deployLog(id int64) string {
	var b strings.Builder
	if err := r.queue.WriteLog(context.Background(), id, &b, false); err != nil {
		return err.Error()
	}
	return b.String()
}

// answer is an HTTP answer, body read.
type answer struct {
	status int
	header http.Header
	body   string
}

// do sends a request with the session cookie (if not "") and extra headers.
func (r *pageRig) do(method, path, cookie string, form url.Values, h map[string]string) answer {
	r.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, r.url+path, body)
	if err != nil {
		r.t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	if cookie != "" {
		req.AddCookie(&http.Cookie{Name: pageCookie, Value: cookie})
	}
	for k, v := range h {
		req.Header.Set(k, v)
	}
	resp, err := r.client.Do(req)
	if err != nil {
		r.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		r.t.Fatalf("%s %s: read: %v", method, path, err)
	}
	return answer{status: resp.StatusCode, header: resp.Header, body: string(b)}
}

func (r *pageRig) get(path, cookie string) answer {
	r.t.Helper()
	return r.do(http.MethodGet, path, cookie, nil, nil)
}

// login posts token to /login and returns the session cookie it sets.
func (r *pageRig) login(token config.Secret) string {
	r.t.Helper()
	a := r.do(http.MethodPost, "/login", "", url.Values{"token": {token.Reveal()}, "next": {"/"}}, nil)
	if a.status != http.StatusSeeOther {
		r.t.Fatalf("login: %d %s", a.status, a.body)
	}
	return sessionFrom(r.t, a)
}

// sessionFrom returns the session cookie an answer sets.
func sessionFrom(t *testing.T, a answer) string {
	t.Helper()
	for _, c := range (&http.Response{Header: a.header}).Cookies() {
		if c.Name == pageCookie {
			return c.Value
		}
	}
	t.Fatalf("no %s cookie set; headers %v", pageCookie, a.header)
	return ""
}

var csrfRE = regexp.MustCompile(`name="csrf" value="([0-9a-f]+)"`)

// csrfOf returns the CSRF token of a page's forms.
func csrfOf(t *testing.T, page string) string {
	t.Helper()
	m := csrfRE.FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no CSRF token in the page:\n%s", page)
	}
	return m[1]
}

func TestPagesShowDeploysAndEscapeUntrustedText(t *testing.T) {
	t.Parallel()
	r := newPageRig(t, pageRigOptions{admin: pageAdminToken})
	sha := r.commit(quick)
	const message = "Fix <script>alert('pwned')</script> & more"
	id := r.submit(sha, message)
	if d := r.waitEnd(id); d.State != deploy.Succeeded {
		t.Fatalf("deploy = %+v, want succeeded", d)
	}

	tests := []struct {
		name       string
		path       string
		status     int
		typ        string
		want       []string
		wantAbsent []string
	}{
		{
			name: "the index lists the target and the deploy", path: "/", status: 200, typ: "text/html",
			want: []string{"acme/app@main", sha[:7], fmt.Sprintf(`href="/deploys/%d"`, id),
				`class="badge state-succeeded">succeeded<`, ">push<", `name="viewport"`},
		},
		{
			name: "the deploy page shows the commit, its message escaped, and the log", path: fmt.Sprintf("/deploys/%d", id),
			status: 200, typ: "text/html",
			want: []string{sha, "<code>" + sha[:7] + "</code>", `id="state" class="badge state-succeeded">succeeded<`,
				"Fix &lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt; &amp; more", "Mona &lt;mona@example.test&gt;",
				"octocat", "&lt;img src=x onerror=alert(1)&gt;", fmt.Sprintf("flakeship deploy %d of target app", id),
				">fetch<", ">build<", fmt.Sprintf(`href="/api/deploys/%d/log"`, id)},
			wantAbsent: []string{"<script>alert", "<img src=x", "<script nonce", `id="redeploy"`},
		},
		{
			name: "an unknown deploy is a 404 page", path: "/deploys/99999", status: 404, typ: "text/html",
			want: []string{"404 Not Found", "there is no deploy 99999"},
		},
		{
			name: "a deploy id that is not a number is a 404 page", path: "/deploys/abc", status: 404, typ: "text/html",
			want: []string{"there is no deploy &#34;abc&#34;"},
		},
		{
			name: "the stylesheet is served", path: "/static/style.css", status: 200, typ: "text/css",
			want: []string{"prefers-color-scheme: dark", ".scroll"},
		},
		{
			name: "an unknown static file is a 404", path: "/static/nothing.css", status: 404, typ: "",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a := r.get(tc.path, "")
			if a.status != tc.status {
				t.Fatalf("GET %s: %d, want %d\n%s", tc.path, a.status, tc.status, a.body)
			}
			if ct := a.header.Get("Content-Type"); !strings.HasPrefix(ct, tc.typ) {
				t.Errorf("Content-Type %q, want %s", ct, tc.typ)
			}
			if tc.typ == "text/html" {
				if csp := a.header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'nonce-") ||
					!strings.Contains(csp, "default-src 'none'") {
					t.Errorf("Content-Security-Policy %q", csp)
				}
			}
			for _, w := range tc.want {
				if !strings.Contains(a.body, w) {
					t.Errorf("page lacks %q:\n%s", w, a.body)
				}
			}
			for _, w := range tc.wantAbsent {
				if strings.Contains(a.body, w) {
					t.Errorf("page has %q:\n%s", w, a.body)
				}
			}
		})
	}
}

func TestPagesOfARunningDeployFollowItsLog(t *testing.T) {
	t.Parallel()
	r := newPageRig(t, pageRigOptions{noSandbox: true})
	gate := testenv.NewGate(t)
	id := r.hold(r.commit(ticking(3, gate)))
	// The build waits at the gate, its first ticks logged: it runs while
	// the page is read.
	page := r.get(fmt.Sprintf("/deploys/%d", id), "")
	if d, _ := r.queue.Get(context.Background(), id); d.State != deploy.Building {
		t.Fatalf("deploy %d is %s; the test wants it held in its build", id, d.State)
	}
	for _, w := range []string{
		"tick 1", "<script nonce=", "new EventSource(",
		fmt.Sprintf(`href="/api/deploys/%d/log?follow=1">follow the raw log</a>`, id),
		fmt.Sprintf(`data-events="/deploys/%d/events?offset=`, id),
	} {
		if !strings.Contains(page.body, w) {
			t.Errorf("running deploy's page lacks %q:\n%s", w, page.body)
		}
	}
	if strings.Contains(page.body, "tick 4") {
		t.Errorf("the page of a deploy held before tick 4 shows it:\n%s", page.body)
	}
	if err := gate.Open(); err != nil {
		t.Fatal(err)
	}
	r.waitEnd(id)
	if done := r.get(fmt.Sprintf("/deploys/%d", id), ""); strings.Contains(done.body, "<script") ||
		!strings.Contains(done.body, "tick 6") {
		t.Errorf("finished deploy's page has a script or lacks the whole log:\n%s", done.body)
	}
}

// sseEvent is one Server-Sent Event.
type sseEvent struct {
	id, name, data string
}

// readEvents parses Server-Sent Events from body and sends them on out
// until the body ends; then it closes out.
func readEvents(body io.Reader, out chan<- sseEvent) {
	defer close(out)
	sc := bufio.NewScanner(body)
	var ev sseEvent
	var data []string
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			if ev.name != "" || len(data) > 0 {
				ev.data = strings.Join(data, "\n")
				out <- ev
			}
			ev, data = sseEvent{}, nil
			continue
		}
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch field {
		case "id":
			ev.id = value
		case "event":
			ev.name = value
		case "data":
			data = append(data, value)
		}
	}
}

// openEvents opens deploy id's event stream.
func (r *pageRig) openEvents(path string, h map[string]string) (*http.Response, <-chan sseEvent) {
	r.t.Helper()
	req, err := http.NewRequest(http.MethodGet, r.url+path, nil)
	if err != nil {
		r.t.Fatal(err)
	}
	for k, v := range h {
		req.Header.Set(k, v)
	}
	resp, err := r.client.Do(req)
	if err != nil {
		r.t.Fatalf("GET %s: %v", path, err)
	}
	r.t.Cleanup(func() { resp.Body.Close() })
	events := make(chan sseEvent, 1024)
	go readEvents(resp.Body, events)
	return resp, events
}

// next returns the next event, or ok=false when the stream ended.
func nextEvent(t *testing.T, events <-chan sseEvent) (sseEvent, bool) {
	t.Helper()
	select {
	case ev, ok := <-events:
		return ev, ok
	case <-time.After(pageDeadline):
		t.Fatalf("no event within %s", pageDeadline)
		return sseEvent{}, false
	}
}

func TestSSEStreamsTheLogPastTheWriteTimeoutAndEnds(t *testing.T) {
	t.Parallel()
	const writeTimeout = 200 * time.Millisecond
	r := newPageRig(t, pageRigOptions{writeTimeout: writeTimeout, noSandbox: true})
	gate := testenv.NewGate(t)
	id := r.submit(r.commit(ticking(4, gate)), "held")
	opened := time.Now()
	resp, events := r.openEvents(fmt.Sprintf("/deploys/%d/events", id), nil)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("events: %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	var (
		lines  []string
		states []string
		last   sseEvent
	)
	// read takes events until one has a log line containing until ("":
	// until the stream ends); it says whether it found it.
	read := func(until string) bool {
		for {
			ev, ok := nextEvent(t, events)
			if !ok {
				return until == ""
			}
			last = ev
			switch ev.name {
			case "log":
				lines = append(lines, strings.Split(ev.data, "\n")...)
				if until != "" && strings.Contains(ev.data, until) {
					return true
				}
			case "state":
				states = append(states, ev.data)
			}
		}
	}
	if !read("waiting at the gate") {
		t.Fatalf("the stream ended before the build reached the gate: %q", lines)
	}
	// Everything so far came while the deploy ran: it waits at the gate.
	liveTicks := 0
	for _, l := range lines {
		if tickRE.MatchString(l) {
			liveTicks++
		}
	}
	// The stream stays quiet, the build held at the gate, for twice the
	// write timeout: a write deadline set once, as the stream began, would
	// cut off what comes after. (Letting this time pass is the claim
	// under test, not a window to hit: on a slower machine it only grows.)
	<-time.After(2 * writeTimeout)
	if err := gate.Open(); err != nil {
		t.Fatal(err)
	}
	read("")
	streamed := time.Since(opened)
	if streamed <= writeTimeout {
		t.Fatalf("the deploy took %s, not longer than the write timeout %s: the test proves nothing", streamed, writeTimeout)
	}
	if last.name != "end" || last.data != `{"state":"succeeded","terminal":true}` {
		t.Fatalf("last event = %+v, want end with succeeded\nlines: %q\nlog:\n%s", last, lines, r.logs.String())
	}
	var ticks []string
	for _, l := range lines {
		if m := tickRE.FindString(l); m != "" {
			ticks = append(ticks, m)
		}
	}
	if want := "tick 1,tick 2,tick 3,tick 4,tick 5,tick 6,tick 7,tick 8"; strings.Join(ticks, ",") != want {
		t.Errorf("ticks streamed: %q, want %s", ticks, want)
	}
	if liveTicks != 4 {
		t.Errorf("%d tick lines arrived while the deploy was held in its build, want 4", liveTicks)
	}
	if !hasString(states, `{"state":"building","terminal":false}`) || states[len(states)-1] != `{"state":"succeeded","terminal":true}` {
		t.Errorf("state events %q, want building among them and succeeded last", states)
	}
	// The streamed log is the whole log, in order.
	var whole strings.Builder
	if err := r.queue.WriteLog(context.Background(), id, &whole, false); err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(lines, "\n")+"\n", whole.String(); got != want {
		t.Errorf("streamed log differs from the log:\n%s\nwant:\n%s", got, want)
	}
	t.Logf("streamed %d lines over %s with a %s write timeout", len(lines), streamed.Round(time.Millisecond), writeTimeout)
}

func hasString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func TestSSEResumesAfterWhatTheClientHas(t *testing.T) {
	t.Parallel()
	r := newPageRig(t, pageRigOptions{})
	id := r.submit(r.commit(quick), "quick")
	r.waitEnd(id)
	var whole strings.Builder
	if err := r.queue.WriteLog(context.Background(), id, &whole, false); err != nil {
		t.Fatal(err)
	}
	log := whole.String()
	firstLine := len(log[:strings.IndexByte(log, '\n')+1])
	tests := []struct {
		name    string
		path    string
		header  map[string]string
		wantLog string
	}{
		{"from the start", fmt.Sprintf("/deploys/%d/events", id), nil, log},
		{"from the offset the page had", fmt.Sprintf("/deploys/%d/events?offset=%d", id, firstLine), nil, log[firstLine:]},
		{"from the Last-Event-ID of a reconnect", fmt.Sprintf("/deploys/%d/events?offset=0", id),
			map[string]string{"Last-Event-ID": strconv.Itoa(firstLine)}, log[firstLine:]},
		{"nothing when the client has it all", fmt.Sprintf("/deploys/%d/events?offset=%d", id, len(log)), nil, ""},
		{"from the start for a bad offset", fmt.Sprintf("/deploys/%d/events?offset=-4", id), nil, log},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, events := r.openEvents(tc.path, tc.header)
			var got strings.Builder
			var names []string
			for ev := range events {
				names = append(names, ev.name)
				if ev.name == "log" {
					got.WriteString(ev.data + "\n")
				}
			}
			if got.String() != tc.wantLog {
				t.Errorf("log streamed:\n%s\nwant:\n%s", got.String(), tc.wantLog)
			}
			if len(names) < 3 || names[0] != "state" || names[len(names)-1] != "end" {
				t.Errorf("events %v, want state first and end last", names)
			}
		})
	}
	if a := r.get("/deploys/99999/events", ""); a.status != http.StatusNotFound {
		t.Errorf("events of an unknown deploy: %d, want 404", a.status)
	}
}

// untilLogEvent reads events until a log event has want, failing t if the
// stream ends first.
func untilLogEvent(t *testing.T, events <-chan sseEvent, want string) {
	t.Helper()
	for {
		ev, ok := nextEvent(t, events)
		if !ok {
			t.Fatalf("the stream ended before a log event with %q", want)
		}
		if ev.name == "log" && strings.Contains(ev.data, want) {
			return
		}
	}
}

func TestSSEStreamStopsWhenTheClientGoesAway(t *testing.T) {
	t.Parallel()
	r := newPageRig(t, pageRigOptions{noSandbox: true})
	gate := testenv.NewGate(t)
	id := r.submit(r.commit(ticking(1, gate)), "held")
	resp, events := r.openEvents(fmt.Sprintf("/deploys/%d/events", id), nil)
	untilLogEvent(t, events, "waiting at the gate")
	resp.Body.Close()
	// The deploy is held in its build, so only the client's leaving can
	// end the stream.
	r.logs.waitFor(t, "event stream ended: the client went away")
	if d, _ := r.queue.Get(context.Background(), id); d.State != deploy.Building {
		t.Errorf("deploy %d is %s; the test wants it held in its build", id, d.State)
	}
}

func TestSSEStreamEndsWhenTheServerShutsDown(t *testing.T) {
	t.Parallel()
	r := newPageRig(t, pageRigOptions{noSandbox: true})
	gate := testenv.NewGate(t)
	id := r.submit(r.commit(ticking(1, gate)), "held")
	_, events := r.openEvents(fmt.Sprintf("/deploys/%d/events", id), nil)
	untilLogEvent(t, events, "waiting at the gate")
	if err := r.stop(); err != nil {
		t.Fatalf("shutdown with a stream open: %v", err)
	}
	for ev := range events {
		if ev.name == "end" {
			t.Errorf("the stream sent end at shutdown: %+v", ev)
		}
	}
	if d, _ := r.queue.Get(context.Background(), id); d.State != deploy.Building {
		t.Errorf("deploy %d is %s; the test wants it held in its build past the shutdown", id, d.State)
	}
}

func TestLoginSetsARandomSessionCookie(t *testing.T) {
	t.Parallel()
	r := newPageRig(t, pageRigOptions{admin: pageAdminToken, read: pageReadToken})
	tests := []struct {
		name     string
		form     url.Values
		origin   string
		status   int
		location string
		session  bool
	}{
		{"the admin token", url.Values{"token": {pageAdminToken.Reveal()}, "next": {"/deploys/1"}}, "", 303, "/deploys/1", true},
		{"the read token", url.Values{"token": {pageReadToken.Reveal()}}, "", 303, "/", true},
		{"the admin token from this site", url.Values{"token": {pageAdminToken.Reveal()}}, r.url, 303, "/", true},
		// Behind a proxy the browser's Origin is the public URL, not the
		// address the request reached.
		{"the admin token from the public URL", url.Values{"token": {pageAdminToken.Reveal()}}, "https://deploy.example.test", 303, "/", true},
		{"a next that leaves the site", url.Values{"token": {pageAdminToken.Reveal()}, "next": {"//evil.example/x"}}, "", 303, "/", true},
		{"a wrong token", url.Values{"token": {"admin-token-pages-5d1f"}}, "", 401, "", false},
		{"a prefix of the token", url.Values{"token": {pageAdminToken.Reveal()[:10]}}, "", 401, "", false},
		{"no token", url.Values{}, "", 401, "", false},
		{"the admin token from another site", url.Values{"token": {pageAdminToken.Reveal()}}, "https://evil.example", 403, "", false},
	}
	seen := map[string]bool{}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := map[string]string{}
			if tc.origin != "" {
				h["Origin"] = tc.origin
			}
			a := r.do(http.MethodPost, "/login", "", tc.form, h)
			if a.status != tc.status {
				t.Fatalf("POST /login: %d, want %d\n%s", a.status, tc.status, a.body)
			}
			if loc := a.header.Get("Location"); loc != tc.location {
				t.Errorf("Location %q, want %q", loc, tc.location)
			}
			setCookie := strings.Join(a.header.Values("Set-Cookie"), "\n")
			if !tc.session {
				if setCookie != "" {
					t.Errorf("a refused login set %q", setCookie)
				}
				return
			}
			// 32 random bytes, URL-safe base64 without padding: 43
			// characters, new at every login.
			value := sessionFrom(t, a)
			id, err := base64.RawURLEncoding.DecodeString(value)
			if err != nil || len(id) != 32 || len(value) != 43 {
				t.Errorf("session cookie %q: want 32 bytes in base64url (%d bytes, %v)", value, len(id), err)
			}
			if seen[value] {
				t.Errorf("session cookie %q was given before", value)
			}
			seen[value] = true
			for _, attr := range []string{pageCookie + "=", "HttpOnly", "SameSite=Strict", "Secure", "path=/"} {
				if !strings.Contains(strings.ToLower(setCookie), strings.ToLower(attr)) {
					t.Errorf("Set-Cookie %q lacks %s", setCookie, attr)
				}
			}
			if strings.Contains(strings.ToLower(setCookie), "domain=") {
				t.Errorf("Set-Cookie %q has a Domain, which a __Host- cookie may not", setCookie)
			}
			for _, secret := range []config.Secret{pageAdminToken, pageReadToken} {
				if strings.Contains(setCookie, secret.Reveal()) {
					t.Errorf("Set-Cookie holds a token: %q", setCookie)
				}
			}
		})
	}
	if strings.Contains(r.logs.String(), pageAdminToken.Reveal()) || strings.Contains(r.logs.String(), pageReadToken.Reveal()) {
		t.Errorf("a token reached the log:\n%s", r.logs.String())
	}
}

func TestLoginRefusesAnAddressAfterTooManyWrongTokens(t *testing.T) {
	t.Parallel()
	r := newPageRig(t, pageRigOptions{admin: pageAdminToken})
	for i := 0; i < maxAuthFailures; i++ {
		if a := r.do(http.MethodPost, "/login", "", url.Values{"token": {fmt.Sprintf("guess-%d", i)}}, nil); a.status != http.StatusUnauthorized {
			t.Fatalf("wrong token %d: %d, want 401", i, a.status)
		}
	}
	a := r.do(http.MethodPost, "/login", "", url.Values{"token": {pageAdminToken.Reveal()}}, nil)
	if a.status != http.StatusTooManyRequests || a.header.Get("Retry-After") == "" || a.header.Get("Set-Cookie") != "" {
		t.Errorf("the right token after %d wrong ones: %d, Retry-After %q, Set-Cookie %q; want 429 and no session",
			maxAuthFailures, a.status, a.header.Get("Retry-After"), a.header.Get("Set-Cookie"))
	}
}

func TestLoginThenLogoutClearsTheSession(t *testing.T) {
	t.Parallel()
	r := newPageRig(t, pageRigOptions{admin: pageAdminToken})
	cookie := r.login(pageAdminToken)
	page := r.get("/", cookie)
	if !strings.Contains(page.body, ">operator<") {
		t.Fatalf("index with an admin session does not say operator:\n%s", page.body)
	}
	if a := r.do(http.MethodPost, "/logout", cookie, url.Values{}, nil); a.status != http.StatusForbidden {
		t.Errorf("logout without the CSRF token: %d, want 403", a.status)
	}
	a := r.do(http.MethodPost, "/logout", cookie, url.Values{"csrf": {csrfOf(t, page.body)}}, nil)
	if a.status != http.StatusSeeOther || !strings.Contains(a.header.Get("Set-Cookie"), pageCookie+"=;") ||
		!strings.Contains(a.header.Get("Set-Cookie"), "expires=") {
		t.Errorf("logout: %d, Set-Cookie %q, want 303 clearing the cookie", a.status, a.header.Get("Set-Cookie"))
	}
}

func TestPageFormsNeedAnAdminSessionAndTheCSRFToken(t *testing.T) {
	t.Parallel()
	r := newPageRig(t, pageRigOptions{admin: pageAdminToken, read: pageReadToken})
	first := r.commit(quick)
	id1 := r.submit(first, "first")
	r.waitEnd(id1)
	second := r.commit(`echo second > $out`)
	id2 := r.submit(second, "second")
	r.waitEnd(id2)

	admin, reader := r.login(pageAdminToken), r.login(pageReadToken)
	page := r.get(fmt.Sprintf("/deploys/%d", id2), admin)
	csrf := csrfOf(t, page.body)
	for _, w := range []string{`id="redeploy"`, `id="rollback"`, fmt.Sprintf(`action="/deploys/%d/redeploy"`, id2)} {
		if !strings.Contains(page.body, w) {
			t.Errorf("operator's deploy page lacks %q", w)
		}
	}
	readerPage := r.get(fmt.Sprintf("/deploys/%d", id2), reader)
	if strings.Contains(readerPage.body, `id="redeploy"`) || strings.Contains(readerPage.body, csrf) {
		t.Errorf("a reader's page offers the operator's forms:\n%s", readerPage.body)
	}
	readerCSRF := csrfOf(t, readerPage.body) // of the logout form

	redeploy := fmt.Sprintf("/deploys/%d/redeploy", id2)
	refused := []struct {
		name   string
		cookie string
		form   url.Values
		header map[string]string
		status int
	}{
		{"no session", "", url.Values{"csrf": {csrf}}, nil, 403},
		{"no CSRF token", admin, url.Values{}, nil, 403},
		{"a wrong CSRF token", admin, url.Values{"csrf": {strings.Repeat("0", 64)}}, nil, 403},
		{"the reader's CSRF token", admin, url.Values{"csrf": {readerCSRF}}, nil, 403},
		{"a reader's session", reader, url.Values{"csrf": {readerCSRF}}, nil, 403},
		{"a forged session", "0123abcd", url.Values{"csrf": {csrf}}, nil, 403},
		{"another site's Origin", admin, url.Values{"csrf": {csrf}}, map[string]string{"Origin": "https://evil.example"}, 403},
		{"Origin null", admin, url.Values{"csrf": {csrf}}, map[string]string{"Origin": "null"}, 403},
		{"another site's Referer", admin, url.Values{"csrf": {csrf}}, map[string]string{"Referer": "https://evil.example/page"}, 403},
	}
	for _, tc := range refused {
		t.Run("redeploy refused with "+tc.name, func(t *testing.T) {
			a := r.do(http.MethodPost, redeploy, tc.cookie, tc.form, tc.header)
			if a.status != tc.status || !strings.Contains(a.header.Get("Content-Type"), "text/html") {
				t.Fatalf("POST %s: %d %q, want %d page\n%s", redeploy, a.status, a.header.Get("Content-Type"), tc.status, a.body)
			}
		})
	}
	if ds, _ := r.queue.List(context.Background(), deploy.Filter{}); len(ds) != 2 {
		t.Fatalf("%d deploys after refused forms, want 2", len(ds))
	}

	t.Run("redeploy makes a manual deploy of the same commit", func(t *testing.T) {
		a := r.do(http.MethodPost, redeploy, admin, url.Values{"csrf": {csrf}},
			map[string]string{"Origin": r.url, "Referer": r.url + "/deploys/1"})
		if a.status != http.StatusSeeOther {
			t.Fatalf("redeploy: %d\n%s", a.status, a.body)
		}
		id3, err := strconv.ParseInt(strings.TrimPrefix(a.header.Get("Location"), "/deploys/"), 10, 64)
		if err != nil || id3 <= id2 {
			t.Fatalf("redeploy redirects to %q, want the new deploy", a.header.Get("Location"))
		}
		d := r.waitEnd(id3)
		if d.Trigger != deploy.TriggerManual || d.SHA != second || d.State != deploy.Succeeded {
			t.Errorf("redeploy = %+v, want a succeeded manual deploy of %s", d, second[:7])
		}
	})
	t.Run("rollback makes the earlier build current again", func(t *testing.T) {
		a := r.do(http.MethodPost, "/targets/app/rollback", admin, url.Values{"csrf": {csrf}}, nil)
		if a.status != http.StatusSeeOther {
			t.Fatalf("rollback: %d\n%s", a.status, a.body)
		}
		id, err := strconv.ParseInt(strings.TrimPrefix(a.header.Get("Location"), "/deploys/"), 10, 64)
		if err != nil {
			t.Fatalf("rollback redirects to %q", a.header.Get("Location"))
		}
		d := r.waitEnd(id)
		if d.Trigger != deploy.TriggerRollback || d.SHA != first || d.State != deploy.Succeeded {
			t.Errorf("rollback = %+v, want a succeeded rollback to %s", d, first[:7])
		}
	})
	conflicts := []struct {
		name, path, want string
		status           int
	}{
		{"cancelling a finished deploy", fmt.Sprintf("/deploys/%d/cancel", id1), "cannot move from succeeded to cancelled", 409},
		{"rolling back an unknown target", "/targets/nope/rollback", "target &#34;nope&#34; is not configured", 404},
		{"redeploying an unknown deploy", "/deploys/99999/redeploy", "not found", 404},
	}
	for _, tc := range conflicts {
		t.Run(tc.name, func(t *testing.T) {
			a := r.do(http.MethodPost, tc.path, admin, url.Values{"csrf": {csrf}}, nil)
			if a.status != tc.status || !strings.Contains(a.body, tc.want) {
				t.Errorf("POST %s: %d, want %d with %q\n%s", tc.path, a.status, tc.status, tc.want, a.body)
			}
		})
	}
}

func TestOperatorCancelsARunningDeployFromItsPage(t *testing.T) {
	t.Parallel()
	r := newPageRig(t, pageRigOptions{admin: pageAdminToken, noSandbox: true})
	admin := r.login(pageAdminToken)
	// The build waits at a gate that is never opened: only the cancel
	// ends it.
	id := r.heldDeploy(testenv.NewGate(t))
	page := r.get(fmt.Sprintf("/deploys/%d", id), admin)
	if !strings.Contains(page.body, `id="cancel"`) || strings.Contains(page.body, `id="redeploy"`) {
		t.Fatalf("a building deploy's page should offer cancel and not redeploy:\n%s", page.body)
	}
	a := r.do(http.MethodPost, fmt.Sprintf("/deploys/%d/cancel", id), admin, url.Values{"csrf": {csrfOf(t, page.body)}}, nil)
	if a.status != http.StatusSeeOther || a.header.Get("Location") != fmt.Sprintf("/deploys/%d", id) {
		t.Fatalf("cancel: %d %q\n%s", a.status, a.header.Get("Location"), a.body)
	}
	if d := r.waitEnd(id); d.State != deploy.Cancelled {
		t.Errorf("cancelled deploy ended %s", d.State)
	}
}

func TestReadTokenGatesThePages(t *testing.T) {
	t.Parallel()
	r := newPageRig(t, pageRigOptions{admin: pageAdminToken, read: pageReadToken})
	id := r.submit(r.commit(quick), "gated")
	r.waitEnd(id)
	reader, admin := r.login(pageReadToken), r.login(pageAdminToken)
	tests := []struct {
		name     string
		path     string
		cookie   string
		status   int
		location string
	}{
		{"the index without a session", "/", "", 303, "/login?next=%2F"},
		{"a deploy page without a session", fmt.Sprintf("/deploys/%d", id), "", 303, fmt.Sprintf("/login?next=%%2Fdeploys%%2F%d", id)},
		{"events without a session", fmt.Sprintf("/deploys/%d/events", id), "", 401, ""},
		{"a forged session", "/", "feedface", 303, "/login?next=%2F"},
		{"the index with a read session", "/", reader, 200, ""},
		{"a deploy page with a read session", fmt.Sprintf("/deploys/%d", id), reader, 200, ""},
		{"a deploy page with an admin session", fmt.Sprintf("/deploys/%d", id), admin, 200, ""},
		{"the login page without a session", "/login", "", 200, ""},
		{"the stylesheet without a session", "/static/style.css", "", 200, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a := r.get(tc.path, tc.cookie)
			if a.status != tc.status || a.header.Get("Location") != tc.location {
				t.Fatalf("GET %s: %d %q, want %d %q", tc.path, a.status, a.header.Get("Location"), tc.status, tc.location)
			}
		})
	}
	page := r.get(fmt.Sprintf("/deploys/%d", id), reader)
	if strings.Contains(page.body, `id="redeploy"`) || !strings.Contains(page.body, ">reader<") {
		t.Errorf("a reader's deploy page:\n%s", page.body)
	}
}

// TestEventStreamsThatCannotStartAreJSONErrors checks that an event stream
// refused before it starts is answered as every other error is (errors.go):
// the status and a JSON {"error":...}.
func TestEventStreamsThatCannotStartAreJSONErrors(t *testing.T) {
	t.Parallel()
	r := newPageRig(t, pageRigOptions{admin: pageAdminToken, read: pageReadToken})
	reader := r.login(pageReadToken)
	tests := []struct {
		name, path, cookie string
		status             int
		want               string
	}{
		{"without a session", "/deploys/1/events", "", 401, `{"error":"log in to read this flakeship's deploys"}`},
		{"an id that is no number", "/deploys/abc/events", reader, 404, `{"error":"no such deploy"}`},
		{"an unknown deploy", "/deploys/99999/events", reader, 404, `{"error":"no such deploy"}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a := r.get(tc.path, tc.cookie)
			if a.status != tc.status || !strings.HasPrefix(a.header.Get("Content-Type"), "application/json") || a.body != tc.want {
				t.Errorf("GET %s: %d %q %q, want %d JSON %s", tc.path, a.status, a.header.Get("Content-Type"), a.body, tc.status, tc.want)
			}
		})
	}
}

func TestWithoutAnAdminTokenThePagesOfferNoActions(t *testing.T) {
	t.Parallel()
	r := newPageRig(t, pageRigOptions{})
	id := r.submit(r.commit(quick), "open")
	r.waitEnd(id)
	page := r.get(fmt.Sprintf("/deploys/%d", id), "")
	if page.status != http.StatusOK || strings.Contains(page.body, "<form") || strings.Contains(page.body, "log in") {
		t.Errorf("deploy page without tokens: %d\n%s", page.status, page.body)
	}
	login := r.get("/login", "")
	if login.status != http.StatusOK || !strings.Contains(login.body, "the write actions are disabled") ||
		strings.Contains(login.body, `name="token"`) {
		t.Errorf("login page without tokens: %d\n%s", login.status, login.body)
	}
	tests := []struct {
		name, path string
		form       url.Values
		status     int
	}{
		{"login", "/login", url.Values{"token": {"anything"}}, 403},
		{"redeploy", fmt.Sprintf("/deploys/%d/redeploy", id), url.Values{"csrf": {"x"}}, 403},
		{"rollback", "/targets/app/rollback", url.Values{"csrf": {"x"}}, 403},
		{"cancel", fmt.Sprintf("/deploys/%d/cancel", id), url.Values{"csrf": {"x"}}, 403},
	}
	for _, tc := range tests {
		t.Run(tc.name+" is refused", func(t *testing.T) {
			a := r.do(http.MethodPost, tc.path, "", tc.form, nil)
			if a.status != tc.status || a.header.Get("Set-Cookie") != "" {
				t.Errorf("POST %s: %d (Set-Cookie %q), want %d", tc.path, a.status, a.header.Get("Set-Cookie"), tc.status)
			}
		})
	}
	if ds, _ := r.queue.List(context.Background(), deploy.Filter{}); len(ds) != 1 {
		t.Errorf("%d deploys, want 1", len(ds))
	}
}
