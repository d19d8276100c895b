package deploy_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/flakeship/flakeship/deploy"
)

// TestOldPushesNeverRollProductionBack replays deliveries of commits that
// are not newer than the newest one deployed.
func TestOldPushesNeverRollProductionBack(t *testing.T) {
	t.Parallel()
	r := newRig(t, "app")
	ctx := context.Background()
	// main: a - b
	a, b := r.commit(true), r.commit(true)
	q := r.queue()
	deployed := func(sha, delivery string) *deploy.Deploy {
		t.Helper()
		d, dup, err := q.SubmitPush(ctx, "app", push(sha, delivery))
		if err != nil || dup {
			t.Fatalf("submit %s: dup=%v err=%v", delivery, dup, err)
		}
		return waitEnd(t, q, d.ID)
	}
	if d := deployed(a, "a"); d.State != deploy.Succeeded {
		t.Fatalf("a: %+v", d)
	}
	if d := deployed(b, "b"); d.State != deploy.Succeeded {
		t.Fatalf("b: %+v", d)
	}
	for i, sha := range []string{a, b} {
		d := deployed(sha, fmt.Sprintf("replay-%d", i))
		if d.State != deploy.Superseded || built(d) {
			t.Errorf("replay of %s under a new delivery id = %+v, want superseded without a build", sha[:7], d)
		}
	}

	// An operator rolls back to a; a replay of b must not undo that.
	rb, err := q.Rollback(ctx, "app")
	if err != nil {
		t.Fatal(err)
	}
	if d := waitEnd(t, q, rb.ID); d.State != deploy.Succeeded || d.SHA != a {
		t.Fatalf("rollback: %+v", d)
	}
	if d := deployed(b, "replay-b-after-rollback"); d.State != deploy.Superseded {
		t.Errorf("replay of b after a rollback = %s, want superseded", d.State)
	}
	if ts, _ := q.Targets(ctx); ts[0].CurrentSHA != a {
		t.Errorf("after the replay %s runs, want a", ts[0].CurrentSHA[:7])
	}

	// A new push deploys.
	// main: a - b - c
	c := r.commit(true)
	if d := deployed(c, "c"); d.State != deploy.Succeeded {
		t.Fatalf("c: %+v", d)
	}

	// The branch is force-pushed back to a: a deploys, since the branch no
	// longer holds c.
	// main: a          (b and c dropped)
	r.repo.Reset(t, a)
	r.repo.Push(t, "main")
	if d := deployed(a, "rewind"); d.State != deploy.Succeeded || d.SHA != a {
		t.Errorf("push of a after the branch was rewound to it = %+v, want succeeded", d)
	}
}
