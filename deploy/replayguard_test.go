package deploy_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flakeship/flakeship/builder"
	"github.com/flakeship/flakeship/deploy"
	"github.com/flakeship/flakeship/internal/forgetest"
	"github.com/flakeship/flakeship/store"
)

// failingStore is the real store whose List fails once told to.
type failingStore struct {
	*store.Store
	mu   sync.Mutex
	fail error
}

func (f *failingStore) failList(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail = err
}

func (f *failingStore) List(ctx context.Context, filter deploy.Filter) ([]*deploy.Deploy, error) {
	f.mu.Lock()
	err := f.fail
	f.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("store: list deploys: %w", err)
	}
	return f.Store.List(ctx, filter)
}

// failingFetcher is the real fetcher whose IsAncestor fails once told to.
type failingFetcher struct {
	*builder.Fetcher
	mu   sync.Mutex
	fail error
}

func (f *failingFetcher) failAncestry(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail = err
}

func (f *failingFetcher) IsAncestor(ctx context.Context, c builder.Checkout, ancestor, descendant string) (bool, error) {
	f.mu.Lock()
	err := f.fail
	f.mu.Unlock()
	if err != nil {
		return false, fmt.Errorf("is ancestor: history of %s: %w", descendant[:7], err)
	}
	return f.Fetcher.IsAncestor(ctx, c, ancestor, descendant)
}

// TestReplayGuardFailsClosed deploys a, then pushes b while the replay
// guard cannot tell whether b is older than a: b must not deploy, and the
// reason must reach its log, its record and its commit status.
func TestReplayGuardFailsClosed(t *testing.T) {
	t.Parallel()
	broken := errors.New("database disk image is malformed")
	tests := []struct {
		name string
		// breakGuard makes the guard's store or git cache fail.
		breakGuard func(st *failingStore, f *failingFetcher)
		// deployed is how the reason names the deployed commit, given a.
		deployed func(a string) string
	}{
		{
			name:       "the store cannot list the succeeded deploys",
			breakGuard: func(st *failingStore, f *failingFetcher) { st.failList(broken) },
			deployed:   func(string) string { return "deployed commit" },
		},
		{
			name:       "the git cache cannot walk the history",
			breakGuard: func(st *failingStore, f *failingFetcher) { f.failAncestry(errors.New("object not found")) },
			deployed:   func(a string) string { return "deployed " + a[:7] },
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := newRig(t, "app")
			// main: a - b
			a, b := r.commit(true), r.commit(true)
			st := &failingStore{Store: r.store}
			f := &failingFetcher{Fetcher: builder.NewFetcher(slog.New(slog.DiscardHandler))}
			q := r.queueWith(st, f, nil, -1, nil)
			ctx := context.Background()

			first, _, err := q.SubmitPush(ctx, "app", push(a, "a"))
			if err != nil {
				t.Fatal(err)
			}
			if d := waitEnd(t, q, first.ID); d.State != deploy.Succeeded {
				t.Fatalf("a: %+v", d)
			}

			tc.breakGuard(st, f)
			second, _, err := q.SubmitPush(ctx, "app", push(b, "b"))
			if err != nil {
				t.Fatal(err)
			}
			d := waitEnd(t, q, second.ID)
			reason := fmt.Sprintf("cannot tell whether %s is older than the %s", b[:7], tc.deployed(a))
			if d.State != deploy.Failed || built(d) || !strings.HasPrefix(d.Error, reason+": ") ||
				!strings.HasSuffix(d.Error, "; not deploying it") {
				t.Errorf("b = %s, built %v, error %q; want failed before the build, error %q: ...; not deploying it",
					d.State, built(d), d.Error, reason)
			}
			var log bytes.Buffer
			if err := q.WriteLog(ctx, d.ID, &log, false); err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(log.String(), "== "+reason+": ") {
				t.Errorf("b's log does not give the reason %q:\n%s", reason, log.String())
			}
			statuses := r.forge.WaitFor(t, 30*time.Second, func(rs []forgetest.Recorded) bool {
				return slices.ContainsFunc(rs, func(s forgetest.Recorded) bool { return s.SHA == b && s.State == "failure" })
			})
			for _, s := range statuses {
				if s.SHA == b && s.State == "failure" && s.Description != "Not deployed: "+reason {
					t.Errorf("b's commit status says %q, want %q", s.Description, "Not deployed: "+reason)
				}
			}
			t.Logf("b: %s: %s", d.State, d.Error)

			// Not retried: nothing else was queued, and b stays failed.
			st.failList(nil)
			f.failAncestry(nil)
			all, err := q.List(ctx, deploy.Filter{Target: "app"})
			if err != nil {
				t.Fatal(err)
			}
			if len(all) != 2 {
				t.Errorf("%d deploys after the refused one, want 2 (no retry)", len(all))
			}
			if ts, _ := q.Targets(ctx); ts[0].CurrentSHA != a || ts[0].Queued != nil || ts[0].Running != nil {
				t.Errorf("target after the refused push: %+v, want a running and nothing waiting", ts[0])
			}
		})
	}
}
