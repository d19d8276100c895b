package deploy

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flakeship/flakeship/config"
	"github.com/flakeship/flakeship/forge"
	"github.com/flakeship/flakeship/internal/forgetest"
	"github.com/flakeship/flakeship/internal/testenv"
	"github.com/flakeship/flakeship/notifier"
)

// TestStatusSenderPostsTheNewestStatusOfACommitLast queues statuses while
// the sender is not running, as they pile up while a forge is slow: the
// last one posted for a commit must be the last one sent, whatever was
// waiting before it.
func TestStatusSenderPostsTheNewestStatusOfACommitLast(t *testing.T) {
	fake := forgetest.NewGitHub(t, "tok")
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	n, err := notifier.NewGitHub(notifier.GitHubOptions{BaseURL: fake.URL(), Token: "tok", Log: log})
	if err != nil {
		t.Fatal(err)
	}
	ss := newStatusSender(n, log, time.Now, nil)
	sha := "abc1234def5678abc1234def5678abc1234def56"
	st := func(state forge.CommitState, desc string) forge.Status {
		return forge.Status{Repo: "acme/app", SHA: sha, Context: "flakeship/app", State: state, Description: desc}
	}
	// runOnce posts what waits, then stops.
	runOnce := func() {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { ss.run(ctx); close(done) }()
		flushCtx, cancelFlush := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancelFlush()
		if err := ss.flush(flushCtx); err != nil {
			t.Fatal(err)
		}
		cancel()
		<-done
	}
	// Deploy 1 of the commit waits and its pending status is posted.
	ss.send(st(forge.Pending, "Queued for deploy"), 1, false)
	runOnce()
	// While the forge is slow: deploy 2 of the same commit supersedes
	// it, starts, and is itself refused.
	ss.send(st(forge.Error, "Superseded by abc1234"), 1, true)
	ss.send(st(forge.Pending, "Fetching abc1234"), 2, false)
	ss.send(st(forge.Error, "Superseded by abc1234"), 2, true)
	runOnce()
	posted := fake.Statuses()
	if len(posted) == 0 || posted[len(posted)-1].State != "error" {
		t.Fatalf("posted %+v, want the error last", posted)
	}
}

// testPolicy is the policy newStatusSender gives every sender.
func testPolicy() statusPolicy {
	return newStatusSender(nil, nil, time.Now, nil).policy
}

// backoffBounds is the wait the policy may choose after failed attempt
// tries when the forge names none: the doubled wait, jittered to between
// half and all of it.
func backoffBounds(tries int) (lo, hi time.Duration) {
	full := statusRetryInitial
	for i := 1; i < tries; i++ {
		full = min(2*full, statusRetryMax)
	}
	return full / 2, full
}

func TestStatusPolicyBacksOffDoublingUpToItsMax(t *testing.T) {
	p := testPolicy()
	bad := &notifier.APIError{StatusCode: http.StatusBadGateway}
	tests := []struct {
		tries int
		full  time.Duration // the wait before jitter
	}{
		{1, 500 * time.Millisecond},
		{2, time.Second},
		{3, 2 * time.Second},
		{4, 4 * time.Second},
		{5, 8 * time.Second},
		{6, 16 * time.Second},
		{7, 30 * time.Second},
		{500, 30 * time.Second},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprint("after attempt ", tc.tries), func(t *testing.T) {
			seen := map[time.Duration]bool{}
			for range 200 {
				w, forgeAsked, again := p.next(bad, tc.tries, time.Minute)
				if !again || forgeAsked || w < tc.full/2 || w > tc.full {
					t.Fatalf("next = %v, %v, %v; want again after %v to %v of the policy's own", w, forgeAsked, again, tc.full/2, tc.full)
				}
				seen[w] = true
			}
			if len(seen) < 2 {
				t.Errorf("200 waits were all %v: no jitter", seen)
			}
		})
	}
}

func TestStatusPolicyKeepsToTheForgesWait(t *testing.T) {
	p := testPolicy()
	for _, tc := range []struct {
		name  string
		tries int
		ask   time.Duration
		lo    time.Duration
		hi    time.Duration
	}{
		{name: "a Retry-After of 3s", tries: 1, ask: 3 * time.Second, lo: 3 * time.Second, hi: 3 * time.Second},
		{name: "a secondary limit's minute", tries: 1, ask: time.Minute, lo: time.Minute, hi: time.Minute},
		{name: "a primary limit's hour", tries: 1, ask: time.Hour, lo: time.Hour, hi: time.Hour},
		{name: "an ask shorter than the backoff", tries: 10, ask: time.Second, lo: 15 * time.Second, hi: 30 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			limited := &notifier.APIError{StatusCode: http.StatusTooManyRequests, RetryAfter: tc.ask}
			w, forgeAsked, again := p.next(limited, tc.tries, 0)
			if !again || !forgeAsked || w < tc.lo || w > tc.hi {
				t.Errorf("next = %v, %v, %v; want again after %v to %v, asked by the forge", w, forgeAsked, again, tc.lo, tc.hi)
			}
		})
	}
}

func TestStatusPolicyGivesUpFinalRefusalsAtOnceAndTheRestAfterAnHour(t *testing.T) {
	p := testPolicy()
	down := &url.Error{Op: "Post", URL: "https://forge.example/", Err: io.EOF}
	tests := []struct {
		name string
		err  error
		age  time.Duration
		want bool
	}{
		{name: "a 502 just sent", err: &notifier.APIError{StatusCode: 502}, want: true},
		{name: "a forge down for 59 minutes", err: down, age: time.Hour - time.Second, want: true},
		{name: "a rate limit after 59 minutes", err: &notifier.APIError{StatusCode: 429, RetryAfter: time.Hour}, age: time.Hour - time.Second, want: true},
		{name: "a forge down for an hour", err: down, age: time.Hour, want: false},
		{name: "a rate limit after an hour", err: &notifier.APIError{StatusCode: 429, RetryAfter: time.Second}, age: time.Hour, want: false},
		{name: "a wrong token", err: &notifier.APIError{StatusCode: 401}, want: false},
		{name: "no permission", err: &notifier.APIError{StatusCode: 403}, want: false},
		{name: "an unknown repository", err: &notifier.APIError{StatusCode: 404}, want: false},
		{name: "a status the forge finds invalid", err: &notifier.APIError{StatusCode: 422}, want: false},
		{name: "an untrusted certificate", err: &url.Error{Op: "Post", URL: "https://x", Err: &tls.CertificateVerificationError{Err: x509.UnknownAuthorityError{}}}, want: false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, _, again := p.next(tc.err, 3, tc.age); again != tc.want {
				t.Errorf("again = %v, want %v", again, tc.want)
			}
		})
	}
}

// steppedTime is a sender's clock and timers in a test: each wait the
// sender asks for arrives on asked, and ends only when the test calls fire,
// which moves the clock on by it. Nothing in these tests waits for real.
type steppedTime struct {
	asked chan time.Duration
	mu    sync.Mutex
	now   time.Time
	timer chan time.Time // the last one handed out
}

func newSteppedTime() *steppedTime {
	return &steppedTime{asked: make(chan time.Duration, 1000), now: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
}

func (c *steppedTime) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *steppedTime) After(d time.Duration) <-chan time.Time {
	ch := make(chan time.Time, 1)
	c.mu.Lock()
	c.timer = ch
	c.mu.Unlock()
	c.asked <- d
	return ch
}

// next waits until the sender asks for a wait, and returns it.
func (c *steppedTime) next(t *testing.T) time.Duration {
	t.Helper()
	select {
	case d := <-c.asked:
		return d
	case <-time.After(time.Minute):
		t.Fatal("the sender asked for no wait within a minute")
		return 0
	}
}

// fire ends the last wait, d later.
func (c *steppedTime) fire(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	ch, now := c.timer, c.now
	c.mu.Unlock()
	ch <- now
}

// senderRig is a status sender running against a fake forge, on stepped
// time, with its log and the deploys it reports posted.
type senderRig struct {
	t     *testing.T
	ss    *statusSender
	fake  *forgetest.Server
	clock *steppedTime
	logs  *testenv.Buffer
	start time.Time

	mu     sync.Mutex
	posted []int64
}

// knownSHA is the commit the rigs' fakes have.
const knownSHA = "abc1234def5678abc1234def5678abc1234def56"

// newSenderRig starts a sender for a notifier of the forge kind, "github"
// or "forgejo", whose fake knows acme/app at knownSHA; token is what the
// notifier sends, "tok" being the right one.
func newSenderRig(t *testing.T, kind string, token config.Secret) *senderRig {
	t.Helper()
	r := &senderRig{t: t, clock: newSteppedTime(), logs: &testenv.Buffer{}}
	r.start = r.clock.Now()
	log := slog.New(slog.NewJSONHandler(r.logs, nil))
	var n notifier.Notifier
	var err error
	switch kind {
	case "github":
		r.fake = forgetest.NewGitHub(t, "tok")
		n, err = notifier.NewGitHub(notifier.GitHubOptions{BaseURL: r.fake.URL(), Token: token, Log: log})
	default:
		r.fake = forgetest.NewForgejo(t, "tok")
		n, err = notifier.NewForgejo(notifier.ForgejoOptions{BaseURL: r.fake.URL(), Token: token, Log: log})
	}
	if err != nil {
		t.Fatal(err)
	}
	r.fake.AddCommits("acme/app", knownSHA)
	r.ss = newStatusSender(n, log, r.clock.Now, func(id int64) {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.posted = append(r.posted, id)
	})
	r.ss.after = r.clock.After
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.ss.run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return r
}

func appStatus(sha string, state forge.CommitState) forge.Status {
	return forge.Status{Repo: "acme/app", SHA: sha, Context: "flakeship/app", State: state, Description: "Deployed"}
}

// postedIDs returns the deploys whose final status the sender reported.
func (r *senderRig) postedIDs() []int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.posted)
}

// flush flushes the sender with a minute to spare, which only a hang uses.
func (r *senderRig) flush() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return r.ss.flush(ctx)
}

// lines returns the sender's log lines with message msg.
func (r *senderRig) lines(msg string) []map[string]any {
	r.t.Helper()
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(r.logs.String()))
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			r.t.Fatalf("log line %q: %v", sc.Text(), err)
		}
		if m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}

const (
	willRetry = "commit status not delivered, will retry"
	gaveUp    = "commit status not posted"
)

// TestStatusSenderRetriesOnItsScheduleUntilTheForgeTakesIt refuses a final
// status three times, as a forge in trouble does: each time the sender
// logs the failure and waits as long as its schedule says (stepped here,
// not slept), then the forge takes it and the deploy counts as posted.
func TestStatusSenderRetriesOnItsScheduleUntilTheForgeTakesIt(t *testing.T) {
	for _, kind := range []string{"github", "forgejo"} {
		for _, tc := range []struct {
			name    string
			fail    func(*forgetest.Server)
			recover func(*forgetest.Server)
			wantErr string
		}{
			{name: "502", fail: func(s *forgetest.Server) { s.FailNext(3, http.StatusBadGateway) }, wantErr: "502 Bad Gateway"},
			{name: "429 without a wait", fail: func(s *forgetest.Server) { s.FailNext(3, http.StatusTooManyRequests) }, wantErr: "429 Too Many Requests"},
			{name: "down", fail: func(s *forgetest.Server) { s.SetDown(true) }, recover: func(s *forgetest.Server) { s.SetDown(false) }, wantErr: "EOF"},
		} {
			t.Run(kind+"/"+tc.name, func(t *testing.T) {
				r := newSenderRig(t, kind, "tok")
				tc.fail(r.fake)
				r.ss.send(appStatus(knownSHA, forge.Success), 5, true)
				var waits []time.Duration
				for tries := 1; tries <= 3; tries++ {
					w := r.clock.next(t)
					if lo, hi := backoffBounds(tries); w < lo || w > hi {
						t.Errorf("wait after attempt %d = %v, want %v to %v", tries, w, lo, hi)
					}
					waits = append(waits, w)
					if tries == 3 && tc.recover != nil {
						tc.recover(r.fake)
					}
					r.clock.fire(w)
				}
				r.fake.WaitFor(t, time.Minute, func(s []forgetest.Recorded) bool { return len(s) == 1 })
				if err := r.flush(); err != nil {
					t.Fatal(err)
				}
				if got := len(r.fake.Requests()); got != 4 {
					t.Errorf("the forge saw %d posts, want 4 (3 refused, then the status)", got)
				}
				lines := r.lines(willRetry)
				if len(lines) != 3 {
					t.Fatalf("logged %d retries, want 3:\n%s", len(lines), r.logs)
				}
				for i, l := range lines {
					if l["level"] != "WARN" || l["attempt"] != float64(i+1) || !strings.Contains(fmt.Sprint(l["err"]), tc.wantErr) ||
						l["retry_in"] != float64(waits[i]) || l["sha"] != "abc1234" {
						t.Errorf("retry line %d: %v, want attempt %d, its wait and the error", i+1, l, i+1)
					}
				}
				if got := r.postedIDs(); !slices.Equal(got, []int64{5}) {
					t.Errorf("deploys posted: %v, want [5]", got)
				}
				t.Logf("%s %s: 3 refusals, waits %v, then the status", kind, tc.name, waits)
			})
		}
	}
}

// TestStatusSenderWaitsAsLongAsTheForgeAsks plays each rate limit of the
// fakes: the sender waits what the forge asked for (up to an hour), holds
// the statuses sent meanwhile, and a flush does not cut the forge's wait
// short. Once the limit is over and the wait ends, all are posted in order.
func TestStatusSenderWaitsAsLongAsTheForgeAsks(t *testing.T) {
	tenMinutes := [2]time.Duration{9*time.Minute + 58*time.Second, 10*time.Minute + time.Second}
	for _, tc := range []struct {
		name  string
		kind  string
		limit forgetest.Limit
		want  [2]time.Duration // the wait, from and to
	}{
		{name: "github primary limit (403)", kind: "github", limit: forgetest.Limit{Code: http.StatusForbidden}, want: tenMinutes},
		{name: "github primary limit (429)", kind: "github", limit: forgetest.Limit{Code: http.StatusTooManyRequests}, want: tenMinutes},
		{name: "github secondary limit with retry-after", kind: "github", limit: forgetest.Limit{Secondary: true, Hint: forgetest.HintRetryAfter}, want: tenMinutes},
		{name: "github secondary limit with its reset", kind: "github", limit: forgetest.Limit{Secondary: true, Hint: forgetest.HintReset}, want: tenMinutes},
		{name: "github secondary limit without a hint", kind: "github", limit: forgetest.Limit{Secondary: true, Hint: forgetest.HintNone}, want: [2]time.Duration{time.Minute, time.Minute}},
		{name: "github limit past an hour", kind: "github", limit: forgetest.Limit{Until: time.Now().Add(5 * time.Hour)}, want: [2]time.Duration{time.Hour, time.Hour}},
		{name: "a proxy's 429 before forgejo", kind: "forgejo", want: tenMinutes},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newSenderRig(t, tc.kind, "tok")
			if tc.limit.Until.IsZero() {
				tc.limit.Until = time.Now().Add(10 * time.Minute)
			}
			r.fake.RateLimit(tc.limit)
			other := "1111111def5678abc1234def5678abc1234def56"
			r.fake.AddCommits("acme/app", other)
			r.ss.send(appStatus(knownSHA, forge.Success), 1, true)
			w := r.clock.next(t)
			if w < tc.want[0] || w > tc.want[1] {
				t.Errorf("wait = %v, want %v to %v", w, tc.want[0], tc.want[1])
			}
			// Sent during the wait: it waits too, and a flush keeps to the
			// forge's wait (it may only run out of time).
			r.ss.send(appStatus(other, forge.Pending), 2, false)
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			err := r.ss.flush(ctx)
			cancel()
			if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "2 not posted") {
				t.Errorf("flush during the forge's wait = %v, want it out of time with 2 not posted", err)
			}
			if got := len(r.fake.Requests()); got != 1 {
				t.Fatalf("the forge saw %d posts during its wait, want 1 (the refused one)", got)
			}
			r.fake.RateLimit(forgetest.Limit{}) // the limit is over
			r.clock.fire(w)
			got := r.fake.WaitFor(t, time.Minute, func(s []forgetest.Recorded) bool { return len(s) == 2 })
			if got[0].SHA != knownSHA || got[1].SHA != other {
				t.Errorf("statuses %+v, want the refused one first", got)
			}
			if ids := r.postedIDs(); !slices.Equal(ids, []int64{1}) {
				t.Errorf("deploys posted: %v, want [1]", ids)
			}
			t.Logf("%s: 1 refusal, then a wait of %v as asked, then the statuses", tc.name, w.Round(time.Second))
		})
	}
}

// TestStatusSenderGivesUpAFinalRefusalAtOnce posts statuses the forge
// refuses for good: each is posted once, logged as an error, and the
// sender goes on with the next status at once, asking for no wait. Only a
// commit the forge does not have counts as settled (no restart posts it
// again); the other refusals are left for Start, as a corrected setting
// may get them through.
func TestStatusSenderGivesUpAFinalRefusalAtOnce(t *testing.T) {
	unknown := "0000000def5678abc1234def5678abc1234def56"
	for _, kind := range []string{"github", "forgejo"} {
		for _, tc := range []struct {
			name       string
			token      config.Secret
			status     forge.Status
			wantErr    string
			wantPosts  int  // posts of the refused status
			wantSettle bool // counted as posted
		}{
			{name: "commit not on the forge", token: "tok", status: appStatus(unknown, forge.Success),
				wantErr: "the commit is not on the forge", wantPosts: 1, wantSettle: true},
			{name: "unknown repository", token: "tok", status: forge.Status{Repo: "acme/gone", SHA: knownSHA, Context: "flakeship/app", State: forge.Success},
				wantErr: "404 Not Found", wantPosts: 1},
			{name: "wrong token", token: "not-the-token", status: appStatus(knownSHA, forge.Success),
				wantErr: "401 Unauthorized", wantPosts: 1},
			{name: "invalid status", token: "tok", status: appStatus(knownSHA, "warning"),
				wantErr: `unknown state "warning"`, wantPosts: 0},
		} {
			t.Run(kind+"/"+tc.name, func(t *testing.T) {
				r := newSenderRig(t, kind, tc.token)
				r.ss.send(tc.status, 7, true)
				if tc.token == "tok" {
					r.ss.send(appStatus(knownSHA, forge.Failure), 8, true)
				}
				if err := r.flush(); err != nil {
					t.Fatalf("flush: %v: a status still waits", err)
				}
				if len(r.clock.asked) != 0 {
					t.Errorf("the sender asked to wait %v: a final refusal was retried", <-r.clock.asked)
				}
				tries := 0
				for _, req := range r.fake.Requests() {
					if req.Method == http.MethodPost && strings.Contains(req.Path, tc.status.Repo+"/statuses/"+tc.status.SHA) &&
						strings.Contains(string(req.Body), string(tc.status.State)) {
						tries++
					}
				}
				if tries != tc.wantPosts {
					t.Errorf("the refused status was posted %d times, want %d", tries, tc.wantPosts)
				}
				lines := r.lines(gaveUp)
				if len(lines) != 1 || lines[0]["level"] != "ERROR" || lines[0]["gave_up"] != "refused for good" ||
					!strings.Contains(fmt.Sprint(lines[0]["err"]), tc.wantErr) || lines[0]["attempt"] != float64(1) {
					t.Errorf("give-up lines %v, want one error saying %q", lines, tc.wantErr)
				}
				if strings.Contains(r.logs.String(), string(tc.token)) && tc.token != "tok" {
					t.Errorf("the log shows the token:\n%s", r.logs)
				}
				var want []int64
				if tc.wantSettle {
					want = append(want, 7)
				}
				if tc.token == "tok" {
					want = append(want, 8)
					if got := r.fake.Statuses(); len(got) != 1 || got[0].State != "failure" {
						t.Errorf("statuses on the forge: %+v, want the next one through", got)
					}
				}
				if got := r.postedIDs(); !slices.Equal(got, want) {
					t.Errorf("deploys counted as posted: %v, want %v", got, want)
				}
				t.Logf("%s %s: %d post(s), then given up: %v", kind, tc.name, tries, lines[0]["err"])
			})
		}
	}
}

// TestStatusSenderGivesUpAfterAnHourOfAForgeDown keeps the forge down:
// the sender tries on its schedule until the status has waited an hour,
// then gives it up, leaving a final status unposted for the next Start.
func TestStatusSenderGivesUpAfterAnHourOfAForgeDown(t *testing.T) {
	r := newSenderRig(t, "github", "tok")
	r.fake.SetDown(true)
	r.ss.send(appStatus(knownSHA, forge.Success), 9, true)
	waits := 0
	for r.clock.Now().Sub(r.start) < time.Hour {
		r.clock.fire(r.clock.next(t))
		waits++
	}
	if !r.logs.Wait(time.Minute, func(s string) bool { return strings.Contains(s, gaveUp) }) {
		t.Fatalf("not given up after an hour:\n%s", r.logs)
	}
	if err := r.flush(); err != nil {
		t.Fatalf("flush: %v: the status still waits", err)
	}
	attempts := len(r.fake.Requests())
	lines := r.lines(gaveUp)
	if len(lines) != 1 || lines[0]["attempt"] != float64(attempts) ||
		!strings.HasPrefix(fmt.Sprint(lines[0]["gave_up"]), "still refused after 1h") {
		t.Errorf("give-up lines %v, want one at attempt %d, after an hour", lines, attempts)
	}
	if attempts != waits+1 || len(r.lines(willRetry)) != waits {
		t.Errorf("%d attempts, %d retries logged, %d waits: want one attempt per wait and one first", attempts, len(r.lines(willRetry)), waits)
	}
	if got := r.postedIDs(); len(got) != 0 {
		t.Errorf("deploys counted as posted: %v, want none: Start owes it", got)
	}
	if _, left := r.ss.state(); left != 0 {
		t.Errorf("%d statuses still wait, want none", left)
	}
	// The schedule's bounds: 0.5+1+2+4+8+16 s at most before the waits of
	// 15 to 30 s, all jittered.
	if attempts < 3600/30 || attempts > 3600/15+7 {
		t.Errorf("%d attempts in an hour, want %d to %d", attempts, 3600/30, 3600/15+7)
	}
	t.Logf("a forge down for an hour: %d posts of the status, the last at %v, then given up",
		attempts, r.clock.Now().Sub(r.start).Round(time.Second))
}

// TestStatusSenderKeepsAStatusWhenStopped stops the sender while a refused
// status waits to be tried again, and while a post is under way: run
// returns at once, and the status is still there for the next run, which
// posts it.
func TestStatusSenderKeepsAStatusWhenStopped(t *testing.T) {
	for _, midPost := range []bool{false, true} {
		t.Run(map[bool]string{false: "mid-wait", true: "mid-post"}[midPost], func(t *testing.T) {
			fake := forgetest.NewGitHub(t, "tok")
			log := slog.New(slog.DiscardHandler)
			n, err := notifier.NewGitHub(notifier.GitHubOptions{BaseURL: fake.URL(), Token: "tok", Log: log})
			if err != nil {
				t.Fatal(err)
			}
			clock := newSteppedTime()
			held := &heldNotifier{posting: make(chan struct{}, 1)}
			ss := newStatusSender(n, log, clock.Now, nil)
			if midPost {
				ss.n = held
			}
			ss.after = clock.After
			if !midPost {
				fake.FailNext(1, http.StatusBadGateway)
			}
			ss.send(appStatus(knownSHA, forge.Success), 1, true)

			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { ss.run(ctx); close(done) }()
			if midPost {
				<-held.posting
			} else {
				clock.next(t) // refused, waiting
			}
			cancel()
			select {
			case <-done:
			case <-time.After(time.Minute):
				t.Fatal("run did not return when its context ended")
			}
			if _, left := ss.state(); left != 1 {
				t.Fatalf("%d statuses wait after the stop, want the one not posted", left)
			}

			ss.n = n
			ctx, cancel = context.WithCancel(context.Background())
			done = make(chan struct{})
			go func() { ss.run(ctx); close(done) }()
			defer func() { cancel(); <-done }()
			fake.WaitFor(t, time.Minute, func(s []forgetest.Recorded) bool {
				return len(s) == 1 && s[0].SHA == knownSHA
			})
		})
	}
}

// heldNotifier is a post that never ends before its context: a forge that
// does not answer.
type heldNotifier struct{ posting chan struct{} }

func (h *heldNotifier) SetStatus(ctx context.Context, _ forge.Status) error {
	h.posting <- struct{}{}
	<-ctx.Done()
	return ctx.Err()
}

// TestFlushCutsTheSendersOwnWaitShort refuses a status once and then lets
// its wait stand: a flush (as at Shutdown) tries it at once, and returns
// when it is posted.
func TestFlushCutsTheSendersOwnWaitShort(t *testing.T) {
	r := newSenderRig(t, "forgejo", "tok")
	r.fake.FailNext(1, http.StatusServiceUnavailable)
	r.ss.send(appStatus(knownSHA, forge.Success), 3, true)
	r.clock.next(t) // never fired
	if err := r.flush(); err != nil {
		t.Fatalf("flush: %v", err)
	}
	if got := r.fake.Statuses(); len(got) != 1 {
		t.Errorf("statuses after the flush: %+v, want the refused one", got)
	}
	if got := r.postedIDs(); !slices.Equal(got, []int64{3}) {
		t.Errorf("deploys posted: %v, want [3]", got)
	}
}
