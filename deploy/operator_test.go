package deploy_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flakeship/flakeship/deploy"
)

func TestManualDeployTakesTheBranchHeadARefOrASha(t *testing.T) {
	t.Parallel()
	r := newRig(t, "app")
	first, head := r.commit(true), r.commit(true)
	q := r.queue()
	ctx := context.Background()

	d, err := q.Deploy(ctx, "app", deploy.ManualRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if d.SHA != head || d.Trigger != deploy.TriggerManual || d.State != deploy.Queued {
		t.Fatalf("deploy of the branch head = %+v, want a queued manual deploy of %s", d, head)
	}
	if got := waitEnd(t, q, d.ID); got.State != deploy.Succeeded {
		t.Fatalf("manual deploy ended %s: %s", got.State, got.Error)
	}
	d, err = q.Deploy(ctx, "app", deploy.ManualRequest{Ref: "refs/heads/main"})
	if err != nil || d.SHA != head {
		t.Fatalf("deploy of ref main = %+v, %v; want %s", d, err, head)
	}
	waitEnd(t, q, d.ID)
	d, err = q.Deploy(ctx, "app", deploy.ManualRequest{SHA: first})
	if err != nil || d.SHA != first {
		t.Fatalf("deploy of sha = %+v, %v", d, err)
	}
	if got := waitEnd(t, q, d.ID); got.State != deploy.Succeeded {
		t.Fatalf("deploy of an older commit ended %s: %s", got.State, got.Error)
	}

	for _, tc := range []struct {
		name   string
		target string
		req    deploy.ManualRequest
		want   error
	}{
		{"unknown target", "nope", deploy.ManualRequest{}, deploy.ErrUnknownTarget},
		{"both ref and sha", "app", deploy.ManualRequest{Ref: "main", SHA: first}, deploy.ErrInvalid},
		{"short sha", "app", deploy.ManualRequest{SHA: first[:7]}, deploy.ErrInvalid},
		{"option-like ref", "app", deploy.ManualRequest{Ref: "--upload-pack=x"}, deploy.ErrInvalid},
		{"ref with ..", "app", deploy.ManualRequest{Ref: "a..b"}, deploy.ErrInvalid},
		{"missing branch", "app", deploy.ManualRequest{Ref: "nope"}, deploy.ErrInvalid},
	} {
		if _, err := q.Deploy(ctx, tc.target, tc.req); !errors.Is(err, tc.want) {
			t.Errorf("%s: err %v, want %v", tc.name, err, tc.want)
		}
	}
}

func TestRollbackMakesThePreviousBuildCurrentAgain(t *testing.T) {
	t.Parallel()
	r := newRig(t, "app")
	a, b := r.commit(true), r.commit(true)
	q := r.queue()
	ctx := context.Background()
	if _, err := q.Rollback(ctx, "app"); !errors.Is(err, deploy.ErrNothingToRollBack) {
		t.Fatalf("rollback before any deploy: %v, want ErrNothingToRollBack", err)
	}
	d1, _, _ := q.SubmitPush(ctx, "app", push(a, "a"))
	first := waitEnd(t, q, d1.ID)
	if _, err := q.Rollback(ctx, "app"); !errors.Is(err, deploy.ErrNothingToRollBack) {
		t.Fatalf("rollback after one deploy: %v, want ErrNothingToRollBack", err)
	}
	d2, _, _ := q.SubmitPush(ctx, "app", push(b, "b"))
	second := waitEnd(t, q, d2.ID)
	if second.Generation == first.Generation {
		t.Fatalf("two builds share generation %d", first.Generation)
	}

	rb, err := q.Rollback(ctx, "app")
	if err != nil {
		t.Fatal(err)
	}
	got := waitEnd(t, q, rb.ID)
	if got.State != deploy.Succeeded || got.Trigger != deploy.TriggerRollback || got.SHA != a || got.Generation != first.Generation {
		t.Fatalf("rollback = %+v, want succeeded at generation %d of %s", got, first.Generation, a)
	}
	if names := stepNames(got); names != "activate,verify" {
		t.Errorf("rollback steps %s, want activate,verify", names)
	}
	if link, _ := os.Readlink(r.cfg.Targets[0].Profile); !strings.HasSuffix(link, "-1-link") {
		t.Errorf("profile points at %s after the rollback, want generation 1", link)
	}
	ts, err := q.Targets(ctx)
	if err != nil || len(ts) != 1 || ts[0].CurrentSHA != a || ts[0].Generation != first.Generation {
		t.Fatalf("targets after rollback = %+v, %v", ts, err)
	}
	// Rolling back again goes forward to the other build: the one before
	// the current one.
	rb2, err := q.Rollback(ctx, "app")
	if err != nil {
		t.Fatal(err)
	}
	if got := waitEnd(t, q, rb2.ID); got.State != deploy.Succeeded || got.SHA != b {
		t.Fatalf("second rollback = %+v, want succeeded on %s", got, b)
	}
}

func TestTargetsShowWhatRunsAndWhatIsInFlight(t *testing.T) {
	t.Parallel()
	r := newRig(t, "app", "api")
	sha := r.commit(true)
	q := r.queue()
	ctx := context.Background()
	ts, err := q.Targets(ctx)
	if err != nil || len(ts) != 2 || ts[0].Name != "app" || ts[1].Name != "api" {
		t.Fatalf("targets = %+v, %v", ts, err)
	}
	if ts[0].CurrentSHA != "" || ts[0].LastDeploy != nil || ts[0].Repo != "acme/app" || ts[0].Branch != "main" {
		t.Errorf("target before any deploy = %+v", ts[0])
	}
	d, _, _ := q.SubmitPush(ctx, "app", push(sha, "x"))
	waitEnd(t, q, d.ID)
	ts, _ = q.Targets(ctx)
	if ts[0].CurrentSHA != sha || ts[0].Generation != 1 || ts[0].LastDeploy == nil || ts[0].LastDeploy.ID != d.ID ||
		ts[0].LastDeploy.URL == "" || ts[0].Running != nil || ts[0].Queued != nil {
		t.Errorf("target after a deploy = %+v", ts[0])
	}
}

// flushBuffer counts flushes, as a streaming HTTP writer would see them.
type flushBuffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	flushes int
}

func (b *flushBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns what was written so far.
func (b *flushBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (b *flushBuffer) Flush() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.flushes++
	return nil
}

func TestWriteLogFollowsADeployUntilItEnds(t *testing.T) {
	t.Parallel()
	r := newRig(t, "app")
	sha := r.commit(true)
	gate := r.holdBuild(sha)
	q := r.queue()
	ctx := context.Background()
	d, _, err := q.SubmitPush(ctx, "app", push(sha, "held"))
	if err != nil {
		t.Fatal(err)
	}

	// Following starts while the deploy is held in its build, and returns
	// only after its last line.
	var followed flushBuffer
	done := make(chan error, 1)
	go func() { done <- q.WriteLog(ctx, d.ID, &followed, true) }()
	gate.waitReached(t)
	deadline := time.Now().Add(2 * time.Minute) // a safety net: the build is held
	for !strings.Contains(followed.String(), "waiting at the gate\n") {
		if time.Now().After(deadline) {
			t.Fatalf("the follower never saw the build wait at the gate; it saw:\n%s", followed.String())
		}
		select {
		case err := <-done:
			t.Fatalf("following returned (%v) while the deploy was held in its build; it saw:\n%s", err, followed.String())
		case <-time.After(5 * time.Millisecond):
		}
	}
	select {
	case err := <-done:
		t.Fatalf("following returned (%v) while the deploy was held in its build", err)
	default:
	}
	gate.open()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(2 * time.Minute):
		t.Fatalf("following never returned after the build went on; it saw:\n%s", followed.String())
	}
	end, err := q.Get(ctx, d.ID)
	if err != nil || !end.State.Terminal() {
		t.Fatalf("WriteLog returned while the deploy was %s (%v)", end.State, err)
	}
	log := followed.buf.String()
	for _, want := range []string{"== fetch", "== build", "waiting at the gate\n", "through the gate\n", "== deployed " + sha[:7]} {
		if !strings.Contains(log, want) {
			t.Errorf("followed log lacks %q:\n%s", want, log)
		}
	}
	if followed.flushes < 2 {
		t.Errorf("the follower flushed %d times, want a flush per piece", followed.flushes)
	}
	var whole bytes.Buffer
	if err := q.WriteLog(ctx, d.ID, &whole, false); err != nil {
		t.Fatal(err)
	}
	if whole.String() != log {
		t.Errorf("the whole log differs from the followed one")
	}
	if err := q.WriteLog(ctx, 999, &whole, false); !errors.Is(err, deploy.ErrNotFound) {
		t.Errorf("log of an unknown deploy: %v, want ErrNotFound", err)
	}
}

func stepNames(d *deploy.Deploy) string {
	var names []string
	for _, s := range d.Steps {
		names = append(names, s.Name)
	}
	return strings.Join(names, ",")
}
