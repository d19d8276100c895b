package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/flakeship/flakeship/deploy"
	"github.com/flakeship/flakeship/forge"
)

// pruneNow is "now" in the retention tests; old deploys are two months
// older.
var (
	pruneNow = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	longAgo  = pruneNow.AddDate(0, -2, 0)
)

// ended stores a deploy of target that ended in state s at created, with a
// delivery id if delivery is not empty, and returns it.
func ended(t *testing.T, s *Store, target string, st deploy.State, created time.Time, delivery string, edit func(d *deploy.Deploy)) *deploy.Deploy {
	t.Helper()
	d := &deploy.Deploy{
		Target: target, Forge: forge.GitHub, Repo: "owner/" + target, Branch: "main",
		SHA: fmt.Sprintf("%040x", created.UnixNano()), Trigger: deploy.TriggerPush, State: st,
		CreatedAt: created, DeliveryID: delivery,
	}
	if st.Terminal() {
		f := created.Add(time.Minute)
		d.StartedAt, d.FinishedAt = &created, &f
	}
	if edit != nil {
		edit(d)
	}
	return create(t, s, d)
}

// pruneAll runs Prune until it says nothing is left, and returns every id
// it deleted and every id its callback was given.
func pruneAll(t *testing.T, s *Store, r deploy.PruneRule) (deleted, told []int64) {
	t.Helper()
	for range 10000 {
		ids, err := s.Prune(context.Background(), r, func(ids []int64) { told = append(told, ids...) })
		if err != nil {
			t.Fatalf("prune: %v", err)
		}
		if len(ids) > r.Limit {
			t.Fatalf("prune deleted %d deploys in one call, limit %d", len(ids), r.Limit)
		}
		deleted = append(deleted, ids...)
		if len(ids) < r.Limit {
			return deleted, told
		}
	}
	t.Fatal("prune never finished")
	return nil, nil
}

// storedIDs lists the ids of every stored deploy of target, oldest first.
func storedIDs(t *testing.T, s *Store, target string) []int64 {
	t.Helper()
	ds, err := s.List(context.Background(), deploy.Filter{Target: target, Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	out := ids(ds)
	slices.Reverse(out)
	return out
}

func TestPruneKeepsTheNewestRecentAndNeededDeploys(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t)
	at := func(i int) time.Time { return longAgo.Add(time.Duration(i) * time.Minute) }

	var want []int64 // the deploys of app that must survive
	keep := func(d *deploy.Deploy) *deploy.Deploy { want = append(want, d.ID); return d }
	succeeded := func(i int, trigger deploy.Trigger, gen int, out string) func(*deploy.Deploy) {
		return func(d *deploy.Deploy) {
			d.Trigger, d.Generation, d.OutPath = trigger, gen, "/nix/store/"+out
			d.DeliveryID = ""
			if trigger == deploy.TriggerPush {
				d.DeliveryID = fmt.Sprintf("ok-%d", i)
			}
		}
	}
	// Old history of app: two builds deployed by pushes, then an operator
	// rolled back to the first and forward again to the second. What runs
	// is the last rollback (gen 2), a rollback would go back to gen 1 (the
	// first rollback), and the replay guard compares with the second push.
	ended(t, s, "app", deploy.Succeeded, at(1), "", succeeded(1, deploy.TriggerPush, 1, "a"))
	high := keep(ended(t, s, "app", deploy.Succeeded, at(2), "", succeeded(2, deploy.TriggerPush, 2, "b")))
	// Failures and superseded pushes, each with its delivery id.
	var old []*deploy.Deploy
	for i := range 40 {
		st := deploy.Superseded
		if i%4 == 0 {
			st = deploy.Failed
		}
		old = append(old, ended(t, s, "app", st, at(10+i), fmt.Sprintf("old-%d", i), nil))
	}
	back := keep(ended(t, s, "app", deploy.Succeeded, at(60), "", succeeded(60, deploy.TriggerRollback, 1, "a")))
	// A deploy that was interrupted and whose retry still waits, and a
	// queued deploy from long ago (a stopped flakeship): none may go.
	interrupted := keep(ended(t, s, "app", deploy.Interrupted, at(61), "int", nil))
	keep(ended(t, s, "app", deploy.Queued, at(62), "", func(d *deploy.Deploy) {
		d.Trigger, d.RetryOf = deploy.TriggerRetry, &interrupted.ID
	}))
	keep(ended(t, s, "app", deploy.Fetching, at(63), "running", nil))
	for i := range 20 {
		ended(t, s, "app", deploy.Superseded, at(70+i), fmt.Sprintf("more-%d", i), nil)
	}
	keep(ended(t, s, "app", deploy.Succeeded, at(95), "", succeeded(95, deploy.TriggerRollback, 2, "b")))
	// The newest 5 of app, old as well; the first names a deploy that goes.
	var newest []*deploy.Deploy
	for i := range 5 {
		newest = append(newest, keep(ended(t, s, "app", deploy.Superseded, at(100+i), fmt.Sprintf("newest-%d", i), nil)))
	}
	newest[0].SupersededBy = &old[0].ID
	if err := s.Update(ctx, newest[0]); err != nil {
		t.Fatal(err)
	}

	// web: old deploys and recent ones; more recent ones than Keep.
	var webOld, webRecent []int64
	for i := range 30 {
		webOld = append(webOld, ended(t, s, "web", deploy.Failed, at(i), fmt.Sprintf("web-old-%d", i), nil).ID)
	}
	for i := range 8 {
		webRecent = append(webRecent, ended(t, s, "web", deploy.Superseded, pruneNow.AddDate(0, 0, -29).Add(time.Duration(i)*time.Minute),
			fmt.Sprintf("web-new-%d", i), nil).ID)
	}

	rule := deploy.PruneRule{Keep: 5, Before: pruneNow.Add(-30 * 24 * time.Hour), Limit: 7}
	deleted, told := pruneAll(t, s, rule)
	if !reflect.DeepEqual(deleted, told) {
		t.Errorf("prune deleted %v but told its caller of %v", deleted, told)
	}
	slices.Sort(want)
	if got := storedIDs(t, s, "app"); !reflect.DeepEqual(got, want) {
		t.Errorf("app keeps deploys %v, want %v (high-water %d, rollback target %d)", got, want, high.ID, back.ID)
	}
	if got := storedIDs(t, s, "web"); !reflect.DeepEqual(got, webRecent) {
		t.Errorf("web keeps deploys %v, want the recent ones %v", got, webRecent)
	}
	if len(deleted) != 1+40+20+len(webOld) {
		t.Errorf("deleted %d deploys, want %d", len(deleted), 1+40+20+len(webOld))
	}
	t.Logf("deleted %d deploys in calls of at most %d", len(deleted), rule.Limit)

	// The delivery ids of deleted deploys went with them; the others stay.
	err := s.Batch(ctx, func(tx deploy.StoreTx) error {
		for delivery, wantID := range map[string]int64{"old-0": 0, "web-old-3": 0, "int": interrupted.ID, "web-new-0": webRecent[0]} {
			target := "app"
			if delivery[:3] == "web" {
				target = "web"
			}
			id, err := tx.Delivered(ctx, forge.GitHub, delivery, target)
			if err != nil {
				return err
			}
			if id != wantID {
				t.Errorf("delivery %s is stored for deploy %d, want %d", delivery, id, wantID)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	// A kept deploy that named a deleted one names none now.
	if d, err := s.Get(ctx, newest[0].ID); err != nil || d.SupersededBy != nil {
		t.Errorf("deploy %d after its superseder was deleted: %+v, %v; want superseded_by null", newest[0].ID, d, err)
	}

	// Again: nothing is left to delete.
	if ids, err := s.Prune(ctx, rule, nil); err != nil || len(ids) != 0 {
		t.Errorf("second prune = %v, %v; want nothing", ids, err)
	}
}

func TestPruneSparesAYoungDelivery(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t)
	// Stored now, with its delivery; its record then claims an old
	// creation time. The delivery id is still young: the deploy stays.
	d := ended(t, s, "app", deploy.Failed, pruneNow, "young", nil)
	d.CreatedAt = longAgo
	d.StartedAt, d.FinishedAt = &longAgo, &longAgo
	if err := s.Update(ctx, d); err != nil {
		t.Fatal(err)
	}
	oldOne := ended(t, s, "app", deploy.Failed, longAgo, "old", nil)
	deleted, _ := pruneAll(t, s, deploy.PruneRule{Before: pruneNow.Add(-time.Hour), Limit: 10})
	if !reflect.DeepEqual(deleted, []int64{oldOne.ID}) {
		t.Errorf("deleted %v, want only %d", deleted, oldOne.ID)
	}
}

func TestPruneChecksItsRule(t *testing.T) {
	s := newTestStore(t)
	for _, r := range []deploy.PruneRule{{Limit: 0}, {Keep: -1, Limit: 1}} {
		if _, err := s.Prune(context.Background(), r, nil); err == nil {
			t.Errorf("prune with %+v: no error", r)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Prune(ctx, deploy.PruneRule{Limit: 1}, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("prune with a cancelled context: %v", err)
	}
}

func TestAStopWhilePruningCommitsWhatItToldAndLeavesNothingOpen(t *testing.T) {
	dir := t.TempDir()
	// Rounds, because a transaction bound to a cancelled context is ended
	// by a goroutine of database/sql's, sometimes before Close.
	for round := range 20 {
		path := filepath.Join(dir, fmt.Sprint(round), "flakeship.db")
		s, err := Open(context.Background(), path, nil)
		if err != nil {
			t.Fatal(err)
		}
		var made []int64
		for i := range 3 {
			made = append(made, ended(t, s, "app", deploy.Succeeded, longAgo.Add(time.Duration(i)*time.Minute), "", nil).ID)
		}
		// The stop comes while Prune is in its transaction: after the
		// deletes and after gone removed their logs, before the commit.
		// The deploys whose logs went must go too.
		ctx, stop := context.WithCancel(context.Background())
		ids, err := s.Prune(ctx, deploy.PruneRule{Keep: 1, Before: pruneNow, Limit: 100}, func([]int64) { stop() })
		stop()
		if err != nil || !slices.Equal(ids, made[:2]) {
			t.Fatalf("round %d: Prune stopped after telling = %v, %v; want %v, no error", round, ids, err, made[:2])
		}
		if got := storedIDs(t, s, "app"); !slices.Equal(got, made[2:]) {
			t.Fatalf("round %d: deploys %v stored after the prune, want %v", round, got, made[2:])
		}
		if err := s.Close(); err != nil {
			t.Fatalf("round %d: close: %v", round, err)
		}
		if _, err := os.Stat(path + cleanSuffix); err != nil {
			t.Fatalf("round %d: a stop while pruning left no clean-stop record: %v", round, err)
		}
	}
}
