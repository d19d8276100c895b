// Command prefill gives a flakeship store a history: it opens (creating and
// migrating) the SQLite store at -db with package store, as flakeship does,
// and adds -n finished deploys of one target, each with its delivery id,
// finished more than a day ago, so that start-up is measured against a
// store that has been in use for a long time.
//
//	prefill -db STATE/flakeship.db -n 10000 -target app -repo bench/app
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/flakeship/flakeship/deploy"
	"github.com/flakeship/flakeship/forge"
	"github.com/flakeship/flakeship/store"
)

func main() {
	db := flag.String("db", "", "the store's SQLite file (created if missing)")
	n := flag.Int("n", 10000, "deploys to add")
	target := flag.String("target", "app", "their target")
	repo := flag.String("repo", "bench/app", "their repository")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := run(ctx, *db, *n, *target, *repo); err != nil {
		fmt.Fprintln(os.Stderr, "prefill:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, db string, n int, target, repo string) error {
	if db == "" {
		return errors.New("-db is required")
	}
	st, err := store.Open(ctx, db, nil)
	if err != nil {
		return err
	}
	// Every deploy finished before the last day: nothing is recovered or
	// re-posted at start-up.
	end := time.Now().UTC().Add(-48 * time.Hour)
	start := end.Add(-time.Duration(n) * 10 * time.Minute)
	t0 := time.Now()
	var superseded *deploy.Deploy // waits for the deploy that superseded it
	// perBatch deploys share one transaction: one sync of the WAL each, so
	// a million deploys take a minute, not hours of one sync per deploy.
	const perBatch = 2000
	for first := 0; first < n; first += perBatch {
		if err := ctx.Err(); err != nil {
			return errors.Join(err, st.Close())
		}
		err := st.Batch(ctx, func(tx deploy.StoreTx) error {
			for i := first; i < min(first+perBatch, n); i++ {
				d := history(i, target, repo, start.Add(time.Duration(i)*10*time.Minute))
				if err := tx.Create(ctx, d); err != nil {
					return err
				}
				if superseded != nil {
					superseded.SupersededBy = &d.ID
					superseded.Error = fmt.Sprintf("superseded by deploy %d (%.7s)", d.ID, d.SHA)
					if err := tx.Update(ctx, superseded); err != nil {
						return err
					}
					superseded = nil
				}
				if d.State == deploy.Superseded {
					superseded = d
				}
			}
			return nil
		})
		if err != nil {
			return errors.Join(err, st.Close())
		}
	}
	if err := st.Close(); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "prefill: %d deploys stored in %s\n", n, time.Since(t0).Round(time.Millisecond))
	return nil
}

// history is the i-th deploy of a long history: most succeed in four
// steps, every tenth is superseded by the next before it ran, every 25th fails to build.
func history(i int, target, repo string, created time.Time) *deploy.Deploy {
	at := func(s int) *time.Time { t := created.Add(time.Duration(s) * time.Second); return &t }
	d := &deploy.Deploy{
		Target: target, Forge: forge.GitHub, Repo: repo, Branch: "main",
		SHA: fmt.Sprintf("%040x", 0xbe9c0000+i), Trigger: deploy.TriggerPush, CreatedAt: created,
		Author: "A. Developer", Pusher: "developer",
		Message:    fmt.Sprintf("change %d: %s", i, strings.Repeat("adjust things ", 4)),
		DeliveryID: fmt.Sprintf("00000000-0000-4000-8000-%012d", i),
	}
	switch {
	case i%10 == 9:
		// Its superseded_by is set once the next deploy is stored.
		d.State, d.FinishedAt = deploy.Superseded, at(1)
	case i%25 == 24:
		d.State, d.StartedAt, d.FinishedAt, d.Error = deploy.Failed, at(1), at(30), "nix build: exit status 1"
		d.Steps = []deploy.Step{
			{Name: "fetch", StartedAt: *at(1), FinishedAt: at(2), OK: true},
			{Name: "build", StartedAt: *at(2), FinishedAt: at(30)},
		}
	default:
		d.State, d.StartedAt, d.FinishedAt, d.Generation = deploy.Succeeded, at(1), at(45), i+1
		d.OutPath = fmt.Sprintf("/nix/store/%032x-app", i)
		d.Steps = []deploy.Step{
			{Name: "fetch", StartedAt: *at(1), FinishedAt: at(2), OK: true},
			{Name: "build", StartedAt: *at(2), FinishedAt: at(40), OK: true},
			{Name: "activate", StartedAt: *at(40), FinishedAt: at(42), OK: true},
			{Name: "verify", StartedAt: *at(42), FinishedAt: at(45), OK: true},
		}
	}
	return d
}
