package store

import (
	"context"
	"errors"
	"slices"
	"strings"
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

func TestUnpostedSearchesItsIndexAndListsByID(t *testing.T) {
	s := newTestStore(t)
	ctx := context.Background()
	rows, err := s.read.QueryContext(ctx, "EXPLAIN QUERY PLAN "+unpostedQuery, "")
	if err != nil {
		t.Fatal(err)
	}
	var plan []string
	for rows.Next() {
		var id, parent, unused int
		var detail string
		if err := rows.Scan(&id, &parent, &unused, &detail); err != nil {
			t.Fatal(err)
		}
		plan = append(plan, detail)
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		t.Fatal(err)
	}
	t.Logf("plan of Unposted: %q", plan)
	if len(plan) == 0 || !strings.HasPrefix(plan[0], "SEARCH deploys USING INDEX deploys_unposted") {
		t.Errorf("Unposted's plan %q, want a search of deploys_unposted: a scan reads every deploy at start-up", plan)
	}

	// Finished in the opposite order of their ids: still listed by id.
	t0 := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	var want []int64
	for i := range 3 {
		d := create(t, s, newDeploy("app", i))
		if err := d.Advance(deploy.Superseded, t0.Add(-time.Duration(i)*time.Minute)); err != nil {
			t.Fatal(err)
		}
		if err := s.Update(ctx, d); err != nil {
			t.Fatal(err)
		}
		want = append(want, d.ID)
	}
	got, err := s.Unposted(ctx, t0.Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ids(got), want) {
		t.Errorf("Unposted = %v, want %v", ids(got), want)
	}
}
