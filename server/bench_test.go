package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flakeship/flakeship/config"
	"github.com/flakeship/flakeship/internal/queuetest"
)

// The benchmarks measure the webhook path: verifying and parsing each
// recorded delivery, then whole deliveries over a real loopback connection
// to the server in front of the real deploy queue and a real SQLite store.
// scripts/bench compares the same path, as a process under load, with a
// floor that only checks the signature (see docs/performance.md).

// benchDelivery is one recorded delivery, signed as its forge signs it.
type benchDelivery struct {
	name   string
	path   string // the hook it is sent to
	parse  parseFunc
	verify func(h http.Header, body []byte, secret config.Secret) error
	header http.Header
	body   []byte
	secret config.Secret
	// ignored is the reason the delivery deploys nothing, "" for a push
	// that deploys.
	ignored string
}

// benchDeliveries are the recorded deliveries of both forges: the GitHub
// examples signed with githubSecret, the Forgejo ones with their recorded
// headers and secret.
func benchDeliveries(b *testing.B) []benchDelivery {
	b.Helper()
	github := func(name, event, ignored string) benchDelivery {
		body := readFile(b, "github/"+name+".json")
		return benchDelivery{name: "github/" + name, path: "/hooks/github", parse: parseGitHub, verify: verifyGitHub,
			header: githubRequestHeader(event, body, githubSecret), body: body, secret: githubSecret, ignored: ignored}
	}
	forgejo := func(name string) benchDelivery {
		h, body := forgejoDelivery(b, name)
		return benchDelivery{name: "forgejo/" + name, path: "/hooks/forgejo", parse: parseForgejo, verify: verifyForgejo,
			header: h, body: body, secret: forgejoSecret(b)}
	}
	return []benchDelivery{
		github("push-new-branch", "push", ""),
		github("push-tag-deleted", "push", "tag push"),
		github("push-tag-deleted-org", "push", "tag push"),
		github("ping", "ping", "ping"),
		forgejo("push-1-new-branch"),
		forgejo("push-2"),
	}
}

// BenchmarkSignature measures the HMAC-SHA256 check of each recorded
// delivery's raw body.
func BenchmarkSignature(b *testing.B) {
	for _, d := range benchDeliveries(b) {
		b.Run(d.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(d.body)))
			for b.Loop() {
				if err := d.verify(d.header, d.body, d.secret); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkParse measures turning each recorded delivery into a push or an
// ignored reason: signature, headers, JSON decoding and validation.
func BenchmarkParse(b *testing.B) {
	for _, d := range benchDeliveries(b) {
		b.Run(d.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(d.body)))
			for b.Loop() {
				_, err := d.parse(d.header, d.body, d.secret)
				var ign *IgnoredError
				switch {
				case d.ignored == "" && err != nil:
					b.Fatal(err)
				case d.ignored != "" && (!errors.As(err, &ign) || ign.Reason != d.ignored):
					b.Fatalf("got %v, want ignored %q", err, d.ignored)
				}
			}
		})
	}
}

// hookBench is a Server listening on 127.0.0.1 in front of the real deploy
// queue and a real SQLite store, with a keep-alive client for it. Its
// targets' clone URL refuses connections, so a deploy spends about two
// seconds retrying its fetch and then fails: with MaxParallel 1 at most one
// runs, and every push that arrives meanwhile replaces the waiting one (it
// ends superseded), as a burst of pushes to a busy target does. The
// deliveries measure intake, not builds.
type hookBench struct {
	url    string
	client *http.Client
}

func newHookBench(b *testing.B) *hookBench {
	b.Helper()
	state := b.TempDir()
	cfg := &config.Config{
		Listen: "127.0.0.1:0", PublicURL: publicURL, StateDir: state, MaxParallel: 1,
		Nix: "nix", BodyLimit: testBodyLimit,
	}
	// One target per repository of the recorded deliveries, as most
	// installations have.
	for _, t := range []config.Target{
		{Name: "hello", Forge: "github", Repo: "Codertocat/Hello-World", Branch: "master", WebhookSecret: githubSecret},
		{Name: "octo", Forge: "github", Repo: "Octocoders/Hello-World", Branch: "master", WebhookSecret: githubSecret},
		{Name: "demo", Forge: "forgejo", Repo: "peeradmin/deploy-demo", Branch: "main", WebhookSecret: forgejoSecret(b)},
	} {
		t.CloneURL = "http://127.0.0.1:1/nowhere.git"
		t.Attr = "packages.x86_64-linux.default"
		t.Activate = config.ActivateNone
		t.Profile = filepath.Join(state, "profiles", t.Name)
		t.HealthTimeout, t.BuildTimeout = 5*time.Second, time.Minute
		t.StatusContext = "flakeship/" + t.Name
		cfg.Targets = append(cfg.Targets, t)
	}
	// The log is formatted as in production (text, info) and thrown away.
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	_, q := queuetest.Start(b, cfg, log, queuetest.Options{Grace: 100 * time.Millisecond})

	srv := New(Options{Config: cfg, Deployer: q, Operator: q, Log: log})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Listen(ln) }()
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), answerDeadline)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			b.Errorf("Shutdown: %v", err)
		}
		if err := <-served; err != nil {
			b.Errorf("Listen: %v", err)
		}
	})
	const conns = 64
	transport := &http.Transport{MaxIdleConnsPerHost: conns, MaxConnsPerHost: conns}
	b.Cleanup(transport.CloseIdleConnections)
	return &hookBench{url: "http://" + ln.Addr().String(), client: &http.Client{Transport: transport, Timeout: answerDeadline}}
}

// send posts d with delivery id deliveryID (in every header its forge
// sends it under) and returns an error unless the answer has status want.
func (h *hookBench) send(d benchDelivery, deliveryID string, want int) error {
	req, err := http.NewRequest(http.MethodPost, h.url+d.path, bytes.NewReader(d.body))
	if err != nil {
		return err
	}
	for k, v := range d.header {
		req.Header[k] = v
	}
	for _, k := range []string{"X-Github-Delivery", "X-Forgejo-Delivery", "X-Gitea-Delivery", "X-Gogs-Delivery"} {
		if req.Header.Get(k) != "" {
			req.Header.Set(k, deliveryID)
		}
	}
	resp, err := h.client.Do(req)
	if err != nil {
		return err
	}
	answer, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return err
	}
	if resp.StatusCode != want {
		return fmt.Errorf("%s: status %d, want %d: %s", d.name, resp.StatusCode, want, answer)
	}
	return nil
}

// BenchmarkHook measures whole deliveries through the server into the real
// queue and store: an ignored ping (verified, then answered 200), pushes
// that deploy (each a new delivery: stored with its delivery id in one
// fsync'd transaction, queued, and superseding the push that waited), and
// redeliveries (found by delivery id, answered 200). "conns=1" sends one
// delivery at a time over one connection; "conns=64" keeps 64 in flight,
// and its ns/op is the inverse of the throughput.
func BenchmarkHook(b *testing.B) {
	var ping, githubPush, forgejoPush benchDelivery
	for _, d := range benchDeliveries(b) {
		switch d.name {
		case "github/ping":
			ping = d
		case "github/push-new-branch":
			githubPush = d
		case "forgejo/push-2":
			forgejoPush = d
		}
	}
	var runs atomic.Int64 // makes delivery ids unique across sub-benchmarks
	cases := []struct {
		name string
		d    benchDelivery
		want int
		// newID gives each delivery its own id; false resends one id.
		newID bool
	}{
		{"github-ping", ping, http.StatusOK, true},
		{"github-push", githubPush, http.StatusAccepted, true},
		{"github-redelivery", githubPush, http.StatusOK, false},
		{"forgejo-push", forgejoPush, http.StatusAccepted, true},
	}
	for _, tc := range cases {
		for _, conns := range []int{1, 64} {
			b.Run(fmt.Sprintf("%s/conns=%d", tc.name, conns), func(b *testing.B) {
				h := newHookBench(b)
				run := runs.Add(1)
				id := func(n int64) string {
					if !tc.newID {
						return fmt.Sprintf("bench-%d-redelivered", run)
					}
					return fmt.Sprintf("bench-%d-%d", run, n)
				}
				if !tc.newID {
					if err := h.send(tc.d, id(0), http.StatusAccepted); err != nil { // the first delivery
						b.Fatal(err)
					}
				}
				b.ReportAllocs()
				b.SetBytes(int64(len(tc.d.body)))
				b.ResetTimer()
				if conns == 1 {
					for i := range b.N {
						if err := h.send(tc.d, id(int64(i)), tc.want); err != nil {
							b.Fatal(err)
						}
					}
					return
				}
				var n atomic.Int64
				b.SetParallelism((conns + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						if err := h.send(tc.d, id(n.Add(1)), tc.want); err != nil {
							b.Error(err) // not Fatal: this is not the benchmark's goroutine
							return
						}
					}
				})
			})
		}
	}
}
