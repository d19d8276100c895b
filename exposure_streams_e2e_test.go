package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flakeship/flakeship/internal/testenv"
)

// Log streams and the open internet: anyone who can read a deploy can
// follow its log (GET /api/deploys/{id}/log?follow=1) or its page's events
// (GET /deploys/{id}/events) and hang up at once, again and again. A stream
// whose client hung up must let go of its connection and memory then, not
// when the deploy ends; and no more than a bounded number may follow at
// once.

// abandonedStreams is how many streams the test opens and drops.
const abandonedStreams = 3000

// openFds counts the process's open file descriptors.
func openFds(t *testing.T, pid int) int {
	t.Helper()
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatalf("count open files: %v", err)
	}
	return len(fds)
}

// rssKiB reads the process's resident memory in KiB.
func rssKiB(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("read memory use: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			if err != nil {
				t.Fatalf("VmRSS %q: %v", v, err)
			}
			return n
		}
	}
	t.Fatal("no VmRSS in /proc/<pid>/status")
	return 0
}

// metric reads one unlabelled metric from flakeship's /metrics.
func metric(t *testing.T, f *flakeship, name string) float64 {
	t.Helper()
	resp, err := http.Get(f.base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			n, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return n
		}
	}
	t.Fatalf("no %s in /metrics", name)
	return 0
}

// rawStream is a GET answered on a connection of its own, its head and
// the first piece of its body read.
type rawStream struct {
	conn   net.Conn
	status int
	header http.Header
	body   string
}

// openRawStream sends GET path on a new connection and reads the answer's
// head and, for a 200, the first piece of its body (all of it otherwise).
// The caller closes the connection.
func openRawStream(base, path string) (*rawStream, error) {
	addr := strings.TrimPrefix(base, "http://")
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	conn.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", path, addr); err != nil {
		conn.Close()
		return nil, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("GET %s: %w", path, err)
	}
	s := &rawStream{conn: conn, status: resp.StatusCode, header: resp.Header}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		s.body = string(b)
		return s, nil
	}
	buf := make([]byte, 4096)
	n, err := resp.Body.Read(buf)
	if n == 0 {
		conn.Close()
		return nil, fmt.Errorf("GET %s: no body: %v", path, err)
	}
	s.body = string(buf[:n])
	return s, nil
}

// keptStream reads a whole streamed answer in the background.
type keptStream struct {
	done chan struct{}
	body string
	err  error
}

func keepStream(t *testing.T, url string) *keptStream {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d", url, resp.StatusCode)
	}
	k := &keptStream{done: make(chan struct{})}
	go func() {
		defer close(k.done)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		k.body, k.err = string(b), err
	}()
	t.Cleanup(func() { resp.Body.Close(); <-k.done })
	return k
}

// wait waits, bounded, for the stream to end and returns its body.
func (k *keptStream) wait(t *testing.T, what string) string {
	t.Helper()
	select {
	case <-k.done:
	case <-time.After(90 * time.Second):
		t.Fatalf("the %s never ended", what)
	}
	if k.err != nil {
		t.Fatalf("the %s broke: %v; it had:\n%s", what, k.err, k.body)
	}
	return k.body
}

// TestAbandonedLogStreamsCostNothing holds a deploy in its build at a gate
// and opens and drops 3,000 streams of it, log follows and page events in
// turn, from 8 connections at a time: the server's open files and memory
// come back to where they were while the deploy still runs. Then it fills
// the deploy's quota of streams and is refused the next one with a 503,
// and finally opens the gate: the two streams kept open all along receive
// the rest of the log and the new states, and end with the deploy.
func TestAbandonedLogStreamsCostNothing(t *testing.T) {
	a := newApp(t, "github")
	gate := testenv.NewGate(t)
	a.buildsSeeGates()
	f := a.start()
	pid := f.cmd.Process.Pid
	sha, d := a.pushHeld(gate)
	id := d.accepted(t, f.base)
	waitFor(t, 60*time.Second, func() bool { return strings.Contains(a.deployLog(id), "waiting at the gate") },
		func() string {
			return fmt.Sprintf("deploy %d never reached the gate; its log:\n%s", id, a.deployLog(id))
		})
	follow, events := fmt.Sprintf("/api/deploys/%d/log?follow=1", id), fmt.Sprintf("/deploys/%d/events", id)

	// Two streams that stay open to the end.
	keptLog, keptEvents := keepStream(t, f.base+follow), keepStream(t, f.base+events)

	fdsBefore, rssBefore := openFds(t, pid), rssKiB(t, pid)
	goBefore, heapBefore := int(metric(t, f, "go_goroutines")), metric(t, f, "go_memstats_heap_inuse_bytes")
	var peak atomic.Int64
	peak.Store(int64(fdsBefore))
	sampled := make(chan struct{})
	stopSampling := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			select {
			case <-stopSampling:
				return
			case <-time.After(20 * time.Millisecond):
			}
			if fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid)); err == nil && int64(len(fds)) > peak.Load() {
				peak.Store(int64(len(fds)))
			}
		}
	}()

	// 3,000 streams opened and dropped, 8 at a time. A stream refused
	// because the deploy's quota is full (its dropped streams not yet
	// noticed) is tried again, for a minute at most.
	const workers = 8
	var (
		next, refusals atomic.Int64
		failed         atomic.Bool // a worker failed: the others stop too
		wg             sync.WaitGroup
		errs           = make(chan error, workers)
	)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				n := next.Add(1)
				if n > abandonedStreams || failed.Load() {
					return
				}
				path := follow
				if n%2 == 0 {
					path = events
				}
				deadline := time.Now().Add(60 * time.Second)
				for {
					s, err := openRawStream(f.base, path)
					if err != nil {
						failed.Store(true)
						errs <- fmt.Errorf("stream %d: %w", n, err)
						return
					}
					s.conn.Close()
					if s.status == http.StatusOK {
						break
					}
					if s.status != http.StatusServiceUnavailable {
						failed.Store(true)
						errs <- fmt.Errorf("stream %d: %d %s", n, s.status, s.body)
						return
					}
					refusals.Add(1)
					if failed.Load() {
						return
					}
					if time.Now().After(deadline) {
						failed.Store(true)
						errs <- fmt.Errorf("stream %d still refused after %d refusals: dropped streams are not let go: %s",
							n, refusals.Load(), s.body)
						return
					}
					time.Sleep(20 * time.Millisecond)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	// The server lets go of what the dropped streams held while the
	// deploy still runs: its open files, its goroutines (fasthttp keeps
	// idle workers for 10 s), its Go heap, and its resident memory. The
	// race detector's own memory grows with the goroutines a program ever
	// ran and is not given back, hence a wider margin for it.
	rssSlackKiB := 16 << 10
	if raceEnabled {
		rssSlackKiB = 64 << 10
	}
	const fdSlack, goSlack, heapSlack = 16, 10, 8 << 20
	var fdsAfter, rssAfter, goAfter int
	var heapAfter float64
	settled := time.Now().Add(90 * time.Second)
	for {
		fdsAfter, rssAfter = openFds(t, pid), rssKiB(t, pid)
		goAfter, heapAfter = int(metric(t, f, "go_goroutines")), metric(t, f, "go_memstats_heap_inuse_bytes")
		if fdsAfter <= fdsBefore+fdSlack && rssAfter <= rssBefore+rssSlackKiB && goAfter <= goBefore+goSlack &&
			heapAfter <= heapBefore+heapSlack {
			break
		}
		if time.Now().After(settled) {
			t.Fatalf("after %d dropped streams flakeship holds %d open files (%d before), %d goroutines (%d before), "+
				"%.1f MiB of heap (%.1f before), %d KiB resident (%d before)", abandonedStreams, fdsAfter, fdsBefore,
				goAfter, goBefore, heapAfter/(1<<20), heapBefore/(1<<20), rssAfter, rssBefore)
		}
		time.Sleep(200 * time.Millisecond)
	}
	close(stopSampling)
	<-sampled
	t.Logf("fds before %d, after %d abandoned streams %d (peak %d); RSS before %.1f MiB, after %.1f MiB; "+
		"Go heap in use %.1f MiB, %.1f MiB; goroutines %d, %d; %d refusals retried",
		fdsBefore, abandonedStreams, fdsAfter, peak.Load(), float64(rssBefore)/1024, float64(rssAfter)/1024,
		heapBefore/(1<<20), heapAfter/(1<<20), goBefore, goAfter, refusals.Load())
	if st := f.deploy(id).State; st != "building" {
		t.Fatalf("deploy %d is %s; the test wants it held in its build", id, st)
	}

	// The deploy's quota: 32 streams, the two kept ones among them.
	var held []*rawStream
	for i := range 30 {
		path := follow
		if i%2 == 0 {
			path = events
		}
		s, err := openRawStream(f.base, path)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, s)
		if s.status != http.StatusOK {
			t.Fatalf("stream %d of the quota: %d %s", i+3, s.status, s.body)
		}
	}
	for _, path := range []string{follow, events} {
		s, err := openRawStream(f.base, path)
		if err != nil {
			t.Fatal(err)
		}
		s.conn.Close()
		var body map[string]string
		want := fmt.Sprintf("deploy %d has 32 log streams open, the most it may have: try again later", id)
		if json.Unmarshal([]byte(s.body), &body) != nil || s.status != http.StatusServiceUnavailable ||
			s.header.Get("Retry-After") != "10" || body["error"] != want {
			t.Fatalf("stream 33 of %s: %d, Retry-After %q, %s; want 503, Retry-After 10, {\"error\":%q}",
				path, s.status, s.header.Get("Retry-After"), s.body, want)
		}
	}
	for _, s := range held {
		s.conn.Close()
	}

	if err := gate.Open(); err != nil {
		t.Fatal(err)
	}
	if got := f.waitEnd(id); got.State != "succeeded" || got.SHA != sha {
		t.Fatalf("the held deploy = %+v, want succeeded\n%s", got, a.deployLog(id))
	}
	whole := a.deployLog(id)
	if got := keptLog.wait(t, "kept log follow"); got != whole || !strings.Contains(got, "through the gate") {
		t.Errorf("the kept follow read:\n%s\nwant the whole log:\n%s", got, whole)
	}
	got := keptEvents.wait(t, "kept event stream")
	for _, want := range []string{
		"event: state\ndata: {\"state\":\"building\",\"terminal\":false}\n",
		"through the gate\n",
		"event: state\ndata: {\"state\":\"succeeded\",\"terminal\":true}\n\nevent: end\ndata: {\"state\":\"succeeded\",\"terminal\":true}\n\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("the kept event stream lacks %q:\n%s", want, got)
		}
	}
	if !strings.HasSuffix(got, "event: end\ndata: {\"state\":\"succeeded\",\"terminal\":true}\n\n") {
		t.Errorf("the kept event stream does not end with the end event:\n%s", got)
	}
	a.wantRunning(a.version)
}
