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
	"github.com/flakeship/flakeship/internal/queuetest"
	"github.com/flakeship/flakeship/store"
)

// TestStartSaysWhyAnInterruptedDeployIsNotRetried stores deploys as a
// flakeship killed mid-build leaves them and starts a queue on the store:
// a retry that was interrupted in turn is not retried again and its error
// says so; a push interrupted with a newer push queued behind it is not
// retried either (the newer one deploys), and its error does not claim it
// was a retry. Recovery happens within Start, so the records are final
// when it returns.
func TestStartSaysWhyAnInterruptedDeployIsNotRetried(t *testing.T) {
	cfg := edgeConfig(t, 1, "app", "api")
	ctx := context.Background()
	st, err := store.Open(ctx, filepath.Join(cfg.StateDir, "flakeship.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	n := 0
	put := func(target string, trigger deploy.Trigger, states ...deploy.State) *deploy.Deploy {
		t.Helper()
		n++
		d := &deploy.Deploy{Target: target, Forge: forge.GitHub, Repo: "acme/" + target, Branch: "main",
			SHA: fmt.Sprintf("%040x", n), Trigger: trigger, State: deploy.Queued, CreatedAt: now}
		if err := st.Create(ctx, d); err != nil {
			t.Fatal(err)
		}
		for _, s := range states {
			if err := d.Advance(s, now); err != nil {
				t.Fatal(err)
			}
		}
		if err := st.Update(ctx, d); err != nil {
			t.Fatal(err)
		}
		return d
	}
	retry := put("app", deploy.TriggerRetry, deploy.Fetching, deploy.Building)
	pushed := put("api", deploy.TriggerPush, deploy.Fetching, deploy.Building)
	put("api", deploy.TriggerPush) // queued behind it
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	st, _ = queuetest.Start(t, cfg, slog.New(slog.DiscardHandler), queuetest.Options{PruneEvery: -1})
	for _, tc := range []struct {
		what      string
		id        int64
		wantError string
	}{
		{"the interrupted retry", retry.ID, "flakeship stopped while the deploy was building (after a retry: not retried again)"},
		{"the interrupted push with a newer one queued", pushed.ID, "flakeship stopped while the deploy was building"},
	} {
		d, err := st.Get(ctx, tc.id)
		if err != nil {
			t.Fatal(err)
		}
		if d.State != deploy.Interrupted || d.Error != tc.wantError {
			t.Errorf("%s: %s, %q; want interrupted, %q", tc.what, d.State, d.Error, tc.wantError)
		}
	}
	apps, err := st.List(ctx, deploy.Filter{Target: "app"})
	if err != nil {
		t.Fatal(err)
	}
	if len(apps) != 1 {
		t.Errorf("app has %d deploys after the recovery, want only the interrupted retry (not retried again)", len(apps))
	}
	if !t.Failed() {
		t.Logf("retry %d: %q; push %d: interrupted, not retried, the newer push queued", retry.ID, "(after a retry: not retried again)", pushed.ID)
	}
}
