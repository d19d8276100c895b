package server

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flakeship/flakeship/config"
	"github.com/flakeship/flakeship/deploy"
	"github.com/flakeship/flakeship/internal/gittest"
	"github.com/flakeship/flakeship/internal/queuetest"
	"github.com/flakeship/flakeship/internal/testenv"
)

// The API tests run the server over real HTTP in front of the real deploy
// queue: a real SQLite store, the real fetcher, nix and profile switcher on
// build-only targets (ACTIVATE=none), and, in the tests that deploy, a real
// git server and real nix builds. Nothing behind the API is a fake.

const (
	testAdminToken = config.Secret("admin-token-3c1d9f0e")
	testReadToken  = config.Secret("read-token-77ab02c4")
	apiPublicURL   = "https://deploy.example.test"
	// endWithin bounds waiting for a deploy to end: never a speed goal.
	endWithin = 90 * time.Second
)

// apiRig is a running Server with a real deploy queue behind it, with two
// targets of one repository: "app", which the tests deploy, and "idle",
// which they never do.
type apiRig struct {
	t      *testing.T
	srv    *Server
	queue  *deploy.Queue
	url    string
	logs   *testenv.Buffer
	repo   *gittest.Repo // nil without rigOptions.git
	system string
	nonce  string
	n      int
}

// rigOptions configure newAPIRig.
type rigOptions struct {
	admin, read config.Secret
	// git serves the targets' repository from a real git server; without
	// it their clone URL leads nowhere, so tests of what is refused before
	// any fetch run anywhere. nix is for the tests that build.
	git, nix bool
	// noSandbox builds without nix's sandbox, so that a build can wait at
	// a testenv.Gate.
	noSandbox bool
	// writeTimeout replaces the server's 10 s WriteTimeout when not 0.
	writeTimeout time.Duration
	now          func() time.Time
	trusted      []netip.Prefix // FLAKESHIP_TRUSTED_PROXIES
}

func newAPIRig(t *testing.T, o rigOptions) *apiRig {
	t.Helper()
	state := stateDir(t)
	r := &apiRig{t: t, logs: &testenv.Buffer{}, system: "x86_64-linux",
		nonce: fmt.Sprintf("%x", time.Now().UnixNano())}
	cloneURL := nowhereURL(t)
	if o.git {
		testenv.Require(t, "git")
		gs := gittest.NewServer(t)
		r.repo = gs.NewRepo(t, "app")
		cloneURL = gs.URL("app")
	}
	if o.nix {
		testenv.Require(t, "nix")
		r.system = system(t)
	}
	cfg := &config.Config{
		Listen: "127.0.0.1:0", PublicURL: apiPublicURL, StateDir: state,
		AdminToken: o.admin, ReadToken: o.read, MaxParallel: 1,
		Nix: "nix", NixFlags: testenv.NixFlags(), BodyLimit: 1 << 20, TrustedProxies: o.trusted,
	}
	if o.noSandbox {
		cfg.NixFlags = append(cfg.NixFlags, testenv.NoSandbox...)
	}
	for _, name := range []string{"app", "idle"} {
		cfg.Targets = append(cfg.Targets, config.Target{
			Name: name, Forge: "github", Repo: "acme/" + name, CloneURL: cloneURL, Branch: "main",
			Attr: "packages." + r.system + ".default", Activate: config.ActivateNone,
			Profile: filepath.Join(state, "profiles", name), HealthTimeout: 5 * time.Second,
			BuildTimeout: time.Minute, WebhookSecret: "hook-secret", StatusContext: "flakeship/" + name,
		})
	}
	log := slog.New(slog.NewTextHandler(r.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))

	_, q := queuetest.Start(t, cfg, log, queuetest.Options{Grace: endWithin})
	r.queue = q

	r.srv = New(Options{Config: cfg, Deployer: q, Operator: q, Log: log, Now: o.now})
	if o.writeTimeout > 0 {
		r.srv.app.Server().WriteTimeout = o.writeTimeout
	}
	r.url = "http://" + serve(t, r.srv)
	return r
}

// commit pushes a commit of app whose build succeeds and returns its id.
// With a gate, the build waits at it first (the rig needs noSandbox).
func (r *apiRig) commit(gate *testenv.Gate) string {
	r.t.Helper()
	r.n++
	script := fmt.Sprintf(": %s %d; echo built > $out", r.nonce, r.n)
	if gate != nil {
		script = fmt.Sprintf(": %s %d; echo building; %s; echo built > $out", r.nonce, r.n, gate.Script())
	}
	flake := fmt.Sprintf(`{ outputs = { self }: { packages.%[1]s.default = derivation {
  name = "api-test"; system = "%[1]s"; builder = "/bin/sh"; args = [ "-c" %[2]q ]; }; }; }
`, r.system, script)
	sha := r.repo.Commit(r.t, fmt.Sprintf("build %d", r.n), map[string]string{"flake.nix": flake})
	r.repo.Push(r.t, "main")
	return sha
}

// apiAnswer is one HTTP answer.
type apiAnswer struct {
	status int
	header http.Header
	body   []byte
}

// object decodes the answer's body as a JSON object (or fails the test).
func (a apiAnswer) object(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(a.body, &m); err != nil {
		t.Fatalf("answer %d %q is not a JSON object: %v", a.status, a.body, err)
	}
	return m
}

// apiRequest is one request of a test.
type apiRequest struct {
	method, path string
	token        config.Secret // sent as a bearer token when set
	auth         string        // a whole Authorization header instead
	body         string
	from         string // the client's address, 127.0.0.1 when empty
	forwardedFor string // an X-Forwarded-For header, when set
}

// do sends req and reads the whole answer.
func (r *apiRig) do(req apiRequest) apiAnswer {
	r.t.Helper()
	hr, err := http.NewRequest(req.method, r.url+req.path, strings.NewReader(req.body))
	if err != nil {
		r.t.Fatal(err)
	}
	switch {
	case req.auth != "":
		hr.Header.Set("Authorization", req.auth)
	case req.token != "":
		hr.Header.Set("Authorization", "Bearer "+req.token.Reveal())
	}
	if req.forwardedFor != "" {
		hr.Header.Set("X-Forwarded-For", req.forwardedFor)
	}
	resp, err := clientFrom(req.from).Do(hr)
	if err != nil {
		r.t.Fatalf("%s %s: %v", req.method, req.path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		r.t.Fatalf("%s %s: read answer: %v", req.method, req.path, err)
	}
	return apiAnswer{status: resp.StatusCode, header: resp.Header, body: body}
}

// clientFrom returns an HTTP client whose connections come from the
// loopback address from (all of 127.0.0.0/8 is loopback on Linux), so tests
// can be several clients.
func clientFrom(from string) *http.Client {
	if from == "" {
		from = "127.0.0.1"
	}
	dialer := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	return &http.Client{
		Timeout:   answerDeadline,
		Transport: &http.Transport{DialContext: dialer.DialContext, DisableKeepAlives: true},
	}
}

// post sends an admin request and expects 202 with a queued deploy.
func (r *apiRig) post(path, body string) int64 {
	r.t.Helper()
	a := r.do(apiRequest{method: http.MethodPost, path: path, token: testAdminToken, body: body})
	if a.status != http.StatusAccepted {
		r.t.Fatalf("POST %s %s: %d %s, want 202", path, body, a.status, a.body)
	}
	var q struct {
		DeployID int64  `json:"deploy_id"`
		Status   string `json:"status"`
		URL      string `json:"url"`
	}
	if err := json.Unmarshal(a.body, &q); err != nil {
		r.t.Fatal(err)
	}
	if q.Status != "queued" || q.URL != fmt.Sprintf("%s/deploys/%d", apiPublicURL, q.DeployID) {
		r.t.Fatalf("POST %s: apiAnswer %s, want a queued deploy and its URL", path, a.body)
	}
	return q.DeployID
}

// deploy reads a deploy through the API.
func (r *apiRig) deploy(id int64) deploy.Deploy {
	r.t.Helper()
	a := r.do(apiRequest{method: http.MethodGet, path: fmt.Sprintf("/api/deploys/%d", id), token: testAdminToken})
	if a.status != http.StatusOK {
		r.t.Fatalf("GET deploy %d: %d %s", id, a.status, a.body)
	}
	var d deploy.Deploy
	if err := json.Unmarshal(a.body, &d); err != nil {
		r.t.Fatal(err)
	}
	return d
}

// waitEnd waits until deploy id ends, following it, and returns it as the
// API serves it.
func (r *apiRig) waitEnd(id int64) deploy.Deploy {
	r.t.Helper()
	waitDeployEnd(r.t, r.queue, id)
	return r.deploy(id)
}

// serve runs srv on 127.0.0.1:0 until the test ends, then shuts it down
// and checks that Listen returned. It returns the address once the server
// answers.
func serve(t *testing.T, srv *Server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Listen(ln) }()
	t.Cleanup(func() { shutdownAndWait(t, srv, served) })
	addr := ln.Addr().String()
	// Serving once means Listen has started before anything can stop it.
	waitUntil(t, answerDeadline, func() bool {
		resp, err := http.Get("http://" + addr + "/healthz")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil
	}, "the server never answered")
	return addr
}

// waitUntil polls cond every 10ms until it holds, failing after timeout.
func waitUntil(t *testing.T, timeout time.Duration, cond func() bool, why string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", timeout, why)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// wantAnswer checks an answer's status and its whole JSON body.
func wantAnswer(t *testing.T, what string, a apiAnswer, status int, body string) {
	t.Helper()
	if a.status != status {
		t.Errorf("%s: status %d, want %d (body %s)", what, a.status, status, a.body)
	}
	if ct := a.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("%s: Content-Type %q, want JSON", what, ct)
	}
	var got, want any
	if err := json.Unmarshal(a.body, &got); err != nil {
		t.Errorf("%s: body %q is not JSON", what, a.body)
		return
	}
	if err := json.Unmarshal([]byte(body), &want); err != nil {
		t.Fatalf("%s: bad expected body %q", what, body)
	}
	g, _ := json.Marshal(got)
	w, _ := json.Marshal(want)
	if string(g) != string(w) {
		t.Errorf("%s:\n got %s\nwant %s", what, g, w)
	}
}

// errorBody is the JSON of an error apiAnswer with message msg.
func errorBody(msg string) string {
	b, _ := json.Marshal(map[string]string{"error": msg})
	return string(b)
}

var writeEndpoints = []struct {
	name, path string
	// rightBody and right are a request with the admin token and what
	// it is answered: each is refused by the queue, which proves it got
	// past the token check and starts nothing.
	rightBody string
	right     int
}{
	{"deploy", "/api/targets/app/deploy", `{"sha":"nope"}`, http.StatusBadRequest},
	{"rollback", "/api/targets/app/rollback", "", http.StatusConflict},
	{"cancel", "/api/deploys/4242/cancel", "", http.StatusNotFound},
}

func TestWriteAPIIsDisabledWithoutAnAdminToken(t *testing.T) {
	t.Parallel()
	r := newAPIRig(t, rigOptions{read: testReadToken})
	for _, ep := range writeEndpoints {
		for _, tok := range []config.Secret{"", testReadToken, "anything"} {
			a := r.do(apiRequest{method: http.MethodPost, path: ep.path, token: tok, body: ep.rightBody})
			wantAnswer(t, ep.name+" with token "+tok.Reveal(), a, http.StatusForbidden,
				errorBody("the write API is disabled: set FLAKESHIP_ADMIN_TOKEN"))
		}
	}
}

func TestWriteAPINeedsTheAdminToken(t *testing.T) {
	t.Parallel()
	r := newAPIRig(t, rigOptions{admin: testAdminToken, read: testReadToken})
	tests := []struct {
		name      string
		req       apiRequest
		status    int
		error     string // "" for the endpoint's own apiAnswer (right token)
		challenge string // WWW-Authenticate, "" for none
	}{
		{"no token", apiRequest{}, 401, "this needs the admin token: Authorization: Bearer <token>",
			`Bearer realm="flakeship"`},
		{"wrong token", apiRequest{token: "admin-token-3c1d9f0f"}, 401, "wrong token",
			`Bearer realm="flakeship", error="invalid_token"`},
		{"token of another scheme", apiRequest{auth: "Basic " + testAdminToken.Reveal()}, 401,
			"this needs the admin token: Authorization: Bearer <token>", `Bearer realm="flakeship"`},
		{"empty bearer token", apiRequest{auth: "Bearer "}, 401,
			"this needs the admin token: Authorization: Bearer <token>", `Bearer realm="flakeship"`},
		{"read token", apiRequest{token: testReadToken}, 403,
			"the read token cannot change anything: use the admin token",
			`Bearer realm="flakeship", error="insufficient_scope"`},
		{"admin token in the query", apiRequest{path: "?token=" + testAdminToken.Reveal()}, 400,
			"tokens go in the Authorization header, never in the URL", ""},
		{"access_token in the query, right header too", apiRequest{path: "?access_token=x", token: testAdminToken}, 400,
			"tokens go in the Authorization header, never in the URL", ""},
		{"lower-case scheme", apiRequest{auth: "bearer " + testAdminToken.Reveal()}, 0, "", ""},
		{"admin token", apiRequest{token: testAdminToken}, 0, "", ""},
	}
	for _, ep := range writeEndpoints {
		for _, tc := range tests {
			t.Run(ep.name+"/"+tc.name, func(t *testing.T) {
				req := tc.req
				req.method, req.path, req.body = http.MethodPost, ep.path+req.path, ep.rightBody
				a := r.do(req)
				if tc.status == 0 {
					if a.status != ep.right {
						t.Fatalf("answered %d %s, want %d from the queue", a.status, a.body, ep.right)
					}
					return
				}
				wantAnswer(t, tc.name, a, tc.status, errorBody(tc.error))
				if got := a.header.Get("WWW-Authenticate"); got != tc.challenge {
					t.Errorf("WWW-Authenticate %q, want %q", got, tc.challenge)
				}
			})
		}
	}
	if n := len(r.listDeploys()); n != 0 {
		t.Errorf("%d deploys stored by refused requests, want 0", n)
	}
	if strings.Contains(r.logs.String(), testAdminToken.Reveal()) || strings.Contains(r.logs.String(), testReadToken.Reveal()) {
		t.Errorf("a token reached the log:\n%s", r.logs.String())
	}
}

func (r *apiRig) listDeploys() []deploy.Deploy {
	r.t.Helper()
	a := r.do(apiRequest{method: http.MethodGet, path: "/api/deploys", token: testAdminToken})
	var ds []deploy.Deploy
	if a.status != http.StatusOK || json.Unmarshal(a.body, &ds) != nil {
		r.t.Fatalf("GET /api/deploys: %d %s", a.status, a.body)
	}
	return ds
}

var readEndpoints = []struct {
	path   string
	status int // with a valid token: the endpoint's own answer
}{
	{"/api/targets", http.StatusOK},
	{"/api/deploys?target=app", http.StatusOK},
	{"/api/deploys/4242", http.StatusNotFound},
	{"/api/deploys/4242/log", http.StatusNotFound},
	{"/api/deploys/4242/log?follow=1", http.StatusNotFound},
}

func TestReadAPINeedsTheReadTokenWhenOneIsSet(t *testing.T) {
	t.Parallel()
	r := newAPIRig(t, rigOptions{admin: testAdminToken, read: testReadToken})
	for _, ep := range readEndpoints {
		for _, tc := range []struct {
			name   string
			req    apiRequest
			status int
			error  string
		}{
			{"no token", apiRequest{}, 401, "this needs a read token: Authorization: Bearer <token>"},
			{"wrong token", apiRequest{token: "read-token-77ab02c5"}, 401, "wrong token"},
			{"read token", apiRequest{token: testReadToken}, ep.status, ""},
			{"admin token", apiRequest{token: testAdminToken}, ep.status, ""},
		} {
			req := tc.req
			req.method, req.path = http.MethodGet, ep.path
			a := r.do(req)
			what := ep.path + " with " + tc.name
			if tc.error == "" {
				if a.status != tc.status {
					t.Errorf("%s: %d %s, want %d", what, a.status, a.body, tc.status)
				}
				continue
			}
			wantAnswer(t, what, a, tc.status, errorBody(tc.error))
			if !strings.HasPrefix(a.header.Get("WWW-Authenticate"), `Bearer realm="flakeship"`) {
				t.Errorf("%s: WWW-Authenticate %q", what, a.header.Get("WWW-Authenticate"))
			}
		}
	}
}

func TestReadAPIIsOpenWithoutAReadToken(t *testing.T) {
	t.Parallel()
	r := newAPIRig(t, rigOptions{admin: testAdminToken})
	for _, ep := range readEndpoints {
		// Any token, even a wrong one, is not looked at.
		for _, tok := range []config.Secret{"", "wrong"} {
			if a := r.do(apiRequest{method: http.MethodGet, path: ep.path, token: tok}); a.status != ep.status {
				t.Errorf("GET %s with token %q: %d %s, want %d", ep.path, tok.Reveal(), a.status, a.body, ep.status)
			}
		}
	}
	a := r.do(apiRequest{method: http.MethodGet, path: "/api/targets?token=x"})
	wantAnswer(t, "token in the query of an open read", a, 400, errorBody("tokens go in the Authorization header, never in the URL"))
}

// testClock is a clock a test moves by hand.
type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *testClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func TestWrongTokensAreRateLimitedPerClient(t *testing.T) {
	t.Parallel()
	clock := &testClock{now: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	r := newAPIRig(t, rigOptions{admin: testAdminToken, read: testReadToken, now: clock.Now})
	const attacker, neighbour = "127.0.0.2", "127.0.0.3"
	cancel := func(from string, tok config.Secret) apiAnswer {
		return r.do(apiRequest{method: http.MethodPost, path: "/api/deploys/4242/cancel", token: tok, from: from})
	}
	// want sends one request and checks its status.
	want := func(what string, a apiAnswer, status int) {
		t.Helper()
		if a.status != status {
			t.Fatalf("%s: %d %s, want %d", what, a.status, a.body, status)
		}
	}

	for i := 0; i < maxAuthFailures-1; i++ {
		want("neighbour's wrong token", cancel(neighbour, "guess"), 401)
	}
	// The attacker's failures count on, across a success of its own, and
	// on the read API too; a missing token is not a guess.
	for i := 0; i < 4; i++ {
		want("wrong token", cancel(attacker, "guess"), 401)
	}
	want("right token between wrong ones", cancel(attacker, testAdminToken), 404)
	want("no token", cancel(attacker, ""), 401)
	for i := 0; i < maxAuthFailures-5; i++ {
		want("wrong token", cancel(attacker, "guess"), 401)
	}
	want("wrong read token", r.do(apiRequest{method: http.MethodGet, path: "/api/targets", token: "guess", from: attacker}), 401)

	blocked := []struct {
		name string
		req  apiRequest
	}{
		{"wrong token", apiRequest{method: http.MethodPost, path: "/api/deploys/4242/cancel", token: "guess"}},
		{"right token", apiRequest{method: http.MethodPost, path: "/api/deploys/4242/cancel", token: testAdminToken}},
		{"read token on a read", apiRequest{method: http.MethodGet, path: "/api/targets", token: testReadToken}},
	}
	for _, b := range blocked {
		b.req.from = attacker
		a := r.do(b.req)
		wantAnswer(t, "blocked "+b.name, a, http.StatusTooManyRequests,
			errorBody("too many wrong tokens from this address: retry in 60s"))
		if got := a.header.Get("Retry-After"); got != "60" {
			t.Errorf("blocked %s: Retry-After %q, want 60", b.name, got)
		}
	}

	// The attacker's success did not reset the neighbour: one more failure
	// fills its window too.
	want("neighbour's right token", cancel(neighbour, testAdminToken), 404)
	want("neighbour's last allowed failure", cancel(neighbour, "guess"), 401)
	want("neighbour blocked", cancel(neighbour, testAdminToken), 429)

	clock.advance(45 * time.Second)
	a := cancel(attacker, testAdminToken)
	want("still blocked", a, 429)
	if got := a.header.Get("Retry-After"); got != "15" {
		t.Errorf("Retry-After %q after 45s, want 15", got)
	}
	want("another client", cancel("127.0.0.4", testAdminToken), 404)

	clock.advance(15 * time.Second)
	want("right token once the window passed", cancel(attacker, testAdminToken), 404)
	want("wrong token once the window passed", cancel(attacker, "guess"), 401)
}

func TestFailureLimiterBoundsItsMemory(t *testing.T) {
	clock := &testClock{now: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	l := newFailureLimiter(2, time.Minute, 3, clock.Now)
	l.fail("192.0.2.1")
	l.fail("192.0.2.1")
	if l.retryAfter("192.0.2.1") != time.Minute {
		t.Fatalf("two failures with a limit of 2: retry after %s, want 1m", l.retryAfter("192.0.2.1"))
	}
	clock.advance(time.Second)
	for _, ip := range []string{"192.0.2.2", "192.0.2.3", "192.0.2.4"} {
		l.fail(ip)
	}
	if n := l.tracked(); n != 3 {
		t.Fatalf("%d clients tracked, want the cap of 3", n)
	}
	if d := l.retryAfter("192.0.2.1"); d != 0 {
		t.Errorf("the oldest client was not dropped: retry after %s", d)
	}

	// An IPv6 client is counted by its /64.
	l.fail("2001:db8::1")
	l.fail("2001:db8::2")
	if l.retryAfter("2001:db8::3") == 0 {
		t.Error("a /64 that failed twice is not blocked")
	}
	if d := l.retryAfter("2001:db8:0:1::1"); d != 0 {
		t.Errorf("another /64 is blocked for %s", d)
	}

	clock.advance(time.Minute)
	l.retryAfter("192.0.2.9")
	if n := l.tracked(); n != 0 {
		t.Errorf("%d clients tracked after their windows passed, want 0", n)
	}
}

func TestQueueErrorsMapToStatuses(t *testing.T) {
	s := New(Options{Config: &config.Config{}, Deployer: &fakeDeployer{}})
	tests := []struct {
		err    error
		status int
		msg    string
	}{
		{fmt.Errorf("deploy: %w %q", deploy.ErrUnknownTarget, "web"), 404, `deploy: unknown target "web"`},
		{fmt.Errorf("cancel deploy 9: %w", deploy.ErrNotFound), 404, "cancel deploy 9: not found"},
		{fmt.Errorf("deploy app: %w: sha: bad", deploy.ErrInvalid), 400, "deploy app: invalid request: sha: bad"},
		{fmt.Errorf("deploy 3: %w", &deploy.TransitionError{From: deploy.Succeeded, To: deploy.Cancelled}), 409,
			"deploy 3: deploy cannot move from succeeded to cancelled"},
		{fmt.Errorf("rollback app: %w: nothing was deployed yet", deploy.ErrNothingToRollBack), 409,
			"rollback app: nothing to roll back to: nothing was deployed yet"},
		{deploy.ErrClosed, 503, "flakeship is shutting down: try again when it is back"},
		{fmt.Errorf("store: %w", errSecretish), 500, "internal error"},
	}
	for _, tc := range tests {
		status, msg, _ := s.httpError(tc.err)
		if status != tc.status || msg != tc.msg {
			t.Errorf("httpError(%v) = %d %q, want %d %q", tc.err, status, msg, tc.status, tc.msg)
		}
	}
}

var errSecretish = fmt.Errorf("open /var/lib/flakeship/flakeship.db: disk I/O error")

func TestBadWriteRequestsAreRefused(t *testing.T) {
	t.Parallel()
	r := newAPIRig(t, rigOptions{admin: testAdminToken, git: true})
	r.repo.Commit(t, "init", map[string]string{"README": "app\n"})
	r.repo.Push(t, "main")

	const wants = `want {}, {"ref":"<branch>"} or {"sha":"<40-hex commit>"}`
	sha := strings.Repeat("ab", 20)
	tests := []struct {
		name, method, path, body string
		status                   int
		error                    string // the whole message, or with a trailing "..." its start
	}{
		{"unknown target", "POST", "/api/targets/nope/deploy", `{}`, 404, `target "nope" is not configured`},
		{"unknown target of a rollback", "POST", "/api/targets/nope/rollback", ``, 404, `target "nope" is not configured`},
		{"short sha", "POST", "/api/targets/app/deploy", `{"sha":"abcdef1"}`, 400, "deploy app: invalid request: sha: ..."},
		{"upper-case sha", "POST", "/api/targets/app/deploy", `{"sha":"` + strings.ToUpper(sha) + `"}`, 400, "deploy app: invalid request: sha: ..."},
		{"all-zero sha", "POST", "/api/targets/app/deploy", `{"sha":"` + strings.Repeat("0", 40) + `"}`, 400, "deploy app: invalid request: sha: ..."},
		{"ref and sha", "POST", "/api/targets/app/deploy", `{"ref":"main","sha":"` + sha + `"}`, 400, "give ref or sha, not both"},
		{"unknown field", "POST", "/api/targets/app/deploy", `{"branch":"main"}`, 400, `body has an unknown field "branch": ` + wants},
		{"not JSON", "POST", "/api/targets/app/deploy", `ref=main`, 400, "body is not JSON: " + wants},
		{"truncated JSON", "POST", "/api/targets/app/deploy", `{"ref":"ma`, 400, "body is not JSON: " + wants},
		{"JSON array", "POST", "/api/targets/app/deploy", `[]`, 400, "body must be a JSON object: " + wants},
		{"two objects", "POST", "/api/targets/app/deploy", `{} {}`, 400, "body must be one JSON object: " + wants},
		{"ref not a string", "POST", "/api/targets/app/deploy", `{"ref":1}`, 400, `body field "ref" must be a string: ` + wants},
		{"option-like ref", "POST", "/api/targets/app/deploy", `{"ref":"--upload-pack=x"}`, 400, "deploy app: invalid request: ref: ..."},
		{"ref with ..", "POST", "/api/targets/app/deploy", `{"ref":"a..b"}`, 400, "deploy app: invalid request: ref: ..."},
		{"branch that does not exist", "POST", "/api/targets/app/deploy", `{"ref":"nope"}`, 400,
			`deploy app: invalid request: branch "nope" not found in the repository`},
		{"nothing to roll back to", "POST", "/api/targets/app/rollback", ``, 409,
			"rollback app: nothing to roll back to: nothing was deployed yet"},
		{"cancel of an unknown deploy", "POST", "/api/deploys/4242/cancel", ``, 404, "deploy 4242 not found"},
		{"cancel of a bad id", "POST", "/api/deploys/x1/cancel", ``, 400, "deploy id must be a positive number"},
		{"unknown deploy", "GET", "/api/deploys/4242", ``, 404, "deploy 4242 not found"},
		{"log of an unknown deploy", "GET", "/api/deploys/4242/log", ``, 404, "deploy 4242 not found"},
		{"followed log of an unknown deploy", "GET", "/api/deploys/4242/log?follow=1", ``, 404, "deploy 4242 not found"},
		{"log of a bad id", "GET", "/api/deploys/0/log", ``, 400, "deploy id must be a positive number"},
		{"bad follow", "GET", "/api/deploys/1/log?follow=yes", ``, 400, "follow must be 1 or 0"},
		{"unknown route", "POST", "/api/targets/app/redeploy", ``, 404, "not found"},
		{"write with GET", "GET", "/api/targets/app/deploy", ``, 405, "method not allowed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a := r.do(apiRequest{method: tc.method, path: tc.path, token: testAdminToken, body: tc.body})
			if a.status != tc.status {
				t.Errorf("status %d, want %d (body %s)", a.status, tc.status, a.body)
			}
			got, _ := a.object(t)["error"].(string)
			if prefix, ok := strings.CutSuffix(tc.error, "..."); ok {
				if !strings.HasPrefix(got, prefix) {
					t.Errorf("error %q, want it to start with %q", got, prefix)
				}
			} else if got != tc.error {
				t.Errorf("error %q, want %q", got, tc.error)
			}
		})
	}
	if n := len(r.listDeploys()); n != 0 {
		t.Errorf("%d deploys stored by refused requests, want 0", n)
	}
}

func TestManualDeploysRollbackAndCancel(t *testing.T) {
	t.Parallel()
	r := newAPIRig(t, rigOptions{admin: testAdminToken, git: true, nix: true, noSandbox: true})
	first, head := r.commit(nil), r.commit(nil)

	// An empty body, {} and a JSON body with an empty ref all deploy the
	// branch head; a ref its head; a sha that commit.
	for _, tc := range []struct {
		name, body string
		sha        string
	}{
		{"no body", "", head},
		{"a sha", `{"sha":"` + first + `"}`, first},
		{"the branch as a ref", `{"ref":"main"}`, head},
		{"a sha again", `{"sha":"` + first + `"}`, first},
		{"{}", `{}`, head},
	} {
		id := r.post("/api/targets/app/deploy", tc.body)
		d := r.waitEnd(id)
		if d.State != deploy.Succeeded || d.SHA != tc.sha || d.Trigger != deploy.TriggerManual {
			t.Fatalf("deploy of %s = %s %s (%s) %s, want a succeeded manual deploy of %s",
				tc.name, d.State, d.SHA, d.Trigger, d.Error, tc.sha)
		}
	}
	last := r.listDeploys()[0]

	// GET /api/targets: each target with what runs there.
	a := r.do(apiRequest{method: http.MethodGet, path: "/api/targets"})
	if a.status != http.StatusOK {
		t.Fatalf("GET /api/targets: %d %s", a.status, a.body)
	}
	var targets []map[string]any
	if err := json.Unmarshal(a.body, &targets); err != nil || len(targets) != 2 {
		t.Fatalf("GET /api/targets = %s, want an array of 2 targets", a.body)
	}
	lastDeploy, _ := targets[0]["last_deploy"].(map[string]any)
	delete(targets[0], "last_deploy")
	wantJSON(t, "target app", targets[0], map[string]any{
		"name": "app", "forge": "github", "repo": "acme/app", "branch": "main", "activate": "none",
		"current_sha": head, "generation": float64(last.Generation), "running": nil, "queued": nil,
	})
	if lastDeploy["id"] != float64(last.ID) || lastDeploy["state"] != "succeeded" || lastDeploy["url"] != last.URL {
		t.Errorf("last_deploy of app = %v, want deploy %d", lastDeploy, last.ID)
	}
	wantJSON(t, "target idle", targets[1], map[string]any{
		"name": "idle", "forge": "github", "repo": "acme/idle", "branch": "main", "activate": "none",
		"current_sha": "", "generation": float64(0), "last_deploy": nil, "running": nil, "queued": nil,
	})

	// A rollback makes the build before the current one current again.
	id := r.post("/api/targets/app/rollback", "")
	rb := r.waitEnd(id)
	if rb.State != deploy.Succeeded || rb.SHA != first || rb.Trigger != deploy.TriggerRollback {
		t.Fatalf("rollback = %s %s (%s) %s, want a succeeded rollback to %s", rb.State, rb.SHA, rb.Trigger, rb.Error, first)
	}
	wantAnswer(t, "rollback of a target never deployed", r.do(apiRequest{method: http.MethodPost,
		path: "/api/targets/idle/rollback", token: testAdminToken}), http.StatusConflict,
		errorBody("rollback idle: nothing to roll back to: nothing was deployed yet"))
	wantAnswer(t, "cancel of a finished deploy", r.do(apiRequest{method: http.MethodPost,
		path: fmt.Sprintf("/api/deploys/%d/cancel", id), token: testAdminToken}), http.StatusConflict,
		errorBody(fmt.Sprintf("deploy %d has already ended (succeeded): there is nothing to cancel", id)))

	// The log, as text.
	a = r.do(apiRequest{method: http.MethodGet, path: fmt.Sprintf("/api/deploys/%d/log", last.ID)})
	if a.status != http.StatusOK || a.header.Get("Content-Type") != "text/plain; charset=utf-8" ||
		a.header.Get("X-Content-Type-Options") != "nosniff" {
		t.Errorf("log apiAnswer %d %v", a.status, a.header)
	}
	if !strings.Contains(string(a.body), fmt.Sprintf("flakeship deploy %d of target app", last.ID)) ||
		!strings.Contains(string(a.body), "== deployed "+head[:7]) {
		t.Errorf("log of deploy %d:\n%s", last.ID, a.body)
	}

	// Cancel: a running build, held at a gate that is never opened, and a
	// deploy queued behind it.
	r.commit(testenv.NewGate(t))
	running := r.post("/api/targets/app/deploy", "")
	waiting := r.post("/api/targets/app/deploy", `{"sha":"`+first+`"}`)
	watchDeploy(t, r.queue, running).untilLine(t, "waiting at the gate")
	for _, id := range []int64{waiting, running} {
		wantAnswer(t, "cancel", r.do(apiRequest{method: http.MethodPost, path: fmt.Sprintf("/api/deploys/%d/cancel", id),
			token: testAdminToken}), http.StatusAccepted, fmt.Sprintf(`{"deploy_id":%d,"status":"cancelling"}`, id))
		if d := r.waitEnd(id); d.State != deploy.Cancelled {
			t.Errorf("cancelled deploy %d ended %s", id, d.State)
		}
	}
}

// wantJSON compares a decoded JSON object with what it should be.
func wantJSON(t *testing.T, what string, got, want map[string]any) {
	t.Helper()
	g, _ := json.Marshal(got)
	w, _ := json.Marshal(want)
	if string(g) != string(w) {
		t.Errorf("%s:\n got %s\nwant %s", what, g, w)
	}
}

// TestFollowedLogOutlastsTheWriteTimeout follows the log of a deploy that
// takes many times the server's write timeout: the stream must not be cut
// off, and must end when the deploy does.
func TestFollowedLogOutlastsTheWriteTimeout(t *testing.T) {
	t.Parallel()
	const writeTimeout = 200 * time.Millisecond
	r := newAPIRig(t, rigOptions{admin: testAdminToken, read: testReadToken, git: true, nix: true, noSandbox: true,
		writeTimeout: writeTimeout})
	gate := testenv.NewGate(t)
	r.commit(gate)
	id := r.post("/api/targets/app/deploy", "")

	req, err := http.NewRequest(http.MethodGet, fmt.Sprintf("%s/api/deploys/%d/log?follow=1", r.url, id), nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+testReadToken.Reveal())
	start := time.Now()
	resp, err := (&http.Client{Timeout: endWithin}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/plain; charset=utf-8" {
		t.Fatalf("follow answered %d %v", resp.StatusCode, resp.Header)
	}
	// The stream up to the build's wait at the gate.
	var head strings.Builder
	br := bufio.NewReader(resp.Body)
	for !strings.Contains(head.String(), "waiting at the gate") {
		line, err := br.ReadString('\n')
		head.WriteString(line)
		if err != nil {
			t.Fatalf("the stream ended before the build reached the gate: %v\n%s", err, head.String())
		}
	}
	// The stream stays quiet, the build held, for twice the write
	// timeout: a write deadline set once, as the stream began, would cut
	// off what comes after. (Letting this time pass is the claim under
	// test, not a window to hit: on a slower machine it only grows.)
	<-time.After(2 * writeTimeout)
	if err := gate.Open(); err != nil {
		t.Fatal(err)
	}
	rest, err := io.ReadAll(br)
	body := head.String() + string(rest)
	if err != nil {
		t.Fatalf("the stream broke after %s: %v\nread so far:\n%s", time.Since(start), err, body)
	}
	took := time.Since(start)
	d := r.deploy(id)
	if !d.State.Terminal() {
		t.Fatalf("the stream ended while deploy %d was still %s:\n%s", id, d.State, body)
	}
	if d.State != deploy.Succeeded || !strings.Contains(string(body), "== deployed "+d.SHA[:7]) {
		t.Fatalf("deploy %d %s; its followed log:\n%s", id, d.State, body)
	}
	if took <= writeTimeout {
		t.Fatalf("the deploy took %s, not more than the write timeout %s: the test proves nothing", took, writeTimeout)
	}
	t.Logf("followed a %s deploy with a %s write timeout", took.Round(time.Millisecond), writeTimeout)

	// The log of a finished deploy is its whole log at once, followed or not.
	a := r.do(apiRequest{method: http.MethodGet, path: fmt.Sprintf("/api/deploys/%d/log?follow=1", id), token: testReadToken})
	if a.status != http.StatusOK || string(a.body) != string(body) {
		t.Errorf("follow of a finished deploy: %d, %d bytes, want the %d bytes followed", a.status, len(a.body), len(body))
	}
}

// TestShutdownEndsLogStreams follows the log of a deploy queued behind a
// running one, then shuts the server down: the stream ends at once though
// the deploy has not.
func TestShutdownEndsLogStreams(t *testing.T) {
	t.Parallel()
	r := newAPIRig(t, rigOptions{admin: testAdminToken, git: true, nix: true, noSandbox: true})
	// The running deploy waits at a gate that is never opened.
	r.commit(testenv.NewGate(t))
	running := r.post("/api/targets/app/deploy", "")
	waiting := r.post("/api/targets/app/deploy", "")
	t.Cleanup(func() {
		// Not through the API, which is down by then.
		r.queue.Cancel(context.Background(), waiting)
		r.queue.Cancel(context.Background(), running)
	})

	resp, err := http.Get(fmt.Sprintf("%s/api/deploys/%d/log?follow=1", r.url, running))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	// The first line of the running deploy has arrived: it streams.
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, fmt.Sprintf("flakeship deploy %d", running)) {
		t.Fatalf("first line of the followed log: %q, %v", line, err)
	}
	ended := make(chan error, 1)
	go func() {
		resp, err := http.Get(fmt.Sprintf("%s/api/deploys/%d/log?follow=1", r.url, waiting))
		if err == nil {
			_, err = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		ended <- err
	}()
	// The second follower waits for a deploy that has not started.
	waitUntil(t, answerDeadline, func() bool { return r.srv.streams.count() == 2 }, "the second follower never started")

	ctx, cancel := context.WithTimeout(context.Background(), answerDeadline)
	defer cancel()
	if err := r.srv.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown with two log streams open: %v", err)
	}
	select {
	case err := <-ended:
		if err != nil {
			t.Errorf("the waiting deploy's stream broke instead of ending: %v", err)
		}
	case <-time.After(answerDeadline):
		t.Fatal("a log stream outlived the server's shutdown")
	}
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		t.Errorf("the running deploy's stream broke instead of ending: %v", err)
	}
	if d, err := r.queue.Get(context.Background(), waiting); err != nil || d.State != deploy.Queued {
		t.Errorf("deploy %d = %v, %v; the test wants it still queued at the shutdown", waiting, d, err)
	}
}
