package builder

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flakeship/flakeship/config"
	"github.com/flakeship/flakeship/internal/testenv"
)

func TestNewSwitcher(t *testing.T) {
	good := Spec{
		Name:         "app",
		Activate:     config.ActivateService,
		Unit:         "app.service",
		SystemdScope: config.ScopeSystem,
		Profile:      "/state/profiles/app",
		HealthURL:    "http://127.0.0.1:8081/health",
	}
	tests := []struct {
		name    string
		change  func(*Spec)
		want    string // the switcher's type
		wantErr string
	}{
		{name: "a system service", change: func(s *Spec) {}, want: "*builder.serviceSwitcher"},
		{name: "a user service", change: func(s *Spec) { s.SystemdScope = config.ScopeUser }, want: "*builder.serviceSwitcher"},
		{name: "a service without health url", change: func(s *Spec) { s.HealthURL = "" }, want: "*builder.serviceSwitcher"},
		{name: "build only", change: func(s *Spec) { s.Activate = config.ActivateNone; s.Unit = "" }, want: "*builder.profileSwitcher"},
		{name: "a nixos system", change: func(s *Spec) { s.Activate = config.ActivateNixOS }, want: "*builder.nixosSwitcher"},
		{name: "an unknown activation", change: func(s *Spec) { s.Activate = "docker" }, wantErr: `target app: unknown activation "docker"`},
		{name: "a unit like an option", change: func(s *Spec) { s.Unit = "--now" }, wantErr: "target app: unit: want a systemd unit name"},
		{name: "no unit", change: func(s *Spec) { s.Unit = "" }, wantErr: "target app: unit: want a systemd unit name"},
		{name: "an unknown scope", change: func(s *Spec) { s.SystemdScope = "global" }, wantErr: `target app: unknown systemd scope "global"`},
		{name: "a relative profile", change: func(s *Spec) { s.Profile = "profiles/app" }, wantErr: `target app: profile "profiles/app" is not an absolute path`},
		{name: "a health url without http", change: func(s *Spec) { s.HealthURL = "127.0.0.1:8081/health" }, wantErr: "target app: health url"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := good
			tc.change(&s)
			sw, err := NewSwitcher(s, &Nix{}, nil)
			if tc.wantErr != "" {
				if err == nil || !strings.HasPrefix(err.Error(), tc.wantErr) {
					t.Fatalf("NewSwitcher = %T, %v; want error %q", sw, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := fmt.Sprintf("%T", sw); got != tc.want {
				t.Errorf("NewSwitcher = %s, want %s", got, tc.want)
			}
		})
	}
}

func TestServiceSwitcher(t *testing.T) {
	testenv.Require(t, "git", "nix", "systemd")
	ctx := context.Background()
	app := newTestService(t)
	repo := newFlakeRepo(t)
	build := func(flake, version string) string {
		t.Helper()
		var log bytes.Buffer
		outPath, err := testNix().Build(ctx, repo.spec(), repo.commit(flake, map[string]string{"version": version}), &log)
		if err != nil {
			t.Fatalf("build %s %s: %v\n%s", flake, version, err, log.String())
		}
		return outPath
	}
	v1, unhealthy, crash := build("ok", "1"), build("unhealthy", "2"), build("crash", "3")
	v4, v5 := build("ok", "4"), build("ok", "5")
	sw := app.switcher(t)

	t.Run("there is no generation before the first switch", func(t *testing.T) {
		if _, err := sw.Current(ctx); !errors.Is(err, ErrNoGeneration) {
			t.Errorf("Current = %v, want ErrNoGeneration", err)
		}
	})

	var first Generation
	t.Run("a healthy build comes up", func(t *testing.T) {
		var log bytes.Buffer
		start := time.Now()
		g, err := sw.Switch(ctx, v1, &log)
		if err != nil {
			t.Fatalf("Switch: %v\n%s", err, log.String())
		}
		if err := sw.Verify(ctx, &log); err != nil {
			t.Fatalf("Verify: %v\n%s", err, log.String())
		}
		t.Logf("switch+verify took %s", time.Since(start).Round(time.Millisecond))
		first = g
		app.wantServing(t, "version=1")
		for _, want := range []string{"restarting " + app.unit, "waiting for " + app.unit + " to become active", "health " + app.healthURL + " answered 200 after"} {
			if !strings.Contains(log.String(), want) {
				t.Errorf("log lacks %q:\n%s", want, log.String())
			}
		}
		if cur, err := sw.Current(ctx); err != nil || cur != g {
			t.Errorf("Current = %+v, %v; want %+v", cur, err, g)
		}
	})

	t.Run("an unhealthy build fails verify and rolls back", func(t *testing.T) {
		var log bytes.Buffer
		if _, err := sw.Switch(ctx, unhealthy, &log); err != nil {
			t.Fatalf("Switch: %v\n%s", err, log.String())
		}
		err := sw.Verify(ctx, &log)
		want := fmt.Sprintf("%s not healthy after %s: health %s answered 500 Internal Server Error", app.unit, app.healthTimeout, app.healthURL)
		if err == nil || err.Error() != want {
			t.Fatalf("Verify = %v, want %q\n%s", err, want, log.String())
		}
		if err := sw.Rollback(ctx, first, &log); err != nil {
			t.Fatalf("Rollback: %v\n%s", err, log.String())
		}
		app.wantServing(t, "version=1")
		if cur, err := sw.Current(ctx); err != nil || cur != first {
			t.Errorf("Current = %+v, %v; want %+v", cur, err, first)
		}
	})

	t.Run("a build that crashes at start fails verify without waiting it out", func(t *testing.T) {
		var log bytes.Buffer
		if _, err := sw.Switch(ctx, crash, &log); err != nil {
			t.Fatalf("Switch: %v\n%s", err, log.String())
		}
		err := sw.Verify(ctx, &log)
		if err == nil || !strings.HasPrefix(err.Error(), app.unit+" failed after ") {
			t.Fatalf("Verify = %v, want %q\n%s", err, app.unit+" failed after ...", log.String())
		}
		if !strings.Contains(log.String(), "Active: failed") {
			t.Errorf("log lacks the unit's status:\n%s", log.String())
		}
		log.Reset()
		if err := sw.Rollback(ctx, first, &log); err != nil {
			t.Fatalf("Rollback: %v\n%s", err, log.String())
		}
		if want := "unit " + app.unit + " was in failed state; reset-failed before restart"; !strings.Contains(log.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, log.String())
		}
		app.wantServing(t, "version=1")
	})

	t.Run("a burst of switches never leaves the unit down for its start limit", func(t *testing.T) {
		// The unit allows 3 starts in 10s; 7 switches in a row go past that.
		var log bytes.Buffer
		for i := range 7 {
			outPath, want := v4, "version=4"
			if i%2 == 1 {
				outPath, want = v5, "version=5"
			}
			if _, err := sw.Switch(ctx, outPath, &log); err != nil {
				t.Fatalf("switch %d: %v\n%s", i+1, err, log.String())
			}
			if err := sw.Verify(ctx, &log); err != nil {
				t.Fatalf("verify %d: %v\n%s", i+1, err, log.String())
			}
			app.wantServing(t, want)
		}
		if want := "hit its start limit; reset-failed and restarting again"; !strings.Contains(log.String(), want) {
			t.Errorf("log never mentions %s, so the start limit never bit:\n%s", want, log.String())
		}
	})
}

func TestServiceSwitcherVerifyWithoutHealthURL(t *testing.T) {
	testenv.Require(t, "git", "nix", "systemd")
	ctx := context.Background()
	app := newTestService(t)
	app.healthURL = ""
	repo := newFlakeRepo(t)
	var log bytes.Buffer
	build := func(flake string) string {
		t.Helper()
		outPath, err := testNix().Build(ctx, repo.spec(), repo.commit(flake, map[string]string{"version": "1"}), &log)
		if err != nil {
			t.Fatalf("build %s: %v\n%s", flake, err, log.String())
		}
		return outPath
	}
	ok, crash := build("ok"), build("crash")
	sw := app.switcher(t)
	tests := []struct {
		name    string
		outPath string
		wantErr string
	}{
		{name: "a unit that stays active", outPath: ok},
		{name: "a unit that crashes", outPath: crash, wantErr: app.unit + " failed after "},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var log bytes.Buffer
			if _, err := sw.Switch(ctx, tc.outPath, &log); err != nil {
				t.Fatalf("Switch: %v\n%s", err, log.String())
			}
			err := sw.Verify(ctx, &log)
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.HasPrefix(err.Error(), tc.wantErr)) {
				t.Fatalf("Verify = %v, want error %q\n%s", err, tc.wantErr, log.String())
			}
		})
	}
}

func TestServiceSwitcherVerifyStopsWithItsContext(t *testing.T) {
	testenv.Require(t, "systemd")
	app := newTestService(t)
	sw := app.switcher(t) // the unit never started: Verify waits
	ctx, cancel := context.WithCancel(context.Background())
	var log bytes.Buffer
	done := make(chan error, 1)
	go func() { done <- sw.Verify(ctx, &log) }()
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Verify = %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Verify did not stop when its context ended")
	}
}

// testService is a systemd user unit running testdata/healthsrv on what the
// profile points at, removed when the test ends.
type testService struct {
	unit          string
	profile       string
	healthURL     string
	healthTimeout time.Duration
	port          string
}

func newTestService(t *testing.T) *testService {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "healthsrv")
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the service tests build their app with go: %v", err)
	}
	build := exec.Command(gobin, "build", "-o", bin, filepath.Join("testdata", "healthsrv", "main.go"))
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build healthsrv: %v\n%s", err, out)
	}
	port := unusedLocalPort(t)
	s := &testService{
		unit:          fmt.Sprintf("flakeship-test-%d.service", time.Now().UnixNano()),
		profile:       filepath.Join(dir, "profiles", "app"),
		healthURL:     "http://127.0.0.1:" + port + "/health",
		healthTimeout: 5 * time.Second,
		port:          port,
	}
	unitDir := filepath.Join(os.Getenv("XDG_RUNTIME_DIR"), "systemd", "user")
	if err := os.MkdirAll(unitDir, 0o755); err != nil {
		t.Fatal(err)
	}
	unitFile := filepath.Join(unitDir, s.unit)
	text := fmt.Sprintf(`[Unit]
Description=flakeship builder test app
StartLimitIntervalSec=10
StartLimitBurst=3

[Service]
ExecStart=%s -profile %s -addr 127.0.0.1:%s
`, bin, s.profile, port)
	if err := os.WriteFile(unitFile, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	systemctlUser(t, "daemon-reload")
	t.Cleanup(func() {
		systemctlUser(t, "stop", s.unit)
		_ = exec.Command("systemctl", "--user", "reset-failed", s.unit).Run() // not failed is fine
		if err := os.Remove(unitFile); err != nil {
			t.Error(err)
		}
		systemctlUser(t, "daemon-reload")
	})
	return s
}

// switcher is a user-scope service switcher for the unit.
func (s *testService) switcher(t testing.TB) Switcher {
	t.Helper()
	sw, err := NewSwitcher(Spec{
		Name:          "app",
		Activate:      config.ActivateService,
		Unit:          s.unit,
		SystemdScope:  config.ScopeUser,
		Profile:       s.profile,
		HealthURL:     s.healthURL,
		HealthTimeout: s.healthTimeout,
	}, testNix(), nil)
	if err != nil {
		t.Fatal(err)
	}
	return sw
}

// wantServing checks that the app answers its health check with body.
func (s *testService) wantServing(t testing.TB, body string) {
	t.Helper()
	resp, err := http.Get("http://127.0.0.1:" + s.port + "/health")
	if err != nil {
		t.Fatalf("health: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || string(b) != body {
		t.Errorf("health = %s %q, want 200 %q", resp.Status, b, body)
	}
}

func systemctlUser(t testing.TB, args ...string) {
	t.Helper()
	out, err := exec.Command("systemctl", append([]string{"--user"}, args...)...).CombinedOutput()
	if err != nil {
		t.Errorf("systemctl --user %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// unusedLocalPort is a port on 127.0.0.1 that nothing listened on a moment
// ago: the unit's app restarts many times and must keep one address.
func unusedLocalPort(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, port, err := net.SplitHostPort(ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	return port
}
