// Package gittest gives tests real git repositories served over smart HTTP:
// the git CLI makes the commits, and `git http-backend`, run through
// net/http/cgi inside the test process, serves them on 127.0.0.1, with or
// without basic auth. Everything lives in t.TempDir() and stops in t.Cleanup.
//
// Every helper takes the test and calls t.Fatalf when git fails, so call them
// from the test's goroutine.
package gittest

import (
	"crypto/subtle"
	"net/http"
	"net/http/cgi"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flakeship/flakeship/internal/testenv"
)

// AuthorName and AuthorEmail make the author and committer of every commit a
// Repo makes.
const (
	AuthorName  = "flakeship test"
	AuthorEmail = "test@flakeship.invalid"
)

// epoch is the date of a Repo's first commit; each later commit is one minute
// later, so commits differ even when their trees and messages are equal, and a
// test's hashes are the same on every run.
var epoch = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

// repoNameRE keeps repository names to one safe path element.
var repoNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

// Server serves the bare repositories under its project root with
// `git http-backend` over smart HTTP on 127.0.0.1.
type Server struct {
	root     string // GIT_PROJECT_ROOT: holds <name>.git
	home     string // HOME for every git command, so no user config applies
	user     string // basic-auth user, "" for no auth
	pass     string
	srv      *httptest.Server
	requests atomic.Int64
	failing  atomic.Int64 // status every request gets, 0 for normal service
	delay    atomic.Int64 // time.Duration each request waits before its answer
	hold     atomic.Pointer[Hold]
}

// Option configures a Server.
type Option func(*Server)

// WithBasicAuth makes the server answer 401 with a WWW-Authenticate challenge
// to every request that lacks these basic-auth credentials.
func WithBasicAuth(user, pass string) Option {
	return func(s *Server) { s.user, s.pass = user, pass }
}

// NewServer starts a git smart-HTTP server on 127.0.0.1. It is closed in
// t.Cleanup. It needs the git CLI: without it t skips, or fails when
// FLAKESHIP_TEST_REQUIRE lists git (see testenv.Require).
func NewServer(t testing.TB, opts ...Option) *Server {
	t.Helper()
	testenv.Require(t, "git")
	s := &Server{root: t.TempDir(), home: t.TempDir()}
	for _, o := range opts {
		o(s)
	}
	execPath := strings.TrimSpace(runGit(t, s.home, "", "--exec-path"))
	backend := filepath.Join(execPath, "git-http-backend")
	if _, err := os.Stat(backend); err != nil {
		t.Fatalf("gittest: git http-backend not found: %v", err)
	}
	cgiHandler := &cgi.Handler{
		Path: backend,
		Env: []string{
			"HOME=" + s.home,
			"GIT_CONFIG_NOSYSTEM=1",
			"GIT_PROJECT_ROOT=" + s.root,
			"GIT_HTTP_EXPORT_ALL=1",
		},
		InheritEnv: []string{"PATH"},
		Stderr:     &testLogWriter{t: t},
	}
	// httptest listens on 127.0.0.1:0.
	s.srv = httptest.NewServer(s.handler(cgiHandler))
	t.Cleanup(s.srv.Close)
	return s
}

func (s *Server) handler(backend http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.requests.Add(1)
		if h := s.hold.Load(); h != nil && !h.wait(r) {
			return // the client went away: nothing to answer
		}
		if d := time.Duration(s.delay.Load()); d > 0 {
			timer := time.NewTimer(d)
			select {
			case <-timer.C:
			case <-r.Context().Done():
				// The client went away: nothing to answer.
				timer.Stop()
				return
			}
		}
		if code := s.failing.Load(); code != 0 {
			http.Error(w, "gittest: failing on purpose", int(code))
			return
		}
		if s.user != "" && !s.authorized(r) {
			w.Header().Set("WWW-Authenticate", `Basic realm="gittest"`)
			http.Error(w, "gittest: authentication required", http.StatusUnauthorized)
			return
		}
		backend.ServeHTTP(w, r)
	})
}

func (s *Server) authorized(r *http.Request) bool {
	user, pass, ok := r.BasicAuth()
	if !ok {
		return false
	}
	userOK := subtle.ConstantTimeCompare([]byte(user), []byte(s.user)) == 1
	passOK := subtle.ConstantTimeCompare([]byte(pass), []byte(s.pass)) == 1
	return userOK && passOK
}

// URL returns the clone URL of the named repository:
// http://127.0.0.1:<port>/<name>.git.
func (s *Server) URL(name string) string {
	return s.srv.URL + "/" + name + ".git"
}

// SetFailing makes the server answer every request with this HTTP status;
// 0 restores normal service.
func (s *Server) SetFailing(code int) {
	s.failing.Store(int64(code))
}

// SetDelay makes the server wait d before it answers each request (a slow
// remote), or less if the client goes away first; 0 restores prompt
// service.
func (s *Server) SetDelay(d time.Duration) {
	s.delay.Store(int64(d))
}

// Hold makes every request wait, unanswered, until the hold is released
// (or its client goes away): a remote that hangs for exactly as long as the
// test needs, with no timer. It is released when t ends, if not before.
func (s *Server) Hold(t testing.TB) *Hold {
	h := &Hold{s: s, reached: make(chan struct{}), released: make(chan struct{})}
	s.hold.Store(h)
	t.Cleanup(h.Release)
	return h
}

// Hold is a Server's requests held unanswered; see Server.Hold.
type Hold struct {
	s           *Server
	reached     chan struct{} // closed when the first request waits
	reachedOnce sync.Once
	released    chan struct{}
	releaseOnce sync.Once
}

// Reached is closed once a request waits at the hold.
func (h *Hold) Reached() <-chan struct{} { return h.reached }

// Release lets the waiting requests be answered, and later ones at once.
// It may be called more than once.
func (h *Hold) Release() {
	h.releaseOnce.Do(func() {
		h.s.hold.CompareAndSwap(h, nil)
		close(h.released)
	})
}

// wait holds r until the release, and says false if its client went away
// first.
func (h *Hold) wait(r *http.Request) bool {
	h.reachedOnce.Do(func() { close(h.reached) })
	select {
	case <-h.released:
		return true
	case <-r.Context().Done():
		return false
	}
}

// Requests returns how many HTTP requests the server has received, answered
// or refused.
func (s *Server) Requests() int {
	return int(s.requests.Load())
}

// Repo is a bare repository the server serves and a working clone of it
// where tests make commits.
type Repo struct {
	Dir  string // working tree
	Bare string // the served bare repository, <project root>/<name>.git

	home    string
	commits int // commits made so far, for their dates
}

// NewRepo creates the bare repository "<name>.git" under the server's project
// root (with http.receivepack enabled) and an empty working clone of it on
// branch main.
func (s *Server) NewRepo(t testing.TB, name string) *Repo {
	t.Helper()
	if !repoNameRE.MatchString(name) || strings.Contains(name, "..") {
		t.Fatalf("gittest: bad repository name %q", name)
	}
	r := &Repo{
		Dir:  filepath.Join(t.TempDir(), name),
		Bare: filepath.Join(s.root, name+".git"),
		home: s.home,
	}
	if _, err := os.Stat(r.Bare); err == nil {
		t.Fatalf("gittest: repository %q exists already", name)
	}
	runGit(t, s.home, "", "init", "--quiet", "--bare", r.Bare)
	runGit(t, s.home, r.Bare, "config", "http.receivepack", "true")
	runGit(t, s.home, "", "clone", "--quiet", r.Bare, r.Dir)
	return r
}

// Git runs git with args in the working tree and returns its standard output.
func (r *Repo) Git(t testing.TB, args ...string) string {
	t.Helper()
	return runGit(t, r.home, r.Dir, args...)
}

// Commit writes files (path relative to the working tree -> content), stages
// every change and commits it, even when nothing changed, with the fixed
// test author. It returns the new commit's full hash.
func (r *Repo) Commit(t testing.TB, msg string, files map[string]string) string {
	t.Helper()
	for name, content := range files {
		path := filepath.Join(r.Dir, filepath.FromSlash(name))
		if rel, err := filepath.Rel(r.Dir, path); err != nil || rel == "." || strings.HasPrefix(rel, "..") {
			t.Fatalf("gittest: file %q is outside the working tree", name)
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatalf("gittest: %v", err)
		}
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatalf("gittest: %v", err)
		}
	}
	r.Git(t, "add", "--all")
	date := epoch.Add(time.Duration(r.commits) * time.Minute).Format(time.RFC3339)
	r.commits++
	cmd := gitCommand(t, r.home, r.Dir, "commit", "--quiet", "--allow-empty", "--no-verify", "--message", msg)
	cmd.Env = append(cmd.Env, "GIT_AUTHOR_DATE="+date, "GIT_COMMITTER_DATE="+date)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("gittest: git commit: %v\n%s", err, out)
	}
	return r.Head(t)
}

// Push force-pushes the working tree's HEAD to refs/heads/<branch> of the
// bare repository.
func (r *Repo) Push(t testing.TB, branch string) {
	t.Helper()
	r.Git(t, "push", "--quiet", "--force", "origin", "HEAD:refs/heads/"+branch)
}

// Checkout switches the working tree to branch, creating it at HEAD if it
// does not exist yet.
func (r *Repo) Checkout(t testing.TB, branch string) {
	t.Helper()
	cmd := gitCommand(t, r.home, r.Dir, "rev-parse", "--verify", "--quiet", "refs/heads/"+branch)
	if err := cmd.Run(); err == nil {
		r.Git(t, "checkout", "--quiet", branch)
		return
	}
	r.Git(t, "checkout", "--quiet", "-b", branch)
}

// Reset moves the current branch and the working tree to rev (git reset
// --hard), to rewrite history before a force push.
func (r *Repo) Reset(t testing.TB, rev string) {
	t.Helper()
	r.Git(t, "reset", "--quiet", "--hard", rev)
}

// Head returns the full hash of the working tree's HEAD commit.
func (r *Repo) Head(t testing.TB) string {
	t.Helper()
	return strings.TrimSpace(r.Git(t, "rev-parse", "HEAD"))
}

// runGit runs git in dir ("" for the current directory) and returns its
// standard output; on failure it fails t with the combined output.
func runGit(t testing.TB, home, dir string, args ...string) string {
	t.Helper()
	cmd := gitCommand(t, home, dir, args...)
	var stdout, stderr strings.Builder
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("gittest: git %s: %v\n%s%s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

// gitCommand builds a git command isolated from the machine's and the user's
// git configuration.
func gitCommand(t testing.TB, home, dir string, args ...string) *exec.Cmd {
	full := append([]string{
		"-c", "init.defaultBranch=main",
		"-c", "protocol.version=2",
		"-c", "advice.detachedHead=false",
		"-c", "commit.gpgSign=false",
	}, args...)
	cmd := exec.CommandContext(t.Context(), "git", full...)
	cmd.Dir = dir
	cmd.Env = gitEnv(home)
	return cmd
}

// gitEnv is the process environment without anything that steers git
// (GIT_*, HOME, XDG_CONFIG_HOME), plus a private HOME and the test author.
func gitEnv(home string) []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, "GIT_") || name == "HOME" || name == "XDG_CONFIG_HOME" {
			continue
		}
		env = append(env, kv)
	}
	return append(env,
		"HOME="+home,
		"GIT_CONFIG_NOSYSTEM=1",
		"GIT_TERMINAL_PROMPT=0",
		"GIT_AUTHOR_NAME="+AuthorName,
		"GIT_AUTHOR_EMAIL="+AuthorEmail,
		"GIT_COMMITTER_NAME="+AuthorName,
		"GIT_COMMITTER_EMAIL="+AuthorEmail,
	)
}

// testLogWriter sends git http-backend's standard error to the test log, so
// it shows only when a test fails or runs with -v.
type testLogWriter struct {
	mu sync.Mutex
	t  testing.TB
}

func (w *testLogWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.t.Logf("git http-backend: %s", strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
