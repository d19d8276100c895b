// Package forgetest runs a fake GitHub or Forgejo for tests: an httptest
// server on 127.0.0.1 that serves the commit status endpoints as the forges
// do (paths, JSON shapes, Authorization header, error answers, rate-limit
// headers and refusals), records what it receives, and fails, refuses or
// goes down on demand.
//
// GitHub (docs.github.com/rest/commits/statuses):
//
//	POST {root}repos/{owner}/{repo}/statuses/{sha}          Authorization: Bearer <token> or token <token>
//	GET  {root}repos/{owner}/{repo}/commits/{ref}/statuses  newest first
//
// Forgejo and Gitea (/api/swagger of an instance):
//
//	GET  {root}api/v1/version
//	POST {root}api/v1/repos/{owner}/{repo}/statuses/{sha}          Authorization: token <token>, Bearer <token> or Basic
//	GET  {root}api/v1/repos/{owner}/{repo}/statuses/{sha}          newest first
//	GET  {root}api/v1/repos/{owner}/{repo}/commits/{ref}/statuses  newest first
//	GET  {root}api/v1/repos/{owner}/{repo}/git/commits/{sha}       the commit, or 404
//
// Everything else answers 404 with the forge's JSON error shape.
//
// # What the fakes do as the forges do
//
// Each behaviour names its source.
//
//   - Authorization. GitHub takes "Bearer <token>" and "token <token>"
//     (docs.github.com/rest/authentication/authenticating-to-the-rest-api:
//     "In most cases, you can use Authorization: Bearer or Authorization:
//     token"); a wrong or missing token is 401 "Bad credentials". Forgejo
//     takes exactly two space-separated fields whose first is "token" or
//     "bearer" in any case (forgejo services/auth/oauth2.go parseToken), or
//     Basic with the token as user name (password empty or "x-oauth-basic")
//     or as password (forgejo services/auth/basic.go); without a valid one a
//     write is 401 "token is required" (forgejo routers/api/v1/api.go
//     reqToken).
//   - Commits on the forge. A fake told which commits a repository has
//     (AddCommits, ServeRepo) answers a status for any other commit as the
//     forge does: GitHub 422 {"message":"No commit found for SHA: <sha>"}
//     (the answer quoted in kubernetes/test-infra#21987 and rust-lang/homu#141);
//     Forgejo 500 with an empty message, because CreateCommitStatus wraps
//     GetCommit's not-found error and the handler answers every error with
//     ctx.Error(500), which blanks the message in production for a token
//     that is not a site admin's (forgejo routers/api/v1/repo/status.go
//     NewCommitStatus, services/repository/commitstatus/commitstatus.go,
//     services/context/api.go Error). A repository it was not told of is 404
//     (GitHub "Not Found"; Forgejo "The target couldn't be found.", from
//     routers/api/v1/api.go repoAssignment). Forgejo's GET git/commits/{sha}
//     answers an unknown commit 404 with the sha as message (forgejo
//     routers/api/v1/repo/commits.go getCommit).
//   - GitHub's rate limits (docs.github.com/rest/using-the-rest-api/
//     rate-limits-for-the-rest-api). Every answer carries x-ratelimit-limit,
//     -remaining, -used, -reset (UTC epoch seconds) and -resource ("core"),
//     counting each answered request against 5,000 an hour. RateLimit makes
//     the fake refuse as GitHub does: past the primary limit, 403 or 429
//     with x-ratelimit-remaining 0 and the reset time, body "API rate limit
//     exceeded for ..."; past a secondary limit, 403 or 429 with "You have
//     exceeded a secondary rate limit" and the documentation_url go-github
//     and GitHub use (".../rate-limits-for-the-rest-api#about-secondary-rate-limits",
//     see ossf/criticality_score#813), with retry-after, or x-ratelimit-remaining
//     0 and -reset, or neither ("wait for at least one minute").
//   - Forgejo has no rate limit on its API: no rate-limit headers, and no
//     429 from Forgejo itself (its only limiter, routers/common
//     RateLimitExpensiveEndpoints, guards compare and blob-excerpt pages, not
//     the API). RateLimit on a Forgejo fake therefore plays a reverse proxy
//     in front of it configured to limit requests: 429 with Retry-After in
//     seconds and an HTML body, not JSON.
//
// # Where the fakes still differ from the forges
//
//   - Open mode: a fake that was told of no repository (no AddCommits or
//     ServeRepo) takes every repository and every well-formed sha (40 or 64
//     hex digits) as existing. Tests that are not about the forge use it;
//     tests of what the forge refuses register their commits.
//   - One token, with every right: no scopes, no read-only tokens, no 403
//     "Resource not accessible by integration", no 404 for a repository the
//     token cannot see; GitHub's failed-login lockout is not played.
//   - GitHub: abbreviated shas and refs are not resolved (a status is posted
//     to the full sha only); the 1,000-statuses-per-context limit is not
//     kept; unauthenticated requests count against the same 5,000 as
//     authenticated ones; messages of 401/404 are GitHub's, other fields
//     (request ids, headers like x-github-request-id) are left out.
//   - Forgejo: messages of 401 are illustrative (clients go by the code);
//     a state outside pending/success/error/failure/warning is answered 422,
//     which was not checked against Forgejo's binding (flakeship never sends
//     one); an abbreviated sha is not resolved (Forgejo's GetCommit would);
//     the git/commits answer carries only sha, url, html_url and created.
//   - Both: list endpoints ignore paging and need the token, as private
//     repositories do; statuses live only in memory.
package forgetest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"
)

// Recorded is one commit status the fake accepted.
type Recorded struct {
	Repo        string // "owner/name"
	SHA         string
	State       string
	Context     string
	Description string
	TargetURL   string
	Time        time.Time // when it arrived
}

// Request is one HTTP request the fake received, whatever it answered.
type Request struct {
	Method string
	Path   string // unescaped URL path, with any prefix
	Header http.Header
	Body   []byte
	Time   time.Time // when it arrived
	// RateLimited is set when the fake refused the request under RateLimit.
	RateLimited bool
}

// Limit is a rate-limit refusal the fake plays (see RateLimit).
type Limit struct {
	// Secondary makes it GitHub's secondary rate limit rather than the
	// primary one. A Forgejo fake ignores it.
	Secondary bool
	// Code is GitHub's answer, 403 (the default) or 429: the docs name
	// both. A Forgejo fake always answers 429.
	Code int
	// Until is when the fake serves again. It is rounded up to a whole
	// second, as x-ratelimit-reset (epoch seconds) and Retry-After
	// (seconds) can only say whole seconds.
	Until time.Time
	// Hint says which header of a GitHub secondary limit tells when to
	// come back. The primary limit always says it with x-ratelimit-reset;
	// a Forgejo fake always with Retry-After.
	Hint Hint
}

// Hint is the header of a GitHub secondary-limit refusal that says when to
// come back.
type Hint int

// The hints of a secondary limit, as GitHub's docs list them.
const (
	// HintRetryAfter sends retry-after: the seconds to wait.
	HintRetryAfter Hint = iota
	// HintReset sends x-ratelimit-remaining 0 and x-ratelimit-reset.
	HintReset
	// HintNone sends neither: the client is to wait at least a minute.
	HintNone
)

// Option changes how a fake is set up.
type Option func(*Server)

// WithPathPrefix serves the API below prefix (like "/api/v3", where GitHub
// Enterprise Server has its REST API, or "/forgejo" for an instance on a
// sub-path); URL then includes it.
func WithPathPrefix(prefix string) Option {
	return func(s *Server) { s.prefix = "/" + strings.Trim(prefix, "/") }
}

// Server is a running fake forge. All its methods are safe for concurrent use.
type Server struct {
	kind   string // "github" or "forgejo"
	token  string
	prefix string // "" or "/something", no trailing slash
	srv    *httptest.Server

	mu       sync.Mutex
	statuses []Recorded
	ids      []int64 // ids[i] is the id given to statuses[i]
	requests []Request
	failLeft int
	failCode int
	down     bool
	changed  chan struct{} // closed and replaced whenever statuses or requests grow
	// repos are the repositories the fake knows, by lower-case owner/name;
	// none means open mode (every repository and well-formed sha exists).
	repos map[string]*repository
	// limit is the rate-limit refusal in force, if any.
	limit *Limit
	// used counts GitHub's answered requests in the hour ending at resetAt.
	used    int
	resetAt time.Time
}

// repository is what the fake knows of one repository's commits.
type repository struct {
	shas   map[string]bool // lower-case hex, from AddCommits
	gitDir string          // a git repository to look commits up in, or ""
}

// forgejoVersion is what the fake's /api/v1/version reports: a Forgejo
// release with the Gitea version it is compatible with, as Forgejo 7 does.
const forgejoVersion = "7.0.16+gitea-1.21.11"

// maxBody bounds what the fake reads of a request body.
const maxBody = 1 << 20

// githubHourlyLimit is the primary rate limit of an authenticated user on
// GitHub: 5,000 requests an hour.
const githubHourlyLimit = 5000

var (
	// shaRE is what the fake takes for a commit id: SHA-1 or SHA-256 hex.
	shaRE = regexp.MustCompile(`^(?:[0-9a-fA-F]{40}|[0-9a-fA-F]{64})$`)
	// statusStates are the states each forge accepts in a new status.
	statusStates = map[string]map[string]bool{
		"github":  {"pending": true, "success": true, "failure": true, "error": true},
		"forgejo": {"pending": true, "success": true, "failure": true, "error": true, "warning": true},
	}
)

// NewGitHub starts a fake GitHub REST API whose statuses endpoint takes
// "Authorization: Bearer <token>". It is closed when t's test ends.
func NewGitHub(t testing.TB, token string, opts ...Option) *Server {
	t.Helper()
	s := newServer(t, "github", token, opts)
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+s.prefix+"/repos/{owner}/{repo}/statuses/{sha}", s.githubCreate)
	mux.HandleFunc("GET "+s.prefix+"/repos/{owner}/{repo}/commits/{ref}/statuses", s.githubList)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		s.githubError(w, http.StatusNotFound, "Not Found", nil)
	})
	s.start(t, mux)
	return s
}

// NewForgejo starts a fake Forgejo (Gitea API) whose statuses endpoint takes
// "Authorization: token <token>" or "Authorization: Bearer <token>". It is
// closed when t's test ends.
func NewForgejo(t testing.TB, token string, opts ...Option) *Server {
	t.Helper()
	s := newServer(t, "forgejo", token, opts)
	api := s.prefix + "/api/v1"
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+api+"/version", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"version": forgejoVersion})
	})
	mux.HandleFunc("POST "+api+"/repos/{owner}/{repo}/statuses/{sha}", s.forgejoCreate)
	mux.HandleFunc("GET "+api+"/repos/{owner}/{repo}/statuses/{ref}", s.forgejoList)
	mux.HandleFunc("GET "+api+"/repos/{owner}/{repo}/commits/{ref}/statuses", s.forgejoList)
	mux.HandleFunc("GET "+api+"/repos/{owner}/{repo}/git/commits/{sha}", s.forgejoCommit)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		s.forgejoError(w, r, http.StatusNotFound, "Not Found")
	})
	s.start(t, mux)
	return s
}

func newServer(t testing.TB, kind, token string, opts []Option) *Server {
	t.Helper()
	if token == "" {
		t.Fatalf("forgetest: the %s fake needs a non-empty token", kind)
	}
	s := &Server{kind: kind, token: token, changed: make(chan struct{})}
	for _, o := range opts {
		o(s)
	}
	if s.prefix == "/" {
		s.prefix = ""
	}
	return s
}

// start serves h on 127.0.0.1 only and closes the server when t ends.
func (s *Server) start(t testing.TB, h http.Handler) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("forgetest: listen: %v", err)
	}
	s.srv = httptest.NewUnstartedServer(s.intake(h))
	s.srv.Listener = ln
	s.srv.Start()
	t.Cleanup(s.srv.Close)
}

// intake records every request and plays a forge that is down.
func (s *Server) intake(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, maxBody))
		if err != nil {
			// The client went away mid-body; nothing to answer.
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))

		now := time.Now()
		s.mu.Lock()
		down := s.down
		limit := s.limitLocked(now)
		s.requests = append(s.requests, Request{
			Method:      r.Method,
			Path:        r.URL.Path,
			Header:      r.Header.Clone(),
			Body:        body,
			Time:        now,
			RateLimited: !down && limit != nil,
		})
		var rate rateHeaders
		if s.kind == "github" && !down {
			rate = s.countLocked(now)
		}
		s.notifyLocked()
		s.mu.Unlock()

		switch {
		case down:
			hangUp(w)
		case limit != nil && s.kind == "github":
			githubRefuse(w, *limit, rate, now)
		case limit != nil:
			proxyRefuse(w, *limit, now)
		default:
			if s.kind == "github" {
				rate.set(w.Header())
			}
			next.ServeHTTP(w, r)
		}
	})
}

// limitLocked returns the rate limit in force at now, or nil; s.mu must be
// held.
func (s *Server) limitLocked(now time.Time) *Limit {
	if s.limit != nil && !now.Before(s.limit.Until) {
		s.limit = nil
	}
	return s.limit
}

// rateHeaders are the x-ratelimit-* values of one GitHub answer.
type rateHeaders struct {
	limit, remaining, used int
	reset                  time.Time
}

// set writes them as GitHub does on every REST answer
// (docs.github.com/rest/using-the-rest-api/rate-limits-for-the-rest-api,
// "Checking the status of your rate limit").
func (h rateHeaders) set(hdr http.Header) {
	hdr.Set("X-Ratelimit-Limit", strconv.Itoa(h.limit))
	hdr.Set("X-Ratelimit-Remaining", strconv.Itoa(h.remaining))
	hdr.Set("X-Ratelimit-Used", strconv.Itoa(h.used))
	hdr.Set("X-Ratelimit-Reset", strconv.FormatInt(h.reset.Unix(), 10))
	hdr.Set("X-Ratelimit-Resource", "core")
}

// countLocked counts one request against the hour's primary limit and
// returns the headers of its answer; s.mu must be held.
func (s *Server) countLocked(now time.Time) rateHeaders {
	if !now.Before(s.resetAt) {
		s.used = 0
		s.resetAt = ceilSecond(now.Add(time.Hour))
	}
	if s.used < githubHourlyLimit {
		s.used++
	}
	return rateHeaders{limit: githubHourlyLimit, remaining: githubHourlyLimit - s.used, used: s.used, reset: s.resetAt}
}

// ceilSecond rounds t up to a whole second.
func ceilSecond(t time.Time) time.Time {
	c := t.Truncate(time.Second)
	if c.Equal(t) {
		return t
	}
	return c.Add(time.Second)
}

// secondsUntil is the whole seconds from now to t, rounded up, at least 1.
func secondsUntil(t, now time.Time) int64 {
	d := t.Sub(now)
	secs := int64(d / time.Second)
	if d%time.Second != 0 {
		secs++
	}
	return max(secs, 1)
}

// githubRefuse answers as GitHub does past a rate limit
// (docs.github.com/rest/using-the-rest-api/rate-limits-for-the-rest-api,
// "Exceeding the rate limit").
func githubRefuse(w http.ResponseWriter, l Limit, rate rateHeaders, now time.Time) {
	code := l.Code
	if code == 0 {
		code = http.StatusForbidden
	}
	body := map[string]string{"status": strconv.Itoa(code)}
	switch {
	case !l.Secondary:
		rate.remaining, rate.used, rate.reset = 0, rate.limit, l.Until
		body["message"] = "API rate limit exceeded for user ID 1. If you reach out to GitHub Support for help, please include the request ID FAKE:0001:0001."
		body["documentation_url"] = "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"
	default:
		switch l.Hint {
		case HintRetryAfter:
			w.Header().Set("Retry-After", strconv.FormatInt(secondsUntil(l.Until, now), 10))
		case HintReset:
			rate.remaining, rate.used, rate.reset = 0, rate.limit, l.Until
		}
		body["message"] = "You have exceeded a secondary rate limit. Please wait a few minutes before you try again. If you reach out to GitHub Support for help, please include the request ID FAKE:0001:0001."
		body["documentation_url"] = "https://docs.github.com/free-pro-team@latest/rest/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits"
	}
	rate.set(w.Header())
	writeJSON(w, code, body)
}

// proxyRefuse answers as a reverse proxy in front of Forgejo that limits
// requests: 429, Retry-After in seconds, an HTML page. Forgejo itself has no
// API rate limit (see the package doc).
func proxyRefuse(w http.ResponseWriter, l Limit, now time.Time) {
	w.Header().Set("Retry-After", strconv.FormatInt(secondsUntil(l.Until, now), 10))
	w.Header().Set("Content-Type", "text/html")
	w.WriteHeader(http.StatusTooManyRequests)
	_, _ = io.WriteString(w, "<html><body><h1>429 Too Many Requests</h1>\nYou have sent too many requests in a given amount of time.\n</body></html>\n")
}

// hangUp closes the connection without an answer, as a forge that is down (or
// a proxy in front of it) does; if the connection cannot be taken over it
// answers 503 instead.
func hangUp(w http.ResponseWriter) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		http.Error(w, "service unavailable", http.StatusServiceUnavailable)
		return
	}
	conn, _, err := hj.Hijack()
	if err != nil {
		http.Error(w, "service unavailable", http.StatusServiceUnavailable)
		return
	}
	_ = conn.Close() // the point is to drop it; a close error changes nothing
}

// URL is the API root to configure, with a trailing slash: for GitHub the
// REST API root (https://api.github.com/ in production), for Forgejo the
// instance root (the client adds api/v1/). Any WithPathPrefix is included.
func (s *Server) URL() string {
	return s.srv.URL + s.prefix + "/"
}

// Statuses returns the accepted statuses in arrival order.
func (s *Server) Statuses() []Recorded {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Recorded(nil), s.statuses...)
}

// Requests returns every request received so far, in arrival order,
// including those refused, failed by FailNext or dropped by SetDown.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Request, len(s.requests))
	for i, r := range s.requests {
		out[i] = Request{Method: r.Method, Path: r.Path, Header: r.Header.Clone(), Body: bytes.Clone(r.Body), Time: r.Time, RateLimited: r.RateLimited}
	}
	return out
}

// FailNext answers the next n status posts with the HTTP status code (and the
// forge's JSON error shape) before looking at them; they are not recorded as
// statuses. Posts dropped while SetDown is on do not count.
func (s *Server) FailNext(n, code int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failLeft, s.failCode = n, code
}

// RateLimit makes the fake refuse every request as the forge does past a
// rate limit (see Limit and the package doc), until l.Until; then it serves
// again. Refused requests are recorded with RateLimited set; they are not
// statuses.
func (s *Server) RateLimit(l Limit) {
	l.Until = ceilSecond(l.Until)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.limit = &l
}

// AddCommits tells the fake that the repository repo ("owner/name") exists
// and holds these commits. Once it knows any repository, the fake answers a
// status for an unknown repository or commit as the forge does (see the
// package doc).
func (s *Server) AddCommits(repo string, shas ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.repoLocked(repo)
	for _, sha := range shas {
		r.shas[strings.ToLower(sha)] = true
	}
}

// ServeRepo tells the fake that the repository repo ("owner/name") exists
// and holds whatever commits the git repository at gitDir has (a bare
// repository the test pushes to), looked up when a request names one, as a
// forge looks them up in the repository it hosts.
func (s *Server) ServeRepo(repo, gitDir string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.repoLocked(repo).gitDir = gitDir
}

func (s *Server) repoLocked(repo string) *repository {
	if s.repos == nil {
		s.repos = map[string]*repository{}
	}
	key := strings.ToLower(repo)
	r := s.repos[key]
	if r == nil {
		r = &repository{shas: map[string]bool{}}
		s.repos[key] = r
	}
	return r
}

// lookup reports whether the forge has the repository and, if so, the
// commit.
func (s *Server) lookup(ctx context.Context, repo, sha string) (repoExists, commitExists bool) {
	s.mu.Lock()
	open := s.repos == nil
	var shas map[string]bool
	var gitDir string
	if r := s.repos[strings.ToLower(repo)]; r != nil {
		repoExists = true
		shas, gitDir = r.shas, r.gitDir
		commitExists = shas[strings.ToLower(sha)]
	}
	s.mu.Unlock()
	switch {
	case open:
		return true, shaRE.MatchString(sha)
	case !repoExists || commitExists || gitDir == "" || !shaRE.MatchString(sha):
		return repoExists, commitExists
	}
	// The sha is hex, so it cannot pass for an option of git.
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	err := exec.CommandContext(ctx, "git", "--git-dir="+gitDir, "cat-file", "-e", sha+"^{commit}").Run()
	return true, err == nil
}

// SetDown makes the fake drop every connection without an answer (down=true)
// or serve again (down=false).
func (s *Server) SetDown(down bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.down = down
}

// WaitFor waits until cond holds for the accepted statuses and returns them;
// after timeout it fails t. Call it from the test's goroutine.
func (s *Server) WaitFor(t testing.TB, timeout time.Duration, cond func([]Recorded) bool) []Recorded {
	t.Helper()
	return waitFor(t, s, timeout, "statuses", s.Statuses, cond)
}

// WaitForRequests is WaitFor over every request received (see Requests).
func (s *Server) WaitForRequests(t testing.TB, timeout time.Duration, cond func([]Request) bool) []Request {
	t.Helper()
	return waitFor(t, s, timeout, "requests", s.Requests, cond)
}

// waitFor wakes on every change instead of sleeping, bounded by timeout.
func waitFor[T any](t testing.TB, s *Server, timeout time.Duration, what string, get func() []T, cond func([]T) bool) []T {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		s.mu.Lock()
		changed := s.changed
		s.mu.Unlock()
		got := get()
		if cond(got) {
			return got
		}
		select {
		case <-changed:
		case <-deadline.C:
			if got = get(); cond(got) {
				return got
			}
			t.Fatalf("forgetest: %s did not reach the expected condition within %v; have %d: %+v", what, timeout, len(got), got)
			return nil
		}
	}
}

// notifyLocked wakes every waiter; s.mu must be held.
func (s *Server) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// takeFailure reports the code to fail the current status post with, or 0.
func (s *Server) takeFailure() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failLeft <= 0 {
		return 0
	}
	s.failLeft--
	return s.failCode
}

// statusBody is what both forges take in a new status.
type statusBody struct {
	State       *string `json:"state"`
	TargetURL   *string `json:"target_url"`
	Description *string `json:"description"`
	Context     *string `json:"context"`
}

func deref(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

// record stores an accepted status and returns it with its id.
func (s *Server) record(r Recorded) (Recorded, int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r.Time = time.Now().UTC()
	id := int64(len(s.statuses) + 1)
	s.statuses = append(s.statuses, r)
	s.ids = append(s.ids, id)
	s.notifyLocked()
	return r, id
}

// newestFirst returns the statuses of repo at sha, newest first, with ids.
func (s *Server) newestFirst(repo, sha string) ([]Recorded, []int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var recs []Recorded
	var ids []int64
	for i := len(s.statuses) - 1; i >= 0; i-- {
		if st := s.statuses[i]; st.Repo == repo && strings.EqualFold(st.SHA, sha) {
			recs = append(recs, st)
			ids = append(ids, s.ids[i])
		}
	}
	return recs, ids
}

// ---- GitHub ----

// githubDocs is the documentation_url GitHub puts in its status errors.
const githubDocs = "https://docs.github.com/rest/commits/statuses#create-a-commit-status"

// githubUser is the shape of GitHub's simple user, the creator of a status.
type githubUser struct {
	Login             string `json:"login"`
	ID                int64  `json:"id"`
	NodeID            string `json:"node_id"`
	AvatarURL         string `json:"avatar_url"`
	GravatarID        string `json:"gravatar_id"`
	URL               string `json:"url"`
	HTMLURL           string `json:"html_url"`
	FollowersURL      string `json:"followers_url"`
	FollowingURL      string `json:"following_url"`
	GistsURL          string `json:"gists_url"`
	StarredURL        string `json:"starred_url"`
	SubscriptionsURL  string `json:"subscriptions_url"`
	OrganizationsURL  string `json:"organizations_url"`
	ReposURL          string `json:"repos_url"`
	EventsURL         string `json:"events_url"`
	ReceivedEventsURL string `json:"received_events_url"`
	Type              string `json:"type"`
	SiteAdmin         bool   `json:"site_admin"`
}

// githubStatus is GitHub's documented answer to a new status, and an item of
// its list.
type githubStatus struct {
	URL         string     `json:"url"`
	AvatarURL   *string    `json:"avatar_url"`
	ID          int64      `json:"id"`
	NodeID      string     `json:"node_id"`
	State       string     `json:"state"`
	Description *string    `json:"description"`
	TargetURL   *string    `json:"target_url"`
	Context     string     `json:"context"`
	CreatedAt   string     `json:"created_at"`
	UpdatedAt   string     `json:"updated_at"`
	Creator     githubUser `json:"creator"`
}

// githubFieldError is one item of the "errors" array of a 422.
type githubFieldError struct {
	Resource string `json:"resource"`
	Code     string `json:"code"`
	Field    string `json:"field"`
	Message  string `json:"message,omitempty"`
}

func (s *Server) githubError(w http.ResponseWriter, code int, msg string, errs []githubFieldError) {
	body := map[string]any{
		"message":           msg,
		"documentation_url": "https://docs.github.com/rest",
		"status":            fmt.Sprint(code),
	}
	if errs != nil {
		body["errors"] = errs
		body["documentation_url"] = githubDocs
	}
	writeJSON(w, code, body)
}

// githubAuthorized takes the token in the two header forms GitHub documents:
// "Bearer <token>" and "token <token>"
// (docs.github.com/rest/authentication/authenticating-to-the-rest-api).
func (s *Server) githubAuthorized(r *http.Request) bool {
	h := r.Header.Get("Authorization")
	return h == "Bearer "+s.token || h == "token "+s.token
}

func (s *Server) githubCreate(w http.ResponseWriter, r *http.Request) {
	if code := s.takeFailure(); code != 0 {
		s.githubError(w, code, http.StatusText(code), nil)
		return
	}
	if !s.githubAuthorized(r) {
		s.githubError(w, http.StatusUnauthorized, "Bad credentials", nil)
		return
	}
	repo := r.PathValue("owner") + "/" + r.PathValue("repo")
	sha := r.PathValue("sha")
	repoExists, commitExists := s.lookup(r.Context(), repo, sha)
	if !repoExists {
		s.githubError(w, http.StatusNotFound, "Not Found", nil)
		return
	}
	var in statusBody
	if err := json.NewDecoder(r.Body).Decode(&in); err != nil {
		s.githubError(w, http.StatusBadRequest, "Problems parsing JSON", nil)
		return
	}
	if !commitExists {
		// kubernetes/test-infra#21987 quotes this answer from GitHub.
		writeJSON(w, http.StatusUnprocessableEntity, map[string]string{
			"message":           "No commit found for SHA: " + sha,
			"documentation_url": githubDocs,
			"status":            "422",
		})
		return
	}
	if in.State == nil {
		s.githubError(w, http.StatusUnprocessableEntity, "Invalid request.\n\n\"state\" wasn't supplied.", nil)
		return
	}
	if !statusStates["github"][*in.State] {
		s.githubError(w, http.StatusUnprocessableEntity, "Validation Failed", []githubFieldError{
			{Resource: "Status", Code: "custom", Field: "state", Message: "state is not included in the list"},
		})
		return
	}
	if utf8.RuneCountInString(deref(in.Description)) > 140 {
		s.githubError(w, http.StatusUnprocessableEntity, "Validation Failed", []githubFieldError{
			{Resource: "Status", Code: "custom", Field: "description", Message: "description is too long (maximum is 140 characters)"},
		})
		return
	}
	statusContext := deref(in.Context)
	if statusContext == "" {
		statusContext = "default" // GitHub's documented default
	}
	rec, id := s.record(Recorded{
		Repo:        repo,
		SHA:         sha,
		State:       *in.State,
		Context:     statusContext,
		Description: deref(in.Description),
		TargetURL:   deref(in.TargetURL),
	})
	out := s.githubStatus(r, rec, id)
	w.Header().Set("Location", out.URL)
	writeJSON(w, http.StatusCreated, out)
}

func (s *Server) githubList(w http.ResponseWriter, r *http.Request) {
	if !s.githubAuthorized(r) {
		s.githubError(w, http.StatusUnauthorized, "Bad credentials", nil)
		return
	}
	recs, ids := s.newestFirst(r.PathValue("owner")+"/"+r.PathValue("repo"), r.PathValue("ref"))
	out := make([]githubStatus, len(recs))
	for i := range recs {
		out[i] = s.githubStatus(r, recs[i], ids[i])
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) githubStatus(r *http.Request, rec Recorded, id int64) githubStatus {
	api := "http://" + r.Host + s.prefix
	at := rec.Time.Format(time.RFC3339)
	return githubStatus{
		URL:         fmt.Sprintf("%s/repos/%s/statuses/%s", api, rec.Repo, rec.SHA),
		ID:          id,
		NodeID:      fmt.Sprintf("SC_fake%d", id),
		State:       rec.State,
		Description: nullable(rec.Description),
		TargetURL:   nullable(rec.TargetURL),
		Context:     rec.Context,
		CreatedAt:   at,
		UpdatedAt:   at,
		Creator: githubUser{
			Login:             "flakeship-bot",
			ID:                1,
			NodeID:            "MDQ6VXNlcjE=",
			AvatarURL:         "https://avatars.githubusercontent.com/u/1?v=4",
			URL:               api + "/users/flakeship-bot",
			HTMLURL:           "https://github.com/flakeship-bot",
			FollowersURL:      api + "/users/flakeship-bot/followers",
			FollowingURL:      api + "/users/flakeship-bot/following{/other_user}",
			GistsURL:          api + "/users/flakeship-bot/gists{/gist_id}",
			StarredURL:        api + "/users/flakeship-bot/starred{/owner}{/repo}",
			SubscriptionsURL:  api + "/users/flakeship-bot/subscriptions",
			OrganizationsURL:  api + "/users/flakeship-bot/orgs",
			ReposURL:          api + "/users/flakeship-bot/repos",
			EventsURL:         api + "/users/flakeship-bot/events{/privacy}",
			ReceivedEventsURL: api + "/users/flakeship-bot/received_events",
			Type:              "User",
		},
	}
}

// nullable gives JSON null for "", as GitHub does for unset fields.
func nullable(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// ---- Forgejo ----

// forgejoUser is the shape of Gitea's User, the creator of a status.
type forgejoUser struct {
	ID        int64  `json:"id"`
	Login     string `json:"login"`
	LoginName string `json:"login_name"`
	FullName  string `json:"full_name"`
	Email     string `json:"email"`
	AvatarURL string `json:"avatar_url"`
	Language  string `json:"language"`
	IsAdmin   bool   `json:"is_admin"`
	Created   string `json:"created"`
	Active    bool   `json:"active"`
	Username  string `json:"username"`
}

// forgejoStatus is Gitea's CommitStatus: note the state under "status".
type forgejoStatus struct {
	ID          int64       `json:"id"`
	Status      string      `json:"status"`
	TargetURL   string      `json:"target_url"`
	Description string      `json:"description"`
	URL         string      `json:"url"`
	Context     string      `json:"context"`
	Creator     forgejoUser `json:"creator"`
	CreatedAt   string      `json:"created_at"`
	UpdatedAt   string      `json:"updated_at"`
}

// forgejoError answers in Gitea's APIError shape.
func (s *Server) forgejoError(w http.ResponseWriter, r *http.Request, code int, msg string) {
	writeJSON(w, code, map[string]string{
		"message": msg,
		"url":     "http://" + r.Host + s.prefix + "/api/swagger",
	})
}

// forgejoAuthorized takes the token the ways Forgejo does in a header:
// "token <token>" or "bearer <token>", scheme in any case, exactly two
// fields (forgejo services/auth/oauth2.go parseToken); or Basic with the
// token as user name, the password empty or "x-oauth-basic", or as password
// (forgejo services/auth/basic.go Verify).
func (s *Server) forgejoAuthorized(r *http.Request) bool {
	if user, pass, ok := r.BasicAuth(); ok {
		if pass == "" || pass == "x-oauth-basic" {
			return user == s.token
		}
		return pass == s.token
	}
	f := strings.Fields(r.Header.Get("Authorization"))
	return len(f) == 2 && (strings.EqualFold(f[0], "token") || strings.EqualFold(f[0], "bearer")) && f[1] == s.token
}

// forgejoNotFound answers as Forgejo's ctx.NotFound does
// (forgejo services/context/api.go).
func (s *Server) forgejoNotFound(w http.ResponseWriter, r *http.Request, msg string) {
	writeJSON(w, http.StatusNotFound, map[string]any{
		"message": msg,
		"url":     "http://" + r.Host + s.prefix + "/api/swagger",
		"errors":  []string{},
	})
}

func (s *Server) forgejoCreate(w http.ResponseWriter, r *http.Request) {
	if code := s.takeFailure(); code != 0 {
		s.forgejoError(w, r, code, http.StatusText(code))
		return
	}
	if !s.forgejoAuthorized(r) {
		// The message is illustrative; clients go by the status code.
		s.forgejoError(w, r, http.StatusUnauthorized, "token is required")
		return
	}
	repo := r.PathValue("owner") + "/" + r.PathValue("repo")
	sha := r.PathValue("sha")
	repoExists, commitExists := s.lookup(r.Context(), repo, sha)
	if !repoExists {
		s.forgejoNotFound(w, r, "The target couldn't be found.")
		return
	}
	var in statusBody
	if err := json.NewDecoder(r.Body).Decode(&in); err != nil {
		s.forgejoError(w, r, http.StatusUnprocessableEntity, "invalid JSON body")
		return
	}
	if !statusStates["forgejo"][deref(in.State)] {
		s.forgejoError(w, r, http.StatusUnprocessableEntity, fmt.Sprintf("invalid commit status state %q", deref(in.State)))
		return
	}
	if !commitExists {
		// CreateCommitStatus fails in GetCommit and the handler answers
		// ctx.Error(500, ...), which in production shows a token that is
		// not a site admin's no message.
		s.forgejoError(w, r, http.StatusInternalServerError, "")
		return
	}
	rec, id := s.record(Recorded{
		Repo:        repo,
		SHA:         sha,
		State:       *in.State,
		Context:     deref(in.Context),
		Description: deref(in.Description),
		TargetURL:   deref(in.TargetURL),
	})
	writeJSON(w, http.StatusCreated, s.forgejoStatus(r, rec, id))
}

func (s *Server) forgejoList(w http.ResponseWriter, r *http.Request) {
	if !s.forgejoAuthorized(r) {
		s.forgejoError(w, r, http.StatusUnauthorized, "token is required")
		return
	}
	recs, ids := s.newestFirst(r.PathValue("owner")+"/"+r.PathValue("repo"), r.PathValue("ref"))
	out := make([]forgejoStatus, len(recs))
	for i := range recs {
		out[i] = s.forgejoStatus(r, recs[i], ids[i])
	}
	writeJSON(w, http.StatusOK, out)
}

// forgejoCommit answers GET git/commits/{sha}: the commit, or 404 with the
// sha as message (forgejo routers/api/v1/repo/commits.go getCommit).
func (s *Server) forgejoCommit(w http.ResponseWriter, r *http.Request) {
	if !s.forgejoAuthorized(r) {
		s.forgejoError(w, r, http.StatusUnauthorized, "token is required")
		return
	}
	repo := r.PathValue("owner") + "/" + r.PathValue("repo")
	sha := r.PathValue("sha")
	repoExists, commitExists := s.lookup(r.Context(), repo, sha)
	switch {
	case !repoExists:
		s.forgejoNotFound(w, r, "The target couldn't be found.")
	case !commitExists:
		s.forgejoNotFound(w, r, sha)
	default:
		root := "http://" + r.Host + s.prefix
		writeJSON(w, http.StatusOK, map[string]string{
			"url":      fmt.Sprintf("%s/api/v1/repos/%s/git/commits/%s", root, repo, sha),
			"sha":      sha,
			"created":  "2024-01-01T00:00:00Z",
			"html_url": fmt.Sprintf("%s/%s/commit/%s", root, repo, sha),
		})
	}
}

func (s *Server) forgejoStatus(r *http.Request, rec Recorded, id int64) forgejoStatus {
	root := "http://" + r.Host + s.prefix
	at := rec.Time.Format(time.RFC3339)
	return forgejoStatus{
		ID:          id,
		Status:      rec.State,
		TargetURL:   rec.TargetURL,
		Description: rec.Description,
		URL:         fmt.Sprintf("%s/api/v1/repos/%s/statuses/%s", root, rec.Repo, rec.SHA),
		Context:     rec.Context,
		Creator: forgejoUser{
			ID:        1,
			Login:     "flakeship-bot",
			Email:     "flakeship-bot@noreply.localhost",
			AvatarURL: root + "/avatars/1",
			Created:   "2024-01-01T00:00:00Z",
			Active:    true,
			Username:  "flakeship-bot",
		},
		CreatedAt: at,
		UpdatedAt: at,
	}
}

// writeJSON answers v as JSON with the given status code.
func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, "forgetest: encode answer: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(code)
	_, _ = w.Write(b) // a client that hung up is no concern of the fake
}
