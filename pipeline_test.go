package main

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flakeship/flakeship/internal/testenv"
)

var forges = []string{"github", "forgejo"}

// TestPushDeploysBuildsRollsBackAndCoalesces tells one target's story for
// each forge's delivery format: a push deploys; a broken build and an
// unhealthy build leave the earlier build running; a redelivery deploys
// nothing new; a burst of ten pushes builds at most twice and ends on the
// newest commit.
func TestPushDeploysBuildsRollsBackAndCoalesces(t *testing.T) {
	for _, kind := range forges {
		t.Run(kind, func(t *testing.T) {
			a := newApp(t, kind)
			f := a.start()

			// 1. A push deploys: pending, then success linking to the deploy.
			sha1, d1 := a.push(healthy)
			id1 := d1.accepted(t, f.base)
			got := f.waitEnd(id1)
			if got.State != "succeeded" || got.SHA != sha1 || got.Generation != 1 || got.Trigger != "push" {
				t.Fatalf("first deploy = %+v, want succeeded generation 1 of %s", got, sha1)
			}
			wantSteps(t, got, "fetch", "build", "activate", "verify")
			a.wantRunning(1)
			st := a.waitStatus(sha1, "success")
			if want := fmt.Sprintf("https://deploy.example.test/deploys/%d", id1); st.TargetURL != want {
				t.Errorf("success status links %q, want %q", st.TargetURL, want)
			}
			if !strings.HasPrefix(st.Description, "Deployed "+sha1[:7]+" in ") || st.Context != "flakeship/app" {
				t.Errorf("success status = %+v", st)
			}
			if states := a.statesOf(sha1); states[0] != "pending" {
				t.Errorf("statuses of the first push = %v, want pending first", states)
			}
			logSteps(t, f, got)

			// 5. The same delivery again: 200 with the first deploy, nothing new.
			code, body := d1.send(t, f.base)
			if code != http.StatusOK || !bytes.Contains(body, []byte(fmt.Sprintf(`"deploy_id":%d`, id1))) {
				t.Fatalf("redelivery answered %d %s, want 200 with deploy_id %d", code, body, id1)
			}
			if n := len(f.deploys()); n != 1 {
				t.Fatalf("%d deploys stored after a redelivery, want 1", n)
			}

			// 2. A push whose build fails: failure, version 1 keeps running.
			sha2, d2 := a.push(broken)
			got = f.waitEnd(d2.accepted(t, f.base))
			if got.State != "failed" || !strings.Contains(got.Error, "build") {
				t.Fatalf("broken build deploy = %+v, want failed in build", got)
			}
			if st := a.waitStatus(sha2, "failure"); st.Description != "Build failed: see log" {
				t.Errorf("failure status description %q", st.Description)
			}
			a.wantRunning(1)

			// 3. A push that builds but is unhealthy: rolled back to generation 1.
			sha3, d3 := a.push(unhealthy)
			got = f.waitEnd(d3.accepted(t, f.base))
			if got.State != "rolled_back" || got.Generation != 1 {
				t.Fatalf("unhealthy deploy = %+v, want rolled_back to generation 1", got)
			}
			if st := a.waitStatus(sha3, "failure"); st.Description != "Unhealthy, rolled back to "+sha1[:7] {
				t.Errorf("rolled back status description %q", st.Description)
			}
			a.wantRunning(1)
			if cur := currentGeneration(t, a.profile()); cur != 1 {
				t.Errorf("profile's current generation is %d after the rollback, want 1", cur)
			}

			// 4. Ten pushes in a burst: all commits reach the git server
			// first, then their deliveries arrive back to back.
			var shas []string
			var ds []delivery
			for i := 0; i < 10; i++ {
				sha, d := a.push(healthy)
				shas, ds = append(shas, sha), append(ds, d)
			}
			ids := make([]int64, len(ds))
			for i, d := range ds {
				ids[i] = d.accepted(t, f.base)
			}
			last := f.waitEnd(ids[9])
			if last.State != "succeeded" || last.SHA != shas[9] {
				t.Fatalf("newest burst deploy = %+v, want succeeded", last)
			}
			builds := 0
			for i, id := range ids {
				d := f.waitEnd(id)
				if hasStep(d, "build") {
					builds++
				}
				if i < 9 && d.State != "superseded" && d.State != "succeeded" {
					t.Errorf("burst deploy %d ended %s, want superseded (or succeeded if it ran)", id, d.State)
				}
				if d.State == "superseded" {
					if d.SupersededBy == nil {
						t.Errorf("superseded deploy %d names no successor", id)
					}
					if st := a.waitStatus(shas[i], "error"); !strings.HasPrefix(st.Description, "Superseded by ") {
						t.Errorf("superseded status description %q", st.Description)
					}
				}
			}
			if builds > 2 {
				t.Errorf("a burst of 10 pushes built %d times, want at most 2", builds)
			}
			a.wantRunning(a.version)

			// No status is left pending.
			waitFor(t, 30*time.Second, func() bool { return len(a.pendingShas()) == 0 },
				func() string { return fmt.Sprintf("commits left pending: %v%s", a.pendingShas(), a.statusDump()) })
			f.stop(syscall.SIGTERM)
		})
	}
}

// TestBadDeliveriesStoreAndStartNothing sends a bad signature, no
// signature, malformed JSON and an oversized body for each forge.
func TestBadDeliveriesStoreAndStartNothing(t *testing.T) {
	for _, kind := range forges {
		t.Run(kind, func(t *testing.T) {
			a := newApp(t, kind)
			f := a.start()
			_, good := a.push(healthy)

			badSig := good
			badSig.header = good.header.Clone()
			for k := range badSig.header {
				if strings.Contains(strings.ToLower(k), "signature") {
					v := badSig.header.Get(k)
					badSig.header.Set(k, strings.Replace(v, v[len(v)-4:], "0000", 1))
				}
			}
			noSig := good
			noSig.header = good.header.Clone()
			for k := range noSig.header {
				if strings.Contains(strings.ToLower(k), "signature") {
					noSig.header.Del(k)
				}
			}
			malformed := good
			malformed.body = good.body[:len(good.body)/2]

			for _, tc := range []struct {
				name string
				d    delivery
				want int
			}{
				{"bad signature", badSig, 401},
				{"no signature", noSig, 401},
				{"malformed json", malformed, 400},
			} {
				code, body := tc.d.send(t, f.base)
				if code != tc.want || !bytes.Contains(body, []byte(`"error"`)) {
					t.Errorf("%s: answered %d %s, want %d with an error", tc.name, code, body, tc.want)
				}
			}
			if code, body := oversized(t, f.base, good); code != 413 {
				t.Errorf("oversized body: answered %d %s, want 413", code, body)
			}
			if n := len(f.deploys()); n != 0 {
				t.Errorf("%d deploys stored after bad deliveries, want 0", n)
			}
			if n := len(a.forge.Statuses()); n != 0 {
				t.Errorf("%d statuses posted after bad deliveries, want 0", n)
			}
			if got := a.running(); !strings.HasPrefix(got, "down") {
				t.Errorf("the service runs (%s) though no delivery was good", got)
			}
		})
	}
}

// oversized sends headers announcing a body over the 25 MiB limit and reads
// the answer, even if the server answers before the body is sent.
func oversized(t *testing.T, base string, d delivery) (int, string) {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	var req bytes.Buffer
	fmt.Fprintf(&req, "POST %s HTTP/1.1\r\nHost: flakeship\r\nContent-Length: %d\r\n", d.path, 30<<20)
	for k, vs := range d.header {
		for _, v := range vs {
			fmt.Fprintf(&req, "%s: %s\r\n", k, v)
		}
	}
	req.WriteString("\r\n")
	if _, err := conn.Write(req.Bytes()); err != nil {
		t.Fatal(err)
	}
	// Send some of the body; the server may close before taking it all.
	chunk := bytes.Repeat([]byte("x"), 64<<10)
	for i := 0; i < 16; i++ {
		if _, err := conn.Write(chunk); err != nil {
			break
		}
	}
	resp, err := http.ReadResponse(bufioReader(conn), nil)
	if err != nil {
		t.Fatalf("read answer to an oversized body: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// TestKilledMidBuildRetriesAndLosesNothing kills flakeship with SIGKILL
// while it builds, for each forge, and starts it again.
func TestKilledMidBuildRetriesAndLosesNothing(t *testing.T) {
	for _, kind := range forges {
		t.Run(kind, func(t *testing.T) {
			a := newApp(t, kind)
			a.buildsSeeGates()
			f := a.start()

			// Killed while building the only deploy, held at a gate: it is
			// retried once and succeeds. (The killed flakeship's nix runs
			// on in its own process group; the open gate lets it end.)
			gate := testenv.NewGate(t)
			sha1, d1 := a.pushHeld(gate)
			id1 := d1.accepted(t, f.base)
			f.waitState(id1, "building")
			f.stop(syscall.SIGKILL)
			if err := gate.Open(); err != nil {
				t.Fatal(err)
			}

			f = a.start()
			first := f.waitEnd(id1)
			if first.State != "interrupted" {
				t.Fatalf("killed deploy = %+v, want interrupted", first)
			}
			retry := f.retryOf(id1)
			if retry.Trigger != "retry" || retry.SHA != sha1 || retry.State != "succeeded" {
				t.Fatalf("retry of deploy %d = %+v, want a succeeded retry of %s\n%s", id1, retry, sha1, a.deployLog(retry.ID))
			}
			a.wantRunning(1)
			a.waitStatus(sha1, "success")

			// Killed while building, with two more pushes acknowledged
			// meanwhile: nothing acknowledged is lost; the newest deploys.
			gate = testenv.NewGate(t)
			_, d2 := a.pushHeld(gate)
			id2 := d2.accepted(t, f.base)
			f.waitState(id2, "building")
			_, d3 := a.push(healthy)
			id3 := d3.accepted(t, f.base)
			sha4, d4 := a.push(healthy)
			id4 := d4.accepted(t, f.base)
			f.stop(syscall.SIGKILL)
			if err := gate.Open(); err != nil {
				t.Fatal(err)
			}

			f = a.start()
			if d := f.waitEnd(id4); d.State != "succeeded" || d.SHA != sha4 {
				t.Fatalf("newest acknowledged deploy = %+v, want succeeded", d)
			}
			for id, want := range map[int64]string{id2: "interrupted", id3: "superseded"} {
				if d := f.waitEnd(id); d.State != want {
					t.Errorf("deploy %d ended %s, want %s", id, d.State, want)
				}
			}
			a.wantRunning(4)
			waitFor(t, 30*time.Second, func() bool { return len(a.pendingShas()) == 0 },
				func() string { return fmt.Sprintf("commits left pending: %v%s", a.pendingShas(), a.statusDump()) })
			f.stop(syscall.SIGTERM)
		})
	}
}

// stateChangedRE matches the log line flakeship writes at each move of a
// deploy: its id and the state it moved to.
var stateChangedRE = regexp.MustCompile(`msg="deploy state changed" .*\bdeploy_id=(\d+) .*\bstate=(\w+)`)

// announced returns the states flakeship's log says deploy id moved to, in
// order.
func announced(logs string, id int64) []string {
	var out []string
	for _, m := range stateChangedRE.FindAllStringSubmatch(logs, -1) {
		if m[1] == strconv.FormatInt(id, 10) {
			out = append(out, m[2])
		}
	}
	return out
}

// waitState waits until flakeship announces in its log that deploy id
// moved to state s, woken by each line it logs rather than by polling.
// The tests hold a deploy in s (a build at a gate, a held fetch, a unit or
// service waiting at a gate), so the API must still say s when asked
// afterwards, with no hurry: waitState checks that too.
func (f *flakeship) waitState(id int64, s string) {
	f.t.Helper()
	var states []string
	f.logs.Wait(2*time.Minute, func(logs string) bool {
		states = announced(logs, id)
		return len(states) > 0 && (states[len(states)-1] == s || terminal[states[len(states)-1]])
	})
	if n := len(states); n == 0 || states[n-1] != s {
		f.t.Fatalf("deploy %d moved through %v, want it held in %s\n%s", id, states, s, f.logs.String())
	}
	if d := f.deploy(id); d.State != s {
		f.t.Fatalf("deploy %d is %s when asked after it moved to %s: nothing held it there: %+v", id, d.State, s, d)
	}
}

// retryOf waits for the retry of deploy id to end and returns it.
func (f *flakeship) retryOf(id int64) deployRecord {
	f.t.Helper()
	var retry deployRecord
	waitFor(f.t, 60*time.Second, func() bool {
		for _, d := range f.deploys() {
			if d.Trigger == "retry" && d.ID > id && terminal[d.State] {
				retry = d
				return true
			}
		}
		return false
	}, func() string { return fmt.Sprintf("no finished retry of deploy %d\n%s", id, f.logs.String()) })
	return retry
}

// deployLog returns deploy id's log file, for failure messages.
func (a *app) deployLog(id int64) string {
	b, err := os.ReadFile(filepath.Join(a.stateDir, "logs", fmt.Sprintf("%d.log", id)))
	if err != nil {
		return err.Error()
	}
	return string(b)
}

// statusDump lists every status the forge received, for failure messages.
func (a *app) statusDump() string {
	var b strings.Builder
	for _, s := range a.forge.Statuses() {
		fmt.Fprintf(&b, "\n  %s %s %q %s", s.SHA[:7], s.State, s.Description, s.TargetURL)
	}
	return b.String()
}

// pendingShas lists the commits whose newest status is still pending.
func (a *app) pendingShas() []string {
	last := map[string]string{}
	for _, s := range a.forge.Statuses() {
		last[s.SHA] = string(s.State)
	}
	var out []string
	for sha, st := range last {
		if st == "pending" {
			out = append(out, sha[:7])
		}
	}
	return out
}

func hasStep(d deployRecord, name string) bool {
	for _, s := range d.Steps {
		if s.Name == name {
			return true
		}
	}
	return false
}

func wantSteps(t *testing.T, d deployRecord, names ...string) {
	t.Helper()
	var got []string
	for _, s := range d.Steps {
		got = append(got, s.Name)
		if !s.OK || s.FinishedAt == nil {
			t.Errorf("step %s of deploy %d: ok=%v finished=%v", s.Name, d.ID, s.OK, s.FinishedAt)
		}
	}
	if strings.Join(got, ",") != strings.Join(names, ",") {
		t.Errorf("deploy %d steps %v, want %v", d.ID, got, names)
	}
}

// logSteps writes each step's duration to the test log: the figures of a
// deploy's time broken into its steps.
func logSteps(t *testing.T, f *flakeship, d deployRecord) {
	var parts []string
	var total time.Duration
	for _, s := range d.Steps {
		took := s.FinishedAt.Sub(s.StartedAt)
		total += took
		parts = append(parts, fmt.Sprintf("%s %s", s.Name, took.Round(time.Millisecond)))
	}
	t.Logf("deploy %d step times: %s; total %s", d.ID, strings.Join(parts, ", "), total.Round(time.Millisecond))
}

// TestSigtermLetsTheRunningDeployFinish stops flakeship with SIGTERM while
// it builds (held at a gate): it stops taking deliveries, and once the
// gate opens it finishes the deploy within its grace period and exits;
// nothing is left for a retry.
func TestSigtermLetsTheRunningDeployFinish(t *testing.T) {
	a := newApp(t, "github")
	a.buildsSeeGates()
	f := a.start()
	gate := testenv.NewGate(t)
	sha, d := a.pushHeld(gate)
	id := d.accepted(t, f.base)
	f.waitState(id, "building")
	if err := f.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// Intake stops first: flakeship says so, and its port refuses
	// connections, while the deploy is still held in its build.
	if !f.logs.Wait(time.Minute, func(logs string) bool { return strings.Contains(logs, `msg="shutting down"`) }) {
		t.Fatalf("flakeship never said it was shutting down:\n%s", f.logs.String())
	}
	waitFor(t, time.Minute, func() bool {
		c, err := net.Dial("tcp", strings.TrimPrefix(f.base, "http://"))
		if err == nil {
			c.Close()
		}
		return err != nil
	}, func() string { return "flakeship still accepts connections after SIGTERM" })
	if states := announced(f.logs.String(), id); states[len(states)-1] != "building" {
		t.Fatalf("deploy %d moved through %v before the gate opened, want it still building", id, states)
	}
	if err := gate.Open(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-f.done:
	case <-time.After(2 * time.Minute):
		t.Fatalf("flakeship did not exit after SIGTERM once the gate opened:\n%s", f.logs.String())
	}
	if code := f.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("flakeship exited %d after SIGTERM, want 0\n%s", code, f.logs.String())
	}
	if states := announced(f.logs.String(), id); states[len(states)-1] != "succeeded" {
		t.Fatalf("deploy %d moved through %v after SIGTERM, want it to end succeeded\n%s", id, states, f.logs.String())
	}
	a.wantRunning(1)

	f = a.start()
	if got := f.deploy(id); got.State != "succeeded" || got.SHA != sha {
		t.Fatalf("deploy running at SIGTERM = %+v, want succeeded", got)
	}
	if n := len(f.deploys()); n != 1 {
		t.Errorf("%d deploys after the restart, want 1 (no retry)", n)
	}
	a.waitStatus(sha, "success")
}
