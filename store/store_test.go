package store

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/flakeship/flakeship/deploy"
	"github.com/flakeship/flakeship/forge"
)

// newTestStore opens a store in a new file under t.TempDir(), closed when
// the test ends.
func newTestStore(t testing.TB) *Store {
	t.Helper()
	return openTestStore(t, filepath.Join(t.TempDir(), "flakeship.db"))
}

// openTestStore opens the store at path, closed when the test ends.
func openTestStore(t testing.TB, path string) *Store {
	t.Helper()
	s, err := Open(context.Background(), path, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close store: %v", err)
		}
	})
	return s
}

// newDeploy is a queued push deploy of target, as the queue would make it.
func newDeploy(target string, n int) *deploy.Deploy {
	return &deploy.Deploy{
		Target:    target,
		Forge:     forge.GitHub,
		Repo:      "owner/" + target,
		Branch:    "main",
		SHA:       fmt.Sprintf("%040x", n),
		Trigger:   deploy.TriggerPush,
		State:     deploy.Queued,
		CreatedAt: time.Date(2024, 5, 1, 12, 0, 0, n, time.UTC),
	}
}

// create stores d or fails the test.
func create(t testing.TB, s *Store, d *deploy.Deploy) *deploy.Deploy {
	t.Helper()
	if err := s.Create(context.Background(), d); err != nil {
		t.Fatalf("create: %v", err)
	}
	return d
}

// utc is d as the store gives it back: every time in UTC, without a
// monotonic clock reading.
func utc(d *deploy.Deploy) *deploy.Deploy {
	c := *d
	c.CreatedAt = c.CreatedAt.UTC()
	c.StartedAt = utcPtr(c.StartedAt)
	c.FinishedAt = utcPtr(c.FinishedAt)
	if c.Steps != nil {
		c.Steps = make([]deploy.Step, len(d.Steps))
		for i, st := range d.Steps {
			st.StartedAt = st.StartedAt.UTC()
			st.FinishedAt = utcPtr(st.FinishedAt)
			c.Steps[i] = st
		}
	}
	return &c
}

func utcPtr(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC()
	return &u
}

func ptr[T any](v T) *T { return &v }

// ids are the ids of ds, in order.
func ids(ds []*deploy.Deploy) []int64 {
	out := []int64{}
	for _, d := range ds {
		out = append(out, d.ID)
	}
	return out
}

func TestDeployRoundTripsThroughCreateUpdateAndGet(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t)
	// Deploys for superseded_by and retry_of to point at.
	older := create(t, s, newDeploy("app", 1))
	newer := create(t, s, newDeploy("app", 2))

	// A zone east of UTC and a monotonic reading: the store gives back the
	// same instants in UTC.
	zone := time.FixedZone("CEST", 2*60*60)
	created := time.Now().In(zone)
	started := created.Add(1500 * time.Millisecond)
	fetched := started.Add(2*time.Second + 7)
	built := fetched.Add(41*time.Second + 123456789)
	finished := built.Add(3 * time.Second)

	full := &deploy.Deploy{
		Target: "app", Forge: forge.Forgejo, Repo: "owner/app", Branch: "release/1.x",
		SHA:     "0123456789abcdef0123456789abcdef01234567",
		Trigger: deploy.TriggerRetry, State: deploy.Superseded, Generation: 4,
		CreatedAt: created, StartedAt: &started, FinishedAt: &finished,
		Steps: []deploy.Step{
			{Name: "fetch", StartedAt: started, FinishedAt: &fetched, OK: true},
			{Name: "build", StartedAt: fetched, FinishedAt: &built, OK: false},
			{Name: "activate", StartedAt: built},
		},
		Error:        "nix build: exit status 1",
		SupersededBy: ptr(newer.ID),
		URL:          "https://deploy.example/deploys/3",
		Author:       "Zoë <zoe@example.org>",
		Message:      "fix: quotes ' \" and\nnew lines; DROP TABLE deploys;",
		Pusher:       "zoe",
		DeliveryID:   "6e8ac4e2-1b0f-4c52-8b7f-3c2a0f7b1d9e",
		OutPath:      "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-app",
		RetryOf:      ptr(older.ID),
	}
	tests := []struct {
		name string
		d    *deploy.Deploy
	}{
		{"a queued deploy with no steps", newDeploy("app", 3)},
		{"a deploy with an empty step list", func() *deploy.Deploy {
			d := newDeploy("web", 4)
			d.Steps = []deploy.Step{}
			return d
		}()},
		{"a deploy with every field set", full},
		{"a deploy with the zero creation time", func() *deploy.Deploy {
			d := newDeploy("web", 5)
			d.CreatedAt = time.Time{}
			return d
		}()},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := *tc.d
			create(t, s, &d)
			got, err := s.Get(ctx, d.ID)
			if err != nil {
				t.Fatalf("get: %v", err)
			}
			if want := utc(&d); !reflect.DeepEqual(got, want) {
				t.Errorf("after create, get = %+v\nwant %+v", got, want)
			}
			if !got.CreatedAt.Equal(d.CreatedAt) {
				t.Errorf("created_at = %v, want %v", got.CreatedAt, d.CreatedAt)
			}

			// Update writes every field: move the copy read back along.
			got.URL = fmt.Sprintf("https://deploy.example/deploys/%d", got.ID)
			got.Generation++
			got.Error += " (again)"
			got.Steps = append(got.Steps, deploy.Step{Name: "verify", StartedAt: finished.Add(time.Nanosecond)})
			got.SupersededBy = nil
			got.RetryOf = ptr(older.ID)
			if err := s.Update(ctx, got); err != nil {
				t.Fatalf("update: %v", err)
			}
			again, err := s.Get(ctx, d.ID)
			if err != nil {
				t.Fatalf("get: %v", err)
			}
			if want := utc(got); !reflect.DeepEqual(again, want) {
				t.Errorf("after update, get = %+v\nwant %+v", again, want)
			}
		})
	}
}

func TestCreateReturnsTheFirstDeployForADuplicateDelivery(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t)
	first := newDeploy("app", 1)
	first.DeliveryID = "d-1"
	create(t, s, first)

	again := newDeploy("app", 2)
	again.DeliveryID = "d-1"
	err := s.Create(ctx, again)
	if !errors.Is(err, deploy.ErrDuplicateDelivery) {
		t.Fatalf("create again: got %v, want ErrDuplicateDelivery", err)
	}
	if again.ID != first.ID {
		t.Errorf("create again set id %d, want the first deploy's %d", again.ID, first.ID)
	}
	if !strings.Contains(err.Error(), "d-1") {
		t.Errorf("error %q does not name the delivery", err)
	}

	all, err := s.List(ctx, deploy.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := ids(all), []int64{first.ID}; !reflect.DeepEqual(got, want) {
		t.Errorf("deploys = %v, want only the first %v", got, want)
	}
	var deliveries int
	if err := s.read.QueryRow(`SELECT count(*) FROM deliveries`).Scan(&deliveries); err != nil {
		t.Fatal(err)
	}
	if deliveries != 1 {
		t.Errorf("%d deliveries stored, want 1", deliveries)
	}
	// Nothing was used up: the next deploy gets the next id.
	if next := create(t, s, newDeploy("app", 3)); next.ID != first.ID+1 {
		t.Errorf("next deploy has id %d, want %d", next.ID, first.ID+1)
	}
}

func TestCreateKeysDeliveriesByForgeDeliveryAndTarget(t *testing.T) {
	tests := []struct {
		name          string
		forge         forge.Kind
		deliveryID    string
		target        string
		wantDuplicate bool
	}{
		{"the same delivery for the same target is a duplicate", forge.GitHub, "d-1", "app", true},
		{"the same delivery for another target is a new deploy", forge.GitHub, "d-1", "web", false},
		{"the same delivery id from another forge is a new deploy", forge.Forgejo, "d-1", "app", false},
		{"another delivery for the same target is a new deploy", forge.GitHub, "d-2", "app", false},
		{"no delivery id is never a duplicate", forge.GitHub, "", "app", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newTestStore(t)
			create(t, s, newDeploy("app", 0)) // no delivery id
			first := newDeploy("app", 1)
			first.DeliveryID = "d-1"
			create(t, s, first)

			d := newDeploy(tc.target, 2)
			d.Forge, d.DeliveryID = tc.forge, tc.deliveryID
			err := s.Create(context.Background(), d)
			switch {
			case tc.wantDuplicate && !errors.Is(err, deploy.ErrDuplicateDelivery):
				t.Fatalf("got %v, want ErrDuplicateDelivery", err)
			case tc.wantDuplicate && d.ID != first.ID:
				t.Errorf("duplicate got id %d, want %d", d.ID, first.ID)
			case !tc.wantDuplicate && err != nil:
				t.Fatalf("got %v, want a new deploy", err)
			case !tc.wantDuplicate && d.ID == first.ID:
				t.Errorf("new deploy got the first deploy's id %d", d.ID)
			}
		})
	}
}

func TestConcurrentCreatesAreEachStoredOnce(t *testing.T) {
	const goroutines, each = 32, 20
	ctx := context.Background()
	s := newTestStore(t)

	type result struct {
		delivery string
		id       int64
		err      error
	}
	results := make(chan result, goroutines*(each+1))
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				d := newDeploy(fmt.Sprintf("t%d", g%4), g*each+i)
				d.DeliveryID = fmt.Sprintf("g%d-%d", g, i)
				err := s.Create(ctx, d)
				results <- result{d.DeliveryID, d.ID, err}
			}
			// Every goroutine also sends one delivery they all share: one
			// of them stores it, the others get its id back.
			d := newDeploy("shared", g)
			d.DeliveryID = "shared"
			err := s.Create(ctx, d)
			results <- result{"shared", d.ID, err}
		}()
	}
	wg.Wait()
	close(results)

	seen := map[int64]string{}
	var sharedIDs []int64
	shared := 0
	for r := range results {
		if r.delivery == "shared" {
			sharedIDs = append(sharedIDs, r.id)
			switch {
			case r.err == nil:
				shared++
			case !errors.Is(r.err, deploy.ErrDuplicateDelivery):
				t.Errorf("shared delivery: %v", r.err)
			}
			if r.err != nil {
				continue
			}
		} else if r.err != nil {
			t.Errorf("delivery %s: %v", r.delivery, r.err)
			continue
		}
		if other, dup := seen[r.id]; dup {
			t.Errorf("deliveries %s and %s got the same id %d", other, r.delivery, r.id)
		}
		seen[r.id] = r.delivery
	}
	if shared != 1 {
		t.Errorf("the shared delivery was stored %d times, want once", shared)
	}
	for _, id := range sharedIDs {
		if id != sharedIDs[0] {
			t.Errorf("shared delivery ids %v, want all the same", sharedIDs)
			break
		}
	}

	all, err := s.List(ctx, deploy.Filter{Limit: maxLimit})
	if err != nil {
		t.Fatal(err)
	}
	if want := goroutines*each + 1; len(all) != want || len(seen) != want {
		t.Errorf("stored %d deploys, created %d, want %d", len(all), len(seen), want)
	}
	for _, d := range all {
		if seen[d.ID] != d.DeliveryID {
			t.Errorf("deploy %d has delivery %q, Create gave that id to %q", d.ID, d.DeliveryID, seen[d.ID])
		}
	}
}

// insertDeploys stores one deploy per state, in one transaction (much
// faster than n Creates, each with its fsync), and returns their ids.
func insertDeploys(t testing.TB, s *Store, ds []*deploy.Deploy) []int64 {
	t.Helper()
	tx, err := s.write.Begin()
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	var out []int64
	for _, d := range ds {
		args, err := deployArgs(d)
		if err != nil {
			t.Fatal(err)
		}
		res, err := tx.Exec(insertDeploy, args...)
		if err != nil {
			t.Fatal(err)
		}
		if d.ID, err = res.LastInsertId(); err != nil {
			t.Fatal(err)
		}
		out = append(out, d.ID)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestListSelectsNewestFirst(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t)
	// ids 1..6: app queued, web succeeded, app succeeded, app failed,
	// web queued, app succeeded.
	for i, d := range []struct {
		target string
		state  deploy.State
	}{
		{"app", deploy.Queued}, {"web", deploy.Succeeded}, {"app", deploy.Succeeded},
		{"app", deploy.Failed}, {"web", deploy.Queued}, {"app", deploy.Succeeded},
	} {
		n := newDeploy(d.target, i)
		n.State = d.state
		create(t, s, n)
	}
	tests := []struct {
		name   string
		filter deploy.Filter
		want   []int64
	}{
		{"no filter lists everything", deploy.Filter{}, []int64{6, 5, 4, 3, 2, 1}},
		{"a target", deploy.Filter{Target: "app"}, []int64{6, 4, 3, 1}},
		{"a state", deploy.Filter{State: deploy.Succeeded}, []int64{6, 3, 2}},
		{"a target and a state", deploy.Filter{Target: "web", State: deploy.Queued}, []int64{5}},
		{"a limit", deploy.Filter{Limit: 2}, []int64{6, 5}},
		{"a limit with a filter", deploy.Filter{Target: "app", Limit: 3}, []int64{6, 4, 3}},
		{"a negative limit is the default", deploy.Filter{Limit: -1}, []int64{6, 5, 4, 3, 2, 1}},
		{"an unknown target lists nothing", deploy.Filter{Target: "nope"}, []int64{}},
		{"an unknown state lists nothing", deploy.Filter{State: "lost"}, []int64{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := s.List(ctx, tc.filter)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(ids(got), tc.want) {
				t.Errorf("List(%+v) = %v, want %v", tc.filter, ids(got), tc.want)
			}
		})
	}
}

func TestListLimitsDefaultTo50AndStopAt1000(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t)
	ds := make([]*deploy.Deploy, maxLimit+1)
	for i := range ds {
		ds[i] = newDeploy("app", i)
	}
	insertDeploys(t, s, ds)
	for _, tc := range []struct {
		limit, want int
	}{{0, 50}, {1, 1}, {1000, 1000}, {1001, 1000}, {1 << 30, 1000}} {
		got, err := s.List(ctx, deploy.Filter{Limit: tc.limit})
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != tc.want {
			t.Errorf("List with limit %d gave %d deploys, want %d", tc.limit, len(got), tc.want)
		}
		if len(got) > 0 && got[0].ID != int64(len(ds)) {
			t.Errorf("List with limit %d starts at deploy %d, want the newest %d", tc.limit, got[0].ID, len(ds))
		}
	}
}

func TestUnfinishedListsDeploysNotInAnEndStateOldestFirst(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t)
	if got, err := s.Unfinished(ctx); err != nil || len(got) != 0 {
		t.Fatalf("Unfinished of an empty store = %v, %v; want none", got, err)
	}
	// Every state twice, ends in between, so order is by id, not by state.
	var ds []*deploy.Deploy
	for range 2 {
		for _, st := range deploy.States() {
			d := newDeploy("app", len(ds))
			d.State = st
			ds = append(ds, d)
		}
	}
	insertDeploys(t, s, ds)

	got, err := s.Unfinished(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var states []deploy.State
	for _, d := range got {
		states = append(states, d.State)
	}
	want := []deploy.State{
		deploy.Queued, deploy.Fetching, deploy.Building, deploy.Activating, deploy.Verifying,
		deploy.Queued, deploy.Fetching, deploy.Building, deploy.Activating, deploy.Verifying,
	}
	if !reflect.DeepEqual(states, want) {
		t.Errorf("Unfinished states = %v, want %v", states, want)
	}
	for i := 1; i < len(got); i++ {
		if got[i-1].ID >= got[i].ID {
			t.Errorf("Unfinished ids %v, want oldest first", ids(got))
			break
		}
	}
}

func TestLastSucceededIsTheNewestSucceededDeployOfTheTarget(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t)
	for i, st := range []deploy.State{
		deploy.Succeeded, deploy.Failed, deploy.Succeeded, deploy.RolledBack, deploy.Queued,
	} {
		d := newDeploy("app", i)
		d.State = st
		create(t, s, d)
	}
	web := newDeploy("web", 9)
	web.State = deploy.Failed
	create(t, s, web)

	tests := []struct {
		name    string
		target  string
		wantID  int64
		wantErr error
	}{
		{"a target with succeeded deploys", "app", 3, nil},
		{"a target without one", "web", 0, deploy.ErrNotFound},
		{"an unknown target", "nope", 0, deploy.ErrNotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d, err := s.LastSucceeded(ctx, tc.target)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("LastSucceeded(%q) error = %v, want %v", tc.target, err, tc.wantErr)
			}
			if err == nil && d.ID != tc.wantID {
				t.Errorf("LastSucceeded(%q) = deploy %d, want %d", tc.target, d.ID, tc.wantID)
			}
		})
	}
}

func TestUnknownDeploysAreNotFound(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t)
	create(t, s, newDeploy("app", 1))

	_, err := s.Get(ctx, 17)
	if !errors.Is(err, deploy.ErrNotFound) {
		t.Errorf("Get(17) error = %v, want ErrNotFound", err)
	}
	d := newDeploy("app", 2)
	d.ID = 17
	err = s.Update(ctx, d)
	if !errors.Is(err, deploy.ErrNotFound) {
		t.Errorf("Update of deploy 17 error = %v, want ErrNotFound", err)
	}
	if err != nil && !strings.Contains(err.Error(), "update deploy 17") {
		t.Errorf("Update error %q does not say what it did", err)
	}
}

func TestWritesRefuseUnknownStatesAndDeploys(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t)
	stored := create(t, s, newDeploy("app", 1))
	tests := []struct {
		name   string
		change func(d *deploy.Deploy)
	}{
		{"no state", func(d *deploy.Deploy) { d.State = "" }},
		{"an unknown state", func(d *deploy.Deploy) { d.State = "exploded" }},
		{"superseded by an unknown deploy", func(d *deploy.Deploy) { d.SupersededBy = ptr(int64(99)) }},
		{"a retry of an unknown deploy", func(d *deploy.Deploy) { d.RetryOf = ptr(int64(99)) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := newDeploy("app", 2)
			tc.change(d)
			if err := s.Create(ctx, d); err == nil {
				t.Errorf("Create succeeded")
			}
			d.ID = stored.ID
			if err := s.Update(ctx, d); err == nil {
				t.Errorf("Update succeeded")
			}
			all, err := s.List(ctx, deploy.Filter{})
			if err != nil {
				t.Fatal(err)
			}
			if want := []*deploy.Deploy{stored}; !reflect.DeepEqual(all, want) {
				t.Errorf("deploys = %+v, want only the first, unchanged: %+v", all, want)
			}
		})
	}
}

func TestReopenedStoreKeepsItsDeploys(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "flakeship.db")
	s, err := Open(ctx, path, nil)
	if err != nil {
		t.Fatal(err)
	}
	first := newDeploy("app", 1)
	first.DeliveryID = "d-1"
	create(t, s, first)
	second := create(t, s, newDeploy("app", 2))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = openTestStore(t, path)
	got, err := s.List(ctx, deploy.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	if want := []*deploy.Deploy{second, first}; !reflect.DeepEqual(got, want) {
		t.Errorf("after reopening, deploys = %+v, want %+v", got, want)
	}
	again := newDeploy("app", 3)
	again.DeliveryID = "d-1"
	if err := s.Create(ctx, again); !errors.Is(err, deploy.ErrDuplicateDelivery) || again.ID != first.ID {
		t.Errorf("after reopening, the first delivery again gave %d, %v; want %d, ErrDuplicateDelivery", again.ID, err, first.ID)
	}
	if third := create(t, s, newDeploy("app", 4)); third.ID != second.ID+1 {
		t.Errorf("after reopening, a new deploy got id %d, want %d", third.ID, second.ID+1)
	}
}

func TestCloseTwiceIsSafe(t *testing.T) {
	s, err := Open(context.Background(), filepath.Join(t.TempDir(), "flakeship.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("first close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
}

func TestOpenCreatesAPrivateDatabaseInWALMode(t *testing.T) {
	ctx := context.Background()
	// Characters a "file:" URI would otherwise read as query, fragment or escape.
	dir := filepath.Join(t.TempDir(), "state dir?x=1#frag%41", "deeper")
	path := filepath.Join(dir, "flakeship.db")
	s := openTestStore(t, path)
	create(t, s, newDeploy("app", 1))

	for _, c := range []struct {
		path string
		mode os.FileMode
	}{{filepath.Dir(dir), 0o700 | os.ModeDir}, {dir, 0o700 | os.ModeDir}, {path, 0o600}, {path + "-wal", 0o600}} {
		fi, err := os.Stat(c.path)
		if err != nil {
			t.Errorf("stat: %v", err)
			continue
		}
		if fi.Mode() != c.mode {
			t.Errorf("%s has mode %v, want %v", filepath.Base(c.path), fi.Mode(), c.mode)
		}
	}

	pragmas := []struct {
		db     *sql.DB
		pragma string
		want   string
	}{
		{s.write, "journal_mode", "wal"},
		{s.write, "synchronous", "2"}, // FULL
		{s.write, "foreign_keys", "1"},
		{s.write, "busy_timeout", "10000"},
		{s.write, "query_only", "0"},
		{s.read, "journal_mode", "wal"},
		{s.read, "synchronous", "2"},
		{s.read, "query_only", "1"},
		{s.read, "busy_timeout", "10000"},
	}
	for _, p := range pragmas {
		var got string
		if err := p.db.QueryRowContext(ctx, "PRAGMA "+p.pragma).Scan(&got); err != nil {
			t.Fatal(err)
		}
		pool := "writer"
		if p.db == s.read {
			pool = "reader"
		}
		if got != p.want {
			t.Errorf("%s: PRAGMA %s = %s, want %s", pool, p.pragma, got, p.want)
		}
	}
	if _, err := s.read.ExecContext(ctx, `DELETE FROM deploys`); err == nil {
		t.Errorf("a reader connection deleted deploys")
	}
}

func TestOpenFailsWhereItCannotCreateTheFile(t *testing.T) {
	tests := []struct {
		name     string
		setup    func(t *testing.T) string
		wantText string
		asNobody bool // as root, open in a child process run as nobody
	}{
		{"a parent is a file", func(t *testing.T) string {
			file := filepath.Join(t.TempDir(), "file")
			if err := os.WriteFile(file, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			return filepath.Join(file, "state", "flakeship.db")
		}, "not a directory", false},
		{"the path is a directory", func(t *testing.T) string {
			return t.TempDir()
		}, "is a directory", false},
		{"the directory is read-only", func(t *testing.T) string {
			// Readable and searchable by all, writable by none: root
			// ignores the mode, so as root nobody opens it (openAsNobody),
			// and for that the test's directories are made searchable.
			base := t.TempDir()
			for _, d := range []string{filepath.Dir(base), base} {
				if err := os.Chmod(d, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			dir := filepath.Join(base, "ro")
			if err := os.Mkdir(dir, 0o555); err != nil {
				t.Fatal(err)
			}
			return filepath.Join(dir, "flakeship.db")
		}, "permission denied", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := tc.setup(t)
			var err error
			if tc.asNobody && os.Geteuid() == 0 {
				err = openAsNobody(t, filepath.Dir(filepath.Dir(path)), path)
			} else {
				var s *Store
				if s, err = Open(context.Background(), path, nil); err == nil {
					s.Close()
				}
			}
			if err == nil {
				t.Fatalf("Open(%s) succeeded", path)
			}
			if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), tc.wantText) {
				t.Errorf("Open error %q, want one naming the path and saying %q", err, tc.wantText)
			}
		})
	}
}

// openAsNobodyEnv names the path a copy of this test binary opens as the
// user nobody and exits (see TestMain and openAsNobody).
const openAsNobodyEnv = "FLAKESHIP_STORE_TEST_OPEN_AS_NOBODY"

// TestMain runs the tests, or, in a child started by openAsNobody, opens
// the store at the path openAsNobodyEnv names: it exits 0 if Open
// succeeded, or prints Open's error and exits 1.
func TestMain(m *testing.M) {
	if path := os.Getenv(openAsNobodyEnv); path != "" {
		s, err := Open(context.Background(), path, nil)
		if err != nil {
			fmt.Print(err)
			os.Exit(1)
		}
		s.Close()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// openAsNobody opens the store at path in a copy of this test binary run
// as the unprivileged user nobody (uid and gid 65534), and returns Open's
// error: root writes into read-only directories, nobody does not. The copy
// goes in dir, which nobody must be able to search.
func openAsNobody(t *testing.T, dir, path string) error {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "store.test")
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-test.run=^$")
	cmd.Env = []string{openAsNobodyEnv + "=" + path}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &exit) && exit.ExitCode() == 1:
		return errors.New(string(out))
	}
	t.Fatalf("open %s as nobody: %v: %s", path, err, out)
	return nil
}

// rawDB opens the database at path without the store's settings, closed
// when the test ends.
func rawDB(t *testing.T, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", dsn(path, "_pragma=busy_timeout(10000)"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// snapshot is the directory holding path, name by name, byte for byte.
func snapshot(t *testing.T, path string) map[string][]byte {
	t.Helper()
	entries, err := os.ReadDir(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(filepath.Dir(path), e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		files[e.Name()] = b
	}
	return files
}

func TestOpenRefusesAStoreFromANewerFlakeshipAndLeavesItAlone(t *testing.T) {
	ms, err := loadMigrations(migrationFiles, "migrations")
	if err != nil {
		t.Fatal(err)
	}
	newer := len(ms) + 1
	tests := []struct {
		name  string
		setup func(t *testing.T, path string)
	}{
		{"a store in WAL mode", func(t *testing.T, path string) {
			s := openTestStore(t, path)
			create(t, s, newDeploy("app", 1))
			if _, err := s.write.Exec(fmt.Sprintf("PRAGMA user_version = %d", newer)); err != nil {
				t.Fatal(err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
		}},
		// Opening the store would turn this one into WAL mode: the refusal
		// must come first.
		{"a database in rollback-journal mode", func(t *testing.T, path string) {
			db := rawDB(t, path)
			for _, q := range []string{
				`CREATE TABLE future (x TEXT)`,
				`INSERT INTO future VALUES ('from a newer flakeship')`,
				fmt.Sprintf("PRAGMA user_version = %d", newer),
			} {
				if _, err := db.Exec(q); err != nil {
					t.Fatal(err)
				}
			}
			if err := db.Close(); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "flakeship.db")
			tc.setup(t, path)
			before := snapshot(t, path)

			s, err := Open(context.Background(), path, nil)
			if err == nil {
				s.Close()
				t.Fatal("Open succeeded")
			}
			var newerErr *newerSchemaError
			if !errors.As(err, &newerErr) {
				t.Fatalf("Open error = %v, want a newerSchemaError", err)
			}
			want := fmt.Sprintf("store %s has schema version %d, newer than this flakeship (%d): upgrade flakeship or restore a backup",
				path, newer, len(ms))
			if err.Error() != want {
				t.Errorf("Open error\n%q, want\n%q", err, want)
			}
			if after := snapshot(t, path); !reflect.DeepEqual(after, before) {
				t.Errorf("Open changed the directory of the refused store")
			}
		})
	}
}

func TestOpenRefusesADamagedFile(t *testing.T) {
	// garbage closes a store of 300 deploys cleanly and writes garbage over
	// pages in its middle, putting back the file's modification time if
	// keepTime.
	garbage := func(t *testing.T, path string, keepTime bool) {
		s := openTestStore(t, path)
		ds := make([]*deploy.Deploy, 300)
		for i := range ds {
			ds[i] = newDeploy(fmt.Sprintf("t%d", i%7), i)
			ds[i].Message = strings.Repeat("commit message ", 60)
		}
		insertDeploys(t, s, ds)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		closed, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if keepTime {
			waitForTheClockToPass(t, path)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(path + "-wal"); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("the WAL was not checkpointed on close: %v", err)
		}
		pageSize := int(b[16])<<8 | int(b[17])
		pages := len(b) / pageSize
		if pages < 20 {
			t.Fatalf("only %d pages of %d bytes", pages, pageSize)
		}
		mid := pages / 2 * pageSize
		copy(b[mid:mid+3*pageSize], bytes.Repeat([]byte{0xde, 0xad, 0xbe, 0xef}, 3*pageSize/4))
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		if keepTime {
			if err := os.Chtimes(path, time.Time{}, closed.ModTime()); err != nil {
				t.Fatal(err)
			}
		}
	}
	tests := []struct {
		name       string
		setup      func(t *testing.T, path string)
		wantDetail string
	}{
		{"garbage over pages in the middle", func(t *testing.T, path string) { garbage(t, path, false) }, "malformed"},
		// After a clean close Open checks only a file that changed since;
		// the change time tells even when the modification time is put
		// back.
		{"garbage over pages in the middle, the modification time put back", func(t *testing.T, path string) {
			garbage(t, path, true)
		}, "malformed"},
		{"a wrong free page count in the header", func(t *testing.T, path string) {
			s := openTestStore(t, path)
			create(t, s, newDeploy("app", 1))
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			binary.BigEndian.PutUint32(b[36:40], 5) // the file has no free pages
			if err := os.WriteFile(path, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}, "quick_check: *** in database main *** Freelist: size is 0 but should be 5"},
		{"a file that is not a database", func(t *testing.T, path string) {
			text := bytes.Repeat([]byte("not a database\n"), 1000)
			if err := os.WriteFile(path, text, 0o600); err != nil {
				t.Fatal(err)
			}
		}, "not a database"},
		// Even a clean-stop record that matches lets no such file through:
		// the schema version is read at every open.
		{"a file that is not a database, with a clean-stop record that matches it", func(t *testing.T, path string) {
			text := bytes.Repeat([]byte("not a database\n"), 1000)
			if err := os.WriteFile(path, text, 0o600); err != nil {
				t.Fatal(err)
			}
			desc, err := describe(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path+cleanSuffix, []byte(desc), 0o600); err != nil {
				t.Fatal(err)
			}
		}, "not a database"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "flakeship.db")
			tc.setup(t, path)
			before := snapshot(t, path)

			s, err := Open(context.Background(), path, nil)
			if err == nil {
				s.Close()
				t.Fatal("Open succeeded")
			}
			var damaged *damagedError
			if !errors.As(err, &damaged) {
				t.Fatalf("Open error = %v, want a damagedError", err)
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, "store "+path+" is damaged") || !strings.Contains(msg, "restore a backup") || strings.Contains(msg, "\n") {
				t.Errorf("Open error %q, want one line naming the file and what to do", msg)
			}
			if !strings.Contains(msg, tc.wantDetail) {
				t.Errorf("Open error %q, want it to say %q", msg, tc.wantDetail)
			}
			if after := snapshot(t, path); !reflect.DeepEqual(after, before) {
				t.Errorf("Open changed the directory of the damaged store")
			}
		})
	}
}

func BenchmarkCreate(b *testing.B) {
	ctx := context.Background()
	s := newTestStore(b)
	b.ResetTimer()
	for i := range b.N {
		d := newDeploy("app", i)
		d.DeliveryID = fmt.Sprintf("delivery-%d", i)
		if err := s.Create(ctx, d); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkUpdate(b *testing.B) {
	ctx := context.Background()
	s := newTestStore(b)
	d := create(b, s, newDeploy("app", 1))
	now := d.CreatedAt
	b.ResetTimer()
	for i := range b.N {
		// A deploy's life: a step opens and closes on every transition.
		now = now.Add(time.Second)
		d.Steps = append(d.Steps[:min(len(d.Steps), 4)], deploy.Step{Name: "build", StartedAt: now})
		d.Generation = i
		if err := s.Update(ctx, d); err != nil {
			b.Fatal(err)
		}
	}
}
