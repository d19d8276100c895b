package main

import (
	"context"
	"go/ast"
	"go/parser"
	"go/printer"
	"go/token"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// builderDir is flakeship's builder package, seen from this one.
var builderDir = filepath.Join("..", "..", "builder")

// TestScheduleIsFlakeships reads builder's source, where flakeship's verify
// step polls a health URL, and holds healthwait to the same schedule and
// client: the same first delay, cap and doubling, the first request at once,
// the same per-request limit, no keep-alive and no proxy. Change either
// side alone and this fails.
func TestScheduleIsFlakeships(t *testing.T) {
	fset := token.NewFileSet()
	pkgFiles := map[string]*ast.File{}
	for _, name := range []string{"switch.go", "health.go"} {
		f, err := parser.ParseFile(fset, filepath.Join(builderDir, name), nil, 0)
		if err != nil {
			t.Fatalf("parse builder's %s: %v", name, err)
		}
		pkgFiles[name] = f
	}
	consts := map[string]time.Duration{}
	for _, f := range pkgFiles {
		for name, v := range durationConsts(t, f) {
			consts[name] = v
		}
	}
	for _, c := range []struct {
		builder string
		ours    time.Duration
	}{
		{"pollMin", pollMin},
		{"pollMax", pollMax},
		{"healthTryTimeout", tryTimeout},
	} {
		got, ok := consts[c.builder]
		if !ok {
			t.Errorf("builder has no duration constant %s any more: update healthwait and this test", c.builder)
			continue
		}
		t.Logf("builder.%s = %s, healthwait's = %s", c.builder, got, c.ours)
		if got != c.ours {
			t.Errorf("builder.%s = %s, healthwait's = %s: the floor no longer polls as flakeship does", c.builder, got, c.ours)
		}
	}

	// The verify loop: first request at once, then the delay doubles up
	// to pollMax after each.
	// healthwait's loop is read the same way.
	ours, err := parser.ParseFile(fset, "main.go", nil, 0)
	if err != nil {
		t.Fatalf("parse healthwait: %v", err)
	}
	verify := source(t, fset, funcDecl(t, pkgFiles["switch.go"], "verify"))
	wait := source(t, fset, funcDecl(t, ours, "wait"))
	for _, want := range []string{"time.NewTimer(0)", "delay := pollMin"} {
		if !strings.Contains(verify, want) {
			t.Errorf("builder's verify has no %q: its schedule changed; update healthwait and this test\n%s", want, verify)
		}
		if !strings.Contains(wait, want) {
			t.Errorf("healthwait's wait has no %q: it no longer polls as flakeship does\n%s", want, wait)
		}
	}
	if want := "delay = min(2*delay, pollMax)"; !strings.Contains(verify, want) {
		t.Errorf("builder's verify has no %q: its schedule changed; update healthwait and this test\n%s", want, verify)
	}
	if want := "delay = nextDelay(delay)"; !strings.Contains(wait, want) {
		t.Errorf("healthwait's wait has no %q: it no longer polls as flakeship does\n%s", want, wait)
	}
	for d, i := pollMin, 0; i < 10; i++ {
		want := min(2*d, pollMax)
		if got := nextDelay(d); got != want {
			t.Errorf("nextDelay(%s) = %s, want %s", d, got, want)
		}
		d = want
	}

	// The client: a fresh connection each time, straight to the URL.
	client := source(t, fset, funcDecl(t, pkgFiles["health.go"], "newHealthClient"))
	for _, want := range []string{"Proxy: nil,", "DisableKeepAlives: true,", "Timeout: healthTryTimeout,"} {
		if !strings.Contains(client, want) {
			t.Errorf("builder's newHealthClient has no %q: its client changed; update healthwait and this test\n%s", want, client)
		}
	}
	tr := newClient().Transport.(*http.Transport)
	if !tr.DisableKeepAlives || tr.Proxy != nil || newClient().Timeout != tryTimeout {
		t.Errorf("healthwait's client: DisableKeepAlives %v, a proxy %v, timeout %s; want true, none, %s",
			tr.DisableKeepAlives, tr.Proxy != nil, newClient().Timeout, tryTimeout)
	}
}

// durationConsts evaluates the constants of f written as N * time.Unit or
// time.Unit.
func durationConsts(t *testing.T, f *ast.File) map[string]time.Duration {
	t.Helper()
	units := map[string]time.Duration{"Nanosecond": time.Nanosecond, "Microsecond": time.Microsecond,
		"Millisecond": time.Millisecond, "Second": time.Second, "Minute": time.Minute, "Hour": time.Hour}
	var eval func(ast.Expr) (time.Duration, bool)
	eval = func(e ast.Expr) (time.Duration, bool) {
		switch e := e.(type) {
		case *ast.ParenExpr:
			return eval(e.X)
		case *ast.BasicLit:
			n, err := strconv.ParseInt(e.Value, 0, 64)
			return time.Duration(n), err == nil
		case *ast.SelectorExpr:
			if x, ok := e.X.(*ast.Ident); ok && x.Name == "time" {
				u, ok := units[e.Sel.Name]
				return u, ok
			}
		case *ast.BinaryExpr:
			if e.Op != token.MUL {
				return 0, false
			}
			a, ok1 := eval(e.X)
			b, ok2 := eval(e.Y)
			return a * b, ok1 && ok2
		}
		return 0, false
	}
	out := map[string]time.Duration{}
	for _, decl := range f.Decls {
		g, ok := decl.(*ast.GenDecl)
		if !ok || g.Tok != token.CONST {
			continue
		}
		for _, spec := range g.Specs {
			vs := spec.(*ast.ValueSpec)
			for i, name := range vs.Names {
				if i < len(vs.Values) {
					if v, ok := eval(vs.Values[i]); ok {
						out[name.Name] = v
					}
				}
			}
		}
	}
	return out
}

// funcDecl finds the function or method name in f.
func funcDecl(t *testing.T, f *ast.File, name string) *ast.FuncDecl {
	t.Helper()
	for _, decl := range f.Decls {
		if fd, ok := decl.(*ast.FuncDecl); ok && fd.Name.Name == name {
			return fd
		}
	}
	t.Fatalf("builder has no func %s any more: update healthwait and this test", name)
	return nil
}

// source prints n with each run of white space as one space.
func source(t *testing.T, fset *token.FileSet, n ast.Node) string {
	t.Helper()
	var b strings.Builder
	if err := printer.Fprint(&b, fset, n); err != nil {
		t.Fatal(err)
	}
	return strings.Join(strings.Fields(b.String()), " ")
}

// health is a health URL on 127.0.0.1 that fails its first requests, and
// counts requests and the connections they came on.
type health struct {
	url string

	mu        sync.Mutex
	failFirst int // answer 503 to this many requests, then 200
	requests  int
	conns     int
}

func newHealth(t *testing.T, failFirst int) *health {
	t.Helper()
	h := &health{failFirst: failFirst}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.mu.Lock()
		defer h.mu.Unlock()
		h.requests++
		if h.requests <= h.failFirst {
			http.Error(w, "not yet", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok"))
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			h.mu.Lock()
			h.conns++
			h.mu.Unlock()
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	h.url = srv.URL + "/healthz"
	return h
}

func (h *health) counts() (requests, conns int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.requests, h.conns
}

// TestWaitsUntilTheURLAnswers2xx: a URL that fails three times and then
// answers is asked exactly four times, each on a connection of its own, as
// flakeship asks it.
func TestWaitsUntilTheURLAnswers2xx(t *testing.T) {
	h := newHealth(t, 3)
	tries, err := wait(context.Background(), h.url, time.Minute)
	if err != nil {
		t.Fatalf("wait: %v", err)
	}
	requests, conns := h.counts()
	t.Logf("%d tries, %d requests on %d connections", tries, requests, conns)
	if tries != 4 || requests != 4 {
		t.Errorf("tries = %d, requests = %d, want 4 and 4", tries, requests)
	}
	if conns != requests {
		t.Errorf("%d requests came on %d connections, want one each (no keep-alive)", requests, conns)
	}
}

// TestGivesUpWithTheLastAnswer: a URL that never answers 2xx ends the wait
// with an error naming what it answered.
func TestGivesUpWithTheLastAnswer(t *testing.T) {
	h := newHealth(t, 1<<30)
	_, err := wait(context.Background(), h.url, 200*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "503") {
		t.Fatalf("wait = %v, want an error naming the 503", err)
	}
	if requests, _ := h.counts(); requests < 1 {
		t.Errorf("%d requests, want at least one", requests)
	}
}
