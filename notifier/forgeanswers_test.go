package notifier

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"testing"
	"time"

	"github.com/flakeship/flakeship/internal/forgetest"
)

// These tests feed the notifier the answers the fake forges give as the
// real ones do (see internal/forgetest): commits not on the forge, and rate
// limits.

// unknownSHA is a well-formed commit id the fakes are never told of.
const unknownSHA = "fedcba9876543210fedcba9876543210fedcba98"

// posts returns the status posts among reqs, in order.
func posts(reqs []forgetest.Request) []forgetest.Request {
	var out []forgetest.Request
	for _, r := range reqs {
		if r.Method == http.MethodPost {
			out = append(out, r)
		}
	}
	return out
}

func TestAStatusForACommitNotOnTheForgeFailsAtOnceSayingSo(t *testing.T) {
	tests := []struct {
		forge   string
		wantErr string
	}{
		{forge: "github", wantErr: "github status for owner/app@fedcba9: the commit is not on the forge (422 Unprocessable Entity: No commit found for SHA: " + unknownSHA + ")"},
		{forge: "forgejo", wantErr: "forgejo status for owner/app@fedcba9: the commit is not on the forge (500 Internal Server Error)"},
	}
	cases := map[string]forgeCase{}
	for _, fc := range forgeCases() {
		cases[fc.name] = fc
	}
	for _, tc := range tests {
		t.Run(tc.forge, func(t *testing.T) {
			fc := cases[tc.forge]
			// Attempts enough to run for long if it were taken for a
			// forge in trouble.
			fake, n, logs := fc.setup(t, RetryPolicy{Attempts: 50, Initial: time.Millisecond, Max: 2 * time.Millisecond})
			fake.AddCommits(repo, sha)

			s := testStatus()
			s.SHA = unknownSHA
			err := n.SetStatus(context.Background(), s)
			if err == nil || err.Error() != tc.wantErr {
				t.Fatalf("err = %v\nwant %s", err, tc.wantErr)
			}
			var apiErr *APIError
			if !errors.Is(err, ErrUnknownCommit) || !errors.As(err, &apiErr) || apiErr.Temporary() {
				t.Errorf("err = %#v, want one that matches ErrUnknownCommit and is not temporary", err)
			}
			if got := len(posts(fake.Requests())); got != 1 {
				t.Errorf("posted %d times, want 1: a commit that is not there will not be there on a retry", got)
			}
			if got := len(logs.lines(t)); got != 1 {
				t.Errorf("logged %d lines, want the one saying the status was not posted: %s", got, logs)
			}
			t.Logf("%s: %d request(s) in all for a commit not on the forge: %v", tc.forge, len(fake.Requests()), err)

			// The commit that is there still gets its status.
			if err := n.SetStatus(context.Background(), testStatus()); err != nil {
				t.Fatalf("SetStatus for a commit on the forge: %v", err)
			}
		})
	}
}

func TestAForgejo500ForACommitThatIsThereIsStillRetried(t *testing.T) {
	fake, n, _ := forgeCases()[1].setup(t, fast())
	fake.AddCommits(repo, sha)
	fake.FailNext(1, http.StatusInternalServerError)
	if err := n.SetStatus(context.Background(), testStatus()); err != nil {
		t.Fatalf("SetStatus after one 500: %v", err)
	}
	if got := len(posts(fake.Requests())); got != 2 {
		t.Errorf("posted %d times, want 2 (the 500, then the status)", got)
	}
}

// waitedFor returns the time between the refused post and the next one.
func waitedFor(t *testing.T, fake *forgetest.Server) (refused int, waited time.Duration) {
	t.Helper()
	ps := posts(fake.Requests())
	for i, p := range ps {
		if p.RateLimited {
			refused++
			if i+1 < len(ps) {
				waited = ps[i+1].Time.Sub(p.Time)
			}
		}
	}
	return refused, waited
}

func TestSetStatusWaitsUntilGitHubsPrimaryLimitResets(t *testing.T) {
	for _, code := range []int{http.StatusForbidden, http.StatusTooManyRequests} {
		t.Run(http.StatusText(code), func(t *testing.T) {
			// Backoff of milliseconds: only the forge's reset can make the
			// notifier wait long enough.
			fake, n, logs := forgeCases()[0].setup(t, fast())
			until := time.Now().Add(time.Second)
			fake.RateLimit(forgetest.Limit{Code: code, Until: until})

			if err := n.SetStatus(context.Background(), testStatus()); err != nil {
				t.Fatalf("SetStatus: %v", err)
			}
			refused, waited := waitedFor(t, fake)
			if refused != 1 || len(fake.Statuses()) != 1 {
				t.Errorf("refused %d posts, recorded %d statuses; want 1 refusal, then the status after the reset (%s)",
					refused, len(fake.Statuses()), logs)
			}
			reset := until.Truncate(time.Second).Add(time.Second) // x-ratelimit-reset, a whole second
			refusedAt := posts(fake.Requests())[0].Time
			t.Logf("primary limit (%d): 1 refusal %v before x-ratelimit-reset, next post %v after the refusal",
				code, reset.Sub(refusedAt).Round(time.Millisecond), waited.Round(time.Millisecond))
		})
	}
}

func TestSetStatusWaitsOutGitHubsSecondaryLimit(t *testing.T) {
	for _, hint := range []struct {
		name string
		hint forgetest.Hint
	}{{"retry-after", forgetest.HintRetryAfter}, {"x-ratelimit-reset", forgetest.HintReset}} {
		t.Run(hint.name, func(t *testing.T) {
			fake, n, logs := forgeCases()[0].setup(t, fast())
			fake.RateLimit(forgetest.Limit{Secondary: true, Hint: hint.hint, Until: time.Now().Add(time.Second)})
			if err := n.SetStatus(context.Background(), testStatus()); err != nil {
				t.Fatalf("SetStatus: %v", err)
			}
			refused, waited := waitedFor(t, fake)
			if refused != 1 || len(fake.Statuses()) != 1 {
				t.Errorf("refused %d posts, recorded %d statuses; want 1 refusal, then the status (%s)", refused, len(fake.Statuses()), logs)
			}
			t.Logf("secondary limit with %s: 1 refusal, next post %v later", hint.name, waited.Round(time.Millisecond))
		})
	}

	// Neither header: GitHub's docs say to wait at least a minute. The
	// test does not wait it out: it reads the wait the notifier announces,
	// then cancels.
	t.Run("no hint", func(t *testing.T) {
		fake := forgetest.NewGitHub(t, testToken.Reveal())
		fake.RateLimit(forgetest.Limit{Secondary: true, Hint: forgetest.HintNone, Until: time.Now().Add(time.Hour)})
		records := make(chan slog.Record, 10)
		n, err := NewGitHub(GitHubOptions{BaseURL: fake.URL(), Token: testToken, Retry: fast(),
			Log: slog.New(chanHandler(records))})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		done := make(chan error, 1)
		go func() { done <- n.SetStatus(ctx, testStatus()) }()

		var wait time.Duration
		select {
		case r := <-records:
			r.Attrs(func(a slog.Attr) bool {
				if a.Key == "retry_in" {
					wait = a.Value.Duration()
				}
				return true
			})
		case <-time.After(30 * time.Second):
			t.Fatal("no retry was announced")
		}
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("SetStatus = %v, want it cancelled while waiting", err)
		}
		if wait < time.Minute {
			t.Errorf("announced a wait of %v after a secondary limit without retry-after or reset; GitHub's docs ask for at least a minute", wait)
		}
		if got := len(posts(fake.Requests())); got != 1 {
			t.Errorf("posted %d times, want 1 (no retry within the minute)", got)
		}
		t.Logf("secondary limit without a hint: the notifier waits %v", wait)
	})
}

func TestSetStatusWaitsOutAProxyLimitInFrontOfForgejo(t *testing.T) {
	fake, n, logs := forgeCases()[1].setup(t, fast())
	fake.RateLimit(forgetest.Limit{Until: time.Now().Add(time.Second)})
	if err := n.SetStatus(context.Background(), testStatus()); err != nil {
		t.Fatalf("SetStatus: %v", err)
	}
	refused, waited := waitedFor(t, fake)
	if refused != 1 || len(fake.Statuses()) != 1 {
		t.Errorf("refused %d posts, recorded %d statuses; want 1 refusal (429, Retry-After), then the status (%s)", refused, len(fake.Statuses()), logs)
	}
	t.Logf("proxy 429 before Forgejo: 1 refusal, next post %v later", waited.Round(time.Millisecond))
}

// chanHandler is a slog.Handler that sends each record to a channel, so a
// test can wait for a log line instead of polling for it.
type chanHandler chan slog.Record

func (h chanHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h chanHandler) Handle(_ context.Context, r slog.Record) error {
	select {
	case h <- r.Clone():
	default: // the test reads only the first few
	}
	return nil
}
func (h chanHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h chanHandler) WithGroup(string) slog.Handler      { return h }
