package server

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/flakeship/flakeship/deploy"
	"github.com/flakeship/flakeship/internal/testenv"
)

// The stream tests hold a deploy in its build at a testenv.Gate: it writes
// nothing and changes nothing until the test opens the gate, which is when
// a stream whose client left would linger.

// hangUpDeadline bounds the wait for a stream to end after its client hung
// up. The claim is about a second (it takes milliseconds); before, a quiet
// deploy's follow lingered until the deploy ended and an event stream until
// a heartbeat failed, 15 to 30 s. It stays below the test build's 1 minute
// BUILD_TIMEOUT, which would end the held deploy and its streams with it.
const hangUpDeadline = 10 * time.Second

// heldDeploy queues a deploy whose build waits at gate, and waits until it
// does.
func (r *pageRig) heldDeploy(gate *testenv.Gate) int64 {
	r.t.Helper()
	return r.hold(r.commit(gate.Script() + "; echo built > $out"))
}

// hold queues a deploy of sha, whose build waits at a gate, and waits
// until its log says it does.
func (r *pageRig) hold(sha string) int64 {
	r.t.Helper()
	id := r.submit(sha, "held at the gate")
	watchDeploy(r.t, r.queue, id).untilLine(r.t, "waiting at the gate")
	return id
}

// stream is a log stream opened on a connection of its own.
type stream struct {
	conn net.Conn
	resp *http.Response
	body string // what was read of the body so far
}

// openStream sends GET path on a new connection, reads the answer's head
// and, for a 200, the first piece of its body. The connection is closed
// when the test ends, if not before.
func (r *pageRig) openStream(path string) *stream {
	r.t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(r.url, "http://"))
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(pageDeadline))
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", path, strings.TrimPrefix(r.url, "http://"))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		r.t.Fatalf("GET %s: %v", path, err)
	}
	s := &stream{conn: conn, resp: resp}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		s.body = string(b)
		return s
	}
	buf := make([]byte, 4096)
	n, err := resp.Body.Read(buf)
	if n == 0 {
		r.t.Fatalf("GET %s: no body: %v", path, err)
	}
	s.body = string(buf[:n])
	return s
}

// rest reads the stream to its end and returns all of its body.
func (s *stream) rest(t *testing.T) string {
	t.Helper()
	b, err := io.ReadAll(s.resp.Body)
	if err != nil {
		t.Fatalf("the stream broke: %v; read so far:\n%s%s", err, s.body, b)
	}
	s.body += string(b)
	return s.body
}

func TestLogStreamsEndAsSoonAsTheirClientHangsUp(t *testing.T) {
	t.Parallel()
	r := newPageRig(t, pageRigOptions{noSandbox: true})
	gate := testenv.NewGate(t)
	id := r.heldDeploy(gate)
	follow, events := fmt.Sprintf("/api/deploys/%d/log?follow=1", id), fmt.Sprintf("/deploys/%d/events", id)

	for _, path := range []string{follow, events} {
		s := r.openStream(path)
		if s.resp.StatusCode != http.StatusOK || !s.resp.Close {
			t.Fatalf("GET %s: %d %v %q", path, s.resp.StatusCode, s.resp.Header, s.body)
		}
		waitUntil(t, pageDeadline, func() bool { return r.srv.streams.count() == 1 }, "the stream never started")
		s.conn.Close()
		left := time.Now()
		// The deploy is silent: only a watch on the connection notices.
		waitUntil(t, hangUpDeadline, func() bool { return r.srv.streams.count() == 0 },
			fmt.Sprintf("the stream of %s outlived its client\n%s", path, r.logs.String()))
		t.Logf("the stream of %s ended %s after its client hung up", path, time.Since(left).Round(time.Millisecond))
	}
	for _, want := range []string{"log stream ended: the client went away", "event stream ended: the client went away"} {
		if !strings.Contains(r.logs.String(), want) {
			t.Errorf("the log lacks %q:\n%s", want, r.logs.String())
		}
	}
	if d, _ := r.queue.Get(t.Context(), id); d.State != deploy.Building {
		t.Fatalf("deploy %d is %s; the test wants it held in its build", id, d.State)
	}

	// Streams whose clients stay get what the deploy does when it goes on,
	// and end with it.
	api, sse := r.openStream(follow), r.openStream(events)
	if err := gate.Open(); err != nil {
		t.Fatal(err)
	}
	if d := r.waitEnd(id); d.State != deploy.Succeeded {
		t.Fatalf("deploy %d ended %s: %s", id, d.State, d.Error)
	}
	whole := r.deployLog(id)
	if got := api.rest(t); got != whole || !strings.Contains(got, "through the gate") {
		t.Errorf("the followed log:\n%s\nwant the whole log:\n%s", got, whole)
	}
	evs := make(chan sseEvent, 1024)
	readEvents(strings.NewReader(sse.rest(t)), evs)
	var names, states []string
	var lines strings.Builder
	for ev := range evs {
		names = append(names, ev.name)
		switch ev.name {
		case "state":
			states = append(states, ev.data)
		case "log":
			lines.WriteString(ev.data + "\n")
		}
	}
	if lines.String() != whole {
		t.Errorf("the log events:\n%s\nwant the whole log:\n%s", lines.String(), whole)
	}
	if states[0] != `{"state":"building","terminal":false}` || states[len(states)-1] != `{"state":"succeeded","terminal":true}` ||
		names[len(names)-1] != "end" {
		t.Errorf("events %v with states %v: want building first, succeeded last, then end", names, states)
	}
	waitUntil(t, pageDeadline, func() bool { return r.srv.streams.count() == 0 }, "streams still run after their deploy ended")
}

func TestLogStreamsAreBoundedPerDeployAndInAll(t *testing.T) {
	t.Parallel()
	r := newPageRig(t, pageRigOptions{noSandbox: true, streamsPerDeploy: 2, streams: 3})
	gate := testenv.NewGate(t)
	running := r.heldDeploy(gate)
	waiting := r.submit(r.commit(quick), "queued behind the held one")
	follow := func(id int64) string { return fmt.Sprintf("/api/deploys/%d/log?follow=1", id) }
	events := func(id int64) string { return fmt.Sprintf("/deploys/%d/events", id) }
	refused := func(path, msg string) {
		t.Helper()
		s := r.openStream(path)
		var body map[string]string
		if err := json.Unmarshal([]byte(s.body), &body); err != nil || s.resp.StatusCode != http.StatusServiceUnavailable ||
			s.resp.Header.Get("Retry-After") != "10" || body["error"] != msg {
			t.Fatalf("GET %s: %d, Retry-After %q, %s; want 503, Retry-After 10 and error %q",
				path, s.resp.StatusCode, s.resp.Header.Get("Retry-After"), s.body, msg)
		}
	}
	opened := func(path string) *stream {
		t.Helper()
		s := r.openStream(path)
		if s.resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %d %s", path, s.resp.StatusCode, s.body)
		}
		return s
	}

	first := opened(follow(running))
	opened(events(running))
	refused(follow(running), fmt.Sprintf("deploy %d has 2 log streams open, the most it may have: try again later", running))
	refused(events(running), fmt.Sprintf("deploy %d has 2 log streams open, the most it may have: try again later", running))
	// The log as it is now is no stream that follows: it is not counted.
	if a := r.get(fmt.Sprintf("/api/deploys/%d/log", running), ""); a.status != http.StatusOK || !strings.Contains(a.body, "waiting at the gate") {
		t.Errorf("the log of the held deploy: %d %s", a.status, a.body)
	}
	opened(events(waiting))
	refused(events(waiting), "flakeship has 3 log streams open, the most it serves: try again later")

	// A stream that ends makes room at once.
	first.conn.Close()
	waitUntil(t, pageDeadline, func() bool { return r.srv.streams.count() == 2 }, "the closed stream still counts")
	opened(follow(running))

	if err := gate.Open(); err != nil {
		t.Fatal(err)
	}
	for _, id := range []int64{running, waiting} {
		if d := r.waitEnd(id); d.State != deploy.Succeeded {
			t.Errorf("deploy %d ended %s: %s", id, d.State, d.Error)
		}
	}
	waitUntil(t, pageDeadline, func() bool { return r.srv.streams.count() == 0 }, "streams still run after their deploys ended")
}
