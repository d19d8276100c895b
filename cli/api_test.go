package cli

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flakeship/flakeship/config"
	"github.com/flakeship/flakeship/internal/queuetest"
	"github.com/flakeship/flakeship/server"
)

// These tests run the commands against a real flakeship server: the real
// HTTP server and deploy queue over a real SQLite store, with build-only
// targets that no test deploys (the root package's end-to-end tests run the
// commands through whole deploys). Nothing here needs git or nix.

const (
	cliAdminToken = config.Secret("cli-admin-token-19fe")
	cliReadToken  = config.Secret("cli-read-token-7a3d")
)

// startServer runs flakeship's server with targets app and web on
// 127.0.0.1 and returns its base URL. Everything stops when the test ends.
func startServer(t *testing.T, admin, read config.Secret) string {
	t.Helper()
	state := t.TempDir()
	cfg := &config.Config{
		Listen: "127.0.0.1:0", PublicURL: "https://deploy.example.test", StateDir: state,
		AdminToken: admin, ReadToken: read, MaxParallel: 1, Nix: "nix",
	}
	for _, name := range []string{"app", "web"} {
		cfg.Targets = append(cfg.Targets, config.Target{
			Name: name, Forge: "forgejo", Repo: "acme/" + name, CloneURL: "http://127.0.0.1:1/nowhere.git",
			Branch: "main", Attr: "packages.x86_64-linux.default", Activate: config.ActivateNone,
			Profile: filepath.Join(state, "profiles", name), HealthTimeout: time.Second,
			BuildTimeout: time.Minute, WebhookSecret: "hook-secret", StatusContext: "flakeship/" + name,
		})
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	_, q := queuetest.Start(t, cfg, log, queuetest.Options{})
	srv := server.New(server.Options{Config: cfg, Deployer: q, Operator: q, Log: log})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Listen(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("server shutdown: %v", err)
		}
		if err := <-served; err != nil {
			t.Errorf("Listen: %v", err)
		}
	})
	base := "http://" + ln.Addr().String()
	// Until Listen has served, Shutdown cannot stop it: wait for an answer.
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get(base + "/healthz")
		if err == nil {
			resp.Body.Close()
			return base
		}
		if time.Now().After(deadline) {
			t.Fatalf("the server does not answer: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestCommandsReportWhatTheServerRefuses(t *testing.T) {
	base := startServer(t, cliAdminToken, "")
	admin := map[string]string{"FLAKESHIP_URL": base, "FLAKESHIP_ADMIN_TOKEN": cliAdminToken.Reveal()}
	wrong := map[string]string{"FLAKESHIP_URL": base, "FLAKESHIP_ADMIN_TOKEN": "cli-admin-token-19ff"}
	none := map[string]string{"FLAKESHIP_URL": base}
	tests := []struct {
		name    string
		environ map[string]string
		args    []string
		stderr  string
	}{
		{"deploy of an unknown target", admin, []string{"deploy", "nope"},
			`flakeship deploy: target "nope" is not configured (HTTP 404)`},
		{"rollback with nothing to roll back to", admin, []string{"rollback", "app", "--wait"},
			"flakeship rollback: rollback app: nothing to roll back to: nothing was deployed yet (HTTP 409)"},
		{"cancel of an unknown deploy", admin, []string{"cancel", "42"},
			"flakeship cancel: deploy 42 not found (HTTP 404)"},
		{"logs of an unknown deploy", admin, []string{"logs", "42"},
			"flakeship logs: deploy 42 not found (HTTP 404)"},
		{"followed logs of an unknown deploy", none, []string{"logs", "--follow", "42"},
			"flakeship logs: deploy 42 not found (HTTP 404)"},
		{"status of an unknown target", none, []string{"status", "nope"},
			`flakeship status: target "nope" is not configured`},
		{"deploy without a token", none, []string{"deploy", "app"},
			"flakeship deploy: this needs the admin token: Authorization: Bearer <token> (HTTP 401): set FLAKESHIP_ADMIN_TOKEN or FLAKESHIP_ADMIN_TOKEN_FILE"},
		{"deploy with a wrong token", wrong, []string{"deploy", "app"},
			"flakeship deploy: wrong token (HTTP 401): check FLAKESHIP_ADMIN_TOKEN"},
		{"a flakeship that is not there", map[string]string{"FLAKESHIP_URL": "http://127.0.0.1:1"}, []string{"status"},
			`flakeship status: reach flakeship: Get "http://127.0.0.1:1/api/targets": dial tcp 127.0.0.1:1: connect: connection refused`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := run(t, tc.environ, tc.args...)
			if code != exitFailure || stdout != "" {
				t.Errorf("exit %d, stdout %q; want 1 and nothing", code, stdout)
			}
			oneLineErr(t, stderr)
			if got := strings.TrimSuffix(stderr, "\n"); got != tc.stderr {
				t.Errorf("stderr\n got %s\nwant %s", got, tc.stderr)
			}
			if strings.Contains(stderr, "cli-admin-token") {
				t.Errorf("a token was printed: %s", stderr)
			}
		})
	}
}

func TestWritesNeedTheServersAdminToken(t *testing.T) {
	base := startServer(t, "", cliReadToken)
	code, _, stderr := run(t, map[string]string{"FLAKESHIP_URL": base, "FLAKESHIP_ADMIN_TOKEN": "anything"}, "cancel", "1")
	if want := "flakeship cancel: the write API is disabled: set FLAKESHIP_ADMIN_TOKEN (HTTP 403)\n"; code != exitFailure || stderr != want {
		t.Errorf("cancel on a server without an admin token: exit %d, stderr %q; want 1, %q", code, stderr, want)
	}
}

func TestStatusShowsEveryTarget(t *testing.T) {
	base := startServer(t, cliAdminToken, cliReadToken)
	environ := map[string]string{"FLAKESHIP_URL": base, "FLAKESHIP_READ_TOKEN": cliReadToken.Reveal()}

	code, stdout, stderr := run(t, environ, "status")
	want := "TARGET  STATE  CURRENT  GENERATION  LAST DEPLOY\n" +
		"app     -      -        -           never\n" +
		"web     -      -        -           never\n"
	if code != exitOK || stderr != "" || stdout != want {
		t.Errorf("status: exit %d, stderr %q, stdout\n%s\nwant\n%s", code, stderr, stdout, want)
	}

	code, stdout, _ = run(t, environ, "status", "--json")
	var all []map[string]any
	if err := json.Unmarshal([]byte(stdout), &all); code != exitOK || err != nil || len(all) != 2 || all[1]["name"] != "web" {
		t.Errorf("status --json: exit %d, %v:\n%s", code, err, stdout)
	}
	code, stdout, _ = run(t, environ, "status", "web", "--json")
	var one map[string]any
	if err := json.Unmarshal([]byte(stdout), &one); code != exitOK || err != nil || one["name"] != "web" ||
		one["repo"] != "acme/web" || one["current_sha"] != "" {
		t.Errorf("status web --json: exit %d, %v:\n%s", code, err, stdout)
	}

	// The admin token also reads; without a token the server refuses.
	code, _, _ = run(t, map[string]string{"FLAKESHIP_URL": base, "FLAKESHIP_ADMIN_TOKEN": cliAdminToken.Reveal()}, "status", "app")
	if code != exitOK {
		t.Errorf("status with the admin token: exit %d", code)
	}
	code, _, stderr = run(t, map[string]string{"FLAKESHIP_URL": base}, "status")
	if want := "flakeship status: this needs a read token: Authorization: Bearer <token> (HTTP 401): set FLAKESHIP_READ_TOKEN or FLAKESHIP_READ_TOKEN_FILE\n"; code != exitFailure || stderr != want {
		t.Errorf("status without a token: exit %d, stderr %q; want %q", code, stderr, want)
	}
}

func TestAgoIsCoarse(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		before time.Duration
		want   string
	}{
		{-time.Second, "just now"},
		{12 * time.Second, "12s ago"},
		{5*time.Minute + 59*time.Second, "5m ago"},
		{47 * time.Hour, "47h ago"},
		{50 * time.Hour, "2d ago"},
	} {
		if got := ago(now, now.Add(-tc.before)); got != tc.want {
			t.Errorf("ago(%s) = %q, want %q", tc.before, got, tc.want)
		}
	}
}

func TestAnInterruptedCommandSaysSo(t *testing.T) {
	base := startServer(t, cliAdminToken, "")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var stdout, stderr strings.Builder
	code := Main(ctx, []string{"status"}, map[string]string{"FLAKESHIP_URL": base}, &stdout, &stderr)
	if code != exitFailure || stdout.String() != "" || stderr.String() != "flakeship status: interrupted\n" {
		t.Errorf("interrupted status: exit %d, stdout %q, stderr %q", code, stdout.String(), stderr.String())
	}
}
