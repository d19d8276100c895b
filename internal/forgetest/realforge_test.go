package forgetest

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-github/v60/github"

	"github.com/flakeship/flakeship/internal/gittest"
)

// answer is one whole answer of the fake: code, headers and raw body.
type answer struct {
	code   int
	header http.Header
	body   []byte
}

// do sends one request and returns the whole answer, for checks on headers
// and exact bodies that call cannot make.
func do(t *testing.T, method, url, auth, body string) answer {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return answer{code: resp.StatusCode, header: resp.Header, body: raw}
}

// jsonObject decodes a JSON object answer.
func jsonObject(t *testing.T, a answer) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(a.body, &m); err != nil {
		t.Fatalf("answer %d %q is not a JSON object: %v", a.code, a.body, err)
	}
	return m
}

const (
	other   = "fedcba9876543210fedcba9876543210fedcba98" // well-formed, never registered
	success = `{"state":"success","context":"flakeship/app"}`
)

func TestFakesKnowTheCommitsOnTheForge(t *testing.T) {
	t.Run("github", func(t *testing.T) {
		s := NewGitHub(t, token)
		s.AddCommits("owner/app", sha)
		post := func(repo, commit string) answer {
			return do(t, "POST", s.URL()+"repos/"+repo+"/statuses/"+commit, "Bearer "+token, success)
		}
		if a := post("owner/app", sha); a.code != 201 {
			t.Fatalf("a registered commit: %d %s, want 201", a.code, a.body)
		}
		if a := post("Owner/App", sha); a.code != 201 {
			t.Errorf("repository names are case-insensitive on GitHub: %d %s, want 201", a.code, a.body)
		}
		a := post("owner/app", other)
		want := map[string]any{"message": "No commit found for SHA: " + other, "documentation_url": githubDocs, "status": "422"}
		if got := jsonObject(t, a); a.code != 422 || !equalJSON(got, want) {
			t.Errorf("an unknown commit: %d %v, want 422 %v", a.code, got, want)
		}
		a = post("owner/elsewhere", sha)
		if got := jsonObject(t, a); a.code != 404 || got["message"] != "Not Found" {
			t.Errorf("an unknown repository: %d %v, want 404 Not Found", a.code, got)
		}
		if got := len(s.Statuses()); got != 2 {
			t.Errorf("recorded %d statuses, want the 2 on the registered commit", got)
		}
	})

	t.Run("forgejo", func(t *testing.T) {
		s := NewForgejo(t, token)
		s.AddCommits("owner/app", sha)
		api := s.URL() + "api/v1/repos/"
		if a := do(t, "POST", api+"owner/app/statuses/"+sha, "token "+token, success); a.code != 201 {
			t.Fatalf("a registered commit: %d %s, want 201", a.code, a.body)
		}
		a := do(t, "POST", api+"owner/app/statuses/"+other, "token "+token, success)
		want := map[string]any{"message": "", "url": s.URL() + "api/swagger"}
		if got := jsonObject(t, a); a.code != 500 || !equalJSON(got, want) {
			t.Errorf("an unknown commit: %d %v, want 500 %v (Forgejo's answer in production)", a.code, got, want)
		}
		a = do(t, "POST", api+"owner/elsewhere/statuses/"+sha, "token "+token, success)
		want = map[string]any{"message": "The target couldn't be found.", "url": s.URL() + "api/swagger", "errors": []any{}}
		if got := jsonObject(t, a); a.code != 404 || !equalJSON(got, want) {
			t.Errorf("an unknown repository: %d %v, want 404 %v", a.code, got, want)
		}

		a = do(t, "GET", api+"owner/app/git/commits/"+sha, "token "+token, "")
		if got := jsonObject(t, a); a.code != 200 || got["sha"] != sha {
			t.Errorf("GET a registered commit: %d %v, want 200 with its sha", a.code, got)
		}
		a = do(t, "GET", api+"owner/app/git/commits/"+other, "token "+token, "")
		want = map[string]any{"message": other, "url": s.URL() + "api/swagger", "errors": []any{}}
		if got := jsonObject(t, a); a.code != 404 || !equalJSON(got, want) {
			t.Errorf("GET an unknown commit: %d %v, want 404 %v", a.code, got, want)
		}
		if a := do(t, "GET", api+"owner/app/git/commits/"+sha, "", ""); a.code != 401 {
			t.Errorf("GET a commit without the token: %d, want 401", a.code)
		}
	})
}

func TestServeRepoKnowsWhatWasPushed(t *testing.T) {
	git := gittest.NewServer(t)
	repo := git.NewRepo(t, "app")
	pushed := repo.Commit(t, "pushed", map[string]string{"a": "1"})
	repo.Push(t, "main")
	local := repo.Commit(t, "committed, never pushed", map[string]string{"a": "2"})

	for _, kind := range []string{"github", "forgejo"} {
		t.Run(kind, func(t *testing.T) {
			s, _, auth := newFake(t, kind)
			s.ServeRepo("owner/app", repo.Bare)
			post := s.URL() + "repos/owner/app/statuses/"
			unknown := 422
			if kind == "forgejo" {
				post = s.URL() + "api/v1/repos/owner/app/statuses/"
				unknown = 500
			}
			if a := do(t, "POST", post+pushed, auth, success); a.code != 201 {
				t.Errorf("the pushed commit: %d %s, want 201", a.code, a.body)
			}
			if a := do(t, "POST", post+local, auth, success); a.code != unknown {
				t.Errorf("a commit never pushed: %d %s, want %d", a.code, a.body, unknown)
			}
		})
	}
}

func TestGitHubFakeSendsRateLimitHeadersOnEveryAnswer(t *testing.T) {
	s := NewGitHub(t, token)
	post := s.URL() + "repos/owner/app/statuses/" + sha
	answers := []answer{
		do(t, "POST", post, "Bearer "+token, success),                                        // 201
		do(t, "POST", post, "Bearer nope", success),                                          // 401
		do(t, "POST", s.URL()+"repos/owner/app/statuses/abc", "Bearer "+token, success),      // 422
		do(t, "GET", s.URL()+"nowhere", "Bearer "+token, ""),                                 // 404
		do(t, "GET", s.URL()+"repos/owner/app/commits/"+sha+"/statuses", "token "+token, ""), // 200
	}
	var reset string
	for i, a := range answers {
		h := a.header
		if h.Get("X-Ratelimit-Limit") != "5000" || h.Get("X-Ratelimit-Resource") != "core" {
			t.Errorf("answer %d (%d): limit %q, resource %q, want 5000 and core", i, a.code, h.Get("X-Ratelimit-Limit"), h.Get("X-Ratelimit-Resource"))
		}
		if got, want := h.Get("X-Ratelimit-Remaining"), strconv.Itoa(5000-(i+1)); got != want {
			t.Errorf("answer %d (%d): remaining %q, want %q", i, a.code, got, want)
		}
		if got, want := h.Get("X-Ratelimit-Used"), strconv.Itoa(i+1); got != want {
			t.Errorf("answer %d (%d): used %q, want %q", i, a.code, got, want)
		}
		if reset == "" {
			reset = h.Get("X-Ratelimit-Reset")
		}
		at, err := strconv.ParseInt(h.Get("X-Ratelimit-Reset"), 10, 64)
		if err != nil || h.Get("X-Ratelimit-Reset") != reset || !time.Unix(at, 0).After(time.Now()) {
			t.Errorf("answer %d (%d): reset %q, want one epoch second ahead, the same on every answer of the hour", i, a.code, h.Get("X-Ratelimit-Reset"))
		}
	}

	fj := NewForgejo(t, token)
	a := do(t, "POST", fj.URL()+"api/v1/repos/owner/app/statuses/"+sha, "token "+token, success)
	for k := range a.header {
		if strings.HasPrefix(strings.ToLower(k), "x-ratelimit") {
			t.Errorf("the Forgejo fake sent %s: Forgejo sends no rate-limit headers", k)
		}
	}
}

func TestGitHubFakeRefusesPastARateLimitAsGitHubDoes(t *testing.T) {
	tests := []struct {
		name          string
		limit         Limit
		wantCode      int
		wantMessage   string // prefix
		wantRemaining string
		wantReset     bool // x-ratelimit-reset is Until
		wantRetry     bool // retry-after is present
		wantClientErr any  // the go-github error type it must come out as
	}{
		{name: "primary, 403", limit: Limit{}, wantCode: 403, wantMessage: "API rate limit exceeded for ",
			wantRemaining: "0", wantReset: true, wantClientErr: &github.RateLimitError{}},
		{name: "primary, 429", limit: Limit{Code: 429}, wantCode: 429, wantMessage: "API rate limit exceeded for ",
			wantRemaining: "0", wantReset: true, wantClientErr: &github.ErrorResponse{}},
		{name: "secondary with retry-after", limit: Limit{Secondary: true}, wantCode: 403,
			wantMessage: "You have exceeded a secondary rate limit", wantRetry: true, wantClientErr: &github.AbuseRateLimitError{}},
		// go-github takes any 403 with x-ratelimit-remaining 0 for the
		// primary limit; only the body tells this one apart.
		{name: "secondary with the reset", limit: Limit{Secondary: true, Hint: HintReset}, wantCode: 403,
			wantMessage: "You have exceeded a secondary rate limit", wantRemaining: "0", wantReset: true, wantClientErr: &github.RateLimitError{}},
		{name: "secondary without a hint", limit: Limit{Secondary: true, Hint: HintNone}, wantCode: 403,
			wantMessage: "You have exceeded a secondary rate limit", wantClientErr: &github.AbuseRateLimitError{}},
		{name: "secondary, 429", limit: Limit{Secondary: true, Code: 429}, wantCode: 429,
			wantMessage: "You have exceeded a secondary rate limit", wantRetry: true, wantClientErr: &github.ErrorResponse{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := NewGitHub(t, token)
			// Half an hour: apart from the end of the hour's window,
			// which every answer carries as x-ratelimit-reset.
			until := time.Now().Add(30 * time.Minute)
			tc.limit.Until = until
			s.RateLimit(tc.limit)
			a := do(t, "POST", s.URL()+"repos/owner/app/statuses/"+sha, "Bearer "+token, success)
			body := jsonObject(t, a)
			if a.code != tc.wantCode {
				t.Errorf("code = %d, want %d", a.code, tc.wantCode)
			}
			if msg, _ := body["message"].(string); !strings.HasPrefix(msg, tc.wantMessage) {
				t.Errorf("message = %q, want it to start with %q", msg, tc.wantMessage)
			}
			if tc.wantRemaining != "" && a.header.Get("X-Ratelimit-Remaining") != tc.wantRemaining {
				t.Errorf("x-ratelimit-remaining = %q, want %q", a.header.Get("X-Ratelimit-Remaining"), tc.wantRemaining)
			}
			if tc.wantRemaining == "" && a.header.Get("X-Ratelimit-Remaining") == "0" {
				t.Error("x-ratelimit-remaining = 0: this refusal is not one of the primary limit")
			}
			wantReset := strconv.FormatInt(ceilSecond(until).Unix(), 10)
			if got := a.header.Get("X-Ratelimit-Reset"); tc.wantReset != (got == wantReset) {
				t.Errorf("x-ratelimit-reset = %q; Until is %s (want it there: %v)", got, wantReset, tc.wantReset)
			}
			retry := a.header.Get("Retry-After")
			if secs, err := strconv.Atoi(retry); tc.wantRetry && (err != nil || secs < 1799 || secs > 1801) {
				t.Errorf("retry-after = %q, want the seconds until Until (1800)", retry)
			} else if !tc.wantRetry && retry != "" {
				t.Errorf("retry-after = %q, want none", retry)
			}

			// go-github reads the refusal as GitHub's, by code, headers and body.
			_, _, err := githubClient(t, s.URL(), token).Repositories.CreateStatus(context.Background(), "owner", "app", sha,
				&github.RepoStatus{State: github.String("success")})
			switch want := tc.wantClientErr.(type) {
			case *github.RateLimitError:
				if !errors.As(err, &want) {
					t.Errorf("go-github: %T %v, want a *github.RateLimitError", err, err)
				}
			case *github.AbuseRateLimitError:
				if !errors.As(err, &want) {
					t.Errorf("go-github: %T %v, want a *github.AbuseRateLimitError", err, err)
				}
			case *github.ErrorResponse:
				if !errors.As(err, &want) || want.Response.StatusCode != tc.wantCode {
					t.Errorf("go-github: %T %v, want a *github.ErrorResponse of %d", err, err, tc.wantCode)
				}
			}
			reqs := s.Requests()
			if !reqs[0].RateLimited || len(s.Statuses()) != 0 {
				t.Errorf("the refused request is not marked RateLimited, or a status was stored: %+v", reqs[0])
			}
		})
	}
}

func TestRateLimitEndsAtItsUntil(t *testing.T) {
	for _, kind := range []string{"github", "forgejo"} {
		t.Run(kind, func(t *testing.T) {
			s, post, auth := newFake(t, kind)
			until := ceilSecond(time.Now().Add(time.Second))
			s.RateLimit(Limit{Until: until})
			first := do(t, "POST", post, auth, success)
			if first.code != 429 && first.code != 403 {
				t.Fatalf("first post: %d %s, want a refusal", first.code, first.body)
			}
			if kind == "forgejo" {
				if first.code != 429 || first.header.Get("Retry-After") == "" || !strings.HasPrefix(first.header.Get("Content-Type"), "text/html") {
					t.Errorf("the proxy in front of Forgejo answered %d, Retry-After %q, %q; want 429, seconds, an HTML page",
						first.code, first.header.Get("Retry-After"), first.header.Get("Content-Type"))
				}
			}
			// Ask again until served; each answer must be a refusal before
			// Until and a status after it.
			deadline := time.Now().Add(30 * time.Second)
			for {
				sent := time.Now()
				a := do(t, "POST", post, auth, success)
				answered := time.Now()
				if a.code == 201 {
					if answered.Before(until) {
						t.Errorf("served at %s, before Until %s", answered.Format(time.RFC3339Nano), until.Format(time.RFC3339Nano))
					}
					break
				}
				if !sent.Before(until) {
					t.Fatalf("refused (%d) a post sent at %s, after Until %s", a.code, sent.Format(time.RFC3339Nano), until.Format(time.RFC3339Nano))
				}
				if time.Now().After(deadline) {
					t.Fatal("the fake never served again")
				}
				timer := time.NewTimer(20 * time.Millisecond)
				<-timer.C
			}
		})
	}
}

// equalJSON compares two decoded JSON values.
func equalJSON(a, b any) bool {
	x, err1 := json.Marshal(a)
	y, err2 := json.Marshal(b)
	return err1 == nil && err2 == nil && string(x) == string(y)
}
