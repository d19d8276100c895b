package server

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/flakeship/flakeship/deploy"
	"github.com/flakeship/flakeship/forge"
	"github.com/flakeship/flakeship/internal/testenv"
)

// The load tests run the server over real connections on 127.0.0.1 with
// small limits. A client at another address is a connection whose remote
// address the listener reports as that address.

func TestLimitsForKeepsConnectionsBelowTheFileLimit(t *testing.T) {
	tests := []struct {
		name        string
		fileLimit   uint64
		maxParallel int
		want        Limits
	}{
		{name: "a test's 256", fileLimit: 256, maxParallel: 1,
			want: Limits{Conns: 120, ConnsPerClient: 15, Requests: 30, Streams: 20, Refusing: 20}},
		{name: "the usual soft limit", fileLimit: 1024, maxParallel: 1,
			want: Limits{Conns: 576, ConnsPerClient: 64, Requests: 144, Streams: 96, Refusing: 32}},
		{name: "more deploys keep more", fileLimit: 1024, maxParallel: 8,
			want: Limits{Conns: 528, ConnsPerClient: 64, Requests: 132, Streams: 88, Refusing: 32}},
		{name: "more deploys at 256", fileLimit: 256, maxParallel: 4,
			want: Limits{Conns: 48, ConnsPerClient: 6, Requests: 12, Streams: 8, Refusing: 8}},
		{name: "systemd's hard limit", fileLimit: 524288, maxParallel: 1,
			want: Limits{Conns: 4096, ConnsPerClient: 64, Requests: 256, Streams: 1024, Refusing: 32}},
		{name: "unlimited", fileLimit: ^uint64(0), maxParallel: 1,
			want: Limits{Conns: 4096, ConnsPerClient: 64, Requests: 256, Streams: 1024, Refusing: 32}},
		{name: "below the reserve", fileLimit: 64, maxParallel: 1,
			want: Limits{Conns: 16, ConnsPerClient: 4, Requests: 8, Streams: 1, Refusing: 1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := LimitsFor(tc.fileLimit, tc.maxParallel)
			if got != tc.want {
				t.Errorf("LimitsFor(%d, %d) = %+v, want %+v", tc.fileLimit, tc.maxParallel, got, tc.want)
			}
			// What connections can hold: one descriptor each, one more
			// per stream (its log), one per refusal being answered.
			held := uint64(got.Conns + got.Streams + got.Refusing)
			reserve := uint64(fdReserve + fdPerDeploy*tc.maxParallel)
			if tc.fileLimit >= 2*reserve && held+reserve > tc.fileLimit {
				t.Errorf("connections may hold %d descriptors, leaving %d of %d for the rest, want at least %d",
					held, tc.fileLimit-held, tc.fileLimit, reserve)
			}
		})
	}
}

func TestRetryAcceptPassesOnlyAClosedOrBrokenListener(t *testing.T) {
	accept := func(errno syscall.Errno) error {
		return &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", errno)}
	}
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{name: "out of descriptors", err: accept(syscall.EMFILE), want: true},
		{name: "system out of descriptors", err: accept(syscall.ENFILE), want: true},
		{name: "out of buffers", err: accept(syscall.ENOBUFS), want: true},
		{name: "out of memory", err: accept(syscall.ENOMEM), want: true},
		{name: "aborted by the client", err: accept(syscall.ECONNABORTED), want: true},
		{name: "refused by a firewall", err: accept(syscall.EPERM), want: true},
		{name: "closed", err: &net.OpError{Op: "accept", Net: "tcp", Err: net.ErrClosed}, want: false},
		{name: "not a socket", err: accept(syscall.ENOTSOCK), want: false},
		{name: "bad descriptor", err: accept(syscall.EBADF), want: false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := retryAccept(tc.err); got != tc.want {
				t.Errorf("retryAccept(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
}

func TestClientOfCountsIPv6By64AndNotLoopback(t *testing.T) {
	tests := []struct {
		addr string
		want string // "" for not counted
	}{
		{addr: "192.0.2.7:40000", want: "192.0.2.7"},
		{addr: "[::ffff:192.0.2.7]:40000", want: "192.0.2.7"},
		{addr: "[2001:db8:1:2:aaaa::1]:40000", want: "2001:db8:1:2::"},
		{addr: "[2001:db8:1:2:bbbb::9]:40000", want: "2001:db8:1:2::"},
		{addr: "[2001:db8:1:3::1]:40000", want: "2001:db8:1:3::"},
		{addr: "127.0.0.1:40000"},
		{addr: "127.0.0.2:40000"},
		{addr: "[::1]:40000"},
		{addr: "[::ffff:127.0.0.1]:40000"},
	}
	for _, tc := range tests {
		t.Run(tc.addr, func(t *testing.T) {
			ap := netip.MustParseAddrPort(tc.addr)
			got, ok := clientOf(net.TCPAddrFromAddrPort(ap))
			if tc.want == "" {
				if ok {
					t.Errorf("clientOf(%s) = %s, want not counted", tc.addr, got)
				}
				return
			}
			if !ok || got.String() != tc.want {
				t.Errorf("clientOf(%s) = %s, %v, want %s", tc.addr, got, ok, tc.want)
			}
		})
	}
}

// limitedServer is a Server under test with its address and log.
type limitedServer struct {
	srv  *Server
	addr string
	logs *testenv.Buffer
}

// startLimited serves New(opts) on 127.0.0.1:0, its listener passed through
// wrap if not nil, until the test ends; then it shuts the server down and
// checks that Listen returned. It returns once the server has answered,
// with no connection left open.
func startLimited(t *testing.T, opts Options, wrap func(net.Listener) net.Listener) *limitedServer {
	t.Helper()
	logs := &testenv.Buffer{}
	opts.Log = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if opts.Config == nil {
		opts.Config = testConfig(t)
	}
	if opts.Deployer == nil {
		opts.Deployer = &fakeDeployer{}
	}
	srv := New(opts)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ls := &limitedServer{srv: srv, addr: ln.Addr().String(), logs: logs}
	var served net.Listener = ln
	if wrap != nil {
		served = wrap(ln)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Listen(served) }()
	t.Cleanup(func() { shutdownAndWait(t, srv, done) })
	if status := ls.get(t, "/healthz"); status != http.StatusOK {
		t.Fatalf("healthz: %d", status)
	}
	ls.waitOpen(t, 0)
	return ls
}

// get sends GET path on a connection of its own and returns the status.
func (ls *limitedServer) get(t *testing.T, path string) int {
	t.Helper()
	client := &http.Client{Timeout: answerDeadline, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Get("http://" + ls.addr + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

// open returns the connections the server counts.
func (ls *limitedServer) open() int {
	l := ls.srv.conns.Load()
	if l == nil {
		return -1
	}
	n, _ := l.count()
	return n
}

// waitOpen waits until the server counts n connections.
func (ls *limitedServer) waitOpen(t *testing.T, n int) {
	t.Helper()
	waitUntil(t, answerDeadline, func() bool { return ls.open() == n },
		fmt.Sprintf("the server counts %d connections, want %d", ls.open(), n))
}

// dial opens a connection that the server has counted when it returns; it
// is closed when the test ends.
func (ls *limitedServer) dial(t *testing.T) net.Conn {
	t.Helper()
	before := ls.open()
	c, err := net.Dial("tcp", ls.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.SetDeadline(time.Now().Add(answerDeadline)); err != nil {
		t.Fatal(err)
	}
	ls.waitOpen(t, before+1)
	return c
}

// delivery returns a signed push of Codertocat/Hello-World to master as a
// raw HTTP request, with the given delivery id.
func delivery(t *testing.T, addr, id string) []byte {
	t.Helper()
	body := readFile(t, "github/push-new-branch.json")
	h := githubRequestHeader("push", body, githubSecret)
	h.Set("X-GitHub-Delivery", id)
	var req bytes.Buffer
	fmt.Fprintf(&req, "POST /hooks/github HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\nConnection: close\r\n", addr, len(body))
	for k := range h {
		fmt.Fprintf(&req, "%s: %s\r\n", k, h.Get(k))
	}
	req.WriteString("\r\n")
	req.Write(body)
	return req.Bytes()
}

// roundTrip writes req on c and reads the answer.
func roundTrip(t *testing.T, c net.Conn, req []byte) (*http.Response, string) {
	t.Helper()
	if _, err := c.Write(req); err != nil {
		t.Fatalf("write request: %v", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("read answer: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read answer: %v", err)
	}
	return resp, string(body)
}

// wantClosed checks that the server has closed c: a read ends at once
// with EOF or a reset, not with c's deadline.
func wantClosed(t *testing.T, c net.Conn, what string) {
	t.Helper()
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	if err == nil || (errors.As(err, &ne) && ne.Timeout()) {
		t.Errorf("%s: read %v, want the connection closed by the server", what, err)
	}
}

func TestAFullServerGivesTheLongestWaitingPlaceToANewDelivery(t *testing.T) {
	ls := startLimited(t, Options{Limits: Limits{Conns: 3, ConnsPerClient: 3, Requests: 8, Streams: 1, Refusing: 2}}, nil)
	idle := []net.Conn{ls.dial(t), ls.dial(t), ls.dial(t)}

	resp, body := roundTrip(t, ls.dialUncounted(t), delivery(t, ls.addr, "full-server-1"))
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("delivery to a full server: %d %s, want 202", resp.StatusCode, body)
	}
	wantClosed(t, idle[0], "the connection that waited longest")
	// The others still work.
	for i, c := range idle[1:] {
		resp, body := roundTrip(t, c, []byte("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"))
		if resp.StatusCode != http.StatusOK {
			t.Errorf("idle connection %d: healthz %d %s", i+1, resp.StatusCode, body)
		}
	}
	if !strings.Contains(ls.logs.String(), `msg="connection closed to make room: the connection cap is reached" limit=3 state=waiting count=1`) {
		t.Errorf("no log line for the connection closed:\n%s", ls.logs)
	}
}

func TestAFullServerGivesTheSlowestRequestsPlaceWhenNoneWaits(t *testing.T) {
	ls := startLimited(t, Options{Limits: Limits{Conns: 2, ConnsPerClient: 2, Requests: 8, Streams: 1, Refusing: 2}}, nil)
	// Two requests that never finish arriving.
	var slow []net.Conn
	for range 2 {
		c := ls.dial(t)
		if _, err := io.WriteString(c, "POST /hooks/github HTTP/1.1\r\nHost: x\r\n"); err != nil {
			t.Fatal(err)
		}
		slow = append(slow, c)
	}
	l := ls.srv.conns.Load()
	waitUntil(t, answerDeadline, func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		return l.reading.Len() == 2
	}, "the slow requests are not reading")

	resp, body := roundTrip(t, ls.dialUncounted(t), delivery(t, ls.addr, "full-server-2"))
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("delivery to a server full of slow requests: %d %s, want 202", resp.StatusCode, body)
	}
	wantClosed(t, slow[0], "the request arriving longest")
	// The delivery's connection closes after its answer; the other slow
	// request stays.
	ls.waitOpen(t, 1)
	if _, err := io.WriteString(slow[1], "Content-Length: 0\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	if resp, err := http.ReadResponse(bufio.NewReader(slow[1]), nil); err != nil {
		t.Errorf("the other slow request: %v", err)
	} else {
		resp.Body.Close()
	}
}

// dialUncounted opens a connection to a full server, which will count it
// by taking another's place or refuse it.
func (ls *limitedServer) dialUncounted(t *testing.T) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", ls.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.SetDeadline(time.Now().Add(answerDeadline)); err != nil {
		t.Fatal(err)
	}
	return c
}

// blockingDeployer holds every SubmitPush until release is closed.
type blockingDeployer struct {
	fakeDeployer
	entered chan struct{}
	release chan struct{}
}

func (b *blockingDeployer) SubmitPush(ctx context.Context, target string, ev forge.PushEvent) (*deploy.Deploy, bool, error) {
	b.entered <- struct{}{}
	select {
	case <-b.release:
	case <-ctx.Done():
		return nil, false, ctx.Err()
	}
	return b.fakeDeployer.SubmitPush(ctx, target, ev)
}

func TestAServerAnsweringEveryConnectionRefusesANewOne503(t *testing.T) {
	d := &blockingDeployer{entered: make(chan struct{}), release: make(chan struct{})}
	ls := startLimited(t, Options{Deployer: d, Limits: Limits{Conns: 2, ConnsPerClient: 2, Requests: 8, Streams: 1, Refusing: 2}}, nil)
	// Only the hello target deploys the push (the mirror's secret differs).
	answers := make(chan int, 2)
	for i := range 2 {
		c := ls.dial(t)
		req := delivery(t, ls.addr, fmt.Sprintf("busy-%d", i))
		go func() {
			c.Write(req)
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				answers <- 0
				return
			}
			resp.Body.Close()
			answers <- resp.StatusCode
		}()
		<-d.entered
	}

	resp, body := roundTrip(t, ls.dialUncounted(t), []byte("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"))
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") != "1" ||
		resp.Header.Get("Content-Type") != "application/json" || !resp.Close {
		t.Errorf("answer beyond the cap: %d %v", resp.StatusCode, resp.Header)
	}
	if want := `{"error":"flakeship is busy: too many connections at once, try again shortly"}`; body != want {
		t.Errorf("body %s, want %s", body, want)
	}
	close(d.release)
	for range 2 {
		if status := <-answers; status != http.StatusAccepted {
			t.Errorf("a held delivery was answered %d, want 202", status)
		}
	}
}

// fromListener reports every connection as coming from remote.
type fromListener struct {
	net.Listener
	remote net.Addr
}

func (l fromListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return fromConn{TCPConn: c.(*net.TCPConn), remote: l.remote}, nil
}

type fromConn struct {
	*net.TCPConn
	remote net.Addr
}

func (c fromConn) RemoteAddr() net.Addr { return c.remote }

func TestConnectionsOfOneClientAreCapped429(t *testing.T) {
	remote := &net.TCPAddr{IP: net.ParseIP("203.0.113.7"), Port: 40000}
	ls := startLimited(t, Options{Limits: Limits{Conns: 8, ConnsPerClient: 2, Requests: 8, Streams: 1, Refusing: 2}},
		func(ln net.Listener) net.Listener { return fromListener{Listener: ln, remote: remote} })
	first, _ := ls.dial(t), ls.dial(t)

	resp, body := roundTrip(t, ls.dialUncounted(t), []byte("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"))
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") != "1" ||
		resp.Header.Get("Content-Type") != "application/json" || !resp.Close {
		t.Errorf("answer beyond the per-client cap: %d %v", resp.StatusCode, resp.Header)
	}
	if want := `{"error":"too many connections from this address (at most 2 at once): close some and try again"}`; body != want {
		t.Errorf("body %s, want %s", body, want)
	}
	if _, clients := ls.srv.conns.Load().count(); clients[netip.MustParseAddr("203.0.113.7")] != 2 {
		t.Errorf("per-client counts %v, want 2 for 203.0.113.7", clients)
	}
	if !strings.Contains(ls.logs.String(), `msg="connection refused: too many from one client" client=203.0.113.7 limit=2 count=1`) {
		t.Errorf("no log line for the refusal:\n%s", ls.logs)
	}

	// Once the client closes one, it may open another.
	first.Close()
	ls.waitOpen(t, 1)
	if status := ls.get(t, "/healthz"); status != http.StatusOK {
		t.Errorf("healthz after closing one: %d", status)
	}
}

func TestLoopbackClientsAreNotCappedPerClient(t *testing.T) {
	ls := startLimited(t, Options{Limits: Limits{Conns: 8, ConnsPerClient: 1, Requests: 8, Streams: 1, Refusing: 2}}, nil)
	ls.dial(t)
	ls.dial(t)
	ls.dial(t)
	if status := ls.get(t, "/healthz"); status != http.StatusOK {
		t.Errorf("healthz from loopback with 3 connections open: %d", status)
	}
}

// failingListener fails its first fails accepts as a process out of file
// descriptors does; fails < 0 fails them all.
type failingListener struct {
	net.Listener
	mu    sync.Mutex
	fails int
}

func (l *failingListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	fail := l.fails != 0
	if l.fails > 0 {
		l.fails--
	}
	l.mu.Unlock()
	if fail {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	}
	return l.Listener.Accept()
}

func TestAcceptOutOfFilesWaitsAndGoesOn(t *testing.T) {
	ls := startLimited(t, Options{}, func(ln net.Listener) net.Listener { return &failingListener{Listener: ln, fails: 6} })
	// startLimited's healthz was answered after the six failures.
	if status := ls.get(t, "/healthz"); status != http.StatusOK {
		t.Errorf("healthz: %d", status)
	}
	lines := strings.Count(ls.logs.String(), `msg="accepting connections fails; retrying"`)
	if lines != 1 {
		t.Errorf("%d log lines for six failed accepts, want 1:\n%s", lines, ls.logs)
	}
	if !strings.Contains(ls.logs.String(), "accept4: too many open files") {
		t.Errorf("the log does not say why accepting failed:\n%s", ls.logs)
	}
}

func TestShutdownEndsTheWaitAfterAFailedAccept(t *testing.T) {
	srv := New(Options{Config: testConfig(t), Deployer: &fakeDeployer{}})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Listen(&failingListener{Listener: ln, fails: -1}) }()
	waitUntil(t, answerDeadline, func() bool { return srv.conns.Load() != nil }, "Listen never started")
	shutdownAndWait(t, srv, done)
}

// holdingOperator is an Operator whose Targets waits until release is
// closed and whose followed logs run until the server stops them; the rest
// answers little.
type holdingOperator struct {
	entered chan struct{}
	release chan struct{}
}

func (o *holdingOperator) Get(ctx context.Context, id int64) (*deploy.Deploy, error) {
	return &deploy.Deploy{ID: id, Target: "hello", State: deploy.Building}, nil
}

func (o *holdingOperator) List(ctx context.Context, f deploy.Filter) ([]*deploy.Deploy, error) {
	return nil, nil
}

func (o *holdingOperator) Deploy(ctx context.Context, target string, req deploy.ManualRequest) (*deploy.Deploy, error) {
	return nil, deploy.ErrClosed
}

func (o *holdingOperator) Rollback(ctx context.Context, target string) (*deploy.Deploy, error) {
	return nil, deploy.ErrClosed
}

func (o *holdingOperator) Cancel(ctx context.Context, id int64) error { return deploy.ErrClosed }

func (o *holdingOperator) Targets(ctx context.Context) ([]deploy.TargetStatus, error) {
	o.entered <- struct{}{}
	select {
	case <-o.release:
	case <-ctx.Done():
	}
	return nil, nil
}

func (o *holdingOperator) WriteLog(ctx context.Context, id int64, w io.Writer, follow bool) error {
	if _, err := io.WriteString(w, "building\n"); err != nil {
		return err
	}
	if f, ok := w.(interface{ Flush() error }); ok {
		if err := f.Flush(); err != nil {
			return err
		}
	}
	if follow {
		<-ctx.Done()
	}
	return nil
}

func TestBusyPagesAndStreamsLeaveRoomForDeliveries(t *testing.T) {
	op := &holdingOperator{entered: make(chan struct{}), release: make(chan struct{})}
	ls := startLimited(t, Options{Operator: op, Limits: Limits{Conns: 16, ConnsPerClient: 16, Requests: 1, Streams: 1, Refusing: 2}}, nil)

	// One log stream running (its request is handled once it runs), one
	// API request being handled.
	stream, err := http.Get("http://" + ls.addr + "/api/deploys/1/log?follow=1")
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Body.Close()
	if line, err := bufio.NewReader(stream.Body).ReadString('\n'); err != nil || line != "building\n" {
		t.Fatalf("followed log: %q, %v", line, err)
	}
	held := make(chan int, 1)
	go func() {
		resp, err := http.Get("http://" + ls.addr + "/api/targets")
		if err != nil {
			held <- 0
			return
		}
		resp.Body.Close()
		held <- resp.StatusCode
	}()
	<-op.entered

	busy := []struct {
		path, want, contentType string
		retryAfter              string // "" means "1"
	}{
		{path: "/api/deploys", contentType: "application/json",
			want: `{"error":"flakeship is busy: too many requests at once, try again shortly"}`},
		{path: "/", contentType: "application/json",
			want: `{"error":"flakeship is busy: too many requests at once, try again shortly"}`},
		{path: "/api/deploys/1/log?follow=1", contentType: "application/json", retryAfter: "10",
			want: `{"error":"flakeship has 1 log streams open, the most it serves: try again later"}`},
	}
	for _, b := range busy {
		if b.path == "/api/deploys/1/log?follow=1" {
			// A stream is refused by the stream limit, not the request
			// limit: let the held request go first.
			close(op.release)
			if status := <-held; status != http.StatusOK {
				t.Fatalf("held request: %d", status)
			}
		}
		c := ls.dialUncounted(t)
		retryAfter := b.retryAfter
		if retryAfter == "" {
			retryAfter = "1"
		}
		resp, body := roundTrip(t, c, []byte("GET "+b.path+" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"))
		if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") != retryAfter ||
			!strings.HasPrefix(resp.Header.Get("Content-Type"), b.contentType) || body != b.want {
			t.Errorf("GET %s: %d %v %s, want 503 with Retry-After and %s", b.path, resp.StatusCode, resp.Header, body, b.want)
		}
		if b.path == "/" {
			// Deliveries and /healthz are not counted while pages are.
			resp, body := roundTrip(t, ls.dialUncounted(t), delivery(t, ls.addr, "busy-pages"))
			if resp.StatusCode != http.StatusAccepted {
				t.Errorf("delivery while the pages are busy: %d %s, want 202", resp.StatusCode, body)
			}
			if status := ls.get(t, "/healthz"); status != http.StatusOK {
				t.Errorf("healthz while the pages are busy: %d", status)
			}
		}
	}
	// The page's event stream is refused too.
	c := ls.dialUncounted(t)
	resp, body := roundTrip(t, c, []byte("GET /deploys/1/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"))
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") != "10" ||
		body != `{"error":"flakeship has 1 log streams open, the most it serves: try again later"}` {
		t.Errorf("event stream beyond the limit: %d %v %q", resp.StatusCode, resp.Header, body)
	}
}

// rawAnswer writes head (and then body, unless the server answers first)
// on a new connection and returns the answer.
func rawAnswer(t *testing.T, addr, head string, body io.Reader) (int, string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(answerDeadline)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(c, head); err != nil {
		t.Fatal(err)
	}
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		if body != nil {
			// An error means the server has answered and closed.
			io.Copy(c, body)
		}
	}()
	defer func() { c.Close(); <-sent }()
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no answer: %v", err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(raw)
}

// chunks is a chunked body of n chunks of 8 KiB, never ending if n < 0.
type chunks struct{ n int }

func (ch *chunks) Read(p []byte) (int, error) {
	if ch.n == 0 {
		return 0, io.EOF
	}
	ch.n--
	chunk := fmt.Sprintf("%x\r\n%s\r\n", 8<<10, strings.Repeat("x", 8<<10))
	if len(p) < len(chunk) {
		return 0, io.ErrShortBuffer
	}
	return copy(p, chunk), nil
}

func TestOnlyWebhooksTakeBodiesOverOneMiB(t *testing.T) {
	cfg := testConfig(t)
	cfg.BodyLimit = 4 << 20
	op := &holdingOperator{entered: make(chan struct{}, 16), release: make(chan struct{})}
	close(op.release)
	d := &fakeDeployer{}
	ls := startLimited(t, Options{Config: cfg, Deployer: d, Operator: op}, nil)

	push := readFile(t, "github/push-new-branch.json")
	padded := append(bytes.Clone(push), bytes.Repeat([]byte(" "), 2<<20)...)
	signed := githubRequestHeader("push", padded, githubSecret)
	hookHead := func(length string) string {
		var b strings.Builder
		fmt.Fprintf(&b, "POST /hooks/github HTTP/1.1\r\nHost: x\r\n%s\r\n", length)
		for k := range signed {
			fmt.Fprintf(&b, "%s: %s\r\n", k, signed.Get(k))
		}
		return b.String() + "\r\n"
	}
	const (
		other   = `{"error":"body exceeds 1048576 bytes"}`
		hooks   = `{"error":"body exceeds 4194304 bytes"}`
		chunked = `{"error":"body exceeds the limit: 4194304 bytes for a webhook, 1048576 for any other request"}`
	)
	tests := []struct {
		name       string
		head       string
		body       io.Reader
		wantStatus int
		want       string
	}{
		// Headers only: the answer comes from Content-Length alone.
		{name: "login form of 26 MB", head: "POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 26000000\r\n\r\n",
			wantStatus: 413, want: other},
		{name: "API write of 1 MiB and a byte", head: "POST /api/targets/hello/deploy HTTP/1.1\r\nHost: x\r\nContent-Length: 1048577\r\n\r\n",
			wantStatus: 413, want: other},
		{name: "page with a body", head: "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n",
			wantStatus: 413, want: other},
		{name: "unknown path", head: "POST /nowhere HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n",
			wantStatus: 413, want: other},
		{name: "hook path spelt otherwise, absolute form", head: "POST http://x/Hooks/GitHub// HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n\r\n",
			wantStatus: 413, want: hooks},
		{name: "webhook over its limit", head: hookHead("Content-Length: 5000000"),
			wantStatus: 413, want: hooks},
		// A chunked body is cut off at the limit.
		{name: "chunked login form of 2 MiB", head: "POST /login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
			body: io.MultiReader(&chunks{n: 256}, strings.NewReader("0\r\n\r\n")), wantStatus: 413, want: chunked},
		{name: "chunked webhook over its limit", head: hookHead("Transfer-Encoding: chunked"),
			body: &chunks{n: -1}, wantStatus: 413, want: chunked},
		// A webhook's body up to its limit is read.
		{name: "webhook of 2 MiB", head: hookHead(fmt.Sprintf("Content-Length: %d", len(padded))),
			body: bytes.NewReader(padded), wantStatus: 202},
		// The same delivery, chunked: read, verified, and found a duplicate.
		{name: "chunked webhook of 2 MiB", head: hookHead("Transfer-Encoding: chunked"),
			body: strings.NewReader(fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(padded), padded)), wantStatus: 200},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, body := rawAnswer(t, ls.addr, tc.head, tc.body)
			if status != tc.wantStatus || (tc.want != "" && body != tc.want) {
				t.Errorf("answer %d %s, want %d %s", status, body, tc.wantStatus, tc.want)
			}
		})
	}
	if n := len(d.Calls()); n != 2 {
		t.Errorf("%d deploys submitted, want the two of the 2 MiB webhooks", n)
	}
}

func TestReclaimerFreesOnceEnoughIsDroppedAndStops(t *testing.T) {
	freed := make(chan struct{}, 16)
	r := newReclaimer()
	r.after, r.gap = 100, time.Millisecond
	r.free = func() { freed <- struct{}{} }

	r.dropped(60)
	r.dropped(39)
	select {
	case <-freed:
		t.Fatal("freed before enough was dropped")
	default:
	}
	r.dropped(1)
	select {
	case <-freed:
	case <-time.After(answerDeadline):
		t.Fatal("nothing freed after 100 bytes dropped")
	}
	ctx, cancel := context.WithTimeout(context.Background(), answerDeadline)
	defer cancel()
	if err := r.shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	r.dropped(1000)
	r.mu.Lock()
	running := r.running
	r.mu.Unlock()
	if running {
		t.Error("a reclaim started after shutdown")
	}
}
