package deploy

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/flakeship/flakeship/config"
)

// DeliveryWindow is how long a delivery id is remembered at the least,
// whatever the retention settings say: a redelivery within it is answered
// as a duplicate and deploys nothing. GitHub lets a repository's admins
// redeliver a delivery of the past 3 days (7 on GitHub Enterprise Server)
// under its first X-GitHub-Delivery id; Forgejo and Gitea "replay" a
// delivery under a new id, which only the replay guard (stale) catches.
// Thirty days is well past both. config refuses a shorter KEEP_FOR, and
// Prune never deletes a deploy of a younger delivery.
const DeliveryWindow = config.MinKeepFor

// Pruning runs at Start and then every pruneEvery, deleting at most
// pruneBatch deploys per write transaction: the webhook intake writes to
// the same database and waits for nothing longer than one batch.
const (
	pruneEvery = time.Hour
	pruneBatch = 200
)

// PruneRule says which deploys Store.Prune may delete: those not in the
// newest Keep deploys of their target, created and finished before Before,
// and whose delivery ids arrived before Before. It never deletes a deploy
// that has not ended, one that an unfinished deploy retries, nor, for each
// target, the newest succeeded deploy (what runs now), the newest succeeded
// deploy that is not a rollback (the high-water mark of the replay guard)
// or the newest succeeded deploy of another build than the current one (what
// a rollback goes back to).
type PruneRule struct {
	Keep   int       // newest deploys kept per target, whatever their age
	Before time.Time // only deploys older than this may go
	Limit  int       // most deploys deleted by one call (one transaction)
}

// Prune deletes the deploys that the retention settings (KEEP_DEPLOYS,
// KEEP_FOR, and never a delivery id younger than DeliveryWindow) let go,
// with their delivery ids and log files, in transactions of a few hundred
// deploys, and logs what it removed. It returns how many deploys it
// deleted. Start runs it, and then every hour until Shutdown.
func (q *Queue) Prune(ctx context.Context) (int, error) {
	limit, after := q.pruner.batchSize()
	keepFor := max(q.cfg.KeepFor, DeliveryWindow)
	rule := PruneRule{Keep: max(q.cfg.KeepDeploys, 0), Before: q.now().Add(-keepFor), Limit: limit}
	var (
		total       int
		first, last int64
	)
	for {
		ids, err := q.store.Prune(ctx, rule, q.removeLogs)
		if err != nil {
			if total > 0 {
				q.logPruned(total, first, last, rule, keepFor)
			}
			return total, fmt.Errorf("prune: %w", err)
		}
		for _, id := range ids {
			if first == 0 || id < first {
				first = id
			}
			last = max(last, id)
		}
		total += len(ids)
		if after != nil {
			after(ids)
		}
		if len(ids) < rule.Limit {
			break
		}
	}
	if total > 0 {
		q.logPruned(total, first, last, rule, keepFor)
	}
	return total, nil
}

func (q *Queue) logPruned(n int, first, last int64, r PruneRule, keepFor time.Duration) {
	q.log.Info("old deploys pruned", "deploys", n, "first_id", first, "last_id", last,
		"keep_per_target", r.Keep, "keep_for", keepFor, "created_before", r.Before.UTC().Format(time.RFC3339))
}

// removeLogs deletes the log files of deploys that Store.Prune is deleting.
// A log that cannot be removed stays behind and is reported; the deploy
// goes all the same, or it would be found again at every pruning.
func (q *Queue) removeLogs(ids []int64) {
	for _, id := range ids {
		err := os.Remove(logPath(q.cfg.StateDir, id))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			q.log.Warn("log of a pruned deploy not removed", "deploy_id", id, "err", err)
		}
	}
}

// pruner prunes old deploys every so often, after a first time at Start.
type pruner struct {
	every time.Duration // <= 0: never
	stopc context.CancelFunc
	wg    sync.WaitGroup

	// mu guards batch, the most deploys deleted in one store transaction,
	// and hook, which tests set to see each batch.
	mu    sync.Mutex
	batch int
	hook  func(ids []int64)
}

// newPruner makes the pruner of Options.PruneEvery.
func newPruner(every time.Duration) *pruner {
	if every == 0 {
		every = pruneEvery
	}
	return &pruner{every: every, batch: pruneBatch}
}

func (p *pruner) batchSize() (int, func([]int64)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.batch, p.hook
}

// start prunes q now and then every p.every, until stop.
func (p *pruner) start(q *Queue) {
	if p.every <= 0 {
		return
	}
	ctx, stop := context.WithCancel(context.Background())
	p.mu.Lock()
	p.stopc = stop
	p.mu.Unlock()
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		tick := time.NewTicker(p.every)
		defer tick.Stop()
		for {
			if _, err := q.Prune(ctx); err != nil && ctx.Err() == nil {
				q.log.Error("old deploys not pruned", "err", err)
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
}

// stop ends the pruning and waits for a prune under way.
func (p *pruner) stop() {
	p.mu.Lock()
	stop := p.stopc
	p.mu.Unlock()
	if stop != nil {
		stop()
	}
	p.wg.Wait()
}
