package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flakeship/flakeship/internal/testenv"
)

// The command line tests run the built binary's client commands against a
// flakeship that serves a real target (git, nix, systemd, a fake forge),
// started in this process with an admin token.

// startWithAdminToken runs flakeship in this process, as main does, with
// a's configuration and the admin token, and returns it, its base URL and
// its log. It stops, and must stop cleanly, when the test ends.
func (a *app) startWithAdminToken(token string) *flakeship {
	t := a.t
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan net.Addr, 1)
	done := make(chan error, 1)
	logs := &testenv.Buffer{}
	go func() { done <- run(ctx, append(a.env(), "FLAKESHIP_ADMIN_TOKEN="+token), logs, ready) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("flakeship stopped with %v\n%s", err, logs.String())
		}
		if strings.Contains(logs.String(), token) {
			t.Errorf("the admin token reached flakeship's log")
		}
	})
	select {
	case addr := <-ready:
		return &flakeship{t: t, base: "http://" + addr.String(), logs: logs}
	case err := <-done:
		t.Fatalf("flakeship stopped before listening: %v\n%s", err, logs.String())
	case <-time.After(30 * time.Second):
		t.Fatalf("flakeship did not listen within 30s:\n%s", logs.String())
	}
	return nil
}

// cliRun is one run of the flakeship binary as a client.
type cliRun struct {
	code           int
	stdout, stderr string
}

// flakeshipCLI runs the built binary with args and the environment env
// (and PATH), and returns how it ended.
func flakeshipCLI(t *testing.T, env []string, args ...string) cliRun {
	t.Helper()
	bin, _ := binaries(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("flakeship %s: %v", strings.Join(args, " "), err)
	}
	return cliRun{code: cmd.ProcessState.ExitCode(), stdout: stdout.String(), stderr: stderr.String()}
}

// want checks the exit code, and that stderr is empty on success and one
// line otherwise.
func (r cliRun) want(t *testing.T, what string, code int) {
	t.Helper()
	if r.code != code {
		t.Fatalf("%s: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", what, r.code, code, r.stdout, r.stderr)
	}
	if code == 0 && r.stderr != "" {
		t.Errorf("%s: succeeded with stderr %q", what, r.stderr)
	}
	if code != 0 && strings.Count(r.stderr, "\n") != 1 {
		t.Errorf("%s: stderr is not one line: %q", what, r.stderr)
	}
}

var queuedRE = regexp.MustCompile(`^deploy (\d+) queued: https://deploy\.example\.test/deploys/(\d+)\n`)

// queuedID returns the deploy id a deploy or rollback printed first.
func (r cliRun) queuedID(t *testing.T) int64 {
	t.Helper()
	m := queuedRE.FindStringSubmatch(r.stdout)
	if m == nil || m[1] != m[2] {
		t.Fatalf("output does not start with the queued deploy and its URL:\n%s", r.stdout)
	}
	id, _ := strconv.ParseInt(m[1], 10, 64)
	return id
}

func TestCommandLineDeploysRollsBackCancelsAndReports(t *testing.T) {
	a := newApp(t, "github")
	a.buildsSeeGates()
	const token = "cli-e2e-admin-token-5be1"
	f := a.startWithAdminToken(token)
	base := f.base
	env := []string{"FLAKESHIP_URL=" + base, "FLAKESHIP_ADMIN_TOKEN=" + token}
	var outputs []cliRun
	cli := func(env []string, args ...string) cliRun {
		t.Helper()
		r := flakeshipCLI(t, env, args...)
		outputs = append(outputs, r)
		return r
	}

	// deploy --wait: the branch head, its log, and the verdict.
	sha1, _ := a.push(healthy)
	r := cli(env, "deploy", "app", "--wait")
	r.want(t, "deploy --wait", 0)
	id1 := r.queuedID(t)
	if !strings.Contains(r.stdout, "== deployed "+sha1[:7]) ||
		!strings.HasSuffix(r.stdout, fmt.Sprintf("deploy %d succeeded: %s is generation 1\n", id1, sha1[:7])) {
		t.Fatalf("deploy --wait printed:\n%s", r.stdout)
	}
	a.wantRunning(1)

	// A ref, a rollback, then a sha with the token from a file.
	sha2, _ := a.push(healthy)
	cli(env, "deploy", "app", "--ref", "main", "--wait").want(t, "deploy --ref main --wait", 0)
	a.wantRunning(2)
	r = cli(env, "rollback", "app", "--wait")
	r.want(t, "rollback --wait", 0)
	if d := f.deploy(r.queuedID(t)); d.Trigger != "rollback" || d.SHA != sha1 {
		t.Fatalf("rollback deploy = %+v, want a rollback to %s", d, sha1)
	}
	a.wantRunning(1)
	tokenFile := filepath.Join(t.TempDir(), "admin-token")
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r = cli([]string{"FLAKESHIP_URL=" + base, "FLAKESHIP_ADMIN_TOKEN_FILE=" + tokenFile}, "deploy", "--sha", sha2, "app", "--wait")
	r.want(t, "deploy --sha --wait", 0)
	current := f.deploy(r.queuedID(t))
	a.wantRunning(2)

	// A broken build: exit 1 with the deploy's one-line error; the build
	// before it keeps running.
	_, _ = a.push(broken)
	r = cli(env, "deploy", "app", "--wait")
	r.want(t, "deploy --wait of a broken build", 1)
	failed := r.queuedID(t)
	if want := fmt.Sprintf("flakeship deploy: deploy %d failed: build: nix build: exit status 1\n", failed); r.stderr != want {
		t.Errorf("stderr %q, want %q", r.stderr, want)
	}
	a.wantRunning(2)

	// status: the table and the JSON.
	r = cli(env, "status")
	r.want(t, "status", 0)
	row := regexp.MustCompile(fmt.Sprintf(`(?m)^app +failed +%s +%d +#%d \d+s ago$`, sha2[:7], current.Generation, failed))
	if !strings.HasPrefix(r.stdout, "TARGET  STATE   CURRENT  GENERATION  LAST DEPLOY\n") || !row.MatchString(r.stdout) {
		t.Errorf("status printed:\n%s\nwant a row matching %s", r.stdout, row)
	}
	r = cli(env, "status", "app", "--json")
	r.want(t, "status --json", 0)
	var st struct {
		CurrentSHA string `json:"current_sha"`
		Generation int    `json:"generation"`
		LastDeploy struct {
			ID    int64  `json:"id"`
			State string `json:"state"`
		} `json:"last_deploy"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil || st.CurrentSHA != sha2 ||
		st.Generation != current.Generation || st.LastDeploy.ID != failed || st.LastDeploy.State != "failed" {
		t.Errorf("status app --json = %+v, %v:\n%s", st, err, r.stdout)
	}

	// logs, and cancel of a deploy that has ended.
	r = cli(env, "logs", strconv.FormatInt(id1, 10))
	r.want(t, "logs", 0)
	if !strings.HasPrefix(r.stdout, fmt.Sprintf("flakeship deploy %d of target app", id1)) || !strings.Contains(r.stdout, "== deployed") {
		t.Errorf("logs %d printed:\n%s", id1, r.stdout)
	}
	r = cli(env, "cancel", strconv.FormatInt(id1, 10))
	r.want(t, "cancel of a finished deploy", 1)
	if want := fmt.Sprintf("flakeship cancel: deploy %d has already ended (succeeded): there is nothing to cancel (HTTP 409)\n", id1); r.stderr != want {
		t.Errorf("stderr %q, want %q", r.stderr, want)
	}

	// cancel of a running build, held at a gate that never opens; its
	// followed log ends with the deploy.
	_, _ = a.pushHeld(testenv.NewGate(t))
	r = cli(env, "deploy", "app")
	r.want(t, "deploy", 0)
	heldID := r.queuedID(t)
	f.waitState(heldID, "building")
	r = cli(env, "cancel", strconv.FormatInt(heldID, 10))
	r.want(t, "cancel", 0)
	if want := fmt.Sprintf("deploy %d cancelling\n", heldID); r.stdout != want {
		t.Errorf("cancel printed %q, want %q", r.stdout, want)
	}
	r = cli(env, "logs", strconv.FormatInt(heldID, 10), "--follow")
	r.want(t, "logs --follow", 0)
	if !strings.Contains(r.stdout, "== build cancelled") {
		t.Errorf("followed log of the cancelled deploy:\n%s", r.stdout)
	}
	if d := f.waitEnd(heldID); d.State != "cancelled" {
		t.Errorf("cancelled deploy ended %s", d.State)
	}
	a.wantRunning(2)

	// A wrong token is refused and never printed; so is the right one.
	r = cli([]string{"FLAKESHIP_URL=" + base, "FLAKESHIP_ADMIN_TOKEN=" + token + "x"}, "deploy", "app")
	r.want(t, "deploy with a wrong token", 1)
	if r.stderr != "flakeship deploy: wrong token (HTTP 401): check FLAKESHIP_ADMIN_TOKEN\n" {
		t.Errorf("stderr %q", r.stderr)
	}
	for _, o := range outputs {
		if strings.Contains(o.stdout+o.stderr, token) {
			t.Errorf("a run printed the token:\n%s%s", o.stdout, o.stderr)
		}
	}
}

func TestCommandLineUsage(t *testing.T) {
	for _, tc := range []struct {
		args   []string
		code   int
		stdout string // prefix
		stderr string // whole
	}{
		{[]string{"help"}, 0, "usage: flakeship [serve]\n", ""},
		{[]string{"-h"}, 0, "usage: flakeship [serve]\n", ""},
		{[]string{"deploy", "-h"}, 0, "usage: flakeship deploy <target>", ""},
		{[]string{"bogus"}, 2, "", "flakeship: unknown command \"bogus\" (see flakeship help)\n"},
		{[]string{"serve", "now"}, 2, "", "flakeship serve: takes no arguments; the configuration is the environment (see flakeship help)\n"},
		{[]string{"logs"}, 2, "", "flakeship logs: want one deploy id, got 0 arguments (see flakeship logs -h)\n"},
	} {
		r := flakeshipCLI(t, nil, tc.args...)
		if r.code != tc.code || !strings.HasPrefix(r.stdout, tc.stdout) || r.stderr != tc.stderr {
			t.Errorf("flakeship %v: exit %d, stdout %q, stderr %q; want %d, %q..., %q",
				tc.args, r.code, r.stdout, r.stderr, tc.code, tc.stdout, tc.stderr)
		}
	}
}
