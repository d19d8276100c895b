// Package forgetest runs a fake GitHub or Forgejo for tests: an httptest
// server on 127.0.0.1 that serves the commit status endpoints as the forges
// document them (paths, JSON shapes, Authorization header), records what it
// accepts, and fails or goes down on demand.
//
// GitHub (docs.github.com/rest/commits/statuses):
//
//	POST {root}repos/{owner}/{repo}/statuses/{sha}          Authorization: Bearer <token>
//	GET  {root}repos/{owner}/{repo}/commits/{ref}/statuses  newest first
//
// Forgejo and Gitea (/api/swagger of an instance):
//
//	GET  {root}api/v1/version
//	POST {root}api/v1/repos/{owner}/{repo}/statuses/{sha}          Authorization: token <token> (or Bearer)
//	GET  {root}api/v1/repos/{owner}/{repo}/statuses/{sha}          newest first
//	GET  {root}api/v1/repos/{owner}/{repo}/commits/{ref}/statuses  newest first
//
// Everything else answers 404 with the forge's JSON error shape. The list
// endpoints ignore paging and need the token, as private repositories do.
package forgetest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
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
}

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
}

// forgejoVersion is what the fake's /api/v1/version reports: a Forgejo
// release with the Gitea version it is compatible with, as Forgejo 7 does.
const forgejoVersion = "7.0.16+gitea-1.21.11"

// maxBody bounds what the fake reads of a request body.
const maxBody = 1 << 20

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

		s.mu.Lock()
		s.requests = append(s.requests, Request{
			Method: r.Method,
			Path:   r.URL.Path,
			Header: r.Header.Clone(),
			Body:   body,
		})
		down := s.down
		s.notifyLocked()
		s.mu.Unlock()

		if down {
			hangUp(w)
			return
		}
		next.ServeHTTP(w, r)
	})
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
		out[i] = Request{Method: r.Method, Path: r.Path, Header: r.Header.Clone(), Body: bytes.Clone(r.Body)}
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

func (s *Server) githubAuthorized(r *http.Request) bool {
	return r.Header.Get("Authorization") == "Bearer "+s.token
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
	if !shaRE.MatchString(sha) {
		s.githubError(w, http.StatusUnprocessableEntity, "No commit found for SHA: "+sha, nil)
		return
	}
	var in statusBody
	if err := json.NewDecoder(r.Body).Decode(&in); err != nil {
		s.githubError(w, http.StatusBadRequest, "Problems parsing JSON", nil)
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

// forgejoAuthorized takes the token the ways Forgejo does in a header.
func (s *Server) forgejoAuthorized(r *http.Request) bool {
	h := r.Header.Get("Authorization")
	scheme, tok, ok := strings.Cut(h, " ")
	if !ok {
		return false
	}
	return (strings.EqualFold(scheme, "token") || strings.EqualFold(scheme, "bearer")) && tok == s.token
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
	if !shaRE.MatchString(sha) {
		s.forgejoError(w, r, http.StatusUnprocessableEntity, "sha is not a commit id: "+sha)
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
