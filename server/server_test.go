package server

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flakeship/flakeship/internal/testenv"

	"github.com/flakeship/flakeship/builder"
	"github.com/flakeship/flakeship/config"
	"github.com/flakeship/flakeship/deploy"
	"github.com/flakeship/flakeship/forge"
	"github.com/flakeship/flakeship/store"
)

const (
	publicURL      = "http://flakeship.test"
	mirrorSecret   = config.Secret("mirror secret")
	testBodyLimit  = 1 << 20
	answerDeadline = time.Minute // bound for answers that must come, never a speed goal: a loaded 2-core machine took over 10 s to answer a 30 MiB chunked body under -race
)

// testConfig has GitHub targets of Codertocat/Hello-World (master, with two
// secrets, and staging under another spelling of the name), one of
// Octocoders/Hello-World (the ping example), and the Forgejo demo repo.
func testConfig(t testing.TB) *config.Config {
	return &config.Config{
		PublicURL: publicURL,
		BodyLimit: testBodyLimit,
		Targets: []config.Target{
			{Name: "hello", Forge: "github", Repo: "Codertocat/Hello-World", Branch: "master", WebhookSecret: githubSecret},
			{Name: "hello-mirror", Forge: "github", Repo: "Codertocat/Hello-World", Branch: "master", WebhookSecret: mirrorSecret},
			{Name: "hello-staging", Forge: "github", Repo: "codertocat/hello-world", Branch: "staging", WebhookSecret: githubSecret},
			{Name: "octo", Forge: "github", Repo: "Octocoders/Hello-World", Branch: "master", WebhookSecret: githubSecret},
			{Name: "demo", Forge: "forgejo", Repo: "peeradmin/deploy-demo", Branch: "main", WebhookSecret: forgejoSecret(t)},
		},
	}
}

// submitCall is one SubmitPush the fake deployer saw.
type submitCall struct {
	target      string
	ev          forge.PushEvent
	hasDeadline bool
}

// fakeDeployer records SubmitPush calls and answers like the deploy queue:
// a new deploy per target and delivery id, the first one again (now
// building) for a delivery id it has seen.
type fakeDeployer struct {
	err error // returned by every call when set

	mu     sync.Mutex
	calls  []submitCall
	seen   map[string]*deploy.Deploy
	nextID int64
}

func (f *fakeDeployer) SubmitPush(ctx context.Context, target string, ev forge.PushEvent) (*deploy.Deploy, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, hasDeadline := ctx.Deadline()
	f.calls = append(f.calls, submitCall{target: target, ev: ev, hasDeadline: hasDeadline})
	if f.err != nil {
		return nil, false, f.err
	}
	key := target + "\x00" + ev.DeliveryID
	if d, ok := f.seen[key]; ok {
		cp := *d
		return &cp, true, nil
	}
	if f.seen == nil {
		f.seen = make(map[string]*deploy.Deploy)
	}
	f.nextID++
	d := &deploy.Deploy{
		ID: f.nextID, Target: target, Forge: ev.Forge, Repo: ev.Repo, Branch: ev.Branch, SHA: ev.SHA,
		Trigger: deploy.TriggerPush, State: deploy.Queued, DeliveryID: ev.DeliveryID,
		URL: fmt.Sprintf("%s/deploys/%d", publicURL, f.nextID),
	}
	cp := *d
	d.State = deploy.Building // what a later look finds
	f.seen[key] = d
	return &cp, false, nil
}

func (f *fakeDeployer) Calls() []submitCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]submitCall(nil), f.calls...)
}

// testServer is a running Server on 127.0.0.1 with a client for it.
type testServer struct {
	addr   string
	url    string
	client *http.Client
	logs   *testenv.Buffer
}

// newTestServer starts a Server with opts (Log is set here) on
// 127.0.0.1:0, and stops it, proving Listen returned, when the test ends.
func newTestServer(t *testing.T, opts Options) *testServer {
	t.Helper()
	logs := &testenv.Buffer{}
	opts.Log = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	s := New(opts)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Listen(ln) }()
	transport := &http.Transport{}
	ts := &testServer{
		addr:   ln.Addr().String(),
		url:    "http://" + ln.Addr().String(),
		client: &http.Client{Transport: transport, Timeout: answerDeadline},
		logs:   logs,
	}
	t.Cleanup(func() {
		transport.CloseIdleConnections()
		shutdownAndWait(t, s, served)
	})
	// Serving once means Listen has started before anything can stop it.
	if status, _ := ts.do(t, http.MethodGet, "/healthz", nil, nil); status != http.StatusOK {
		t.Fatalf("healthz: status %d", status)
	}
	return ts
}

// do sends one request and returns the status and the JSON answer decoded.
func (ts *testServer) do(t *testing.T, method, path string, h http.Header, body []byte) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, ts.url+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if h != nil {
		req.Header = h.Clone()
	}
	resp, err := ts.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("%s %s: Content-Type %q, body %q", method, path, ct, raw)
	}
	var got map[string]any
	if err := json.Unmarshal(raw, &got); err != nil {
		t.Fatalf("%s %s: answer %q is not a JSON object: %v", method, path, raw, err)
	}
	return resp.StatusCode, got
}

// jsonObject round-trips v through JSON, to compare with a decoded answer.
func jsonObject(t *testing.T, v any) map[string]any {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func equalJSON(t *testing.T, got map[string]any, want any) {
	t.Helper()
	g, _ := json.Marshal(got)
	w, _ := json.Marshal(jsonObject(t, want))
	if !bytes.Equal(g, w) {
		t.Errorf("answer:\n got %s\nwant %s", g, w)
	}
}

func TestHooks(t *testing.T) {
	push := readFile(t, "github/push-new-branch.json")
	tagDeleted := readFile(t, "github/push-tag-deleted.json")
	ping := readFile(t, "github/ping.json")
	fjHeader, fjBody := forgejoDelivery(t, "push-2")
	staging := edit(t, push, `"ref": "refs/heads/master"`, `"ref": "refs/heads/staging"`)
	feature := edit(t, push, `"ref": "refs/heads/master"`, `"ref": "refs/heads/feature"`)
	option := edit(t, push, `"ref": "refs/heads/master"`, `"ref": "refs/heads/--upload-pack=x"`)
	truncated := push[:len(push)/2]
	testDelivery := edit(t, fjBody, `"before": "`+push1SHA+`"`, `"before": "`+push2SHA+`"`)
	noRepo := []byte(`{"zen": "Keep it logically awesome.", "hook_id": 1}`)

	signed := func(event string, body []byte) http.Header { return githubRequestHeader(event, body, githubSecret) }
	without := func(h http.Header, names ...string) http.Header {
		h = h.Clone()
		for _, n := range names {
			h.Del(n)
		}
		return h
	}
	form := signed("push", push)
	form.Set("Content-Type", "application/x-www-form-urlencoded")
	formBody := []byte("payload=" + strings.Repeat("x", 10))
	form.Set("X-Hub-Signature-256", "sha256="+hmacHex(githubSecret, formBody))

	queued := func(id int) map[string]any {
		return map[string]any{"deploy_id": id, "status": "queued", "url": fmt.Sprintf("%s/deploys/%d", publicURL, id)}
	}
	ignoredAs := func(reason string) map[string]any { return map[string]any{"ignored": reason} }
	errorAs := func(msg string) map[string]any { return map[string]any{"error": msg} }

	tests := []struct {
		name        string
		path        string
		header      http.Header
		body        []byte
		deployerErr error
		wantStatus  int
		want        map[string]any // whole answer, or nil to check wantPrefix
		wantPrefix  string         // of "error" when the whole text is not stable
		wantTargets []string       // SubmitPush calls, in order
	}{
		{name: "github push deploys", path: "/hooks/github", header: signed("push", push), body: push,
			wantStatus: http.StatusAccepted, want: queued(1), wantTargets: []string{"hello"}},
		{name: "github push with the other target's secret deploys that target", path: "/hooks/github", header: githubRequestHeader("push", push, mirrorSecret), body: push,
			wantStatus: http.StatusAccepted, want: queued(1), wantTargets: []string{"hello-mirror"}},
		{name: "repository name matches in any case", path: "/hooks/github", header: signed("push", staging), body: staging,
			wantStatus: http.StatusAccepted, want: queued(1), wantTargets: []string{"hello-staging"}},
		{name: "forgejo push deploys", path: "/hooks/forgejo", header: fjHeader, body: fjBody,
			wantStatus: http.StatusAccepted, want: queued(1), wantTargets: []string{"demo"}},
		{name: "forgejo push deploys on the gitea path", path: "/hooks/gitea", header: fjHeader, body: fjBody,
			wantStatus: http.StatusAccepted, want: queued(1), wantTargets: []string{"demo"}},
		{name: "gitea headers alone deploy", path: "/hooks/gitea", header: giteaOnly(fjHeader), body: fjBody,
			wantStatus: http.StatusAccepted, want: queued(1), wantTargets: []string{"demo"}},

		{name: "other branch is ignored", path: "/hooks/github", header: signed("push", feature), body: feature,
			wantStatus: http.StatusOK, want: ignoredAs("branch feature is not deployed")},
		{name: "tag deletion is ignored", path: "/hooks/github", header: signed("push", tagDeleted), body: tagDeleted,
			wantStatus: http.StatusOK, want: ignoredAs("tag push")},
		{name: "ping is ignored", path: "/hooks/github", header: signed("ping", ping), body: ping,
			wantStatus: http.StatusOK, want: ignoredAs("ping")},
		{name: "payload without repository is ignored", path: "/hooks/github", header: signed("ping", noRepo), body: noRepo,
			wantStatus: http.StatusOK, want: ignoredAs("no repository in payload")},
		{name: "unknown repository is ignored", path: "/hooks/github", header: fjHeader, body: fjBody,
			wantStatus: http.StatusOK, want: ignoredAs("unknown repository peeradmin/deploy-demo")},
		{name: "forgejo test delivery is ignored", path: "/hooks/forgejo", header: resign(fjHeader, testDelivery, forgejoSecret(t)), body: testDelivery,
			wantStatus: http.StatusOK, want: ignoredAs("test delivery")},

		{name: "bad signature", path: "/hooks/github", header: githubRequestHeader("push", push, "wrong"), body: push,
			wantStatus: http.StatusUnauthorized, want: errorAs("signature does not match")},
		{name: "no signature", path: "/hooks/github", header: without(signed("push", push), "X-Hub-Signature-256"), body: push,
			wantStatus: http.StatusUnauthorized, want: errorAs("missing X-Hub-Signature-256 header")},
		{name: "forgejo signature of another body", path: "/hooks/forgejo", header: fjHeader, body: testDelivery,
			wantStatus: http.StatusUnauthorized, want: errorAs("signature does not match")},

		{name: "truncated JSON", path: "/hooks/github", header: signed("push", truncated), body: truncated,
			wantStatus: http.StatusBadRequest, wantPrefix: "malformed delivery: body: "},
		{name: "missing delivery header", path: "/hooks/github", header: without(signed("push", push), "X-GitHub-Delivery"), body: push,
			wantStatus: http.StatusBadRequest, want: errorAs("malformed delivery: X-GitHub-Delivery: missing")},
		{name: "github delivery on the forgejo path", path: "/hooks/forgejo", header: signed("push", push), body: push,
			wantStatus: http.StatusBadRequest, want: errorAs("malformed delivery: X-Forgejo-Event: missing")},
		{name: "form-encoded delivery", path: "/hooks/github", header: form, body: formBody,
			wantStatus: http.StatusBadRequest, want: errorAs("malformed delivery: the webhook's content type must be application/json")},
		{name: "branch that reads as an option", path: "/hooks/github", header: signed("push", option), body: option,
			wantStatus: http.StatusBadRequest, wantPrefix: "malformed delivery: ref: branch name \"--upload-pack=x\""},

		{name: "deployer failure is a 500 without details", path: "/hooks/github", header: signed("push", push), body: push,
			deployerErr: errors.New("database is locked"),
			wantStatus:  http.StatusInternalServerError, want: errorAs("internal error"), wantTargets: []string{"hello"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := &fakeDeployer{err: tc.deployerErr}
			ts := newTestServer(t, Options{Config: testConfig(t), Deployer: d})
			status, got := ts.do(t, http.MethodPost, tc.path, tc.header, tc.body)
			if status != tc.wantStatus {
				t.Errorf("status %d, want %d (answer %v)", status, tc.wantStatus, got)
			}
			if tc.want != nil {
				equalJSON(t, got, tc.want)
			} else if msg, _ := got["error"].(string); !strings.HasPrefix(msg, tc.wantPrefix) {
				t.Errorf("error %q, want prefix %q", msg, tc.wantPrefix)
			}
			calls := d.Calls()
			var targets []string
			for _, c := range calls {
				targets = append(targets, c.target)
				if !c.hasDeadline {
					t.Errorf("SubmitPush for %s got a context without deadline", c.target)
				}
			}
			if strings.Join(targets, ",") != strings.Join(tc.wantTargets, ",") {
				t.Errorf("SubmitPush targets %v, want %v", targets, tc.wantTargets)
			}
			if tc.deployerErr != nil {
				if logs := ts.logs.String(); !strings.Contains(logs, "level=ERROR") || !strings.Contains(logs, tc.deployerErr.Error()) {
					t.Errorf("the failure is not logged at Error:\n%s", logs)
				}
			}
		})
	}
}

func TestHookSubmitsTheValidatedPush(t *testing.T) {
	d := &fakeDeployer{}
	ts := newTestServer(t, Options{Config: testConfig(t), Deployer: d})
	h1, body1 := forgejoDelivery(t, "push-1-new-branch")
	if status, got := ts.do(t, http.MethodPost, "/hooks/forgejo", h1, body1); status != http.StatusAccepted {
		t.Fatalf("status %d: %v", status, got)
	}
	calls := d.Calls()
	if len(calls) != 1 {
		t.Fatalf("%d SubmitPush calls, want 1", len(calls))
	}
	want := forge.PushEvent{
		Forge:      forge.Forgejo,
		DeliveryID: "83c1e302-c191-4aa4-acef-273d04ed5f0e",
		Repo:       "peeradmin/deploy-demo",
		Branch:     "main",
		SHA:        push1SHA,
		Pusher:     "peeradmin",
		Author:     "Peer Tester",
		Message:    "Initial commit: README and deploy script\n",
	}
	if calls[0].target != "demo" || calls[0].ev != want {
		t.Errorf("SubmitPush(%s, %+v), want (demo, %+v)", calls[0].target, calls[0].ev, want)
	}
}

// TestHookAnswersADuplicateDeliveryWithTheFirstDeploy sends one delivery
// twice to a server on the real deploy queue and store: the redelivery is
// answered 200 with "duplicate":true and the first deploy, and only that
// one deploy is stored.
func TestHookAnswersADuplicateDeliveryWithTheFirstDeploy(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	cfg.StateDir = t.TempDir()
	q, st := newRealQueue(t, cfg)
	ts := newTestServer(t, Options{Config: cfg, Deployer: q})
	push := readFile(t, "github/push-new-branch.json")
	h := githubRequestHeader("push", push, githubSecret)

	status, got := ts.do(t, http.MethodPost, "/hooks/github", h, push)
	if status != http.StatusAccepted || got["duplicate"] != nil {
		t.Fatalf("first delivery: status %d: %v, want 202 with a new deploy", status, got)
	}
	first, _ := got["deploy_id"].(float64)
	if first == 0 {
		t.Fatalf("first delivery: no deploy_id in %v", got)
	}
	status, got = ts.do(t, http.MethodPost, "/hooks/github", h, push)
	if status != http.StatusOK {
		t.Errorf("redelivery: status %d, want 200: %v", status, got)
	}
	if got["deploy_id"] != first || got["duplicate"] != true || got["url"] != fmt.Sprintf("%s/deploys/%d", publicURL, int64(first)) {
		t.Errorf("redelivery answered %v, want deploy_id %d with \"duplicate\":true", got, int64(first))
	}
	ds, err := st.List(context.Background(), deploy.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(ds) != 1 || float64(ds[0].ID) != first || ds[0].DeliveryID != h.Get("X-GitHub-Delivery") {
		t.Errorf("store holds %d deploys after a delivery and its redelivery, want the one deploy %d of the delivery", len(ds), int64(first))
		for _, d := range ds {
			t.Logf("stored: deploy %d of delivery %q, %s", d.ID, d.DeliveryID, d.State)
		}
	}
}

// newRealQueue starts the deploy queue on a real store in cfg.StateDir,
// both stopped when the test ends. Its deploys wait at their fetch until the
// queue shuts down: the test sees only what a delivery stores and queues.
func newRealQueue(t *testing.T, cfg *config.Config) (*deploy.Queue, *store.Store) {
	t.Helper()
	log := slog.New(slog.DiscardHandler)
	st, err := store.Open(context.Background(), filepath.Join(cfg.StateDir, "flakeship.db"), log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	q, err := deploy.New(deploy.Options{
		Config: cfg, Store: st, Fetcher: heldFetcher{}, Builder: noBuilder{},
		Switcher: func(builder.Spec) (builder.Switcher, error) { return nil, errors.New("no switching in this test") },
		Log:      log,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := q.Shutdown(ctx); err != nil {
			t.Errorf("shut the deploy queue down: %v", err)
		}
	})
	return q, st
}

// heldFetcher holds every fetch until its deploy is cancelled.
type heldFetcher struct{}

func (heldFetcher) Fetch(ctx context.Context, _ builder.Spec, _ string, _ io.Writer) (builder.Checkout, error) {
	<-ctx.Done()
	return builder.Checkout{}, context.Cause(ctx)
}

func (heldFetcher) ResolveBranch(context.Context, builder.Spec, string) (string, error) {
	return "", errors.New("no branches in this test")
}

func (heldFetcher) IsAncestor(context.Context, builder.Checkout, string, string) (bool, error) {
	return false, errors.New("no history in this test")
}

// noBuilder builds nothing: no deploy gets past heldFetcher.
type noBuilder struct{}

func (noBuilder) Build(context.Context, builder.Spec, builder.Checkout, io.Writer) (string, error) {
	return "", errors.New("no builds in this test")
}

func (noBuilder) ResetCache(builder.Spec) error { return nil }

func TestHookDeploysEveryTargetOfTheBranch(t *testing.T) {
	cfg := testConfig(t)
	cfg.Targets = []config.Target{
		{Name: "web", Forge: "github", Repo: "Codertocat/Hello-World", Branch: "master", WebhookSecret: githubSecret},
		{Name: "worker", Forge: "github", Repo: "Codertocat/Hello-World", Branch: "master", WebhookSecret: githubSecret},
		{Name: "docs", Forge: "github", Repo: "Codertocat/Hello-World", Branch: "gh-pages", WebhookSecret: githubSecret},
	}
	d := &fakeDeployer{}
	ts := newTestServer(t, Options{Config: cfg, Deployer: d})
	push := readFile(t, "github/push-new-branch.json")
	h := githubRequestHeader("push", push, githubSecret)

	status, got := ts.do(t, http.MethodPost, "/hooks/github", h, push)
	if status != http.StatusAccepted {
		t.Errorf("status %d, want 202", status)
	}
	equalJSON(t, got, map[string]any{
		"deploy_id": 1, "status": "queued", "url": publicURL + "/deploys/1",
		"deploys": []map[string]any{
			{"target": "web", "deploy_id": 1, "url": publicURL + "/deploys/1"},
			{"target": "worker", "deploy_id": 2, "url": publicURL + "/deploys/2"},
		},
	})
}

func TestRoutesAnswerJSON(t *testing.T) {
	ts := newTestServer(t, Options{Config: testConfig(t), Deployer: &fakeDeployer{}})
	tests := []struct {
		method, path string
		wantStatus   int
		want         map[string]any
	}{
		{http.MethodGet, "/healthz", http.StatusOK, map[string]any{"status": "ok"}},
		{http.MethodGet, "/nope", http.StatusNotFound, map[string]any{"error": "not found"}},
		{http.MethodPost, "/hooks/gogs", http.StatusNotFound, map[string]any{"error": "not found"}},
		{http.MethodGet, "/hooks/github", http.StatusMethodNotAllowed, map[string]any{"error": "method not allowed"}},
		{http.MethodPut, "/hooks/forgejo", http.StatusMethodNotAllowed, map[string]any{"error": "method not allowed"}},
		{http.MethodPost, "/healthz", http.StatusMethodNotAllowed, map[string]any{"error": "method not allowed"}},
	}
	for _, tc := range tests {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			status, got := ts.do(t, tc.method, tc.path, nil, nil)
			if status != tc.wantStatus {
				t.Errorf("status %d, want %d", status, tc.wantStatus)
			}
			equalJSON(t, got, tc.want)
		})
	}
}

// rawRequest writes head (a request line and headers) on a fresh connection
// and returns the connection with a reader for the answer. The connection
// closes when the test ends.
func rawRequest(t *testing.T, addr, head string) (net.Conn, *bufio.Reader) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if err := conn.SetDeadline(time.Now().Add(answerDeadline)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(conn, head); err != nil {
		t.Fatal(err)
	}
	return conn, bufio.NewReader(conn)
}

// readAnswer reads one HTTP answer and its JSON body.
func readAnswer(t *testing.T, br *bufio.Reader) (int, map[string]any) {
	t.Helper()
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("no answer: %v", err)
	}
	defer resp.Body.Close()
	var got map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
		t.Fatalf("answer body: %v", err)
	}
	return resp.StatusCode, got
}

func TestOversizedBodyIsRefusedFromContentLength(t *testing.T) {
	d := &fakeDeployer{}
	ts := newTestServer(t, Options{Config: testConfig(t), Deployer: d})
	// Only the headers are sent: the answer must come from Content-Length
	// alone, before any of the body.
	head := fmt.Sprintf("POST /hooks/github HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"+
		"X-GitHub-Event: push\r\nX-GitHub-Delivery: %s\r\nX-Hub-Signature-256: sha256=%s\r\nContent-Length: %d\r\n\r\n",
		ts.addr, githubDelivery, strings.Repeat("0", 64), testBodyLimit+1)
	_, br := rawRequest(t, ts.addr, head)
	status, got := readAnswer(t, br)
	if status != http.StatusRequestEntityTooLarge {
		t.Errorf("status %d, want 413", status)
	}
	equalJSON(t, got, map[string]any{"error": fmt.Sprintf("body exceeds %d bytes", testBodyLimit)})
	if n := len(d.Calls()); n != 0 {
		t.Errorf("%d SubmitPush calls, want 0", n)
	}
}

func TestBodyAtTheLimitIsRead(t *testing.T) {
	d := &fakeDeployer{}
	ts := newTestServer(t, Options{Config: testConfig(t), Deployer: d})
	push := readFile(t, "github/push-new-branch.json")
	// JSON padded with spaces to exactly the limit still deploys.
	body := append(bytes.Clone(push), bytes.Repeat([]byte(" "), testBodyLimit-len(push))...)
	status, got := ts.do(t, http.MethodPost, "/hooks/github", githubRequestHeader("push", body, githubSecret), body)
	if status != http.StatusAccepted {
		t.Errorf("status %d, want 202: %v", status, got)
	}
}

func TestTrickledBodyIsCutOff(t *testing.T) {
	t.Parallel()
	d := &fakeDeployer{}
	ts := newTestServer(t, Options{Config: testConfig(t), Deployer: d, ReadTimeout: time.Second})
	push := readFile(t, "github/push-new-branch.json")
	head := fmt.Sprintf("POST /hooks/github HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"+
		"X-GitHub-Event: push\r\nX-GitHub-Delivery: %s\r\nX-Hub-Signature-256: sha256=%s\r\nContent-Length: %d\r\n\r\n",
		ts.addr, githubDelivery, hmacHex(githubSecret, push), len(push))
	conn, br := rawRequest(t, ts.addr, head)

	// Send the body a byte a second until the server gives up.
	stop := make(chan struct{})
	trickled := make(chan struct{})
	go func() {
		defer close(trickled)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for _, b := range push {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			if _, err := conn.Write([]byte{b}); err != nil {
				return
			}
		}
	}()
	defer func() { close(stop); <-trickled }()

	// The answer must come well before the body could have (len(push) s);
	// the connection deadline of rawRequest bounds the wait.
	status, got := readAnswer(t, br)
	if status != http.StatusRequestTimeout {
		t.Errorf("status %d, want 408", status)
	}
	equalJSON(t, got, map[string]any{"error": "request did not arrive whole within 1s"})
	// Then the server closes the connection: EOF, or a reset when it
	// closed with trickled bytes unread. A timeout would mean it is open.
	var netErr net.Error
	if _, err := br.ReadByte(); err == nil || errors.As(err, &netErr) && netErr.Timeout() {
		t.Errorf("after the answer: %v, want the connection closed", err)
	}
	if n := len(d.Calls()); n != 0 {
		t.Errorf("%d SubmitPush calls, want 0", n)
	}
}

func TestLogsNameDeliveriesAndNeverSecrets(t *testing.T) {
	d := &fakeDeployer{}
	ts := newTestServer(t, Options{Config: testConfig(t), Deployer: d})
	push := readFile(t, "github/push-new-branch.json")
	good := githubRequestHeader("push", push, githubSecret)
	bad := githubRequestHeader("push", push, "wrong")
	fjHeader, fjBody := forgejoDelivery(t, "push-2")
	ts.do(t, http.MethodPost, "/hooks/github", good, push)
	ts.do(t, http.MethodPost, "/hooks/github", bad, push)
	ts.do(t, http.MethodPost, "/hooks/forgejo", fjHeader, fjBody)
	ts.do(t, http.MethodPost, "/hooks/forgejo", fjHeader, push)

	logs := ts.logs.String()
	for _, want := range []string{
		`level=INFO msg="delivery accepted" forge=github delivery_id=` + githubDelivery + ` event=push repo=Codertocat/Hello-World branch=master sha=6113728 target=hello deploy_id=1`,
		`level=INFO msg="delivery accepted" forge=forgejo delivery_id=f83b8a7e-593b-4244-a2a5-6e268c464e14 event=push repo=peeradmin/deploy-demo branch=main sha=2b3deda target=demo deploy_id=2`,
		`level=WARN msg="delivery rejected" forge=github delivery_id=` + githubDelivery + ` event=push repo=Codertocat/Hello-World err="signature does not match"`,
		`level=INFO msg="delivery ignored" forge=forgejo delivery_id=f83b8a7e-593b-4244-a2a5-6e268c464e14 event=push repo=Codertocat/Hello-World reason="unknown repository Codertocat/Hello-World"`,
	} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %q:\n%s", want, logs)
		}
	}
	secrets := []string{githubSecret.Reveal(), mirrorSecret.Reveal(), forgejoSecret(t).Reveal(),
		hmacHex(githubSecret, push), hmacHex(mirrorSecret, push), fjHeader.Get("X-Forgejo-Signature")}
	for _, s := range secrets {
		if strings.Contains(logs, s) {
			t.Errorf("logs contain the secret or signature %q:\n%s", s, logs)
		}
	}
}

// shutdownAndWait shuts srv down and waits for its Listen, whose result
// served carries, to return; a failure of either, or a Listen that does not
// return within answerDeadline, fails t.
func shutdownAndWait(t *testing.T, srv *Server, served <-chan error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), answerDeadline)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("Listen: %v", err)
		}
	case <-ctx.Done():
		t.Error("Listen did not return after Shutdown")
	}
}
