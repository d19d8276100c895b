package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flakeship/flakeship/internal/testenv"
)

// The fault tests break one real part at a time under a running flakeship:
// the forge API, the git server, nix, flakeship itself (SIGKILL at each
// step of a deploy), the order of deliveries, and the disk of the state
// directory. Each checks that nothing acknowledged is lost, that the
// service keeps running a good build, and that flakeship recovers once the
// fault is gone.

// pushSettings commits and pushes a healthy build of the next version whose
// service reads the extra settings lines too (like "gate=/path", see
// builder/testdata/healthsrv), and returns the commit and its delivery.
func (a *app) pushSettings(settings ...string) (string, delivery) {
	a.t.Helper()
	a.version++
	script := fmt.Sprintf(": %s; echo version=%d > $out; echo healthy=yes >> $out", a.nonce, a.version)
	for _, s := range settings {
		script += fmt.Sprintf("; echo %s >> $out", s)
	}
	before := a.head
	if before == "" {
		before = strings.Repeat("0", 40)
	}
	sha := a.repo.Commit(a.t, fmt.Sprintf("version %d with %s", a.version, strings.Join(settings, " ")),
		map[string]string{"flake.nix": a.flake(script)})
	a.repo.Push(a.t, "main")
	a.head = sha
	return sha, a.delivery(before, sha)
}

// writeUnit rewrites the service's unit with extra lines in its [Service]
// section ("" for none) and reloads systemd; it takes effect at the next
// restart.
func (a *app) writeUnit(extra string) {
	a.t.Helper()
	unit := fmt.Sprintf(`[Unit]
Description=flakeship end-to-end test service

[Service]
ExecStart=%s -profile %s -addr 127.0.0.1:%d
%s`, a.healthsrv, a.profile(), a.port, extra)
	path := filepath.Join(os.Getenv("XDG_RUNTIME_DIR"), "systemd", "user", a.unit)
	if err := os.WriteFile(path, []byte(unit), 0o644); err != nil {
		a.t.Fatal(err)
	}
	systemctl(a.t, "daemon-reload")
}

// deployWithRetry is a deploy record with the deploy it retries.
type deployWithRetry struct {
	deployRecord
	RetryOf *int64 `json:"retry_of"`
}

// retriesOf lists the stored retries of deploy id.
func (f *flakeship) retriesOf(id int64) []deployRecord {
	f.t.Helper()
	var all []deployWithRetry
	f.getJSON("/api/deploys?limit=1000", &all)
	var out []deployRecord
	for _, d := range all {
		if d.RetryOf != nil && *d.RetryOf == id {
			out = append(out, d.deployRecord)
		}
	}
	return out
}

// childrenNamed returns the processes whose parent is pid and whose
// command name is comm, read from /proc.
func childrenNamed(pid int, comm string) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []int
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue // it ended meanwhile
		}
		// "pid (comm) state ppid ...": comm may hold spaces and parentheses.
		open, close := bytes.IndexByte(stat, '('), bytes.LastIndexByte(stat, ')')
		if open < 0 || close < open {
			continue
		}
		fields := strings.Fields(string(stat[close+1:]))
		if len(fields) < 2 || string(stat[open+1:close]) != comm {
			continue
		}
		if ppid, err := strconv.Atoi(fields[1]); err == nil && ppid == pid {
			out = append(out, child)
		}
	}
	return out
}

// processesWith returns the processes whose command line contains s.
func processesWith(s string) []int {
	paths, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	var out []int
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil || !bytes.Contains(b, []byte(s)) {
			continue
		}
		if pid, err := strconv.Atoi(filepath.Base(filepath.Dir(p))); err == nil && pid != os.Getpid() {
			out = append(out, pid)
		}
	}
	return out
}

// statusPosts counts the status posts the forge received for sha, whatever
// it answered.
func (a *app) statusPosts(sha string) int {
	n := 0
	for _, r := range a.forge.Requests() {
		if r.Method == http.MethodPost && strings.Contains(r.Path, "/statuses/"+sha) {
			n++
		}
	}
	return n
}

// wantPendingThen checks the statuses the forge accepted for sha: one or
// more pending (a newer description of the same state may follow one that
// was in flight), then the final state, last.
func (a *app) wantPendingThen(sha, final string) {
	a.t.Helper()
	states := a.statesOf(sha)
	n := len(states)
	ok := n >= 2 && states[n-1] == final
	for _, s := range states[:max(n-1, 0)] {
		ok = ok && s == "pending"
	}
	if !ok {
		a.t.Errorf("statuses of %s: %v, want pending, then %s last%s", sha[:7], states, final, a.statusDump())
	}
}

// wantNothingPending waits until no commit's newest status is pending.
func (a *app) wantNothingPending() {
	a.t.Helper()
	waitFor(a.t, 30*time.Second, func() bool { return len(a.pendingShas()) == 0 },
		func() string { return fmt.Sprintf("commits left pending: %v%s", a.pendingShas(), a.statusDump()) })
}

// TestFaultForgeDownOrFailingDelaysOnlyTheStatuses takes the forge API
// away while a push deploys: the deploy does not wait for it, and the
// statuses arrive once the forge is back. A forge that answers 500 to the
// first posts gets every status too.
func TestFaultForgeDownOrFailingDelaysOnlyTheStatuses(t *testing.T) {
	t.Run("forge down", func(t *testing.T) {
		a := newApp(t, "github")
		f := a.start()
		a.forge.SetDown(true)
		sha, d := a.push(healthy)
		id := d.accepted(t, f.base)
		if got := f.waitEnd(id); got.State != "succeeded" {
			t.Fatalf("deploy while the forge is down = %+v, want succeeded", got)
		}
		a.wantRunning(1)
		// The forge comes back after five posts failed: the status
		// sender's waits have doubled to 4 s and more by then.
		waitFor(t, 30*time.Second, func() bool { return len(a.forge.Requests()) >= 5 },
			func() string { return fmt.Sprintf("the notifier tried %d times", len(a.forge.Requests())) })
		if n := len(a.forge.Statuses()); n != 0 {
			t.Fatalf("the forge accepted %d statuses while down", n)
		}
		dropped := len(a.forge.Requests())
		a.forge.SetDown(false)
		up := time.Now()
		a.waitStatus(sha, "success")
		t.Logf("forge down for the whole deploy: %d posts dropped; the success status arrived %s after the forge came back",
			dropped, time.Since(up).Round(10*time.Millisecond))
		a.wantPendingThen(sha, "success")

		// A second outage: the status sender logs each failed post and
		// tries again on its schedule, until the forge is back.
		const gaveUp = `msg="commit status not delivered, will retry"`
		gaveUpBefore := strings.Count(f.logs.String(), gaveUp)
		a.forge.SetDown(true)
		sha2, d2 := a.push(healthy)
		if got := f.waitEnd(d2.accepted(t, f.base)); got.State != "succeeded" {
			t.Fatalf("second deploy while the forge is down = %+v, want succeeded", got)
		}
		waitFor(t, 40*time.Second, func() bool { return strings.Count(f.logs.String(), gaveUp) > gaveUpBefore },
			func() string { return "the status sender never retried:\n" + f.logs.String() })
		a.forge.SetDown(false)
		up = time.Now()
		a.waitStatus(sha2, "success")
		t.Logf("after the notifier gave up: the success status arrived %s after the forge came back",
			time.Since(up).Round(10*time.Millisecond))
		a.wantPendingThen(sha2, "success")
		a.wantRunning(2)
		a.wantNothingPending()
		f.stop(syscall.SIGTERM)
	})

	t.Run("forge answers 500 to the first three posts", func(t *testing.T) {
		a := newApp(t, "forgejo")
		f := a.start()
		a.forge.FailNext(3, http.StatusInternalServerError)
		sha, d := a.push(healthy)
		id := d.accepted(t, f.base)
		if got := f.waitEnd(id); got.State != "succeeded" {
			t.Fatalf("deploy while the forge fails = %+v, want succeeded", got)
		}
		a.wantRunning(1)
		a.waitStatus(sha, "success")
		a.wantNothingPending()
		a.wantPendingThen(sha, "success")
		states := a.statesOf(sha)
		if posts := a.statusPosts(sha); posts != len(states)+3 {
			t.Errorf("%d status posts for %d statuses, want 3 more (the failed ones)", posts, len(states))
		}
		f.stop(syscall.SIGTERM)
	})
}

// TestFaultGitServerFailingFailsTheFetchCleanly makes the git server answer
// 500 to everything: the deploy fails at its fetch after the retries with a
// one-line error, the running version stays, and once the server is back
// the next push deploys.
func TestFaultGitServerFailingFailsTheFetchCleanly(t *testing.T) {
	a := newApp(t, "github")
	f := a.start()
	_, d1 := a.push(healthy)
	if got := f.waitEnd(d1.accepted(t, f.base)); got.State != "succeeded" {
		t.Fatalf("first deploy = %+v, want succeeded", got)
	}

	// main: v1---v2; the git server fails before v2's delivery arrives.
	sha2, d2 := a.push(healthy)
	a.git.SetFailing(http.StatusInternalServerError)
	before := a.git.Requests()
	got := f.waitEnd(d2.accepted(t, f.base))
	if got.State != "failed" {
		t.Fatalf("deploy while the git server fails = %+v, want failed", got)
	}
	for _, want := range []string{"fetch", "HTTP 500", "gave up after 4 attempts"} {
		if !strings.Contains(got.Error, want) {
			t.Errorf("error %q does not say %q", got.Error, want)
		}
	}
	if strings.ContainsAny(got.Error, "\r\n") {
		t.Errorf("error %q is not one line", got.Error)
	}
	// One request per attempt: the first and three retries.
	if n := a.git.Requests() - before; n != 4 {
		t.Errorf("the git server got %d requests for the failed fetch, want 4", n)
	}
	if len(got.Steps) != 1 || got.Steps[0].Name != "fetch" || got.Steps[0].OK {
		t.Errorf("steps of the failed deploy: %+v, want one failed fetch", got.Steps)
	}
	if st := a.waitStatus(sha2, "failure"); st.Description != "Fetch failed: see log" {
		t.Errorf("failure status description %q", st.Description)
	}
	a.wantRunning(1)

	a.git.SetFailing(0)
	sha3, d3 := a.push(healthy)
	if got := f.waitEnd(d3.accepted(t, f.base)); got.State != "succeeded" || got.SHA != sha3 {
		t.Fatalf("deploy after the git server is back = %+v, want succeeded", got)
	}
	a.wantRunning(3)
	a.wantNothingPending()
	f.stop(syscall.SIGTERM)
}

// TestFaultNixKilledMidBuildFailsOnlyThatDeploy kills the nix process of a
// running build with SIGKILL, once as soon as it runs (evaluating the
// flake) and once while its builder waits at a gate: each time the deploy
// fails in its build and the running version stays. Then the next push
// builds and deploys: nothing was left locked or half written, the
// target's nix cache included.
//
// A builder whose nix was killed with SIGKILL runs on until it ends by
// itself: nix put it in a session of its own, out of reach of the process
// group flakeship stops. (A cancel or a timeout sends nix SIGTERM first, and
// nix stops its builder.) The test opens the gate after the kill, and waits,
// bounded, for the builder to end.
func TestFaultNixKilledMidBuildFailsOnlyThatDeploy(t *testing.T) {
	a := newApp(t, "github")
	a.buildsSeeGates()
	f := a.start()
	_, d1 := a.push(healthy)
	if got := f.waitEnd(d1.accepted(t, f.base)); got.State != "succeeded" {
		t.Fatalf("first deploy = %+v, want succeeded", got)
	}

	// The builder's command line holds the test's nonce; nix's does not.
	builderRuns := func() bool { return len(processesWith(a.nonce)) > 0 }
	for _, moment := range []struct {
		name string
		when func(id int64) bool // kill nix once this holds
	}{
		{"as soon as nix runs", func(int64) bool { return true }},
		{"while the builder waits at the gate", func(id int64) bool {
			return builderRuns() && strings.Contains(a.deployLog(id), "waiting at the gate")
		}},
	} {
		gate := testenv.NewGate(t)
		sha, d := a.pushHeld(gate)
		id := d.accepted(t, f.base)
		f.waitState(id, "building")
		var nix []int
		waitFor(t, time.Minute, func() bool {
			nix = childrenNamed(f.cmd.Process.Pid, "nix")
			return len(nix) > 0 && moment.when(id)
		}, func() string { return fmt.Sprintf("nix processes %v, builder running: %v", nix, builderRuns()) })
		building := builderRuns()
		for _, pid := range nix {
			if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
				t.Fatalf("kill nix %d: %v", pid, err)
			}
		}
		got := f.waitEnd(id)
		if got.State != "failed" || !strings.HasPrefix(got.Error, "build: ") {
			t.Fatalf("deploy whose nix was killed %s = %+v, want failed in its build", moment.name, got)
		}
		t.Logf("killed nix %v %s (builder running: %v); the deploy ended %s: %s", nix, moment.name, building, got.State, got.Error)
		if err := gate.Open(); err != nil {
			t.Fatal(err)
		}
		opened := time.Now()
		waitFor(t, time.Minute, func() bool { return !builderRuns() },
			func() string {
				return fmt.Sprintf("processes of the killed build still run after the gate opened: %v", processesWith(a.nonce))
			})
		if building {
			t.Logf("the builder was gone %s after the gate opened", time.Since(opened).Round(10*time.Millisecond))
		}
		if st := a.waitStatus(sha, "failure"); st.Description != "Build failed: see log" {
			t.Errorf("failure status description %q", st.Description)
		}
		a.wantRunning(1)
	}

	sha, d := a.push(healthy)
	if got := f.waitEnd(d.accepted(t, f.base)); got.State != "succeeded" || got.SHA != sha {
		t.Fatalf("deploy after nix was killed = %+v, want succeeded\n%s", got, a.deployLog(got.ID))
	}
	a.wantRunning(a.version)
	a.wantNothingPending()
	f.stop(syscall.SIGTERM)
}

// TestKilledAtEachStepIsRetriedOnce kills flakeship with SIGKILL while a
// deploy is fetching, building, activating and verifying, and starts it
// again each time: the deploy is interrupted, retried exactly once, and the
// retry deploys the same commit; no status is left pending. Each step is
// held until the kill by something the test controls, not a timer: the git
// server holds the fetch, the build waits at a gate, the unit's
// ExecStartPre waits at a gate, and the service waits at a gate before it
// listens.
func TestKilledAtEachStepIsRetriedOnce(t *testing.T) {
	a := newApp(t, "github")
	a.buildsSeeGates()
	// Verify waits for a service held at a gate for as long as the test
	// takes to see it verifying and kill flakeship: the health timeout is
	// no time window.
	a.extraEnv = append(a.extraEnv, "FLAKESHIP_TARGET_APP_HEALTH_TIMEOUT=1h")
	parent := a.t
	f := a.start()
	_, d := a.push(healthy)
	if got := f.waitEnd(d.accepted(t, f.base)); got.State != "succeeded" {
		t.Fatalf("first deploy = %+v, want succeeded", got)
	}
	f.stop(syscall.SIGTERM)

	for _, step := range []struct {
		state string
		// hold pushes the commit to kill the deploy of, held in state;
		// release, called after the kill, lets what was held go on.
		hold func(t *testing.T) (sha string, d delivery, release func())
	}{
		{
			// The git server holds the fetch unanswered.
			state: "fetching",
			hold: func(t *testing.T) (string, delivery, func()) {
				sha, d := a.push(healthy)
				h := a.git.Hold(t)
				return sha, d, h.Release
			},
		},
		{
			// The build waits at a gate.
			state: "building",
			hold: func(t *testing.T) (string, delivery, func()) {
				gate := testenv.NewGate(t)
				sha, d := a.pushHeld(gate)
				return sha, d, func() { openGate(t, gate) }
			},
		},
		{
			// The restart waits for the unit's start, whose ExecStartPre
			// waits at a gate.
			state: "activating",
			hold: func(t *testing.T) (string, delivery, func()) {
				gate := testenv.NewGate(t)
				a.writeUnit("ExecStartPre=" + gate.Program(t) + "\nTimeoutStartSec=infinity\n")
				sha, d := a.push(healthy)
				return sha, d, func() { a.writeUnit(""); openGate(t, gate) }
			},
		},
		{
			// The service starts at once but waits at a gate before it
			// listens: verify waits for it.
			state: "verifying",
			hold: func(t *testing.T) (string, delivery, func()) {
				gate := testenv.NewGate(t)
				sha, d := a.pushSettings("gate=" + gate.Path())
				return sha, d, func() { openGate(t, gate) }
			},
		},
	} {
		t.Run(step.state, func(t *testing.T) {
			a.t = t
			defer func() { a.t = parent }()
			f := a.start()
			sha, d, release := step.hold(t)
			id := d.accepted(t, f.base)
			f.waitState(id, step.state)
			f.stop(syscall.SIGKILL)
			release()

			f = a.start()
			first := f.waitEnd(id)
			if want := "flakeship stopped while the deploy was " + step.state; first.State != "interrupted" || first.Error != want {
				t.Fatalf("killed deploy = %+v, want interrupted: %q", first, want)
			}
			retry := f.retryOf(id)
			if retry.Trigger != "retry" || retry.SHA != sha || retry.State != "succeeded" {
				t.Fatalf("retry of deploy %d = %+v, want a succeeded retry of %s\n%s", id, retry, sha, a.deployLog(retry.ID))
			}
			if rs := f.retriesOf(id); len(rs) != 1 {
				t.Errorf("deploy %d has %d retries, want exactly 1", id, len(rs))
			}
			a.wantRunning(a.version)
			a.waitStatus(sha, "success")
			a.wantNothingPending()
			if n := len(f.deploys()); n == 0 {
				t.Error("the store lists no deploys")
			}
			f.stop(syscall.SIGTERM)
		})
	}
}

// openGate opens gate or fails t.
func openGate(t *testing.T, gate *testenv.Gate) {
	t.Helper()
	if err := gate.Open(); err != nil {
		t.Fatal(err)
	}
}

// TestReplayAfterARestartDeploysNothingOld restarts flakeship after two
// deploys: the same delivery again is answered 200 with its first deploy,
// and a captured delivery of the older commit under a new delivery id ends
// superseded without a build; the newer version keeps running.
func TestReplayAfterARestartDeploysNothingOld(t *testing.T) {
	a := newApp(t, "forgejo")
	f := a.start()
	sha1, d1 := a.push(healthy)
	id1 := d1.accepted(t, f.base)
	if got := f.waitEnd(id1); got.State != "succeeded" {
		t.Fatalf("first deploy = %+v, want succeeded", got)
	}
	sha2, d2 := a.push(healthy)
	id2 := d2.accepted(t, f.base)
	if got := f.waitEnd(id2); got.State != "succeeded" {
		t.Fatalf("second deploy = %+v, want succeeded", got)
	}
	a.waitStatus(sha2, "success")
	f.stop(syscall.SIGKILL)

	f = a.start()
	for _, re := range []struct {
		d  delivery
		id int64
	}{{d2, id2}, {d1, id1}} {
		code, body := re.d.send(t, f.base)
		if code != http.StatusOK || !bytes.Contains(body, []byte(fmt.Sprintf(`"deploy_id":%d,`, re.id))) {
			t.Errorf("redelivery after a restart answered %d %s, want 200 with deploy_id %d", code, body, re.id)
		}
	}
	if n := len(f.deploys()); n != 2 {
		t.Fatalf("%d deploys after redeliveries, want 2", n)
	}

	// The first push's delivery, captured and replayed under a new id; and
	// the newest one likewise.
	gen := currentGeneration(t, a.profile())
	for _, sha := range []string{sha1, sha2} {
		got := f.waitEnd(a.delivery(strings.Repeat("0", 40), sha).accepted(t, f.base))
		want := fmt.Sprintf("%s is deployed already, and %s is not newer than it: not deployed again", sha2[:7], sha[:7])
		if got.State != "superseded" || got.Error != want || hasStep(got, "build") {
			t.Errorf("replay of %s = %+v, want superseded without a build: %s", sha[:7], got, want)
		}
	}
	if st := a.waitStatus(sha1, "error"); st.Description != "Superseded by "+sha2[:7] {
		t.Errorf("status of the replayed commit: %q, want Superseded by %s", st.Description, sha2[:7])
	}
	a.wantRunning(2)
	if g := currentGeneration(t, a.profile()); g != gen {
		t.Errorf("profile generation %d after the replays, want %d", g, gen)
	}
	a.wantNothingPending()
	f.stop(syscall.SIGTERM)
}

// mountTmpfs mounts a tmpfs of size bytes on dir, unmounted when the test
// ends. It needs root in a mount namespace of its own (scripts/with-systemd
// makes one): elsewhere the test skips, unless FLAKESHIP_TEST_REQUIRE lists
// systemd.
func mountTmpfs(t *testing.T, dir string, size int) {
	t.Helper()
	out, err := exec.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%d,mode=0700", size), "tmpfs", dir).CombinedOutput()
	if err != nil {
		msg := fmt.Sprintf("mount a tmpfs for a full disk: %v: %s (run as root under scripts/with-systemd)", err, bytes.TrimSpace(out))
		if testenv.Required("systemd") {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, bytes.TrimSpace(out))
			exec.Command("umount", "-l", dir).Run()
		}
	})
}

// fillDisk writes path until the file system has no room left and returns
// how much it wrote.
func fillDisk(t *testing.T, path string) int64 {
	t.Helper()
	file, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	chunk := bytes.Repeat([]byte("x"), 64<<10)
	var n int64
	for {
		w, err := file.Write(chunk)
		n += int64(w)
		if errors.Is(err, syscall.ENOSPC) {
			return n
		}
		if err != nil {
			t.Fatalf("fill the disk: %v", err)
		}
	}
}

// TestDiskFullStateDirRefusesOrStoresAndRecovers runs flakeship on a state
// directory whose file system then fills up. A delivery is either refused
// (5xx with a JSON error: the forge shows it failed, and it can be sent
// again) or stored and acknowledged; flakeship keeps running. At least one
// is refused, with the store's disk-full error in the log: otherwise the
// disk was never full where flakeship writes, and the test proved nothing.
// Once there is room again and flakeship restarts, the store passes its
// integrity check, every acknowledged deploy is there, and a new push
// deploys.
func TestDiskFullStateDirRefusesOrStoresAndRecovers(t *testing.T) {
	a := newApp(t, "github")
	mountTmpfs(t, a.stateDir, 32<<20)
	f := a.start()
	_, d1 := a.push(healthy)
	acked := []int64{d1.accepted(t, f.base)}
	if got := f.waitEnd(acked[0]); got.State != "succeeded" {
		t.Fatalf("first deploy = %+v, want succeeded", got)
	}
	a.wantNothingPending()

	filler := filepath.Join(a.stateDir, "filler")
	wrote := fillDisk(t, filler)
	t.Logf("filled the state directory's file system with %d MiB", wrote>>20)

	// Three pushes while the disk is full.
	var refused []delivery
	for i := 0; i < 3; i++ {
		_, d := a.push(healthy)
		code, body := d.send(t, f.base)
		switch {
		case code == http.StatusAccepted:
			var ans struct {
				DeployID int64 `json:"deploy_id"`
			}
			if err := json.Unmarshal(body, &ans); err != nil || ans.DeployID == 0 {
				t.Fatalf("202 without a deploy id: %s", body)
			}
			acked = append(acked, ans.DeployID)
			t.Logf("push %d on a full disk: 202, deploy %d stored", i+1, ans.DeployID)
		case code == http.StatusInternalServerError || code == http.StatusServiceUnavailable:
			if !bytes.HasPrefix(body, []byte(`{"error":`)) {
				t.Errorf("push %d on a full disk: %d %s, want a JSON error", i+1, code, body)
			}
			refused = append(refused, d)
			t.Logf("push %d on a full disk: %d %s", i+1, code, body)
		default:
			t.Errorf("push %d on a full disk: answered %d %s, want 202, 500 or 503", i+1, code, body)
		}
	}
	select {
	case <-f.done:
		t.Fatalf("flakeship exited on a full disk:\n%s", f.logs.String())
	default:
	}
	if len(refused) == 0 {
		t.Errorf("no delivery was refused on a full disk: the store never met the full disk")
	} else if !strings.Contains(f.logs.String(), "database or disk is full") {
		t.Errorf("flakeship's log does not say the disk was full when it refused deliveries:\n%s", f.logs.String())
	}
	resp, err := http.Get(f.base + "/healthz")
	if err != nil {
		t.Fatalf("flakeship does not answer on a full disk: %v", err)
	}
	resp.Body.Close()
	if n := len(f.deploys()); n != len(acked) {
		t.Errorf("the store lists %d deploys on a full disk, want the %d acknowledged", n, len(acked))
	}
	// Deploys it stored end (they cannot fetch or log on a full disk).
	for _, id := range acked[1:] {
		t.Logf("deploy %d on a full disk ended %s: %s", id, f.waitEnd(id).State, f.deploy(id).Error)
	}

	// Room again, and a restart.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	f.stop(syscall.SIGTERM)
	if code := f.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("flakeship exited %d after SIGTERM, want 0\n%s", code, f.logs.String())
	}
	f = a.start()
	if !strings.Contains(f.logs.String(), `msg="store opened"`) {
		t.Fatalf("the store did not open after the disk was full:\n%s", f.logs.String())
	}
	for _, id := range acked {
		if d := f.deploy(id); d.ID != id {
			t.Errorf("acknowledged deploy %d is missing: %+v", id, d)
		}
	}
	// A refused delivery was not stored: sent again (a redelivery from the
	// forge's page), it is new.
	for _, d := range refused {
		if code, body := d.send(t, f.base); code != http.StatusAccepted {
			t.Errorf("refused delivery sent again with room: %d %s, want 202: a refused delivery must not be stored", code, body)
		}
	}
	t.Logf("on a full disk: %d of 3 deliveries refused (stored when sent again with room), %d stored and acknowledged",
		len(refused), len(acked)-1)
	sha, d := a.push(healthy)
	got := f.waitEnd(d.accepted(t, f.base))
	if got.State != "succeeded" || got.SHA != sha {
		t.Fatalf("deploy after the disk had room again = %+v, want succeeded\n%s", got, a.deployLog(got.ID))
	}
	a.wantRunning(a.version)
	a.wantNothingPending()
	f.stop(syscall.SIGTERM)
}
