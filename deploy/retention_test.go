package deploy_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flakeship/flakeship/builder"
	"github.com/flakeship/flakeship/config"
	"github.com/flakeship/flakeship/deploy"
	"github.com/flakeship/flakeship/forge"
	"github.com/flakeship/flakeship/internal/testenv"
	"github.com/flakeship/flakeship/store"
)

// queueWith starts a queue on st with fetcher f, the clock now (nil: the
// real one) and pruning every pruneEvery (negative: only when called); it is
// shut down when the test ends. The rig's fake forge records its statuses.
func (r *rig) queueWith(st deploy.Store, f deploy.Fetcher, now func() time.Time, pruneEvery time.Duration, log *slog.Logger) *deploy.Queue {
	r.t.Helper()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	q := r.startQueue(st, f, now, pruneEvery, log)
	r.t.Cleanup(func() {
		r.gates.openAll() // no build waits out the grace period, should the test stop early
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		q.Shutdown(ctx)
	})
	return q
}

// oldDeploys stores n deploys of target that ended long before created,
// each with its delivery id, in one transaction, and returns their ids.
func oldDeploys(t *testing.T, st deploy.Store, target string, n int, created time.Time) []int64 {
	t.Helper()
	var ds []*deploy.Deploy
	err := st.Batch(context.Background(), func(tx deploy.StoreTx) error {
		for i := range n {
			at := created.Add(time.Duration(i) * time.Second)
			done := at.Add(time.Second)
			d := &deploy.Deploy{
				Target: target, Forge: forge.GitHub, Repo: "acme/" + target, Branch: "main",
				SHA: fmt.Sprintf("%040x", i+1), Trigger: deploy.TriggerPush, State: deploy.Superseded,
				CreatedAt: at, FinishedAt: &done, DeliveryID: fmt.Sprintf("old-%d-%d", created.Unix(), i),
			}
			if err := tx.Create(context.Background(), d); err != nil {
				return err
			}
			ds = append(ds, d)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	ids := make([]int64, len(ds))
	for i, d := range ds {
		ids[i] = d.ID
	}
	return ids
}

// TestPruneDoesNotHoldUpTheIntake prunes a thousand old deploys in batches
// and stores a push between the first batch and the second: the intake
// waits for one batch at most, not for the whole pruning.
func TestPruneDoesNotHoldUpTheIntake(t *testing.T) {
	t.Parallel()
	r := newRig(t, "app")
	r.cfg.KeepDeploys, r.cfg.KeepFor = 10, config.MinKeepFor
	sha := r.commit(true)
	old := oldDeploys(t, r.store, "app", 1000, time.Now().AddDate(0, -3, 0))
	q := r.queueWith(r.store, builder.NewFetcher(slog.New(slog.DiscardHandler)), nil, -1, nil)

	var (
		mu     sync.Mutex
		events []string
		pushed *deploy.Deploy
	)
	record := func(e string) int {
		mu.Lock()
		defer mu.Unlock()
		events = append(events, e)
		return len(events)
	}
	q.SetPruneBatch(100, func(ids []int64) {
		if record(fmt.Sprintf("batch of %d", len(ids))) != 1 {
			return
		}
		// Between the first batch and the next: a push arrives. It must
		// be stored now, not after the pruning.
		done := make(chan error, 1)
		go func() {
			d, _, err := q.SubmitPush(context.Background(), "app", push(sha, "during-pruning"))
			mu.Lock()
			pushed = d
			mu.Unlock()
			done <- err
		}()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("push during pruning: %v", err)
			}
			record("push stored")
		case <-time.After(2 * time.Minute): // a safety net: the pruning waits for the push
			t.Error("a push during pruning was not stored between two batches")
		}
	})
	n, err := q.Prune(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	got := slices.Clone(events)
	mu.Unlock()
	t.Logf("pruned %d deploys; events: %v", n, got)
	// The push counts among the newest 10 from the second batch on: 9 old
	// deploys stay.
	if n != len(old)-9 {
		t.Errorf("pruned %d deploys, want %d", n, len(old)-9)
	}
	want := []string{"batch of 100", "push stored"}
	for range 8 {
		want = append(want, "batch of 100")
	}
	want = append(want, "batch of 91")
	if !slices.Equal(got, want) {
		t.Errorf("events %q, want %q", got, want)
	}
	if pushed == nil {
		t.Fatal("no deploy for the push")
	}
	if d := waitEnd(t, q, pushed.ID); d.State != deploy.Succeeded {
		t.Errorf("the push stored during pruning: %+v", d)
	}
}

// TestPruneRunsAtStartAndRemovesLogs starts a queue on a store full of old
// deploys with log files: the pruning at start deletes the deploys beyond
// the newest few, and their logs with them, and says so in the log.
func TestPruneRunsAtStartAndRemovesLogs(t *testing.T) {
	t.Parallel()
	state := t.TempDir()
	cfg := &config.Config{
		StateDir: state, PublicURL: "https://deploy.example.test", MaxParallel: 1, Nix: "nix",
		KeepDeploys: 3, KeepFor: config.MinKeepFor,
		Targets: []config.Target{{Name: "app", Forge: "github", Repo: "acme/app", Branch: "main",
			Activate: config.ActivateNone, Profile: filepath.Join(state, "profiles", "app"),
			HealthTimeout: time.Second, BuildTimeout: time.Minute, WebhookSecret: "s", StatusContext: "flakeship/app"}},
	}
	st, err := store.Open(context.Background(), filepath.Join(state, "flakeship.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	now := time.Now()
	old := oldDeploys(t, st, "app", 50, now.AddDate(0, -2, 0))
	recent := oldDeploys(t, st, "app", 5, now.AddDate(0, 0, -29))
	logDir := filepath.Join(state, "logs")
	if err := os.MkdirAll(logDir, 0o750); err != nil {
		t.Fatal(err)
	}
	for _, id := range append(slices.Clone(old), recent...) {
		if err := os.WriteFile(filepath.Join(logDir, fmt.Sprint(id)+".log"), []byte("== fetch\n"), 0o640); err != nil {
			t.Fatal(err)
		}
	}

	logs := &testenv.Buffer{}
	log := slog.New(slog.NewTextHandler(logs, nil))
	nix := &builder.Nix{Binary: "nix"}
	q, err := deploy.New(deploy.Options{
		Config: cfg, Store: st, Fetcher: builder.NewFetcher(log), Builder: nix,
		Switcher: func(s builder.Spec) (builder.Switcher, error) { return builder.NewSwitcher(s, nix, log) },
		Log:      log,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Shutdown(context.Background()) })

	deadline := time.Now().Add(2 * time.Minute) // a safety net: the start prunes at once
	for !strings.Contains(logs.String(), "old deploys pruned") {
		if time.Now().After(deadline) {
			t.Fatalf("no pruning within 2 minutes of the start; log:\n%s", logs)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !strings.Contains(logs.String(), "deploys=50") {
		t.Errorf("the log does not say 50 deploys were pruned:\n%s", logs)
	}
	left, err := q.List(context.Background(), deploy.Filter{Target: "app", Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	var leftIDs []int64
	for _, d := range left {
		leftIDs = append(leftIDs, d.ID)
	}
	slices.Sort(leftIDs)
	if !slices.Equal(leftIDs, recent) {
		t.Errorf("deploys left %v, want the recent ones %v", leftIDs, recent)
	}
	entries, err := os.ReadDir(logDir)
	if err != nil {
		t.Fatal(err)
	}
	var files []string
	for _, e := range entries {
		files = append(files, e.Name())
	}
	var want []string
	for _, id := range recent {
		want = append(want, fmt.Sprint(id)+".log")
	}
	slices.Sort(files)
	slices.Sort(want)
	if !slices.Equal(files, want) {
		t.Errorf("log files left %v, want %v", files, want)
	}
}
