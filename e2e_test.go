package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/flakeship/flakeship/internal/forgetest"
	"github.com/flakeship/flakeship/internal/gittest"
	"github.com/flakeship/flakeship/internal/testenv"
)

// The end-to-end tests build the flakeship binary and run it as a process
// against real parts: a smart-HTTP git server, nix, a systemd user manager
// running the deployed service from the target's profile, and a fake forge
// API that records commit statuses.

var (
	buildOnce sync.Once
	binPath   string
	healthBin string
	buildErr  error
	binDir    string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// binaries builds flakeship (with the race detector when the tests have it)
// and the test service once per test run.
func binaries(t *testing.T) (flakeship, healthsrv string) {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "flakeship-e2e-bin-")
		if buildErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "flakeship")
		healthBin = filepath.Join(binDir, "healthsrv")
		args := []string{"build", "-o", binPath}
		if raceEnabled {
			args = append(args, "-race")
		}
		for _, b := range [][]string{append(args, "."), {"build", "-o", healthBin, "./builder/testdata/healthsrv/main.go"}} {
			out, err := exec.Command("go", b...).CombinedOutput()
			if err != nil {
				buildErr = fmt.Errorf("go %s: %v\n%s", strings.Join(b, " "), err, out)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath, healthBin
}

// app is one deployable repository with its flake, served over smart HTTP,
// a systemd user unit that runs what the target's profile points at, and
// the fake forge that receives its statuses.
type app struct {
	t         *testing.T
	kind      string // github or forgejo
	name      string // target name
	repoName  string // owner/name on the forge
	secret    string
	token     string
	system    string
	git       *gittest.Server
	repo      *gittest.Repo
	forge     *forgetest.Server
	unit      string
	port      int
	stateDir  string
	healthsrv string
	version   int
	head      string   // newest pushed commit
	nonce     string   // makes each test's derivations new to the nix store
	extraEnv  []string // more of flakeship's environment, after the rest
}

// newApp sets up everything a target needs, but not flakeship itself.
func newApp(t *testing.T, kind string) *app {
	t.Helper()
	testenv.Require(t, "git", "nix", "systemd")
	_, healthsrv := binaries(t)
	a := &app{
		t:         t,
		kind:      kind,
		name:      "app",
		repoName:  "acme/web-" + kind,
		secret:    "hook-secret-" + kind + "-6f1c",
		token:     "forge-token-" + kind + "-93ab",
		system:    testenv.System(t),
		stateDir:  t.TempDir(),
		healthsrv: healthsrv,
		nonce:     fmt.Sprintf("%x", time.Now().UnixNano()),
	}
	a.git = gittest.NewServer(t)
	a.repo = a.git.NewRepo(t, "web")
	if kind == "github" {
		a.forge = forgetest.NewGitHub(t, a.token)
	} else {
		a.forge = forgetest.NewForgejo(t, a.token)
	}
	a.forge.ServeRepo(a.repoName, a.repo.Bare) // the forge has what was pushed, nothing else
	a.port = freePort(t)
	a.unit = fmt.Sprintf("flakeship-e2e-%d.service", a.port)
	a.installUnit()
	return a
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func (a *app) profile() string { return filepath.Join(a.stateDir, "profiles", a.name) }

func (a *app) healthURL() string { return fmt.Sprintf("http://127.0.0.1:%d/health", a.port) }

// installUnit writes the service's user unit: it runs the test service on
// the file the target's profile points at.
func (a *app) installUnit() {
	t := a.t
	dir := filepath.Join(os.Getenv("XDG_RUNTIME_DIR"), "systemd", "user")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	unit := fmt.Sprintf(`[Unit]
Description=flakeship end-to-end test service

[Service]
ExecStart=%s -profile %s -addr 127.0.0.1:%d
`, a.healthsrv, a.profile(), a.port)
	path := filepath.Join(dir, a.unit)
	if err := os.WriteFile(path, []byte(unit), 0o644); err != nil {
		t.Fatal(err)
	}
	systemctl(t, "daemon-reload")
	t.Cleanup(func() {
		exec.Command("systemctl", "--user", "stop", a.unit).Run()
		os.Remove(path)
		exec.Command("systemctl", "--user", "daemon-reload").Run()
	})
}

func systemctl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("systemctl", append([]string{"--user"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("systemctl --user %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// The kinds of commit the tests push.
const (
	healthy   = "healthy"
	broken    = "broken"    // the build fails
	unhealthy = "unhealthy" // builds, but the service answers 500
)

// commit commits a flake whose build is of the given kind and returns the
// commit id; the service it builds reports the commit's version number.
func (a *app) commit(kind string) string {
	a.version++
	var script string
	switch kind {
	case healthy:
		script = fmt.Sprintf("echo version=%d > $out; echo healthy=yes >> $out", a.version)
	case broken:
		script = fmt.Sprintf("echo 'compiling version %d'; echo 'error: this build is broken on purpose' >&2; exit 1", a.version)
	case unhealthy:
		script = fmt.Sprintf("echo version=%d > $out; echo healthy=no >> $out", a.version)
	default:
		a.t.Fatalf("unknown commit kind %q", kind)
	}
	script = ": " + a.nonce + "; " + script
	return a.repo.Commit(a.t, fmt.Sprintf("%s version %d", kind, a.version), map[string]string{"flake.nix": a.flake(script)})
}

// flake is the test service's flake.nix whose build runs script.
func (a *app) flake(script string) string {
	return fmt.Sprintf(`{
  description = "flakeship end-to-end test service";
  outputs = { self }: {
    packages.%[1]s.default = derivation {
      name = "flakeship-e2e-web";
      system = "%[1]s";
      builder = "/bin/sh";
      args = [ "-c" %[2]q ];
    };
  };
}
`, a.system, script)
}

// push commits a build of the given kind, pushes it to main and returns the
// signed delivery the forge would send for it.
func (a *app) push(kind string) (string, delivery) {
	before := a.head
	if before == "" {
		before = strings.Repeat("0", 40)
	}
	sha := a.commit(kind)
	a.repo.Push(a.t, "main")
	a.head = sha
	return sha, a.delivery(before, sha)
}

// pushHeld commits and pushes a healthy build of the next version that
// waits at gate before it writes its output, and returns the commit and
// its delivery. Its deploy stays "building" until the test opens the gate:
// flakeship must run with buildsSeeGates.
func (a *app) pushHeld(gate *testenv.Gate) (string, delivery) {
	a.t.Helper()
	a.version++
	script := fmt.Sprintf(": %s; %s; echo version=%d > $out; echo healthy=yes >> $out", a.nonce, gate.Script(), a.version)
	before := a.head
	if before == "" {
		before = strings.Repeat("0", 40)
	}
	sha := a.repo.Commit(a.t, fmt.Sprintf("version %d, held at a gate", a.version), map[string]string{"flake.nix": a.flake(script)})
	a.repo.Push(a.t, "main")
	a.head = sha
	return sha, a.delivery(before, sha)
}

// buildsSeeGates makes flakeship run nix without its sandbox, which would
// hide a testenv.Gate's pipe from the builds of pushHeld. Call it before
// start.
func (a *app) buildsSeeGates() {
	a.extraEnv = append(a.extraEnv, "FLAKESHIP_NIX_FLAGS=--extra-experimental-features 'nix-command flakes' "+
		"--option substituters '' "+strings.Join(testenv.NoSandbox, " "))
}

var deliverySeq int

func (a *app) delivery(before, after string) delivery {
	deliverySeq++
	id := fmt.Sprintf("5b3c9e10-%04d-4f1e-9d2a-%012d", deliverySeq%10000, time.Now().UnixNano()%1e12)
	return pushDelivery(a.t, a.kind, a.repoName, "main", before, after, id, a.secret)
}

// env is the configuration flakeship runs with. A variable of extraEnv
// replaces the one of the same name here: flakeship's config.Environ, like
// getenv, takes the first of two, so the replaced one is left out.
func (a *app) env() []string {
	prefix := "FLAKESHIP_TARGET_APP_"
	base := []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + a.stateDir,
		"XDG_RUNTIME_DIR=" + os.Getenv("XDG_RUNTIME_DIR"),
		"FLAKESHIP_LISTEN=127.0.0.1:0",
		"FLAKESHIP_PUBLIC_URL=https://deploy.example.test",
		"FLAKESHIP_STATE_DIR=" + a.stateDir,
		"FLAKESHIP_NIX_FLAGS=--extra-experimental-features 'nix-command flakes' --option substituters ''",
		"FLAKESHIP_LOG_LEVEL=debug",
		"FLAKESHIP_TARGETS=app",
		prefix + "FORGE=" + a.kind,
		prefix + "REPO=" + a.repoName,
		prefix + "FORGE_URL=" + a.forge.URL(),
		prefix + "CLONE_URL=" + a.git.URL("web"),
		prefix + "BRANCH=main",
		prefix + "UNIT=" + a.unit,
		prefix + "SYSTEMD_SCOPE=user",
		prefix + "HEALTH_URL=" + a.healthURL(),
		prefix + "HEALTH_TIMEOUT=5s",
		prefix + "WEBHOOK_SECRET=" + a.secret,
		prefix + "TOKEN=" + a.token,
	}
	replaced := map[string]bool{}
	for _, kv := range a.extraEnv {
		k, _, _ := strings.Cut(kv, "=")
		replaced[k] = true
	}
	env := make([]string, 0, len(base)+len(a.extraEnv))
	for _, kv := range base {
		if k, _, _ := strings.Cut(kv, "="); !replaced[k] {
			env = append(env, kv)
		}
	}
	return append(env, a.extraEnv...)
}

// flakeship is a running flakeship process.
type flakeship struct {
	t    *testing.T
	cmd  *exec.Cmd
	base string // http://127.0.0.1:port
	logs *testenv.Buffer
	done chan struct{}
}

var listeningRE = regexp.MustCompile(`msg="flakeship listening" addr=(127\.0\.0\.1:\d+)`)

// start runs flakeship with a's configuration and waits until it listens.
func (a *app) start() *flakeship {
	a.t.Helper()
	return startFlakeship(a.t, a.env())
}

// startFlakeship runs the flakeship binary with env and waits until it
// listens; it is killed when the test ends, if it still runs.
func startFlakeship(t *testing.T, env []string) *flakeship {
	t.Helper()
	bin, _ := binaries(t)
	return startFlakeshipCmd(t, exec.Command(bin), env)
}

// startFlakeshipCmd is startFlakeship for a command that runs the binary,
// itself or through a program that execs it (prlimit).
func startFlakeshipCmd(t *testing.T, cmd *exec.Cmd, env []string) *flakeship {
	t.Helper()
	cmd.Env = env
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	f := &flakeship{t: t, cmd: cmd, logs: &testenv.Buffer{}, done: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			f.logs.Write([]byte(line + "\n"))
			if m := listeningRE.FindStringSubmatch(line); m != nil {
				select {
				case addr <- m[1]:
				default:
				}
			}
		}
		io.Copy(io.Discard, stderr)
		cmd.Wait()
		close(f.done)
	}()
	t.Cleanup(func() { f.stop(syscall.SIGKILL) })
	select {
	case ad := <-addr:
		f.base = "http://" + ad
	case <-f.done:
		t.Fatalf("flakeship exited before listening:\n%s", f.logs.String())
	case <-time.After(30 * time.Second):
		t.Fatalf("flakeship did not listen within 30s:\n%s", f.logs.String())
	}
	return f
}

// stop sends sig and waits for the process to end.
func (f *flakeship) stop(sig syscall.Signal) {
	select {
	case <-f.done:
		return
	default:
	}
	f.cmd.Process.Signal(sig)
	select {
	case <-f.done:
	case <-time.After(60 * time.Second):
		f.cmd.Process.Kill()
		<-f.done
		f.t.Errorf("flakeship did not stop within 60s of %v", sig)
	}
}

// deployRecord is the JSON of GET /api/deploys/{id}.
type deployRecord struct {
	ID           int64  `json:"id"`
	Target       string `json:"target"`
	SHA          string `json:"sha"`
	Trigger      string `json:"trigger"`
	State        string `json:"state"`
	Generation   int    `json:"generation"`
	Error        string `json:"error"`
	SupersededBy *int64 `json:"superseded_by"`
	URL          string `json:"url"`
	DeliveryID   string `json:"delivery_id"`
	Steps        []struct {
		Name       string     `json:"name"`
		StartedAt  time.Time  `json:"started_at"`
		FinishedAt *time.Time `json:"finished_at"`
		OK         bool       `json:"ok"`
	} `json:"steps"`
}

func (f *flakeship) getJSON(path string, v any) {
	f.t.Helper()
	resp, err := http.Get(f.base + path)
	if err != nil {
		f.t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		f.t.Fatalf("GET %s: %d %s", path, resp.StatusCode, body)
	}
	if err := json.Unmarshal(body, v); err != nil {
		f.t.Fatalf("GET %s: %v in %s", path, err, body)
	}
}

func (f *flakeship) deploy(id int64) deployRecord {
	f.t.Helper()
	var d deployRecord
	f.getJSON(fmt.Sprintf("/api/deploys/%d", id), &d)
	return d
}

func (f *flakeship) deploys() []deployRecord {
	f.t.Helper()
	var ds []deployRecord
	f.getJSON("/api/deploys?limit=1000", &ds)
	return ds
}

var terminal = map[string]bool{"succeeded": true, "failed": true, "rolled_back": true,
	"superseded": true, "cancelled": true, "interrupted": true}

// waitEnd waits until deploy id ends and returns it.
func (f *flakeship) waitEnd(id int64) deployRecord {
	f.t.Helper()
	var d deployRecord
	waitFor(f.t, 60*time.Second, func() bool {
		d = f.deploy(id)
		return terminal[d.State]
	}, func() string { return fmt.Sprintf("deploy %d still %s\n%s", id, d.State, f.logs.String()) })
	return d
}

// waitFor checks cond until it holds or the timeout passes, at first
// every 10ms and then less often, up to every 100ms: a condition that
// stays true once it holds (a deploy that ended, a status received), not a
// state that passes, which a test holds at a gate and waits for with
// waitState. The timeout is a safety net; give it generously.
func waitFor(t *testing.T, timeout time.Duration, cond func() bool, why func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	delay := 10 * time.Millisecond
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s: %s", timeout, why())
		}
		time.Sleep(delay)
		delay = min(2*delay, 100*time.Millisecond)
	}
}

// running returns what the service answers on its health URL now.
func (a *app) running() string {
	resp, err := http.Get(a.healthURL())
	if err != nil {
		return "down: " + err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return fmt.Sprintf("%d %s", resp.StatusCode, strings.TrimSpace(string(body)))
}

// wantRunning checks that the service answers healthy with version v.
func (a *app) wantRunning(v int) {
	a.t.Helper()
	want := fmt.Sprintf("200 version=%d", v)
	if got := a.running(); got != want {
		a.t.Fatalf("service answers %q, want %q", got, want)
	}
}

// statesOf lists the commit states the forge received for sha, in order.
func (a *app) statesOf(sha string) []string {
	var out []string
	for _, s := range a.forge.Statuses() {
		if s.SHA == sha {
			out = append(out, string(s.State))
		}
	}
	return out
}

// waitStatus waits until the newest status of sha has the given state and
// returns it.
func (a *app) waitStatus(sha, state string) forgetest.Recorded {
	a.t.Helper()
	var last forgetest.Recorded
	waitFor(a.t, 30*time.Second, func() bool {
		for _, s := range a.forge.Statuses() {
			if s.SHA == sha {
				last = s
			}
		}
		return string(last.State) == state
	}, func() string { return fmt.Sprintf("statuses of %s: %v", sha[:7], a.statesOf(sha)) })
	return last
}

// currentGeneration reads which generation a nix profile points at.
func currentGeneration(t *testing.T, profile string) int {
	t.Helper()
	link, err := os.Readlink(profile)
	if err != nil {
		t.Fatalf("read profile: %v", err)
	}
	var n int
	base := filepath.Base(link)
	if _, err := fmt.Sscanf(strings.TrimPrefix(base, filepath.Base(profile)+"-"), "%d-link", &n); err != nil {
		t.Fatalf("profile points at %q, not a generation link", link)
	}
	return n
}

func bufioReader(r io.Reader) *bufio.Reader { return bufio.NewReader(r) }
