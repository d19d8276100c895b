package forgetest

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"code.gitea.io/sdk/gitea"
	"github.com/google/go-github/v60/github"
)

const (
	token = "fake-token-5ec4e7"
	sha   = "0123456789abcdef0123456789abcdef01234567"
)

// call sends one request and returns the status code and the decoded JSON
// answer (nil if the body is not JSON).
func call(t *testing.T, method, url, auth, body string) (int, any) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var v any
	if json.Unmarshal(raw, &v) != nil {
		v = nil
	}
	return resp.StatusCode, v
}

// field returns v[key] of a JSON object.
func field(v any, key string) any {
	m, _ := v.(map[string]any)
	return m[key]
}

func keys(v any) []string {
	m, _ := v.(map[string]any)
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}

func hasKeys(t *testing.T, v any, want ...string) {
	t.Helper()
	for _, k := range want {
		if _, ok := v.(map[string]any)[k]; !ok {
			t.Errorf("answer lacks %q; has %v", k, keys(v))
		}
	}
}

func TestGitHubFakeAnswersLikeGitHub(t *testing.T) {
	s := NewGitHub(t, token)
	post := s.URL() + "repos/owner/app/statuses/" + sha
	ok := `{"state":"success","target_url":"https://ci.example/1","description":"Deployed","context":"flakeship/app"}`
	tests := []struct {
		name, method, url, auth, body string
		wantCode                      int
		wantMessage                   string
	}{
		{name: "a valid status is created", method: "POST", url: post, auth: "Bearer " + token, body: ok, wantCode: 201},
		{name: "a status without a context gets the default one", method: "POST", url: post, auth: "Bearer " + token, body: `{"state":"pending"}`, wantCode: 201},
		{name: "no Authorization is refused", method: "POST", url: post, body: ok, wantCode: 401, wantMessage: "Bad credentials"},
		{name: "a wrong token is refused", method: "POST", url: post, auth: "Bearer nope", body: ok, wantCode: 401, wantMessage: "Bad credentials"},
		{name: "the token scheme is taken as GitHub takes it", method: "POST", url: post, auth: "token " + token, body: ok, wantCode: 201},
		{name: "a wrong token under the token scheme is refused", method: "POST", url: post, auth: "token nope", body: ok, wantCode: 401, wantMessage: "Bad credentials"},
		{name: "an unknown state is invalid", method: "POST", url: post, auth: "Bearer " + token, body: `{"state":"warning"}`, wantCode: 422, wantMessage: "Validation Failed"},
		{name: "a missing state is invalid", method: "POST", url: post, auth: "Bearer " + token, body: `{"context":"x"}`, wantCode: 422},
		{name: "a description over 140 characters is invalid", method: "POST", url: post, auth: "Bearer " + token,
			body: `{"state":"success","description":"` + strings.Repeat("é", 141) + `"}`, wantCode: 422, wantMessage: "Validation Failed"},
		{name: "exactly 140 characters of description pass", method: "POST", url: post, auth: "Bearer " + token,
			body: `{"state":"success","description":"` + strings.Repeat("é", 140) + `"}`, wantCode: 201},
		{name: "a truncated body is a parse error", method: "POST", url: post, auth: "Bearer " + token, body: `{"state":`, wantCode: 400, wantMessage: "Problems parsing JSON"},
		{name: "a short sha is no commit", method: "POST", url: s.URL() + "repos/owner/app/statuses/abc1234", auth: "Bearer " + token, body: ok, wantCode: 422, wantMessage: "No commit found for SHA: abc1234"},
		{name: "an unknown path is not found", method: "POST", url: s.URL() + "api/v1/repos/owner/app/statuses/" + sha, auth: "Bearer " + token, body: ok, wantCode: 404, wantMessage: "Not Found"},
		{name: "GET on the create path is not found", method: "GET", url: post, auth: "Bearer " + token, wantCode: 404},
		{name: "the list needs the token", method: "GET", url: s.URL() + "repos/owner/app/commits/" + sha + "/statuses", wantCode: 401},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, v := call(t, tc.method, tc.url, tc.auth, tc.body)
			if code != tc.wantCode {
				t.Fatalf("code = %d, want %d; answer %v", code, tc.wantCode, v)
			}
			if tc.wantMessage != "" && field(v, "message") != tc.wantMessage {
				t.Errorf("message = %v, want %q", field(v, "message"), tc.wantMessage)
			}
			if code == 201 {
				hasKeys(t, v, "url", "avatar_url", "id", "node_id", "state", "description", "target_url", "context", "created_at", "updated_at", "creator")
				if _, has := v.(map[string]any)["status"]; has {
					t.Errorf("GitHub answers the state under \"state\" only, got %v", keys(v))
				}
			}
		})
	}

	got := s.Statuses()
	if len(got) != 4 {
		t.Fatalf("recorded %d statuses, want the 4 created: %+v", len(got), got)
	}
	first := got[0]
	first.Time = time.Time{}
	want := Recorded{Repo: "owner/app", SHA: sha, State: "success", Context: "flakeship/app", Description: "Deployed", TargetURL: "https://ci.example/1"}
	if first != want {
		t.Errorf("first status = %+v, want %+v", first, want)
	}
	if got[1].Context != "default" {
		t.Errorf("context without one = %q, want GitHub's \"default\"", got[1].Context)
	}
}

func TestGitHubFakeSpeaksToGoGitHub(t *testing.T) {
	s := NewGitHub(t, token)
	c := githubClient(t, s.URL(), token)
	ctx := context.Background()

	created, _, err := c.Repositories.CreateStatus(ctx, "owner", "app", sha, &github.RepoStatus{
		State: github.String("pending"), Context: github.String("flakeship/app"),
		Description: github.String("Queued"), TargetURL: github.String("https://ci.example/2"),
	})
	if err != nil {
		t.Fatalf("CreateStatus: %v", err)
	}
	if created.GetState() != "pending" || created.GetID() == 0 || created.GetCreator().GetLogin() == "" || created.GetCreatedAt().IsZero() {
		t.Errorf("created status = %+v, want state, id, creator and time", created)
	}
	if _, _, err := c.Repositories.CreateStatus(ctx, "owner", "app", sha, &github.RepoStatus{State: github.String("success")}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.Repositories.CreateStatus(ctx, "owner", "other", sha, &github.RepoStatus{State: github.String("error")}); err != nil {
		t.Fatal(err)
	}

	list, _, err := c.Repositories.ListStatuses(ctx, "owner", "app", sha, nil)
	if err != nil {
		t.Fatalf("ListStatuses: %v", err)
	}
	var states []string
	for _, st := range list {
		states = append(states, st.GetState())
	}
	if want := []string{"success", "pending"}; !reflect.DeepEqual(states, want) {
		t.Errorf("listed states = %v, want %v (this repo only, newest first)", states, want)
	}

	_, resp, err := githubClient(t, s.URL(), "wrong").Repositories.CreateStatus(ctx, "owner", "app", sha, &github.RepoStatus{State: github.String("success")})
	var errResp *github.ErrorResponse
	if !errors.As(err, &errResp) || resp.StatusCode != 401 || errResp.Message != "Bad credentials" {
		t.Errorf("wrong token: err = %v, want a 401 ErrorResponse saying Bad credentials", err)
	}
}

func githubClient(t *testing.T, base, tok string) *github.Client {
	t.Helper()
	c := github.NewClient(nil).WithAuthToken(tok)
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	c.BaseURL = u
	return c
}

func TestForgejoFakeAnswersLikeForgejo(t *testing.T) {
	s := NewForgejo(t, token)
	api := s.URL() + "api/v1/"
	post := api + "repos/owner/app/statuses/" + sha
	ok := `{"state":"success","target_url":"https://ci.example/1","description":"Deployed","context":"flakeship/app"}`
	tests := []struct {
		name, method, url, auth, body string
		wantCode                      int
	}{
		{name: "the version needs no token", method: "GET", url: api + "version", wantCode: 200},
		{name: "a status with a token header is created", method: "POST", url: post, auth: "token " + token, body: ok, wantCode: 201},
		{name: "a status with a Bearer header is created", method: "POST", url: post, auth: "Bearer " + token, body: ok, wantCode: 201},
		{name: "the scheme is taken in any case", method: "POST", url: post, auth: "TOKEN " + token, body: ok, wantCode: 201},
		{name: "fields may be apart by more than one space", method: "POST", url: post, auth: "token   " + token, body: ok, wantCode: 201},
		{name: "basic auth with the token as user name", method: "POST", url: post, auth: basic(token, ""), body: ok, wantCode: 201},
		{name: "basic auth with the token as user and x-oauth-basic", method: "POST", url: post, auth: basic(token, "x-oauth-basic"), body: ok, wantCode: 201},
		{name: "basic auth with the token as password", method: "POST", url: post, auth: basic("bot", token), body: ok, wantCode: 201},
		{name: "basic auth with a wrong password", method: "POST", url: post, auth: basic("bot", "nope"), body: ok, wantCode: 401},
		{name: "a third field is refused", method: "POST", url: post, auth: "token " + token + " extra", body: ok, wantCode: 401},
		{name: "warning is a Forgejo state", method: "POST", url: post, auth: "token " + token, body: `{"state":"warning","context":"c"}`, wantCode: 201},
		{name: "no Authorization is refused", method: "POST", url: post, body: ok, wantCode: 401},
		{name: "a wrong token is refused", method: "POST", url: post, auth: "token nope", body: ok, wantCode: 401},
		{name: "a token after Basic, not base64, is refused", method: "POST", url: post, auth: "Basic " + token, body: ok, wantCode: 401},
		{name: "an unknown state is invalid", method: "POST", url: post, auth: "token " + token, body: `{"state":"done"}`, wantCode: 422},
		{name: "a truncated body is invalid", method: "POST", url: post, auth: "token " + token, body: `{"state":`, wantCode: 422},
		{name: "a short sha is no commit: Forgejo answers 500", method: "POST", url: api + "repos/owner/app/statuses/abc1234", auth: "token " + token, body: ok, wantCode: 500},
		{name: "the GitHub path is not found", method: "POST", url: s.URL() + "repos/owner/app/statuses/" + sha, auth: "token " + token, body: ok, wantCode: 404},
		{name: "the list needs the token", method: "GET", url: post, wantCode: 401},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, v := call(t, tc.method, tc.url, tc.auth, tc.body)
			if code != tc.wantCode {
				t.Fatalf("code = %d, want %d; answer %v", code, tc.wantCode, v)
			}
			switch {
			case code == 201:
				hasKeys(t, v, "id", "status", "target_url", "description", "url", "context", "creator", "created_at", "updated_at")
				if _, has := v.(map[string]any)["state"]; has {
					t.Errorf("Forgejo answers the state under \"status\", not \"state\": %v", keys(v))
				}
			case code >= 400:
				hasKeys(t, v, "message", "url")
			}
		})
	}
	_, v := call(t, "GET", api+"version", "", "")
	if field(v, "version") != forgejoVersion {
		t.Errorf("version = %v, want %q", v, forgejoVersion)
	}
	if got := len(s.Statuses()); got != 8 {
		t.Errorf("recorded %d statuses, want the 8 created", got)
	}
}

// basic is a Basic Authorization header.
func basic(user, pass string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
}

func TestForgejoFakeSpeaksToGiteaSDK(t *testing.T) {
	s := NewForgejo(t, token)
	// Without SetGiteaVersion the SDK asks /api/v1/version first: the fake
	// must answer it with a version the SDK accepts.
	c, err := gitea.NewClient(s.URL(), gitea.SetToken(token))
	if err != nil {
		t.Fatalf("NewClient (version probe): %v", err)
	}
	created, _, err := c.CreateStatus("owner", "app", sha, gitea.CreateStatusOption{
		State: gitea.StatusFailure, Context: "flakeship/app", Description: "Build failed", TargetURL: "https://ci.example/3",
	})
	if err != nil {
		t.Fatalf("CreateStatus: %v", err)
	}
	if created.State != gitea.StatusFailure || created.ID == 0 || created.Context != "flakeship/app" || created.Creator == nil || created.Created.IsZero() {
		t.Errorf("created status = %+v, want state failure (decoded from \"status\"), id, context, creator, time", created)
	}
	if _, _, err := c.CreateStatus("owner", "app", sha, gitea.CreateStatusOption{State: gitea.StatusSuccess, Context: "flakeship/app"}); err != nil {
		t.Fatal(err)
	}
	list, _, err := c.ListStatuses("owner", "app", sha, gitea.ListStatusesOption{})
	if err != nil {
		t.Fatalf("ListStatuses: %v", err)
	}
	if len(list) != 2 || list[0].State != gitea.StatusSuccess || list[1].State != gitea.StatusFailure {
		t.Errorf("listed %+v, want success then failure (newest first)", list)
	}

	bad, err := gitea.NewClient(s.URL(), gitea.SetToken("wrong"), gitea.SetGiteaVersion(""))
	if err != nil {
		t.Fatal(err)
	}
	_, resp, err := bad.CreateStatus("owner", "app", sha, gitea.CreateStatusOption{State: gitea.StatusSuccess})
	if err == nil || resp == nil || resp.StatusCode != 401 {
		t.Errorf("wrong token: err = %v, want a 401", err)
	}
}

func TestFailNextFailsThatManyPostsThenServes(t *testing.T) {
	for _, kind := range []string{"github", "forgejo"} {
		t.Run(kind, func(t *testing.T) {
			s, post, auth := newFake(t, kind)
			s.FailNext(2, http.StatusBadGateway)
			for i, want := range []int{502, 502, 201, 201} {
				if code, v := call(t, "POST", post, auth, `{"state":"success"}`); code != want {
					t.Fatalf("post %d: code = %d, want %d (%v)", i+1, code, want, v)
				}
			}
			if got := len(s.Statuses()); got != 2 {
				t.Errorf("recorded %d statuses, want 2 (failed posts are not statuses)", got)
			}
			if got := len(s.Requests()); got != 4 {
				t.Errorf("saw %d requests, want 4", got)
			}
		})
	}
}

func TestSetDownDropsConnectionsUntilUp(t *testing.T) {
	for _, kind := range []string{"github", "forgejo"} {
		t.Run(kind, func(t *testing.T) {
			s, post, auth := newFake(t, kind)
			s.SetDown(true)
			req, _ := http.NewRequest("POST", post, strings.NewReader(`{"state":"success"}`))
			req.Header.Set("Authorization", auth)
			if resp, err := http.DefaultClient.Do(req); err == nil {
				resp.Body.Close()
				t.Fatalf("a down forge answered %s", resp.Status)
			}
			s.SetDown(false)
			if code, v := call(t, "POST", post, auth, `{"state":"success"}`); code != 201 {
				t.Fatalf("after SetDown(false): code = %d (%v), want 201", code, v)
			}
		})
	}
}

func newFake(t *testing.T, kind string) (s *Server, post, auth string) {
	t.Helper()
	if kind == "github" {
		s = NewGitHub(t, token)
		return s, s.URL() + "repos/owner/app/statuses/" + sha, "Bearer " + token
	}
	s = NewForgejo(t, token)
	return s, s.URL() + "api/v1/repos/owner/app/statuses/" + sha, "token " + token
}

func TestWithPathPrefixServesOnlyBelowIt(t *testing.T) {
	gh := NewGitHub(t, token, WithPathPrefix("/api/v3/"))
	if !strings.HasSuffix(gh.URL(), "/api/v3/") {
		t.Fatalf("URL() = %q, want it to end in /api/v3/", gh.URL())
	}
	if code, _ := call(t, "POST", gh.URL()+"repos/owner/app/statuses/"+sha, "Bearer "+token, `{"state":"success"}`); code != 201 {
		t.Errorf("below the prefix: code = %d, want 201", code)
	}
	root := strings.TrimSuffix(gh.URL(), "api/v3/")
	if code, _ := call(t, "POST", root+"repos/owner/app/statuses/"+sha, "Bearer "+token, `{"state":"success"}`); code != 404 {
		t.Errorf("without the prefix: code = %d, want 404", code)
	}

	fj := NewForgejo(t, token, WithPathPrefix("forgejo"))
	if code, _ := call(t, "GET", fj.URL()+"api/v1/version", "", ""); code != 200 || !strings.HasSuffix(fj.URL(), "/forgejo/") {
		t.Errorf("sub-path instance: URL() = %q, version code = %d", fj.URL(), code)
	}
}

func TestServerListensOnLoopbackOnly(t *testing.T) {
	for _, s := range []*Server{NewGitHub(t, token), NewForgejo(t, token)} {
		u, err := url.Parse(s.URL())
		if err != nil {
			t.Fatal(err)
		}
		if host, _, _ := net.SplitHostPort(u.Host); host != "127.0.0.1" {
			t.Errorf("listens on %q, want 127.0.0.1", u.Host)
		}
	}
}

func TestWaitForSeesStatusesPostedConcurrently(t *testing.T) {
	s, post, auth := newFake(t, "github")
	const n = 20
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			body := fmt.Sprintf(`{"state":"pending","context":"c%d"}`, i)
			req, _ := http.NewRequest("POST", post, strings.NewReader(body))
			req.Header.Set("Authorization", auth)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
		}()
	}
	got := s.WaitFor(t, 10*time.Second, func(r []Recorded) bool { return len(r) == n })
	wg.Wait()
	seen := map[string]bool{}
	for _, r := range got {
		seen[r.Context] = true
	}
	if len(seen) != n {
		t.Errorf("saw %d distinct contexts, want %d", len(seen), n)
	}
	if reqs := s.WaitForRequests(t, time.Second, func(r []Request) bool { return len(r) >= n }); len(reqs) != n {
		t.Errorf("saw %d requests, want %d", len(reqs), n)
	}
}

// recordingTB catches a Fatalf so a test can check that a helper fails.
type recordingTB struct {
	testing.TB
	mu     sync.Mutex
	failed string
}

func (r *recordingTB) Helper() {}
func (r *recordingTB) Fatalf(format string, args ...any) {
	r.mu.Lock()
	r.failed = fmt.Sprintf(format, args...)
	r.mu.Unlock()
	runtime.Goexit()
}

func TestWaitForFailsAfterItsTimeout(t *testing.T) {
	s := NewGitHub(t, token)
	tb := &recordingTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.WaitFor(tb, 20*time.Millisecond, func(r []Recorded) bool { return len(r) > 0 })
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("WaitFor did not return after its timeout")
	}
	tb.mu.Lock()
	defer tb.mu.Unlock()
	if !strings.Contains(tb.failed, "within 20ms") {
		t.Errorf("failure = %q, want it to name the timeout", tb.failed)
	}
}
