package deploy_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flakeship/flakeship/builder"
	"github.com/flakeship/flakeship/config"
	"github.com/flakeship/flakeship/deploy"
	"github.com/flakeship/flakeship/forge"
	"github.com/flakeship/flakeship/store"
)

// The benchmarks measure what a push costs the queue and the store, without
// HTTP: SubmitPush (a durable deploy and its delivery id, then queueing), and
// a deploy's whole life of stored transitions. server's BenchmarkHook adds
// the HTTP side.

// benchStore opens a real SQLite store in a temporary directory.
func benchStore(b *testing.B, dir string) *store.Store {
	b.Helper()
	st, err := store.Open(context.Background(), filepath.Join(dir, "flakeship.db"), nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })
	return st
}

// benchQueue is a started queue with one build-only target, "app", whose
// clone URL refuses connections: its deploy spends about two seconds
// retrying the fetch and then fails, so the target is busy and each new push
// replaces the one that waits (which ends superseded), as in a burst.
func benchQueue(b *testing.B) (*deploy.Queue, *heldStore) {
	b.Helper()
	state := b.TempDir()
	cfg := &config.Config{StateDir: state, PublicURL: "https://deploy.example.test", MaxParallel: 1, Nix: "nix"}
	cfg.Targets = []config.Target{{
		Name: "app", Forge: "github", Repo: "acme/app", CloneURL: "http://127.0.0.1:1/nowhere.git",
		Branch: "main", Attr: "packages.x86_64-linux.default", Activate: config.ActivateNone,
		Profile: filepath.Join(state, "profiles", "app"), HealthTimeout: 5 * time.Second,
		BuildTimeout: time.Minute, WebhookSecret: "hook-secret", StatusContext: "flakeship/app",
	}}
	// Formatted as in production (text, info), then thrown away.
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	nix := &builder.Nix{Binary: cfg.Nix}
	st := &heldStore{Store: benchStore(b, state)}
	q, err := deploy.New(deploy.Options{
		Config: cfg, Store: st, Fetcher: builder.NewFetcher(log), Builder: nix,
		Switcher: func(s builder.Spec) (builder.Switcher, error) { return builder.NewSwitcher(s, nix, log) },
		Log:      log,
	})
	if err != nil {
		b.Fatal(err)
	}
	if err := q.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		// The running deploy only waits to retry its fetch: cut it short.
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		if err := q.Shutdown(ctx); err != nil {
			b.Errorf("queue shutdown: %v", err)
		}
	})
	return q, st
}

// benchPush is a push of commit n with delivery id.
func benchPush(n int64, id string) forge.PushEvent {
	return forge.PushEvent{
		Forge: forge.GitHub, DeliveryID: id, Repo: "acme/app", Branch: "main",
		SHA: fmt.Sprintf("%040x", n+1), Pusher: "bench", Author: "bench", Message: "commit " + fmt.Sprint(n),
	}
}

// BenchmarkSubmitPush measures storing and queueing a push: "new" is a new
// delivery each time (the deploy, its delivery id and the superseding of
// the deploy it replaces, in one transaction shared with the pushes that
// wait for the same commit), "redelivery" the same
// delivery again (a look-up, nothing written). "conns=64" submits from 64
// goroutines at once; its ns/op is the inverse of the throughput, and
// deploys/commit says how many pushes shared one transaction and its sync
// (group commit).
func BenchmarkSubmitPush(b *testing.B) {
	for _, newID := range []bool{true, false} {
		for _, conns := range []int{1, 64} {
			name := "new"
			if !newID {
				name = "redelivery"
			}
			b.Run(fmt.Sprintf("%s/conns=%d", name, conns), func(b *testing.B) {
				q, st := benchQueue(b)
				ctx := context.Background()
				// The first push starts the deploy that keeps the target busy.
				if _, dup, err := q.SubmitPush(ctx, "app", benchPush(0, "first")); err != nil || dup {
					b.Fatalf("SubmitPush = duplicate %v, %v", dup, err)
				}
				submit := func(n int64) error {
					id := "first"
					if newID {
						id = fmt.Sprintf("delivery-%d", n)
					}
					_, dup, err := q.SubmitPush(ctx, "app", benchPush(n, id))
					if err == nil && dup == newID {
						err = fmt.Errorf("delivery %s: duplicate %v, want %v", id, dup, !newID)
					}
					return err
				}
				b.ReportAllocs()
				b.ResetTimer()
				if conns == 1 {
					for i := range b.N {
						if err := submit(int64(i + 1)); err != nil {
							b.Fatal(err)
						}
					}
					return
				}
				var n atomic.Int64
				b.SetParallelism((conns + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						if err := submit(n.Add(1)); err != nil {
							b.Error(err) // not Fatal: this is not the benchmark's goroutine
							return
						}
					}
				})
				if newID {
					// Group commit: how many pushes shared a sync.
					created, commits := 0, 0
					for _, c := range st.batches()[1:] {
						created += c
						commits++
					}
					b.ReportMetric(float64(created)/float64(max(commits, 1)), "deploys/commit")
				}
			})
		}
	}
}

// BenchmarkDeployLife measures the store's writes over a deploy's whole
// life: created queued with its delivery id, then each transition of a
// deploy that succeeds (fetching, building, activating, verifying,
// succeeded), each stored as the runner stores it. Every write is its own
// fsync'd transaction; ns/write is the cost of one.
func BenchmarkDeployLife(b *testing.B) {
	st := benchStore(b, b.TempDir())
	ctx := context.Background()
	path := []deploy.State{deploy.Fetching, deploy.Building, deploy.Activating, deploy.Verifying, deploy.Succeeded}
	now := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	b.ReportAllocs()
	n := 0
	for b.Loop() {
		n++
		now = now.Add(time.Minute)
		d := &deploy.Deploy{
			Target: "app", Forge: forge.GitHub, Repo: "acme/app", Branch: "main",
			SHA: fmt.Sprintf("%040x", n), Trigger: deploy.TriggerPush, State: deploy.Queued, CreatedAt: now,
			DeliveryID: fmt.Sprintf("delivery-%d", n), Pusher: "bench", Message: strings.Repeat("m", 60),
		}
		if err := st.Create(ctx, d); err != nil {
			b.Fatal(err)
		}
		for i, s := range path {
			if err := d.Advance(s, now.Add(time.Duration(i+1)*time.Second)); err != nil {
				b.Fatal(err)
			}
			if s == deploy.Activating {
				d.Generation, d.OutPath = n, "/nix/store/"+strings.Repeat("a", 32)+"-app"
			}
			if err := st.Update(ctx, d); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*(1+len(path))), "ns/write")
}
