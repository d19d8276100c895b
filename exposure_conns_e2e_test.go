package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// What the open internet can do to a running flakeship with connections and
// request bodies: the real binary, under a low open-file limit where it
// matters (prlimit sets it, then execs flakeship).

// fdLimit is the open-file limit the connection tests run flakeship with.
const fdLimit = 256

// startLimitedFlakeship runs flakeship with env under an open-file limit of
// fdLimit (soft and hard: Go raises only the soft limit to the hard one).
func startLimitedFlakeship(t *testing.T, env []string) *flakeship {
	t.Helper()
	prlimit, err := exec.LookPath("prlimit")
	if err != nil {
		t.Fatalf("prlimit (util-linux) is not on PATH: %v", err)
	}
	bin, _ := binaries(t)
	f := startFlakeshipCmd(t, exec.Command(prlimit, fmt.Sprintf("--nofile=%d:%d", fdLimit, fdLimit), "--", bin), env)
	// prlimit execs flakeship: the process is flakeship, under the limit.
	if soft, hard := openFileLimitOf(t, f.cmd.Process.Pid); soft != fdLimit || hard != fdLimit {
		t.Fatalf("flakeship runs with an open-file limit of %d:%d, want %d:%d", soft, hard, fdLimit, fdLimit)
	}
	return f
}

var maxOpenFilesRE = regexp.MustCompile(`(?m)^Max open files\s+(\d+)\s+(\d+)`)

// openFileLimitOf reads the soft and hard RLIMIT_NOFILE of process pid.
func openFileLimitOf(t *testing.T, pid int) (soft, hard int) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
	if err != nil {
		t.Fatal(err)
	}
	m := maxOpenFilesRE.FindSubmatch(b)
	if m == nil {
		t.Fatalf("no open-file limit in /proc/%d/limits:\n%s", pid, b)
	}
	soft, _ = strconv.Atoi(string(m[1]))
	hard, _ = strconv.Atoi(string(m[2]))
	return soft, hard
}

// setOpenFileLimit sets the soft open-file limit of the running process pid.
func setOpenFileLimit(t *testing.T, pid, soft int) {
	t.Helper()
	out, err := exec.Command("prlimit", "--pid", strconv.Itoa(pid), fmt.Sprintf("--nofile=%d:%d", soft, fdLimit)).CombinedOutput()
	if err != nil {
		t.Fatalf("prlimit --pid %d: %v\n%s", pid, err, out)
	}
}

// openFiles counts the file descriptors process pid holds.
func openFiles(t *testing.T, pid int) int {
	t.Helper()
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(fds)
}

// alive tells whether the flakeship process still runs.
func (f *flakeship) alive() bool {
	select {
	case <-f.done:
		return false
	default:
		return true
	}
}

// The connection cap and the per-client cap at an open-file limit of
// fdLimit (server.LimitsFor; server/limits_test.go has its table).
const (
	wantConns     = 120
	wantPerClient = 15
)

// checkConnLimits checks that flakeship logged the limits it derived from
// fdLimit at start (it logs them once it listens).
func (f *flakeship) checkConnLimits() {
	f.t.Helper()
	want := fmt.Sprintf(`msg="connection limits" conns=%d conns_per_client=%d requests=30 streams=20 open_file_limit=%d`,
		wantConns, wantPerClient, fdLimit)
	if !strings.Contains(f.logs.String(), want) {
		f.t.Errorf("flakeship did not log %s:\n%s", want, f.logs)
	}
}

// idleConns opens n connections from local (nil: any address) that never
// send anything, and closes them when the test ends.
type idleConns []net.Conn

func openIdle(t *testing.T, addr string, local net.Addr, n int) idleConns {
	t.Helper()
	d := net.Dialer{LocalAddr: local, Timeout: 10 * time.Second}
	var cs idleConns
	t.Cleanup(func() { cs.close() })
	for range n {
		c, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("connection %d of %d: %v", len(cs)+1, n, err)
		}
		cs = append(cs, c)
	}
	return cs
}

func (cs idleConns) close() {
	for _, c := range cs {
		c.Close()
	}
}

func TestIdleConnectionsNeitherStopFlakeshipNorKeepDeliveriesOut(t *testing.T) {
	a := newApp(t, "github")
	f := startLimitedFlakeship(t, a.env())
	pid := f.cmd.Process.Pid
	addr := strings.TrimPrefix(f.base, "http://")
	f.checkConnLimits()
	t.Cleanup(func() {
		if t.Failed() && !f.alive() {
			t.Logf("flakeship exited: %s", f.cmd.ProcessState)
		}
	})

	// More idle connections than the process may open files, all from
	// loopback (not capped per client: only the total cap holds them).
	n := fdLimit + 100
	flooded := time.Now()
	flood := openIdle(t, addr, nil, n)
	if !f.alive() {
		t.Fatalf("flakeship exited under %d idle connections:\n%s", n, f.logs)
	}
	// A signed push is still answered and deployed while they are open;
	// the backlog is served in order, so every idle connection has been
	// accepted before it.
	sha, d := a.push(healthy)
	id := d.accepted(t, f.base)
	if got := f.waitEnd(id); got.State != "succeeded" || got.SHA != sha {
		t.Fatalf("deploy %d under %d idle connections: %s %s", id, n, got.State, got.Error)
	}
	a.wantRunning(a.version)
	held := openFiles(t, pid)
	evictions := strings.Count(f.logs.String(), `msg="connection closed to make room: the connection cap is reached"`)
	if evictions == 0 {
		t.Errorf("the idle connections never reached the cap of %d:\n%s", wantConns, f.logs)
	}
	if max := int(time.Since(flooded)/(10*time.Second)) + 1; evictions > max {
		t.Errorf("%d log lines for connections closed to make room, want at most one per 10 s", evictions)
	}

	// Out of descriptors for good measure: with the idle connections
	// closed, the soft limit is lowered to just above what flakeship holds,
	// so that accepting fails with "too many open files". flakeship waits
	// and goes on once descriptors are back.
	flood.close()
	var idle int
	waitFor(t, 30*time.Second, func() bool {
		idle = openFiles(t, pid)
		return idle < wantConns/2
	}, func() string { return fmt.Sprintf("flakeship still holds %d descriptors", idle) })
	setOpenFileLimit(t, pid, idle+3)
	start := time.Now()
	starved := openIdle(t, addr, nil, 40)
	waitFor(t, 30*time.Second, func() bool {
		return strings.Contains(f.logs.String(), "accept4: too many open files")
	}, func() string { return "accepting never failed:\n" + f.logs.String() })
	if !f.alive() {
		t.Fatalf("flakeship exited when accepting failed:\n%s", f.logs)
	}
	setOpenFileLimit(t, pid, fdLimit)
	starvedFor := time.Since(start)
	sha, d = a.push(healthy)
	id = d.accepted(t, f.base)
	if got := f.waitEnd(id); got.State != "succeeded" || got.SHA != sha {
		t.Fatalf("deploy %d after accepting failed: %s %s", id, got.State, got.Error)
	}
	lines := strings.Count(f.logs.String(), `msg="accepting connections fails; retrying"`)
	if max := int(starvedFor/(10*time.Second)) + 1; lines > max {
		t.Errorf("%d log lines for failed accepts in %s, want at most %d", lines, starvedFor.Round(time.Millisecond), max)
	}
	starved.close()

	survived := "no"
	if f.alive() {
		survived = "yes"
	}
	t.Logf("connections opened %d against fd limit %d; flakeship survived: %s", n, fdLimit, survived)
	t.Logf("connection cap %d, descriptors held under the flood %d; accepting failed for %s (%d log line)",
		wantConns, held, starvedFor.Round(time.Millisecond), lines)
	if survived != "yes" {
		t.Fatalf("flakeship exited:\n%s", f.logs)
	}
}

// minimalEnv configures flakeship with one build-only target that nothing
// in these tests deploys.
func minimalEnv(t *testing.T) []string {
	state := t.TempDir()
	return []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + state,
		"FLAKESHIP_LISTEN=127.0.0.1:0",
		"FLAKESHIP_STATE_DIR=" + state,
		"FLAKESHIP_ADMIN_TOKEN=admin-token-5e0c",
		"FLAKESHIP_TARGETS=app",
		"FLAKESHIP_TARGET_APP_FORGE=github",
		"FLAKESHIP_TARGET_APP_REPO=acme/app",
		"FLAKESHIP_TARGET_APP_CLONE_URL=http://127.0.0.1:1/nowhere.git",
		"FLAKESHIP_TARGET_APP_ACTIVATE=none",
		"FLAKESHIP_TARGET_APP_WEBHOOK_SECRET=hook-secret-b71d",
	}
}

// nonLoopback returns an address of this machine that is not loopback:
// connections from it to 127.0.0.1 count as another client.
func nonLoopback(t *testing.T) net.Addr {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && ipn.IP.To4() != nil && !ipn.IP.IsLoopback() {
			return &net.TCPAddr{IP: ipn.IP}
		}
	}
	return nil
}

// answerOn sends req on c and reads the answer.
func answerOn(t *testing.T, c net.Conn, req string) (*http.Response, string) {
	t.Helper()
	if err := c.SetDeadline(time.Now().Add(30 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatalf("write request: %v", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("read answer: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}

func TestOneClientGets429BeyondItsConnections(t *testing.T) {
	from := nonLoopback(t)
	if from == nil {
		// The server package's TestConnectionsOfOneClientAreCapped429
		// covers the cap with a listener that reports another address.
		t.Skip("this machine has no IPv4 address but loopback, which is not capped per client")
	}
	f := startLimitedFlakeship(t, minimalEnv(t))
	addr := strings.TrimPrefix(f.base, "http://")
	f.checkConnLimits()
	perClient := wantPerClient

	held := openIdle(t, addr, from, perClient)
	d := net.Dialer{LocalAddr: from}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	resp, body := answerOn(t, c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
	want := fmt.Sprintf(`{"error":"too many connections from this address (at most %d at once): close some and try again"}`, perClient)
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") != "1" ||
		resp.Header.Get("Content-Type") != "application/json" || body != want {
		t.Errorf("connection %d from %s: %d %v %s, want 429 %s", perClient+1, from.(*net.TCPAddr).IP, resp.StatusCode, resp.Header, body, want)
	}
	// Loopback, and the same client once it has closed one, are served.
	if resp, err := http.Get(f.base + "/healthz"); err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("healthz from loopback: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	held[0].Close()
	waitFor(t, 30*time.Second, func() bool {
		c, err := d.Dial("tcp", addr)
		if err != nil {
			return false
		}
		defer c.Close()
		resp, _ := answerOn(t, c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
		return resp.StatusCode == http.StatusOK
	}, func() string { return "the client was still refused after closing a connection" })
	t.Logf("per-client cap %d at fd limit %d: connection %d from %s answered %d %s",
		perClient, fdLimit, perClient+1, from.(*net.TCPAddr).IP, resp.StatusCode, body)
}

// rssMiB is the resident memory of process pid in MiB.
func rssMiB(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			if err != nil {
				t.Fatalf("VmRSS %q: %v", v, err)
			}
			return kb / 1024
		}
	}
	t.Fatalf("no VmRSS in /proc/%d/status", pid)
	return 0
}

// peakRSS samples the resident memory of pid until stop is called, which
// returns the highest seen.
func peakRSS(t *testing.T, pid int) (stop func() int) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	peak := rssMiB(t, pid)
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
			}
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
			if err != nil {
				continue
			}
			for _, line := range strings.Split(string(b), "\n") {
				if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
					kb, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
					peak = max(peak, kb/1024)
				}
			}
		}
	}()
	return func() int {
		close(done)
		wg.Wait()
		return peak
	}
}

// bodyAnswer sends head and then size bytes of body (none if size is 0) on
// a connection of its own and returns the answer's status and body. The
// answer may come before the body is all sent.
func bodyAnswer(addr, head string, size int) (int, string, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return 0, "", err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(2 * time.Minute)); err != nil {
		return 0, "", err
	}
	if _, err := io.WriteString(c, head); err != nil {
		return 0, "", err
	}
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		chunk := bytes.Repeat([]byte(" "), 256<<10)
		for n := 0; n < size; n += len(chunk) {
			if _, err := c.Write(chunk[:min(len(chunk), size-n)]); err != nil {
				return // the server has answered and closed
			}
		}
	}()
	defer func() { c.Close(); <-sent }()
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// burst sends n requests at once, each head followed by size bytes of body,
// and checks every answer: its body (any if wantBody is "") and its status,
// one of wantStatus (any if none).
func burst(t *testing.T, addr string, n int, head string, size int, wantBody string, wantStatus ...int) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			status, body, err := bodyAnswer(addr, head, size)
			switch {
			case err != nil:
				errs <- err
			case (len(wantStatus) > 0 && !slices.Contains(wantStatus, status)) || (wantBody != "" && body != wantBody):
				errs <- fmt.Errorf("answered %d %s, want %v %s", status, body, wantStatus, wantBody)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("%s: %v", strings.SplitN(head, "\r\n", 2)[0], err)
	}
}

var (
	plainOnce sync.Once
	plainPath string
	plainErr  error
)

// plainBinary returns the flakeship binary built without the race detector:
// its shadow memory, never given back, would hide what the process itself
// gives back.
func plainBinary(t *testing.T) string {
	t.Helper()
	bin, _ := binaries(t)
	if !raceEnabled {
		return bin
	}
	plainOnce.Do(func() {
		plainPath = filepath.Join(binDir, "flakeship-plain")
		out, err := exec.Command("go", "build", "-o", plainPath, ".").CombinedOutput()
		if err != nil {
			plainErr = fmt.Errorf("go build -o %s .: %v\n%s", plainPath, err, out)
		}
	})
	if plainErr != nil {
		t.Fatal(plainErr)
	}
	return plainPath
}

func TestLargeBodiesNeitherReachOtherRoutesNorStayInMemory(t *testing.T) {
	// Memory is measured without the race detector.
	f := startFlakeshipCmd(t, exec.Command(plainBinary(t)), minimalEnv(t))
	pid := f.cmd.Process.Pid
	addr := strings.TrimPrefix(f.base, "http://")
	const (
		bodyLimit = 25 << 20   // FLAKESHIP_BODY_LIMIT's default
		bigBody   = 26_000_000 // the size of the report: under the webhook limit, over 1 MiB
		hookBody  = 20_000_000
		slack     = 64 // MiB over idle that the process may keep
	)
	hookHead := func(length int) string {
		return fmt.Sprintf("POST /hooks/github HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"+
			"X-GitHub-Event: push\r\nX-GitHub-Delivery: 6f7e0f50-big\r\nX-Hub-Signature-256: sha256=%s\r\n"+
			"Content-Length: %d\r\n\r\n", strings.Repeat("0", 64), length)
	}
	loginHead := fmt.Sprintf("POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"+
		"Content-Length: %d\r\n\r\n", bigBody)

	// Idle, once each route has served a small request.
	burst(t, addr, 1, "POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 11\r\n\r\n", 11, "")
	burst(t, addr, 1, hookHead(100), 100, "", http.StatusBadRequest)
	idle := rssMiB(t, pid)

	// 80 login forms of 26 MB: each refused from its Content-Length,
	// without a byte of its body sent.
	stopLogin := peakRSS(t, pid)
	burst(t, addr, 80, loginHead, 0, `{"error":"body exceeds 1048576 bytes"}`, http.StatusRequestEntityTooLarge)
	loginPeak := stopLogin()
	if loginPeak > idle+slack {
		t.Errorf("RSS rose from %d to %d MiB while login forms were refused unread", idle, loginPeak)
	}

	// Webhooks: 12 bodies of 20 MB under the limit are read (and refused
	// as malformed, or cut off at 10 s on a busy machine), 80 over it are
	// refused from their Content-Length.
	stopHooks := peakRSS(t, pid)
	burst(t, addr, 12, hookHead(hookBody), hookBody, "", http.StatusBadRequest, http.StatusRequestTimeout)
	burst(t, addr, 80, hookHead(bodyLimit+1), 0, fmt.Sprintf(`{"error":"body exceeds %d bytes"}`, bodyLimit), http.StatusRequestEntityTooLarge)
	peak := stopHooks()
	if peak < idle+12*hookBody/2>>20 {
		t.Errorf("RSS peaked at %d MiB from %d idle: the 20 MB webhook bodies were not all read at once, the test proves nothing", peak, idle)
	}

	// The memory goes back: within the slack, and then, as far as it
	// settles within a few seconds (flakeship gives memory back at most
	// once a second), what it keeps is logged.
	var after int
	start := time.Now()
	waitFor(t, time.Minute, func() bool {
		after = rssMiB(t, pid)
		return after <= idle+slack
	}, func() string {
		return fmt.Sprintf("RSS %d MiB a minute after the burst, idle %d MiB", after, idle)
	})
	back := time.Since(start)
	for settle := time.Now().Add(5 * time.Second); after > idle+slack/4 && time.Now().Before(settle); {
		time.Sleep(20 * time.Millisecond)
		after = min(after, rssMiB(t, pid))
	}
	t.Logf("RSS idle %d MiB, peak during burst %d MiB, after %d MiB (within %d MiB of idle %s after the burst; login burst peak %d MiB)",
		idle, peak, after, slack, back.Round(time.Millisecond), loginPeak)
	if !f.alive() {
		t.Fatalf("flakeship exited:\n%s", f.logs)
	}
}
