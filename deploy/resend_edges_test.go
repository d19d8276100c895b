package deploy_test

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/flakeship/flakeship/deploy"
	"github.com/flakeship/flakeship/forge"
	"github.com/flakeship/flakeship/internal/forgetest"
	"github.com/flakeship/flakeship/internal/queuetest"
	"github.com/flakeship/flakeship/notifier"
	"github.com/flakeship/flakeship/store"
)

// TestStartPostsOnlyTheStatusesStillOwed stores what a stop can leave:
// final statuses never posted, of a commit a newer deploy has spoken for
// since, of a target without a forge token, from days ago, and one owed.
// Start posts the owed one alone; the others come first in id order, so
// any of them posted wrongly would reach the forge before it.
func TestStartPostsOnlyTheStatusesStillOwed(t *testing.T) {
	cfg := edgeConfig(t, 1, "app", "web")
	ctx := context.Background()
	st, err := store.Open(ctx, filepath.Join(cfg.StateDir, "flakeship.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	put := func(target string, sha int, finished time.Time, posted bool) *deploy.Deploy {
		t.Helper()
		d := &deploy.Deploy{Target: target, Forge: forge.GitHub, Repo: "acme/" + target, Branch: "main",
			SHA: fmt.Sprintf("%040x", sha), Trigger: deploy.TriggerPush, State: deploy.Queued, CreatedAt: finished}
		if err := st.Create(ctx, d); err != nil {
			t.Fatal(err)
		}
		if err := d.Advance(deploy.Cancelled, finished); err != nil {
			t.Fatal(err)
		}
		if err := st.Update(ctx, d); err != nil {
			t.Fatal(err)
		}
		if posted {
			if err := st.MarkStatusPosted(ctx, d.ID); err != nil {
				t.Fatal(err)
			}
		}
		return d
	}
	put("app", 1, now.Add(-time.Minute), false) // a newer deploy of the commit spoke since
	put("app", 1, now.Add(-time.Minute), true)
	put("app", 2, now.Add(-72*time.Hour), false) // too old to post now
	put("web", 3, now.Add(-time.Minute), false)  // web has no forge token
	owed := put("app", 4, now.Add(-time.Minute), false)
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	fake := forgetest.NewGitHub(t, "tok")
	log := slog.New(slog.DiscardHandler)
	n, err := notifier.NewGitHub(notifier.GitHubOptions{BaseURL: fake.URL(), Token: "tok", Log: log})
	if err != nil {
		t.Fatal(err)
	}
	// The queue's shutdown at the end of the test flushes the sender and
	// must say nothing went wrong.
	st, _ = queuetest.Start(t, cfg, log, queuetest.Options{PruneEvery: -1, Notifiers: map[string]notifier.Notifier{"app": n}})
	waitCond(t, "the owed status on the forge", func() bool {
		for _, s := range fake.Statuses() {
			if s.SHA == owed.SHA {
				return true
			}
		}
		return false
	})
	got := fake.Statuses()
	if len(got) != 1 || got[0].SHA != owed.SHA {
		t.Errorf("statuses posted at start: %+v, want only deploy %d's (%s)", got, owed.ID, owed.SHA[:7])
	}
	// And it is recorded as posted: the next start does not post it again.
	waitCond(t, "the owed status recorded as posted", func() bool {
		left, err := st.Unposted(ctx, now.Add(-time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range left {
			if d.ID == owed.ID {
				return false
			}
		}
		return true
	})
}
