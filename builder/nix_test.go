package builder

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flakeship/flakeship/config"
	"github.com/flakeship/flakeship/internal/testenv"
)

func TestNixBuildBuildsTheCommitsFlakeOutput(t *testing.T) {
	testenv.Require(t, "git", "nix")
	repo := newFlakeRepo(t)
	// A version of its own, so that nix builds it rather than finding it
	// built by an earlier run.
	version := fmt.Sprintf("1.%d", time.Now().UnixNano())
	c := repo.commit("ok", map[string]string{"version": version})
	var log bytes.Buffer
	start := time.Now()
	outPath, err := testNix().Build(context.Background(), repo.spec(), c, &log)
	if err != nil {
		t.Fatalf("Build: %v\nlog:\n%s", err, log.String())
	}
	t.Logf("nix build of the test flake took %s", time.Since(start).Round(time.Millisecond))
	if !strings.HasPrefix(outPath, "/nix/store/") {
		t.Errorf("out path = %q, want one in /nix/store", outPath)
	}
	got, err := os.ReadFile(outPath)
	if err != nil {
		t.Fatal(err)
	}
	if want := "version=" + version + "\nhealthy=yes\n"; string(got) != want {
		t.Errorf("build output = %q, want %q", got, want)
	}
	for _, want := range []string{"building git+file://", "building app version " + version, "built " + outPath} {
		if !strings.Contains(log.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, log.String())
		}
	}
}

func TestNixBuildBuildsTheExactCommitNotTheBranchHead(t *testing.T) {
	testenv.Require(t, "git", "nix")
	repo := newFlakeRepo(t)
	// o c1 (version 1)  <- built
	// o c2 (version 2)  <- main
	first := repo.commit("ok", map[string]string{"version": "1"})
	repo.commit("ok", map[string]string{"version": "2"})
	var log bytes.Buffer
	outPath, err := testNix().Build(context.Background(), repo.spec(), first, &log)
	if err != nil {
		t.Fatalf("Build: %v\nlog:\n%s", err, log.String())
	}
	got, err := os.ReadFile(outPath)
	if err != nil {
		t.Fatal(err)
	}
	if want := "version=1\nhealthy=yes\n"; string(got) != want {
		t.Errorf("build output = %q, want %q", got, want)
	}
}

func TestNixBuildFailuresAreOneLineWithDetailsInTheLog(t *testing.T) {
	testenv.Require(t, "git", "nix")
	repo := newFlakeRepo(t)
	failing := repo.commit("fail", map[string]string{"version": "1"})
	tests := []struct {
		name    string
		attr    string
		wantLog []string
	}{
		{
			name:    "a failing builder",
			attr:    repo.spec().Attr,
			wantLog: []string{"compiling app version 1", "error: this build fails on purpose"},
		},
		{
			name:    "an attribute the flake lacks",
			attr:    "packages." + repo.system + ".nope",
			wantLog: []string{"does not provide attribute"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := repo.spec()
			s.Attr = tc.attr
			var log bytes.Buffer
			outPath, err := testNix().Build(context.Background(), s, failing, &log)
			if err == nil {
				t.Fatalf("Build = %q, want an error", outPath)
			}
			if got, want := err.Error(), "nix build: exit status 1"; got != want {
				t.Errorf("error = %q, want %q", got, want)
			}
			for _, want := range tc.wantLog {
				if !strings.Contains(log.String(), want) {
					t.Errorf("log lacks %q:\n%s", want, log.String())
				}
			}
		})
	}
}

// TestNixBuildTimeoutKillsTheBuildAndItsBuilder holds a build at a gate
// and lets its deadline pass once its builder is seen waiting there, not at
// a time that has to cover nix's evaluation and the builder's start: the
// build ends with the deadline's error and no process of it is left.
func TestNixBuildTimeoutKillsTheBuildAndItsBuilder(t *testing.T) {
	testenv.Require(t, "git", "nix")
	repo := newFlakeRepo(t)
	marker := fmt.Sprintf("flakeship-held-%d", time.Now().UnixNano())
	gate := testenv.NewGate(t) // opens only when the test ends
	c := repo.commit("gate", map[string]string{"marker": marker, "gate": strings.ReplaceAll(gate.Script(), `"`, `\"`)})
	n := testNix()
	n.Flags = append(n.Flags, testenv.NoSandbox...)
	log := &testenv.Buffer{}
	ctx := newEventDeadline()
	go func() {
		// The deadline comes once the builder waits at the gate, or after a
		// generous safety net, which fails the test below.
		log.Wait(2*time.Minute, func(s string) bool { return strings.Contains(s, "waiting at the gate") })
		ctx.expire()
	}()
	outPath, err := n.Build(ctx, repo.spec(), c, log)
	if err == nil {
		t.Fatalf("Build = %q, want an error", outPath)
	}
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "deadline") {
		t.Errorf("error = %q, want it to wrap context.DeadlineExceeded", err)
	}
	if !strings.Contains(log.String(), "holding "+marker) || !strings.Contains(log.String(), "waiting at the gate") {
		t.Fatalf("the builder never reached the gate before the deadline; log:\n%s", log.String())
	}
	if !pollUntil(time.Minute, func() bool { return len(processesWith(t, marker)) == 0 }) {
		t.Errorf("processes still running the build: %v", processesWith(t, marker))
	}
}

// eventDeadline is a context whose deadline passes when the test says so
// rather than at a time: once expire is called, Done is closed and Err is
// context.DeadlineExceeded, all that code under a context.WithTimeout sees
// when its time is up.
type eventDeadline struct {
	context.Context
	done chan struct{}
	once sync.Once
}

func newEventDeadline() *eventDeadline {
	return &eventDeadline{Context: context.Background(), done: make(chan struct{})}
}

func (c *eventDeadline) expire() { c.once.Do(func() { close(c.done) }) }

func (c *eventDeadline) Done() <-chan struct{} { return c.done }

func (c *eventDeadline) Err() error {
	select {
	case <-c.done:
		return context.DeadlineExceeded
	default:
		return nil
	}
}

func TestNixBuildRefusesBadInputBeforeRunningNix(t *testing.T) {
	good := Checkout{Dir: "/var/lib/flakeship/git/app.git", SHA: strings.Repeat("ab", 20), Branch: "main"}
	tests := []struct {
		name   string
		change func(*Checkout, *Spec)
	}{
		{"a short sha", func(c *Checkout, s *Spec) { c.SHA = "abc1234" }},
		{"an upper-case sha", func(c *Checkout, s *Spec) { c.SHA = strings.ToUpper(c.SHA) }},
		{"a branch like an option", func(c *Checkout, s *Spec) { c.Branch = "-main" }},
		{"a branch escaping the query", func(c *Checkout, s *Spec) { c.Branch = "main&rev=x" }},
		{"an attr like an option", func(c *Checkout, s *Spec) { s.Attr = "--impure" }},
		{"an attr with a space", func(c *Checkout, s *Spec) { s.Attr = "packages.x86_64-linux.a b" }},
		{"a relative repository dir", func(c *Checkout, s *Spec) { c.Dir = "git/app.git" }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := good
			s := Spec{Attr: "packages.x86_64-linux.default"}
			tc.change(&c, &s)
			var log bytes.Buffer
			// A nix that cannot run: an error from it would say so.
			n := &Nix{Binary: filepath.Join(t.TempDir(), "nix")}
			_, err := n.Build(context.Background(), s, c, &log)
			if err == nil || strings.Contains(err.Error(), "no such file") {
				t.Errorf("Build error = %v, want a validation error", err)
			}
			if log.Len() != 0 {
				t.Errorf("log = %q, want nothing written", log.String())
			}
		})
	}
}

func TestNixInstallableNamesTheExactCommit(t *testing.T) {
	sha := strings.Repeat("0123456789", 4)
	tests := []struct {
		name string
		c    Checkout
		attr string
		want string
	}{
		{
			name: "a plain cache",
			c:    Checkout{Dir: "/var/lib/flakeship/git/app.git", SHA: sha, Branch: "main"},
			attr: "packages.x86_64-linux.default",
			want: "git+file:///var/lib/flakeship/git/app.git?ref=main&rev=" + sha + "#packages.x86_64-linux.default",
		},
		{
			name: "a branch with a slash and a dir with a space",
			c:    Checkout{Dir: "/srv/my state/app.git/", SHA: sha, Branch: "release/v1"},
			attr: "nixosConfigurations.host.config.system.build.toplevel",
			want: "git+file:///srv/my%20state/app.git?ref=release%2Fv1&rev=" + sha + "#nixosConfigurations.host.config.system.build.toplevel",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := installable(tc.c, tc.attr)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("installable = %q\nwant %q", got, tc.want)
			}
		})
	}
}

func TestParseBuildJSON(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    string
		wantErr string
	}{
		{
			name: "one output",
			in:   `[{"drvPath":"/nix/store/aaa-x.drv","outputs":{"out":"/nix/store/bbb-x"}}]` + "\n",
			want: "/nix/store/bbb-x",
		},
		{
			name: "several outputs",
			in:   `[{"drvPath":"/nix/store/aaa-x.drv","outputs":{"dev":"/nix/store/ccc-x-dev","out":"/nix/store/bbb-x"}}]`,
			want: "/nix/store/bbb-x",
		},
		{name: "no out output", in: `[{"drvPath":"/nix/store/aaa-x.drv","outputs":{"bin":"/nix/store/b"}}]`, wantErr: "/nix/store/aaa-x.drv has no out output"},
		{name: "no result", in: `[]`, wantErr: "want 1 result in its --json output, got 0"},
		{name: "a relative out", in: `[{"outputs":{"out":"result"}}]`, wantErr: `out output "result" is not an absolute path`},
		{name: "not json", in: `building...`, wantErr: "read its --json output"},
		{name: "nothing", in: ``, wantErr: "read its --json output"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseBuildJSON([]byte(tc.in))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("parseBuildJSON = %q, %v; want error %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("parseBuildJSON = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func TestNixFindsItsToolsBesideTheBinary(t *testing.T) {
	tests := []struct {
		name      string
		n         *Nix
		s         Spec
		wantBin   string
		wantEnv   string
		wantFlags []string
	}{
		{name: "nothing set", n: &Nix{}, wantBin: "nix", wantEnv: "nix-env"},
		{name: "a nil Nix", n: nil, s: Spec{Nix: "nix", NixFlags: []string{"-v"}}, wantBin: "nix", wantEnv: "nix-env", wantFlags: []string{"-v"}},
		{name: "the spec's path", n: &Nix{}, s: Spec{Nix: "/opt/nix/bin/nix"}, wantBin: "/opt/nix/bin/nix", wantEnv: "/opt/nix/bin/nix-env"},
		{
			name:    "Nix over the spec",
			n:       &Nix{Binary: "/usr/bin/nix", Flags: []string{"--option", "sandbox", "false"}},
			s:       Spec{Nix: "/opt/nix/bin/nix", NixFlags: []string{"-v"}},
			wantBin: "/usr/bin/nix", wantEnv: "/usr/bin/nix-env", wantFlags: []string{"--option", "sandbox", "false"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.n.binary(tc.s); got != tc.wantBin {
				t.Errorf("binary = %q, want %q", got, tc.wantBin)
			}
			if got := tc.n.tool(tc.s, "nix-env"); got != tc.wantEnv {
				t.Errorf("nix-env = %q, want %q", got, tc.wantEnv)
			}
			if got := tc.n.flags(tc.s); strings.Join(got, " ") != strings.Join(tc.wantFlags, " ") {
				t.Errorf("flags = %q, want %q", got, tc.wantFlags)
			}
		})
	}
}

// testNix is the nix of the tests: offline, flakes on.
func testNix() *Nix {
	return &Nix{Binary: "nix", Flags: testenv.NixFlags()}
}

// flakeRepo is a git repository whose commits are test flakes from
// testdata/flakes, on one branch, main, pushed to a bare clone that builds
// read from, as they read a fetched cache.
type flakeRepo struct {
	t      testing.TB
	work   string // the working repository
	bare   string // the bare clone builds read
	system string // nix system of this machine
}

func newFlakeRepo(t testing.TB) *flakeRepo {
	t.Helper()
	dir := t.TempDir()
	r := &flakeRepo{t: t, work: filepath.Join(dir, "work"), bare: filepath.Join(dir, "cache.git"), system: testenv.System(t)}
	r.git(dir, "init", "--quiet", "--initial-branch=main", r.work)
	r.git(dir, "init", "--quiet", "--bare", "--initial-branch=main", r.bare)
	return r
}

// spec is a Spec that builds the default package of the repo's flakes.
func (r *flakeRepo) spec() Spec {
	return Spec{Name: "app", Branch: "main", Attr: "packages." + r.system + ".default"}
}

// commit makes testdata/flakes/<flake>/flake.nix, with @system@ and each
// @name@ of vars filled in, the repo's flake.nix in a new commit on main,
// pushes it to the bare clone, and returns that as a Checkout.
func (r *flakeRepo) commit(flake string, vars map[string]string) Checkout {
	r.t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "flakes", flake, "flake.nix"))
	if err != nil {
		r.t.Fatal(err)
	}
	text := strings.ReplaceAll(string(b), "@system@", r.system)
	for k, v := range vars {
		text = strings.ReplaceAll(text, "@"+k+"@", v)
	}
	if err := os.WriteFile(filepath.Join(r.work, "flake.nix"), []byte(text), 0o644); err != nil {
		r.t.Fatal(err)
	}
	r.git(r.work, "add", "flake.nix")
	r.git(r.work, "commit", "--quiet", "--allow-empty", "--message", flake+" "+fmt.Sprint(vars))
	r.git(r.work, "push", "--quiet", r.bare, "main")
	sha := strings.TrimSpace(r.git(r.work, "rev-parse", "HEAD"))
	return Checkout{Dir: r.bare, SHA: sha, Branch: "main"}
}

// git runs git in dir with an argument list and returns its stdout.
func (r *flakeRepo) git(dir string, args ...string) string {
	r.t.Helper()
	cmd := exec.Command("git", append([]string{"-c", "user.name=flakeship test", "-c", "user.email=test@flakeship.invalid"}, args...)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GIT_CONFIG_NOSYSTEM=1", "GIT_CONFIG_GLOBAL="+os.DevNull)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		r.t.Fatalf("git %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return string(out)
}

// pollUntil checks cond with a growing delay until it holds or timeout
// passes, and says whether it held.
func pollUntil(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	delay := 10 * time.Millisecond
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(delay)
		delay = min(2*delay, 200*time.Millisecond)
	}
}

// processesWith lists the processes whose command line contains marker,
// as "pid: cmdline".
func processesWith(t testing.TB, marker string) []string {
	t.Helper()
	dirs, err := filepath.Glob("/proc/[0-9]*")
	if err != nil {
		t.Fatal(err)
	}
	var found []string
	for _, dir := range dirs {
		b, err := os.ReadFile(filepath.Join(dir, "cmdline"))
		if err != nil {
			continue // it ended while we looked
		}
		if cmdline := string(bytes.ReplaceAll(b, []byte{0}, []byte{' '})); strings.Contains(cmdline, marker) {
			found = append(found, filepath.Base(dir)+": "+cmdline)
		}
	}
	return found
}

func TestNixBuildSetsAServiceBuildIntoItsProfile(t *testing.T) {
	testenv.Require(t, "git", "nix")
	repo := newFlakeRepo(t)
	p := newTestProfile(t)
	s := repo.spec()
	s.Activate, s.Profile = config.ActivateNone, p.path
	n := testNix()

	first := repo.commit("ok", map[string]string{"version": fmt.Sprintf("1.%d", time.Now().UnixNano())})
	var log bytes.Buffer
	outPath, err := n.Build(context.Background(), s, first, &log)
	if err != nil {
		t.Fatalf("Build: %v\nlog:\n%s", err, log.String())
	}
	gen1 := Generation{Number: 1, OutPath: outPath}
	wantCurrent(t, p, gen1)
	// nix leaves a "result" link in the working directory unless told not
	// to, --profile or not.
	if _, err := os.Lstat("result"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the build left a result link in the working directory (%v)", err)
	}

	// The switch finds the build in place and adds no generation.
	sw, err := NewSwitcher(s, n, nil)
	if err != nil {
		t.Fatal(err)
	}
	if g, err := sw.Switch(context.Background(), outPath, &log); err != nil || g != gen1 {
		t.Fatalf("Switch = %+v, %v; want %+v", g, err, gen1)
	}
	wantGenerations(t, p, gen1)

	// A failing build leaves the profile where it was.
	failing := repo.commit("fail", map[string]string{"version": "2"})
	if out, err := n.Build(context.Background(), s, failing, &log); err == nil {
		t.Fatalf("Build of a failing flake = %q, want an error", out)
	}
	wantGenerations(t, p, gen1)
	wantCurrent(t, p, gen1)

	// A NixOS build is never set into a profile by the build.
	nixos := s
	nixos.Activate = config.ActivateNixOS
	next := repo.commit("ok", map[string]string{"version": fmt.Sprintf("3.%d", time.Now().UnixNano())})
	if _, err := n.Build(context.Background(), nixos, next, &log); err != nil {
		t.Fatalf("Build: %v\nlog:\n%s", err, log.String())
	}
	wantGenerations(t, p, gen1)
}

func TestProfileRestorePutsBackWhatABuildMoved(t *testing.T) {
	testenv.Require(t, "nix")
	ctx := context.Background()
	p := newTestProfile(t)
	a, b := addToStore(t, "a"), addToStore(t, "b")
	var log bytes.Buffer

	// The profile had no generation: its link goes again.
	if _, err := p.set(ctx, a, &log); err != nil {
		t.Fatal(err)
	}
	if err := p.restore(Generation{}, &log); err != nil {
		t.Fatalf("restore to nothing: %v", err)
	}
	if _, err := p.current(); !errors.Is(err, ErrNoGeneration) {
		t.Fatalf("after restoring a profile that had nothing, current = %v; want ErrNoGeneration", err)
	}

	gen1, err := p.set(ctx, a, &log)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.restore(gen1, &log); err != nil { // nothing moved
		t.Fatalf("restore without a move: %v", err)
	}
	wantCurrent(t, p, gen1)
	gen2, err := p.set(ctx, b, &log)
	if err != nil || gen2.Number != 2 {
		t.Fatalf("set = %+v, %v; want generation 2", gen2, err)
	}
	if err := p.restore(gen1, &log); err != nil {
		t.Fatalf("restore: %v", err)
	}
	wantCurrent(t, p, gen1)
	if want := "moving it back"; !strings.Contains(log.String(), want) {
		t.Errorf("log lacks %q:\n%s", want, log.String())
	}
}
