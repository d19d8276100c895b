package server

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flakeship/flakeship/config"
	"github.com/flakeship/flakeship/deploy"
	"github.com/flakeship/flakeship/forge"
	"github.com/flakeship/flakeship/internal/queuetest"
	"github.com/flakeship/flakeship/internal/testenv"
)

// hostileBodyLimit is the limit DESIGN.md promises by default.
const hostileBodyLimit = 25 << 20

// hostileRig is a Server with the real deploy queue, store, fetcher, nix
// and switcher behind it, configured for the recorded deliveries: the
// GitHub target "hello" (Codertocat/Hello-World, master) and the Forgejo
// target "demo" (peeradmin/deploy-demo, main), both build-only. Their clone
// URL leads nowhere: a deploy that starts fails at its fetch.
type hostileRig struct {
	url   string
	addr  string
	state string
	queue *deploy.Queue
	logs  *testenv.Buffer
}

func newHostileRig(t *testing.T) *hostileRig {
	t.Helper()
	state := stateDir(t)
	r := &hostileRig{state: state, logs: &testenv.Buffer{}}
	nowhere := nowhereURL(t)
	cfg := &config.Config{
		Listen: "127.0.0.1:0", PublicURL: apiPublicURL, StateDir: state, MaxParallel: 1,
		Nix: "nix", NixFlags: testenv.NixFlags(), BodyLimit: hostileBodyLimit,
	}
	for _, tg := range []struct {
		name         string
		forge        forge.Kind
		repo, branch string
		secret       config.Secret
	}{
		{"hello", "github", "Codertocat/Hello-World", "master", githubSecret},
		{"demo", "forgejo", "peeradmin/deploy-demo", "main", forgejoSecret(t)},
	} {
		cfg.Targets = append(cfg.Targets, config.Target{
			Name: tg.name, Forge: tg.forge, Repo: tg.repo, CloneURL: nowhere,
			Branch: tg.branch, Attr: "packages.x86_64-linux.default", Activate: config.ActivateNone,
			Profile: filepath.Join(state, "profiles", tg.name), HealthTimeout: 5 * time.Second,
			BuildTimeout: time.Minute, WebhookSecret: tg.secret, StatusContext: "flakeship/" + tg.name,
		})
	}
	log := slog.New(slog.NewTextHandler(r.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	_, q := queuetest.Start(t, cfg, log, queuetest.Options{Grace: endWithin})
	r.queue = q
	srv := New(Options{Config: cfg, Deployer: q, Operator: q, Log: log})
	r.addr = serve(t, srv)
	r.url = "http://" + r.addr
	return r
}

// stored returns every deploy in the store.
func (r *hostileRig) stored(t *testing.T) []*deploy.Deploy {
	t.Helper()
	ds, err := r.queue.List(context.Background(), deploy.Filter{Limit: 1000})
	if err != nil {
		t.Fatalf("list deploys: %v", err)
	}
	return ds
}

// stateEntries lists what the state directory holds: a deploy that starts
// leaves its log there, a fetch its git cache.
func (r *hostileRig) stateEntries(t *testing.T) []string {
	t.Helper()
	var names []string
	err := filepath.WalkDir(r.state, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(r.state, path)
		if rel != "." && !strings.HasPrefix(rel, "flakeship.db") {
			names = append(names, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return names
}

// send sends body with exactly the header lines given (each value its own
// line, so a name may appear twice) and returns the status and the body,
// checking that it is JSON if wantJSON.
func (r *hostileRig) send(t *testing.T, method, path string, h http.Header, body []byte, wantJSON bool) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, r.url+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header = h.Clone()
	if req.Header == nil {
		req.Header = http.Header{}
	}
	resp, err := clientFrom("").Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read answer: %v", method, path, err)
	}
	if ct := resp.Header.Get("Content-Type"); wantJSON && !strings.HasPrefix(ct, "application/json") {
		t.Errorf("Content-Type %q, want JSON (body %q)", ct, raw)
	}
	return resp.StatusCode, raw
}

// sendOversized announces a body of size bytes, sends some of it and reads
// the answer, which may come before the server has taken the whole body.
// chunked sends it without a Content-Length.
func (r *hostileRig) sendOversized(t *testing.T, h http.Header, size int, chunked bool) (int, []byte) {
	t.Helper()
	conn, err := net.Dial("tcp", r.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(answerDeadline)); err != nil {
		t.Fatal(err)
	}
	var head bytes.Buffer
	fmt.Fprintf(&head, "POST /hooks/github HTTP/1.1\r\nHost: %s\r\n", r.addr)
	if chunked {
		head.WriteString("Transfer-Encoding: chunked\r\n")
	} else {
		fmt.Fprintf(&head, "Content-Length: %d\r\n", size)
	}
	for k, vs := range h {
		for _, v := range vs {
			fmt.Fprintf(&head, "%s: %s\r\n", k, v)
		}
	}
	head.WriteString("\r\n")
	if _, err := conn.Write(head.Bytes()); err != nil {
		t.Fatal(err)
	}
	// The body, until it is all sent or the server stops reading; a write
	// error just means the server has answered and closed.
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		chunk := bytes.Repeat([]byte(" "), 1<<20)
		for n := 0; n < size; n += len(chunk) {
			var err error
			if chunked {
				_, err = fmt.Fprintf(conn, "%x\r\n%s\r\n", len(chunk), chunk)
			} else {
				_, err = conn.Write(chunk)
			}
			if err != nil {
				return
			}
		}
		if chunked {
			io.WriteString(conn, "0\r\n\r\n")
		}
	}()
	defer func() { conn.Close(); <-sent }()
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no answer to an oversized body: %v", err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("Content-Type %q, want JSON (body %q)", ct, raw)
	}
	return resp.StatusCode, raw
}

// nested is a JSON value nested depth levels deep inside the given key of
// an object: {"k":{"k":...{}...}}.
func nested(key string, depth int) []byte {
	var b bytes.Buffer
	for i := 0; i < depth; i++ {
		fmt.Fprintf(&b, `{%q:`, key)
	}
	b.WriteString("{}")
	b.WriteString(strings.Repeat("}", depth))
	return b.Bytes()
}

// TestHostileDeliveriesStoreAndStartNothing sends one table of bad
// webhook requests to a server with the real deploy queue behind it. Each
// must be answered with its status and a JSON error (or {"ignored":...}),
// and leave nothing behind: no deploy stored, no deploy log, no fetch. A
// good delivery of each forge at the end proves the rig would have stored
// one.
func TestHostileDeliveriesStoreAndStartNothing(t *testing.T) {
	t.Parallel()
	r := newHostileRig(t)
	push := readFile(t, "github/push-new-branch.json")
	fjHeader, fjBody := forgejoDelivery(t, "push-2")
	fjSecret := forgejoSecret(t)
	sig := hmacHex(githubSecret, push)

	signed := func(body []byte) http.Header { return githubRequestHeader("push", body, githubSecret) }
	with := func(h http.Header, name string, values ...string) http.Header {
		h = h.Clone()
		h.Del(name)
		for _, v := range values {
			h.Add(name, v)
		}
		return h
	}
	mutated := func(old, new string) []byte { return edit(t, push, old, new) }
	sha1mac := hmac.New(sha1.New, []byte(githubSecret.Reveal()))
	sha1mac.Write(push)
	sha1Sig := "sha1=" + hex.EncodeToString(sha1mac.Sum(nil))
	otherBody := mutated(`"after": "`+helloSHA+`"`, `"after": "`+strings.Repeat("b", 40)+`"`)
	badSig := "sha256=" + hmacHex("wrong secret", push)

	fjSig := fjHeader.Get("X-Forgejo-Signature")
	fjBadSig := hmacHex("wrong secret", fjBody)
	fjMutated := func(old, new string) []byte { return edit(t, fjBody, old, new) }
	fjOtherBody := fjMutated(`"after": "`+push2SHA+`"`, `"after": "`+strings.Repeat("c", 40)+`"`)

	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(push)
	zw.Close()
	gzipped := signed(gz.Bytes())
	gzipped.Set("Content-Encoding", "gzip")

	deepArray := []byte(strings.Repeat("[", 1000) + strings.Repeat("]", 1000))

	type row struct {
		name   string
		method string // POST when empty
		path   string // /hooks/github when empty
		header http.Header
		body   []byte
		status int
		// want is the whole answer: {"error":...} or {"ignored":...}; a
		// prefix of the message when it ends in "*".
		want string
		// plain is the whole answer when it is not JSON.
		plain string
	}
	errorIs := func(msg string) string { return `{"error":` + quote(msg) + `}` }
	ignoredAs := func(msg string) string { return `{"ignored":` + quote(msg) + `}` }
	rows := []row{
		// Signatures.
		{name: "no signature", header: with(signed(push), "X-Hub-Signature-256"), body: push,
			status: 401, want: errorIs("missing X-Hub-Signature-256 header")},
		{name: "signature of another secret", header: with(signed(push), "X-Hub-Signature-256", badSig), body: push,
			status: 401, want: errorIs("signature does not match")},
		{name: "signature of a different body", header: signed(push), body: otherBody,
			status: 401, want: errorIs("signature does not match")},
		{name: "sha1= instead of sha256=", header: with(signed(push), "X-Hub-Signature-256", sha1Sig), body: push,
			status: 401, want: errorIs("X-Hub-Signature-256 does not start with sha256=")},
		{name: "only the sha1 X-Hub-Signature", header: with(with(signed(push), "X-Hub-Signature-256"), "X-Hub-Signature", sha1Sig), body: push,
			status: 401, want: errorIs("missing X-Hub-Signature-256 header")},
		{name: "upper-case hex", header: with(signed(push), "X-Hub-Signature-256", "sha256="+strings.ToUpper(sig)), body: push,
			status: 401, want: errorIs("X-Hub-Signature-256 is not 64 lower-case hex digits")},
		{name: "truncated hex", header: with(signed(push), "X-Hub-Signature-256", "sha256="+sig[:63]), body: push,
			status: 401, want: errorIs("X-Hub-Signature-256 is not 64 lower-case hex digits")},
		{name: "empty signature", header: with(signed(push), "X-Hub-Signature-256", "sha256="), body: push,
			status: 401, want: errorIs("missing X-Hub-Signature-256 header")},
		{name: "two signatures, good then bad", header: with(signed(push), "X-Hub-Signature-256", "sha256="+sig, badSig), body: push,
			status: 401, want: errorIs("X-Hub-Signature-256 is given more than once")},
		{name: "two signatures, bad then good", header: with(signed(push), "X-Hub-Signature-256", badSig, "sha256="+sig), body: push,
			status: 401, want: errorIs("X-Hub-Signature-256 is given more than once")},
		{name: "the good signature twice", header: with(signed(push), "X-Hub-Signature-256", "sha256="+sig, "sha256="+sig), body: push,
			status: 401, want: errorIs("X-Hub-Signature-256 is given more than once")},
		{name: "forgejo: no signature", path: "/hooks/forgejo",
			header: with(with(with(fjHeader, "X-Forgejo-Signature"), "X-Gitea-Signature"), "X-Gogs-Signature"), body: fjBody,
			status: 401, want: errorIs("missing X-Forgejo-Signature header")},
		{name: "forgejo: only GitHub's signature header", path: "/hooks/forgejo",
			header: with(with(fjHeader, "X-Forgejo-Signature"), "X-Gitea-Signature"), body: fjBody,
			status: 401, want: errorIs("missing X-Forgejo-Signature header")},
		{name: "forgejo: signature of another secret", path: "/hooks/forgejo",
			header: resign(fjHeader, fjBody, "wrong secret"), body: fjBody,
			status: 401, want: errorIs("signature does not match")},
		{name: "forgejo: signature of a different body", path: "/hooks/forgejo", header: fjHeader, body: fjOtherBody,
			status: 401, want: errorIs("signature does not match")},
		{name: "forgejo: sha256= prefix", path: "/hooks/forgejo", header: with(fjHeader, "X-Forgejo-Signature", "sha256="+fjSig), body: fjBody,
			status: 401, want: errorIs("X-Forgejo-Signature is not 64 lower-case hex digits")},
		{name: "forgejo: upper-case hex", path: "/hooks/forgejo", header: with(fjHeader, "X-Forgejo-Signature", strings.ToUpper(fjSig)), body: fjBody,
			status: 401, want: errorIs("X-Forgejo-Signature is not 64 lower-case hex digits")},
		{name: "forgejo: two signatures, good then bad", path: "/hooks/forgejo", header: with(fjHeader, "X-Forgejo-Signature", fjSig, fjBadSig), body: fjBody,
			status: 401, want: errorIs("X-Forgejo-Signature is given more than once")},
		{name: "forgejo: two signatures, bad then good", path: "/hooks/forgejo", header: with(fjHeader, "X-Forgejo-Signature", fjBadSig, fjSig), body: fjBody,
			status: 401, want: errorIs("X-Forgejo-Signature is given more than once")},
		{name: "gitea: two signatures, good then bad", path: "/hooks/gitea",
			header: with(giteaOnly(fjHeader), "X-Gitea-Signature", fjSig, fjBadSig), body: fjBody,
			status: 401, want: errorIs("X-Gitea-Signature is given more than once")},

		// Events and repositories.
		{name: "wrong event header", header: githubRequestHeader("issues", push, githubSecret), body: push,
			status: 200, want: ignoredAs("event issues")},
		{name: "no event header", header: with(signed(push), "X-GitHub-Event"), body: push,
			status: 400, want: errorIs("malformed delivery: X-GitHub-Event: missing")},
		{name: "forgejo: wrong event header", path: "/hooks/forgejo",
			header: with(with(fjHeader, "X-Forgejo-Event", "issues"), "X-Gitea-Event", "issues"), body: fjBody,
			status: 200, want: ignoredAs("event issues")},
		{name: "event for another repository", header: signed(mutated(`"full_name": "Codertocat/Hello-World"`, `"full_name": "Codertocat/Other"`)),
			body:   mutated(`"full_name": "Codertocat/Hello-World"`, `"full_name": "Codertocat/Other"`),
			status: 200, want: ignoredAs("unknown repository Codertocat/Other")},
		{name: "fork with the same name, signed with the fork's own secret",
			header: githubRequestHeader("push", mutated(`"full_name": "Codertocat/Hello-World"`, `"full_name": "Forker/Hello-World"`), "the fork's secret"),
			body:   mutated(`"full_name": "Codertocat/Hello-World"`, `"full_name": "Forker/Hello-World"`),
			status: 200, want: ignoredAs("unknown repository Forker/Hello-World")},
		{name: "fork with the same name, signed with the target's secret",
			header: signed(mutated(`"full_name": "Codertocat/Hello-World"`, `"full_name": "Forker/Hello-World"`)),
			body:   mutated(`"full_name": "Codertocat/Hello-World"`, `"full_name": "Forker/Hello-World"`),
			status: 200, want: ignoredAs("unknown repository Forker/Hello-World")},
		{name: "repository that is a path", header: signed(mutated(`"full_name": "Codertocat/Hello-World"`, `"full_name": "../Hello-World"`)),
			body:   mutated(`"full_name": "Codertocat/Hello-World"`, `"full_name": "../Hello-World"`),
			status: 400, want: errorIs("malformed delivery: repository.full_name: *")},

		// Refs and commits.
		{name: "branch that reads as an option", header: signed(mutated(`"ref": "refs/heads/master"`, `"ref": "refs/heads/--upload-pack=x"`)),
			body:   mutated(`"ref": "refs/heads/master"`, `"ref": "refs/heads/--upload-pack=x"`),
			status: 400, want: errorIs(`malformed delivery: ref: branch name "--upload-pack=x"*`)},
		{name: "branch with dot-dot", header: signed(mutated(`"ref": "refs/heads/master"`, `"ref": "refs/heads/master/../x"`)),
			body:   mutated(`"ref": "refs/heads/master"`, `"ref": "refs/heads/master/../x"`),
			status: 400, want: errorIs(`malformed delivery: ref: *`)},
		{name: "branch that is dot-dot", header: signed(mutated(`"ref": "refs/heads/master"`, `"ref": "refs/heads/.."`)),
			body:   mutated(`"ref": "refs/heads/master"`, `"ref": "refs/heads/.."`),
			status: 400, want: errorIs(`malformed delivery: ref: *`)},
		{name: "sha that is not hex", header: signed(mutated(`"after": "`+helloSHA+`"`, `"after": "`+strings.Repeat("g", 40)+`"`)),
			body:   mutated(`"after": "`+helloSHA+`"`, `"after": "`+strings.Repeat("g", 40)+`"`),
			status: 400, want: errorIs(`malformed delivery: after: *`)},
		{name: "sha that is an option", header: signed(mutated(`"after": "`+helloSHA+`"`, `"after": "--output=/tmp/x"`)),
			body:   mutated(`"after": "`+helloSHA+`"`, `"after": "--output=/tmp/x"`),
			status: 400, want: errorIs(`malformed delivery: after: *`)},
		{name: "all-zero sha", header: signed(mutated(`"after": "`+helloSHA+`"`, `"after": "`+zeroSHA+`"`)),
			body:   mutated(`"after": "`+helloSHA+`"`, `"after": "`+zeroSHA+`"`),
			status: 200, want: ignoredAs("branch deletion")},
		{name: "forgejo: all-zero sha", path: "/hooks/forgejo",
			header: resign(fjHeader, fjMutated(`"after": "`+push2SHA+`"`, `"after": "`+zeroSHA+`"`), fjSecret),
			body:   fjMutated(`"after": "`+push2SHA+`"`, `"after": "`+zeroSHA+`"`),
			status: 200, want: ignoredAs("branch deletion")},
		{name: "delivery id that is a path", header: with(signed(push), "X-GitHub-Delivery", "../../etc/passwd"), body: push,
			status: 400, want: errorIs(`malformed delivery: X-GitHub-Delivery: "../../etc/passwd" is not a delivery id`)},
		{name: "delivery id of 129 characters", header: with(signed(push), "X-GitHub-Delivery", strings.Repeat("a", 129)), body: push,
			status: 400, want: errorIs(`malformed delivery: X-GitHub-Delivery: *`)},

		// Bodies.
		{name: "not JSON", header: signed([]byte("payload=hello")), body: []byte("payload=hello"),
			status: 400, want: errorIs("malformed delivery: body: *")},
		{name: "truncated JSON", header: signed(push[:len(push)/2]), body: push[:len(push)/2],
			status: 400, want: errorIs("malformed delivery: body: *")},
		{name: "empty body", header: signed(nil), body: nil,
			status: 400, want: errorIs("malformed delivery: body: *")},
		{name: "JSON null", header: signed([]byte("null")), body: []byte("null"),
			status: 200, want: ignoredAs("no repository in payload")},
		{name: "gzip-encoded body is not decoded", header: gzipped, body: gz.Bytes(),
			status: 400, want: errorIs("malformed delivery: body: *")},
		{name: "JSON arrays nested 1000 levels deep", header: signed(deepArray), body: deepArray,
			status: 400, want: errorIs("malformed delivery: body: *")},
		{name: "JSON objects nested 1000 levels deep", header: signed(nested("x", 1000)), body: nested("x", 1000),
			status: 200, want: ignoredAs("no repository in payload")},
		{name: "JSON nested 1000 levels deep in the repository", header: signed(nested("repository", 1000)), body: nested("repository", 1000),
			status: 200, want: ignoredAs("no repository in payload")},
		{name: "JSON nested 100000 levels deep", header: signed(nested("x", 100000)), body: nested("x", 100000),
			status: 400, want: errorIs("malformed delivery: body: *")},
		{name: "forgejo: truncated JSON", path: "/hooks/forgejo",
			header: resign(fjHeader, fjBody[:len(fjBody)/2], fjSecret), body: fjBody[:len(fjBody)/2],
			status: 400, want: errorIs("malformed delivery: body: *")},

		// Methods and paths.
		{name: "PUT on the hook", method: http.MethodPut, header: signed(push), body: push,
			status: 405, want: errorIs("method not allowed")},
		{name: "DELETE on the hook", method: http.MethodDelete, header: signed(push), body: push,
			status: 405, want: errorIs("method not allowed")},
		{name: "PATCH on the hook", method: http.MethodPatch, header: signed(push), body: push,
			status: 405, want: errorIs("method not allowed")},
		// fiber answers a method token it does not know itself, before
		// any route or the error handler: a plain-text 400.
		{name: "unknown method on the hook", method: "FOO", header: signed(push), body: push,
			status: 400, plain: "Invalid http method"},
		{name: "GET on the hook", method: http.MethodGet, status: 405, want: errorIs("method not allowed")},
		{name: "PUT on the forgejo hook", method: http.MethodPut, path: "/hooks/forgejo", header: fjHeader, body: fjBody,
			status: 405, want: errorIs("method not allowed")},
		{name: "unknown hook", path: "/hooks/gogs", header: signed(push), body: push,
			status: 404, want: errorIs("not found")},
		{name: "path below the hook", path: "/hooks/github/x", header: signed(push), body: push,
			status: 404, want: errorIs("not found")},
		{name: "hooks root", path: "/hooks", header: signed(push), body: push,
			status: 404, want: errorIs("not found")},
		{name: "dot-dot path", path: "/hooks/../hooks/gogs", header: signed(push), body: push,
			status: 404, want: errorIs("not found")},
	}

	before := r.stateEntries(t)
	for _, tc := range rows {
		t.Run(tc.name, func(t *testing.T) {
			method, path := tc.method, tc.path
			if method == "" {
				method = http.MethodPost
			}
			if path == "" {
				path = "/hooks/github"
			}
			status, body := r.send(t, method, path, tc.header, tc.body, tc.plain == "")
			if status != tc.status {
				t.Errorf("answered %d %s, want %d", status, body, tc.status)
			}
			if tc.plain != "" {
				if string(body) != tc.plain {
					t.Errorf("answered %q, want %q", body, tc.plain)
				}
			} else {
				wantHostileAnswer(t, body, tc.want)
			}
			r.wantNothingStored(t, before)
		})
	}

	// Bodies over the limit, announced by Content-Length or streamed in
	// chunks; the answer may come before the body is all sent.
	for _, chunked := range []bool{false, true} {
		t.Run(fmt.Sprintf("30 MiB body, chunked=%v", chunked), func(t *testing.T) {
			status, body := r.sendOversized(t, signed(push), 30<<20, chunked)
			if status != http.StatusRequestEntityTooLarge {
				t.Errorf("answered %d %s, want 413", status, body)
			}
			want := fmt.Sprintf("body exceeds %d bytes", hostileBodyLimit)
			if chunked {
				// fasthttp forgets a request whose chunked body it cuts off.
				want = fmt.Sprintf("body exceeds the limit: %d bytes for a webhook, %d for any other request", hostileBodyLimit, otherBodyLimit)
			}
			wantHostileAnswer(t, body, errorIs(want))
			r.wantNothingStored(t, before)
		})
	}

	// The rig stores a good delivery of each forge: nothing above was
	// refused for a reason of the rig's own.
	for _, good := range []struct{ path, target string }{{"/hooks/github", "hello"}, {"/hooks/forgejo", "demo"}} {
		h, body := signed(push), push
		if good.target == "demo" {
			h, body = fjHeader, fjBody
		}
		if status, answer := r.send(t, http.MethodPost, good.path, h, body, true); status != http.StatusAccepted {
			t.Fatalf("good delivery to %s answered %d %s, want 202", good.path, status, answer)
		}
	}
	ds := r.stored(t)
	var targets []string
	for _, d := range ds {
		targets = append(targets, d.Target)
	}
	slices.Sort(targets)
	if strings.Join(targets, ",") != "demo,hello" {
		t.Errorf("good deliveries stored deploys of %v, want demo and hello", targets)
	}
	t.Logf("%d hostile requests refused, nothing stored; then 2 good deliveries stored", len(rows)+2)
}

// wantHostileAnswer compares a JSON answer with want, whose message may end
// in "*" to match a prefix.
func wantHostileAnswer(t *testing.T, body []byte, want string) {
	t.Helper()
	var got map[string]any
	if err := json.Unmarshal(body, &got); err != nil {
		t.Errorf("answer %q is not a JSON object: %v", body, err)
		return
	}
	var w map[string]string
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatalf("bad expected answer %q", want)
	}
	if len(got) != 1 {
		t.Errorf("answer %s, want %s", body, want)
		return
	}
	for k, wv := range w {
		gv, ok := got[k].(string)
		prefix, isPrefix := strings.CutSuffix(wv, "*")
		switch {
		case !ok:
			t.Errorf("answer %s, want %s", body, want)
		case isPrefix && !strings.HasPrefix(gv, prefix), !isPrefix && gv != wv:
			t.Errorf("answer %s, want %s", body, want)
		case strings.ContainsAny(gv, "\r\n"):
			t.Errorf("answer %s is not one line", body)
		}
	}
}

// wantNothingStored checks that no deploy is stored and nothing was
// started: the state directory holds what it held before.
func (r *hostileRig) wantNothingStored(t *testing.T, before []string) {
	t.Helper()
	if ds := r.stored(t); len(ds) != 0 {
		t.Errorf("%d deploys stored, want none (first: %s %s)", len(ds), ds[0].Target, ds[0].SHA)
	}
	if now := r.stateEntries(t); !slices.Equal(now, before) {
		t.Errorf("state directory holds %v, had %v: something started", now, before)
	}
}

func quote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}
