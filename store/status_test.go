package store

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/flakeship/flakeship/deploy"
)

func TestUnpostedListsFinishedDeploysUntilMarked(t *testing.T) {
	s := newTestStore(t)
	ctx := context.Background()
	t0 := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	finish := func(d *deploy.Deploy, at time.Time) {
		t.Helper()
		if err := d.Advance(deploy.Superseded, at); err != nil {
			t.Fatal(err)
		}
		if err := s.Update(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	old := create(t, s, newDeploy("app", 1))
	finish(old, t0.Add(-48*time.Hour))
	done := create(t, s, newDeploy("app", 2))
	finish(done, t0)
	owed := create(t, s, newDeploy("app", 3))
	finish(owed, t0.Add(time.Minute))
	create(t, s, newDeploy("app", 4)) // queued: nothing owed yet

	if err := s.MarkStatusPosted(ctx, done.ID); err != nil {
		t.Fatal(err)
	}
	got, err := s.Unposted(ctx, t0.Add(-24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].ID != owed.ID {
		t.Fatalf("Unposted = %v, want only deploy %d", ids(got), owed.ID)
	}
	// An update of the deploy keeps the mark.
	if err := s.Update(ctx, done); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Unposted(ctx, t0.Add(-24*time.Hour)); len(got) != 1 {
		t.Errorf("after an update Unposted = %v, want 1 deploy", ids(got))
	}
	if err := s.MarkStatusPosted(ctx, 999); !errors.Is(err, deploy.ErrNotFound) {
		t.Errorf("marking an unknown deploy: %v, want ErrNotFound", err)
	}
}
