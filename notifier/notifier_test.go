package notifier

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/flakeship/flakeship/internal/testenv"

	"github.com/flakeship/flakeship/config"
	"github.com/flakeship/flakeship/forge"
	"github.com/flakeship/flakeship/internal/forgetest"
)

const (
	testToken = config.Secret("tok-3f9a1c7e-not-for-logs")
	sha       = "0123456789abcdef0123456789abcdef01234567"
	repo      = "owner/app"
)

// forgeCase is one forge as the shared tests see it.
type forgeCase struct {
	name string
	fake func(t testing.TB, token string, opts ...forgetest.Option) *forgetest.Server
	new  func(base string, tok config.Secret, log *slog.Logger) (Notifier, error)
	path string // path of the status post for repo@sha
	auth string // Authorization header the forge documents for testToken
}

func forgeCases() []forgeCase {
	return []forgeCase{
		{
			name: "github",
			fake: forgetest.NewGitHub,
			new: func(base string, tok config.Secret, log *slog.Logger) (Notifier, error) {
				return NewGitHub(GitHubOptions{BaseURL: base, Token: tok, Log: log})
			},
			path: "/repos/owner/app/statuses/" + sha,
			auth: "Bearer " + testToken.Reveal(),
		},
		{
			name: "forgejo",
			fake: forgetest.NewForgejo,
			new: func(base string, tok config.Secret, log *slog.Logger) (Notifier, error) {
				return NewForgejo(ForgejoOptions{BaseURL: base, Token: tok, Log: log})
			},
			path: "/api/v1/repos/owner/app/statuses/" + sha,
			auth: "token " + testToken.Reveal(),
		},
	}
}

// setup starts the forge's fake and a notifier for it that logs into the
// returned buffer.
func (fc forgeCase) setup(t *testing.T) (*forgetest.Server, Notifier, *logBuffer) {
	t.Helper()
	fake := fc.fake(t, testToken.Reveal())
	logs := &logBuffer{}
	n, err := fc.new(fake.URL(), testToken, logs.logger())
	if err != nil {
		t.Fatalf("new %s notifier: %v", fc.name, err)
	}
	return fake, n, logs
}

func testStatus() forge.Status {
	return forge.Status{
		Repo:        repo,
		SHA:         sha,
		Context:     "flakeship/app",
		Description: "Deployed 0123456 in 41s",
		TargetURL:   "https://flakeship.example/deploys/17",
		State:       forge.Success,
	}
}

// logBuffer collects JSON log lines; safe for concurrent use.
type logBuffer struct{ testenv.Buffer }

func (b *logBuffer) logger() *slog.Logger {
	return slog.New(slog.NewJSONHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// lines decodes the log lines.
func (b *logBuffer) lines(t *testing.T) []map[string]any {
	t.Helper()
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(b.String()))
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("log line %q: %v", sc.Text(), err)
		}
		out = append(out, m)
	}
	return out
}

func statusPosts(reqs []forgetest.Request) int {
	n := 0
	for _, r := range reqs {
		if r.Method == http.MethodPost {
			n++
		}
	}
	return n
}

func TestSetStatusSendsTheDocumentedRequest(t *testing.T) {
	for _, fc := range forgeCases() {
		t.Run(fc.name, func(t *testing.T) {
			fake, n, _ := fc.setup(t)
			if err := n.SetStatus(context.Background(), testStatus()); err != nil {
				t.Fatalf("SetStatus: %v", err)
			}

			reqs := fake.Requests()
			if len(reqs) != 1 {
				t.Fatalf("saw %d requests, want exactly the status post: %+v", len(reqs), reqs)
			}
			r := reqs[0]
			if r.Method != "POST" || r.Path != fc.path {
				t.Errorf("request = %s %s, want POST %s", r.Method, r.Path, fc.path)
			}
			if got := r.Header.Get("Authorization"); got != fc.auth {
				t.Errorf("Authorization = %q, want %q", got, fc.auth)
			}
			if got := r.Header.Get("Content-Type"); got != "application/json" {
				t.Errorf("Content-Type = %q, want application/json", got)
			}
			if got := r.Header.Get("User-Agent"); got != "flakeship" {
				t.Errorf("User-Agent = %q, want flakeship", got)
			}
			var body map[string]any
			if err := json.Unmarshal(r.Body, &body); err != nil {
				t.Fatalf("body %q: %v", r.Body, err)
			}
			wantBody := map[string]any{
				"state":       "success",
				"target_url":  "https://flakeship.example/deploys/17",
				"description": "Deployed 0123456 in 41s",
				"context":     "flakeship/app",
			}
			if !reflect.DeepEqual(body, wantBody) {
				t.Errorf("body = %v, want %v", body, wantBody)
			}

			got := fake.Statuses()
			if len(got) != 1 {
				t.Fatalf("recorded %d statuses, want 1", len(got))
			}
			got[0].Time = time.Time{}
			want := forgetest.Recorded{Repo: repo, SHA: sha, State: "success", Context: "flakeship/app",
				Description: "Deployed 0123456 in 41s", TargetURL: "https://flakeship.example/deploys/17"}
			if got[0] != want {
				t.Errorf("recorded %+v, want %+v", got[0], want)
			}
		})
	}
}

func TestSetStatusPostsEveryState(t *testing.T) {
	for _, fc := range forgeCases() {
		t.Run(fc.name, func(t *testing.T) {
			fake, n, _ := fc.setup(t)
			states := []forge.CommitState{forge.Pending, forge.Success, forge.Failure, forge.Error}
			for _, st := range states {
				s := testStatus()
				s.State = st
				if err := n.SetStatus(context.Background(), s); err != nil {
					t.Fatalf("SetStatus(%s): %v", st, err)
				}
			}
			var got []forge.CommitState
			for _, r := range fake.Statuses() {
				got = append(got, forge.CommitState(r.State))
			}
			if !reflect.DeepEqual(got, states) {
				t.Errorf("recorded states %v, want %v", got, states)
			}
		})
	}
}

// TestSetStatusMakesOneAttemptAndSaysWhenToTryAgain: a notifier does not
// retry (the status sender keeps the one retry policy); its error says
// whether trying again may help, and the forge's wait.
func TestSetStatusMakesOneAttemptAndSaysWhenToTryAgain(t *testing.T) {
	for _, fc := range forgeCases() {
		t.Run(fc.name, func(t *testing.T) {
			tests := []struct {
				name    string
				setup   func(*forgetest.Server)
				wantErr string
			}{
				{name: "a 502", setup: func(s *forgetest.Server) { s.FailNext(2, http.StatusBadGateway) }, wantErr: "502 Bad Gateway"},
				{name: "a 429", setup: func(s *forgetest.Server) { s.FailNext(2, http.StatusTooManyRequests) }, wantErr: "429 Too Many Requests"},
				{name: "a forge that is down", setup: func(s *forgetest.Server) { s.SetDown(true) }, wantErr: "EOF"},
			}
			for _, tc := range tests {
				t.Run(tc.name, func(t *testing.T) {
					fake, n, logs := fc.setup(t)
					tc.setup(fake)
					err := n.SetStatus(context.Background(), testStatus())
					want := fc.name + " status for owner/app@0123456: "
					if err == nil || !strings.HasPrefix(err.Error(), want) || !strings.Contains(err.Error(), tc.wantErr) {
						t.Fatalf("err = %v, want %q ... %q", err, want, tc.wantErr)
					}
					if again, _ := Temporary(err); !again {
						t.Errorf("Temporary(%v) = false, want true", err)
					}
					if got := len(fake.Requests()); got != 1 {
						t.Errorf("made %d requests, want 1 (no retry)", got)
					}
					lines := logs.lines(t)
					if len(lines) != 1 || lines[0]["level"] != "DEBUG" || lines[0]["msg"] != "commit status request" ||
						!strings.Contains(fmt.Sprint(lines[0]["err"]), tc.wantErr) {
						t.Errorf("logged %s, want one debug line with the error", logs)
					}
				})
			}
		})
	}
}

func TestSetStatusDoesNotRetryClientErrors(t *testing.T) {
	for _, fc := range forgeCases() {
		t.Run(fc.name, func(t *testing.T) {
			tests := []struct {
				name    string
				code    int    // FailNext code; 0 means post with a wrong token
				wantErr string // after "<forge> status for owner/app@0123456: "
			}{
				{name: "a wrong token is 401", wantErr: "401 Unauthorized"},
				{name: "403 is final", code: 403, wantErr: "403 Forbidden"},
				{name: "404 is final", code: 404, wantErr: "404 Not Found"},
				{name: "422 is final", code: 422, wantErr: "422 Unprocessable Entity"},
			}
			for _, tc := range tests {
				t.Run(tc.name, func(t *testing.T) {
					fake := fc.fake(t, testToken.Reveal())
					tok := testToken
					if tc.code == 0 {
						tok = "wrong-token-ab12cd"
					} else {
						fake.FailNext(10, tc.code)
					}
					n, err := fc.new(fake.URL(), tok, nil)
					if err != nil {
						t.Fatal(err)
					}
					err = n.SetStatus(context.Background(), testStatus())
					want := fc.name + " status for owner/app@0123456: " + tc.wantErr
					if err == nil || !strings.HasPrefix(err.Error(), want) {
						t.Fatalf("err = %v, want it to start with %q", err, want)
					}
					var apiErr *APIError
					if again, _ := Temporary(err); !errors.As(err, &apiErr) || again {
						t.Errorf("err = %#v, want a final *APIError", err)
					}
					if got := statusPosts(fake.Requests()); got != 1 {
						t.Errorf("made %d attempts, want 1 (no retry)", got)
					}
					if strings.Contains(err.Error(), tok.Reveal()) || strings.Contains(err.Error(), "\n") {
						t.Errorf("err = %q, want one line without the token", err)
					}
				})
			}
		})
	}
}

func TestTokenNeverAppearsInErrorsOrLogs(t *testing.T) {
	for _, fc := range forgeCases() {
		t.Run(fc.name, func(t *testing.T) {
			scenarios := []struct {
				name  string
				token config.Secret
				setup func(*forgetest.Server)
			}{
				{name: "wrong token", token: "ghp_wrongTOKENwrongTOKEN1234", setup: func(*forgetest.Server) {}},
				{name: "server errors", token: testToken, setup: func(s *forgetest.Server) { s.FailNext(10, 500) }},
				{name: "forge down", token: testToken, setup: func(s *forgetest.Server) { s.SetDown(true) }},
			}
			for _, sc := range scenarios {
				t.Run(sc.name, func(t *testing.T) {
					fake := fc.fake(t, testToken.Reveal())
					sc.setup(fake)
					logs := &logBuffer{}
					n, err := fc.new(fake.URL(), sc.token, logs.logger())
					if err != nil {
						t.Fatal(err)
					}
					err = n.SetStatus(context.Background(), testStatus())
					if err == nil {
						t.Fatal("SetStatus succeeded, want an error")
					}
					for what, text := range map[string]string{"error": err.Error(), "log": logs.String(), "printed notifier": fmt.Sprintf("%#v %+v %v %s", n, n, n, n)} {
						if strings.Contains(text, sc.token.Reveal()) {
							t.Errorf("%s shows the token: %s", what, text)
						}
					}
					if logs.String() == "" {
						t.Error("nothing logged; the test would prove nothing")
					}
				})
			}
		})
	}
}

func TestScrubRemovesATokenAnErrorWouldShow(t *testing.T) {
	p := &poster{token: testToken}
	for _, err := range []error{
		fmt.Errorf("dial: echo %s", testToken.Reveal()),
		&APIError{StatusCode: 400, Message: "bad token " + testToken.Reveal()},
	} {
		got := p.scrub(err)
		if strings.Contains(got.Error(), testToken.Reveal()) || !strings.Contains(got.Error(), "[redacted]") {
			t.Errorf("scrub(%T) = %q, want the token replaced by [redacted]", err, got)
		}
	}
	var apiErr *APIError
	if !errors.As(p.scrub(&APIError{StatusCode: 502, Message: testToken.Reveal()}), &apiErr) || !apiErr.Temporary() {
		t.Error("a scrubbed API error lost its type or retry class")
	}
	plain := errors.New("connection refused")
	if p.scrub(plain) != plain {
		t.Error("an error without the token was replaced")
	}
}

func TestDescriptionIsClippedToGitHubsLimit(t *testing.T) {
	for _, fc := range forgeCases() {
		t.Run(fc.name, func(t *testing.T) {
			fake, n, _ := fc.setup(t)
			s := testStatus()
			s.Description = "Build failed:\n" + strings.Repeat("é", 300)
			if err := n.SetStatus(context.Background(), s); err != nil {
				t.Fatalf("SetStatus: %v", err)
			}
			got := fake.Statuses()[0].Description
			if utf8.RuneCountInString(got) != 140 || !strings.HasPrefix(got, "Build failed: éé") || !strings.HasSuffix(got, "é…") {
				t.Errorf("description = %q (%d characters), want 140 on one line ending in …", got, utf8.RuneCountInString(got))
			}
		})
	}
}

func TestClipDescription(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{name: "short text is kept", in: "Deployed abc1234 in 41s", want: "Deployed abc1234 in 41s"},
		{name: "whitespace runs become one space", in: " Build failed:\n\tsee  log ", want: "Build failed: see log"},
		{name: "exactly 140 is kept", in: strings.Repeat("x", 140), want: strings.Repeat("x", 140)},
		{name: "141 is cut with an ellipsis", in: strings.Repeat("x", 141), want: strings.Repeat("x", 139) + "…"},
		{name: "multi-byte characters count as one", in: strings.Repeat("日", 200), want: strings.Repeat("日", 139) + "…"},
		{name: "empty stays empty", in: "", want: ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := clipDescription(tc.in); got != tc.want {
				t.Errorf("clipDescription = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestTargetURLIsSentOnlyIfHTTP(t *testing.T) {
	tests := []struct {
		name, url, want string
	}{
		{name: "https is kept", url: "https://flakeship.example/deploys/1", want: "https://flakeship.example/deploys/1"},
		{name: "http is kept", url: "http://127.0.0.1:8080/deploys/1", want: "http://127.0.0.1:8080/deploys/1"},
		{name: "javascript is dropped", url: "javascript:alert(1)", want: ""},
		{name: "a relative link is dropped", url: "/deploys/1", want: ""},
		{name: "ftp is dropped", url: "ftp://flakeship.example/x", want: ""},
		{name: "no host is dropped", url: "https:///deploys/1", want: ""},
		{name: "none stays none", url: "", want: ""},
	}
	for _, fc := range forgeCases() {
		t.Run(fc.name, func(t *testing.T) {
			fake, n, _ := fc.setup(t)
			for i, tc := range tests {
				t.Run(tc.name, func(t *testing.T) {
					s := testStatus()
					s.TargetURL = tc.url
					if err := n.SetStatus(context.Background(), s); err != nil {
						t.Fatalf("SetStatus: %v", err)
					}
					if got := fake.Statuses()[i].TargetURL; got != tc.want {
						t.Errorf("target URL = %q, want %q", got, tc.want)
					}
				})
			}
		})
	}
}

func TestInvalidStatusIsRejectedBeforeAnyRequest(t *testing.T) {
	tests := []struct {
		name    string
		edit    func(*forge.Status)
		wantErr string
	}{
		{name: "a short sha", edit: func(s *forge.Status) { s.SHA = "0123456" }, wantErr: "sha: want a 40-character"},
		{name: "an upper-case sha", edit: func(s *forge.Status) { s.SHA = strings.ToUpper(sha) }, wantErr: "sha: want a 40-character"},
		{name: "the all-zero sha", edit: func(s *forge.Status) { s.SHA = strings.Repeat("0", 40) }, wantErr: "sha: the all-zero"},
		{name: "a path in the sha", edit: func(s *forge.Status) { s.SHA = "../../../user/keys/0123456789abcdef012345" }, wantErr: "sha:"},
		{name: "a repo without owner", edit: func(s *forge.Status) { s.Repo = "app" }, wantErr: "status: repo: want owner/name"},
		{name: "a repo with three parts", edit: func(s *forge.Status) { s.Repo = "a/b/c" }, wantErr: "status: repo: want owner/name"},
		{name: "a repo climbing up", edit: func(s *forge.Status) { s.Repo = "owner/.." }, wantErr: "status: repo: want owner/name"},
		{name: "an unknown state", edit: func(s *forge.Status) { s.State = "warning" }, wantErr: `unknown state "warning"`},
		{name: "no state", edit: func(s *forge.Status) { s.State = "" }, wantErr: `unknown state ""`},
	}
	for _, fc := range forgeCases() {
		t.Run(fc.name, func(t *testing.T) {
			fake, n, _ := fc.setup(t)
			for _, tc := range tests {
				t.Run(tc.name, func(t *testing.T) {
					s := testStatus()
					tc.edit(&s)
					err := n.SetStatus(context.Background(), s)
					if err == nil || !strings.HasPrefix(err.Error(), fc.name+" status") || !strings.Contains(err.Error(), tc.wantErr) {
						t.Errorf("err = %v, want %q", err, tc.wantErr)
					}
				})
			}
			if got := len(fake.Requests()); got != 0 {
				t.Errorf("the forge saw %d requests, want none", got)
			}
		})
	}
}

func TestGitHubEnterpriseBaseURLIsUsedAsIs(t *testing.T) {
	fake := forgetest.NewGitHub(t, testToken.Reveal(), forgetest.WithPathPrefix("/api/v3"))
	for _, base := range []string{fake.URL(), strings.TrimSuffix(fake.URL(), "/")} {
		n, err := NewGitHub(GitHubOptions{BaseURL: base, Token: testToken})
		if err != nil {
			t.Fatal(err)
		}
		if err := n.SetStatus(context.Background(), testStatus()); err != nil {
			t.Fatalf("SetStatus via %s: %v", base, err)
		}
	}
	for _, r := range fake.Requests() {
		if want := "/api/v3/repos/owner/app/statuses/" + sha; r.Path != want {
			t.Errorf("path = %q, want %q", r.Path, want)
		}
	}
	if got := len(fake.Statuses()); got != 2 {
		t.Errorf("recorded %d statuses, want 2", got)
	}
}

func TestGitHubDefaultsToGitHubCom(t *testing.T) {
	g, err := NewGitHub(GitHubOptions{Token: testToken})
	if err != nil {
		t.Fatal(err)
	}
	if got := g.client().BaseURL.String(); got != "https://api.github.com/" {
		t.Errorf("base URL = %q, want https://api.github.com/", got)
	}
}

func TestForgejoTakesTheInstanceOrTheAPIRoot(t *testing.T) {
	for _, prefix := range []string{"", "/forgejo"} {
		fake := forgetest.NewForgejo(t, testToken.Reveal(), forgetest.WithPathPrefix(prefix))
		root := fake.URL()
		for _, base := range []string{root, strings.TrimSuffix(root, "/"), root + "api/v1/", root + "api/v1"} {
			n, err := NewForgejo(ForgejoOptions{BaseURL: base, Token: testToken})
			if err != nil {
				t.Fatal(err)
			}
			if err := n.SetStatus(context.Background(), testStatus()); err != nil {
				t.Errorf("SetStatus via %s: %v", base, err)
			}
		}
		// One request per post: the SDK is told not to ask /api/v1/version.
		for _, r := range fake.Requests() {
			if want := prefix + "/api/v1/repos/owner/app/statuses/" + sha; r.Method != "POST" || r.Path != want {
				t.Errorf("request %s %s, want only POST %s", r.Method, r.Path, want)
			}
		}
		if got := len(fake.Statuses()); got != 4 {
			t.Errorf("prefix %q: recorded %d statuses, want 4", prefix, got)
		}
	}
}

func TestNewRejectsBadOptions(t *testing.T) {
	tests := []struct {
		name    string
		new     func() error
		wantErr string
	}{
		{name: "github without a token", new: func() error { _, err := NewGitHub(GitHubOptions{}); return err }, wantErr: "github notifier: token is empty"},
		{name: "forgejo without a token", new: func() error {
			_, err := NewForgejo(ForgejoOptions{BaseURL: "https://codeberg.org/"})
			return err
		}, wantErr: "forgejo notifier: token is empty"},
		{name: "forgejo without a URL", new: func() error { _, err := NewForgejo(ForgejoOptions{Token: testToken}); return err }, wantErr: "base URL is required"},
		{name: "a scheme other than http(s)", new: func() error {
			_, err := NewGitHub(GitHubOptions{BaseURL: "ftp://github.example/", Token: testToken})
			return err
		}, wantErr: "want http or https"},
		{name: "a relative URL", new: func() error {
			_, err := NewForgejo(ForgejoOptions{BaseURL: "codeberg.org", Token: testToken})
			return err
		}, wantErr: "want http or https"},
		{name: "credentials in the URL", new: func() error {
			_, err := NewForgejo(ForgejoOptions{BaseURL: "https://bot:hunter2@codeberg.org/", Token: testToken})
			return err
		}, wantErr: "must not carry credentials"},
		{name: "a query", new: func() error {
			_, err := NewGitHub(GitHubOptions{BaseURL: "https://github.example/api/v3/?x=1", Token: testToken})
			return err
		}, wantErr: "must not have a query"},
		{name: "not a URL", new: func() error {
			_, err := NewGitHub(GitHubOptions{BaseURL: "http://[::1", Token: testToken})
			return err
		}, wantErr: "not a URL"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.new()
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want %q", err, tc.wantErr)
			}
			if strings.Contains(err.Error(), "hunter2") || strings.Contains(err.Error(), testToken.Reveal()) {
				t.Errorf("err = %q shows a secret", err)
			}
		})
	}
}

func TestSetStatusIsSafeForConcurrentUse(t *testing.T) {
	for _, fc := range forgeCases() {
		t.Run(fc.name, func(t *testing.T) {
			fake, n, _ := fc.setup(t)
			fake.FailNext(5, http.StatusBadGateway)
			const posts = 16
			errs := make(chan error, posts)
			var wg sync.WaitGroup
			for i := range posts {
				wg.Add(1)
				go func() {
					defer wg.Done()
					s := testStatus()
					s.Context = fmt.Sprintf("flakeship/t%d", i)
					// Five posts in all are refused: a post tries again
					// while its error says so, as a caller would.
					for range 10 {
						err := n.SetStatus(context.Background(), s)
						if again, _ := Temporary(err); err == nil || !again {
							errs <- err
							return
						}
					}
					errs <- errors.New("still refused after 10 tries")
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					t.Error(err)
				}
			}
			if got := len(fake.Statuses()); got != posts {
				t.Errorf("recorded %d statuses, want %d", got, posts)
			}
		})
	}
}

// TestNopPostsNothing: Nop has no forge to talk to, so a post could only go
// out through the process's default HTTP transport; the test records every
// request made through it (answering none) while Nop is asked for statuses.
func TestNopPostsNothing(t *testing.T) {
	var mu sync.Mutex
	var sent []string
	orig := http.DefaultTransport
	http.DefaultTransport = roundTripFunc(func(r *http.Request) (*http.Response, error) {
		mu.Lock()
		defer mu.Unlock()
		sent = append(sent, r.Method+" "+r.URL.String())
		return nil, errors.New("no network in this test")
	})
	t.Cleanup(func() { http.DefaultTransport = orig })

	var n Notifier = Nop{}
	for _, st := range []forge.CommitState{forge.Pending, forge.Success, forge.Failure, forge.Error} {
		s := testStatus()
		s.State = st
		if err := n.SetStatus(context.Background(), s); err != nil {
			t.Errorf("Nop.SetStatus(%s) = %v, want nil", st, err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(sent) != 0 {
		t.Errorf("Nop sent %d requests, want none: %v", len(sent), sent)
	}
}

// roundTripFunc is an http.RoundTripper made of a function.
type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func TestAPIErrorSaysCodeAndReason(t *testing.T) {
	tests := []struct {
		err  APIError
		want string
	}{
		{APIError{StatusCode: 401, Message: "Bad credentials"}, "401 Unauthorized: Bad credentials"},
		{APIError{StatusCode: 502, Message: "Bad Gateway"}, "502 Bad Gateway"},
		{APIError{StatusCode: 404}, "404 Not Found"},
		{APIError{StatusCode: 599}, "599"},
	}
	for _, tc := range tests {
		if got := tc.err.Error(); got != tc.want {
			t.Errorf("Error() = %q, want %q", got, tc.want)
		}
	}
}
