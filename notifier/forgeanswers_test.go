package notifier

import (
	"context"
	"errors"
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
			fake, n, logs := fc.setup(t)
			fake.AddCommits(repo, sha)

			s := testStatus()
			s.SHA = unknownSHA
			err := n.SetStatus(context.Background(), s)
			if err == nil || err.Error() != tc.wantErr {
				t.Fatalf("err = %v\nwant %s", err, tc.wantErr)
			}
			var apiErr *APIError
			if again, _ := Temporary(err); !errors.Is(err, ErrUnknownCommit) || !errors.As(err, &apiErr) || again {
				t.Errorf("err = %#v, want one that matches ErrUnknownCommit and is not temporary", err)
			}
			if got := len(posts(fake.Requests())); got != 1 {
				t.Errorf("posted %d times, want 1: a commit that is not there will not be there on a retry", got)
			}
			if got := len(logs.lines(t)); got != 1 {
				t.Errorf("logged %d lines, want the one debug line of the request: %s", got, logs)
			}
			t.Logf("%s: %d request(s) in all for a commit not on the forge: %v", tc.forge, len(fake.Requests()), err)

			// The commit that is there still gets its status.
			if err := n.SetStatus(context.Background(), testStatus()); err != nil {
				t.Fatalf("SetStatus for a commit on the forge: %v", err)
			}
		})
	}
}

func TestAForgejo500ForACommitThatIsThereIsTemporary(t *testing.T) {
	fake, n, _ := forgeCases()[1].setup(t)
	fake.AddCommits(repo, sha)
	fake.FailNext(1, http.StatusInternalServerError)
	err := n.SetStatus(context.Background(), testStatus())
	if again, _ := Temporary(err); err == nil || !again || errors.Is(err, ErrUnknownCommit) {
		t.Fatalf("SetStatus after a 500 for a commit the forge has: %v, want a temporary error", err)
	}
	if err := n.SetStatus(context.Background(), testStatus()); err != nil {
		t.Fatalf("SetStatus after the 500: %v", err)
	}
	if got := len(posts(fake.Requests())); got != 2 {
		t.Errorf("posted %d times, want 2 (the 500, then the status)", got)
	}
}

// refusedWait posts a status to fake, which must refuse it, and returns the
// wait the refusal asks for, as Temporary reads it.
func refusedWait(t *testing.T, fake *forgetest.Server, n Notifier) time.Duration {
	t.Helper()
	err := n.SetStatus(context.Background(), testStatus())
	again, wait := Temporary(err)
	if err == nil || !again {
		t.Fatalf("SetStatus under a rate limit = %v, want a temporary error", err)
	}
	if ps := posts(fake.Requests()); len(ps) != 1 || !ps[0].RateLimited || len(fake.Statuses()) != 0 {
		t.Fatalf("posts %+v, want one, refused under the limit", ps)
	}
	return wait
}

// TestSetStatusReadsTheWaitOfARateLimit posts under each rate limit the
// fakes play: the error says to wait as long as the forge asked (its reset,
// its retry-after, or GitHub's minute), and nothing is retried here. The
// limits last long enough that a wait read from the wrong header could not
// come out right by chance.
func TestSetStatusReadsTheWaitOfARateLimit(t *testing.T) {
	tests := []struct {
		name     string
		forge    int // index in forgeCases
		limit    forgetest.Limit
		min, max time.Duration // the wait asked for
	}{
		{name: "github primary limit (403) until its reset", limit: forgetest.Limit{Code: http.StatusForbidden},
			min: 9*time.Minute + 58*time.Second, max: 10*time.Minute + time.Second},
		{name: "github primary limit (429) until its reset", limit: forgetest.Limit{Code: http.StatusTooManyRequests},
			min: 9*time.Minute + 58*time.Second, max: 10*time.Minute + time.Second},
		{name: "github secondary limit, its retry-after", limit: forgetest.Limit{Secondary: true, Hint: forgetest.HintRetryAfter},
			min: 9*time.Minute + 58*time.Second, max: 10*time.Minute + time.Second},
		{name: "github secondary limit, until its reset", limit: forgetest.Limit{Secondary: true, Hint: forgetest.HintReset},
			min: 9*time.Minute + 58*time.Second, max: 10*time.Minute + time.Second},
		{name: "github secondary limit without a hint, a minute", limit: forgetest.Limit{Secondary: true, Hint: forgetest.HintNone},
			min: time.Minute, max: time.Minute},
		{name: "a proxy's 429 before forgejo, its Retry-After", forge: 1, limit: forgetest.Limit{},
			min: 9*time.Minute + 58*time.Second, max: 10*time.Minute + time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fake, n, _ := forgeCases()[tc.forge].setup(t)
			tc.limit.Until = time.Now().Add(10 * time.Minute)
			fake.RateLimit(tc.limit)
			wait := refusedWait(t, fake, n)
			if wait < tc.min || wait > tc.max {
				t.Errorf("wait = %v, want between %v and %v", wait, tc.min, tc.max)
			}
			t.Logf("%s: the refusal asks for a wait of %v", tc.name, wait.Round(time.Second))
		})
	}

	t.Run("a limit past an hour is waited an hour at most", func(t *testing.T) {
		fake, n, _ := forgeCases()[0].setup(t)
		fake.RateLimit(forgetest.Limit{Until: time.Now().Add(5 * time.Hour)})
		if wait := refusedWait(t, fake, n); wait != time.Hour {
			t.Errorf("wait = %v, want the one-hour cap", wait)
		}
	})
}
