package deploy

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/flakeship/flakeship/builder"
	"github.com/flakeship/flakeship/config"
)

// Deploy queues a manual deploy of target: the head of its branch, the head
// of req.Ref, or the commit req.SHA. As for a push, the fetch refuses a
// commit that is not on the target's branch.
func (q *Queue) Deploy(ctx context.Context, target string, req ManualRequest) (*Deploy, error) {
	t, ok := q.target(target)
	if !ok {
		return nil, fmt.Errorf("deploy: %w %q", ErrUnknownTarget, target)
	}
	sha := req.SHA
	switch {
	case req.Ref != "" && req.SHA != "":
		return nil, fmt.Errorf("deploy %s: %w: give a ref or a sha, not both", target, ErrInvalid)
	case sha != "":
		if err := config.ValidateSHA(sha); err != nil {
			return nil, fmt.Errorf("deploy %s: %w: sha: %v", target, ErrInvalid, err)
		}
	default:
		ref := strings.TrimPrefix(req.Ref, "refs/heads/")
		if ref == "" {
			ref = t.Branch
		}
		if err := config.ValidateBranch(ref); err != nil {
			return nil, fmt.Errorf("deploy %s: %w: ref: %v", target, ErrInvalid, err)
		}
		head, err := q.tools.fetcher.ResolveBranch(ctx, SpecFor(t, q.cfg), ref)
		if errors.Is(err, builder.ErrBranchNotFound) {
			return nil, fmt.Errorf("deploy %s: %w: branch %q not found in the repository", target, ErrInvalid, ref)
		}
		if err != nil {
			return nil, fmt.Errorf("deploy %s: %w", target, err)
		}
		sha = head
	}
	// t.Name, not target: the caller's string may live in a request
	// buffer that is reused after it returns, and the deploy outlives it.
	d := &Deploy{
		Target: t.Name, Forge: t.Forge, Repo: t.Repo, Branch: t.Branch, SHA: sha,
		Trigger: TriggerManual, State: Queued, CreatedAt: q.now().UTC(),
	}
	out, _, err := q.submit(ctx, d)
	return out, err
}

// Rollback queues a deploy that makes the build that ran before the current
// one current again: the newest succeeded deploy of target whose generation
// differs from the current one. Its profile generation becomes current
// (no fetch, no build), then the unit restarts and is verified; if that
// fails, the generation that was current is restored.
func (q *Queue) Rollback(ctx context.Context, target string) (*Deploy, error) {
	t, ok := q.target(target)
	if !ok {
		return nil, fmt.Errorf("rollback: %w %q", ErrUnknownTarget, target)
	}
	succeeded, err := q.store.List(ctx, Filter{Target: target, State: Succeeded, Limit: 1000})
	if err != nil {
		return nil, fmt.Errorf("rollback %s: %w", target, err)
	}
	if len(succeeded) == 0 {
		return nil, fmt.Errorf("rollback %s: %w: nothing was deployed yet", target, ErrNothingToRollBack)
	}
	cur := succeeded[0]
	var prev *Deploy
	for _, d := range succeeded[1:] {
		if d.Generation > 0 && d.Generation != cur.Generation && d.OutPath != cur.OutPath {
			prev = d
			break
		}
	}
	if prev == nil {
		return nil, fmt.Errorf("rollback %s: %w: no build before generation %d", target, ErrNothingToRollBack, cur.Generation)
	}
	d := &Deploy{
		Target: t.Name, Forge: t.Forge, Repo: t.Repo, Branch: t.Branch, SHA: prev.SHA,
		Trigger: TriggerRollback, State: Queued, CreatedAt: q.now().UTC(),
		// The generation to make current again, and what it must hold.
		Generation: prev.Generation, OutPath: prev.OutPath,
		Author: prev.Author, Message: prev.Message,
	}
	out, _, err := q.submit(ctx, d)
	return out, err
}

// Targets lists every configured target, in configuration order, with the
// build that runs now and the deploys in flight.
func (q *Queue) Targets(ctx context.Context) ([]TargetStatus, error) {
	out := make([]TargetStatus, 0, len(q.cfg.Targets))
	for _, t := range q.cfg.Targets {
		ts := TargetStatus{
			Name: t.Name, Forge: t.Forge, Repo: t.Repo, Branch: t.Branch,
			Activate: t.Activate, Unit: t.Unit,
		}
		cur, err := q.store.LastSucceeded(ctx, t.Name)
		switch {
		case err == nil:
			ts.CurrentSHA, ts.Generation = cur.SHA, cur.Generation
		case !errors.Is(err, ErrNotFound):
			return nil, fmt.Errorf("targets: %w", err)
		}
		last, err := q.store.List(ctx, Filter{Target: t.Name, Limit: 1})
		if err != nil {
			return nil, fmt.Errorf("targets: %w", err)
		}
		if len(last) > 0 {
			q.fillURL(last[0])
			ts.LastDeploy = last[0]
		}
		q.sched.mu.Lock()
		sl := q.sched.slots[t.Name]
		if sl.running != nil {
			ts.Running = q.snapshot(sl.running.deploy)
		}
		if sl.pending != nil {
			ts.Queued = q.snapshot(sl.pending)
		}
		q.sched.mu.Unlock()
		out = append(out, ts)
	}
	return out, nil
}

// snapshot copies a deploy the queue is working on; the caller holds the
// scheduler's lock.
func (q *Queue) snapshot(d *Deploy) *Deploy {
	c := *d
	c.Steps = append([]Step(nil), d.Steps...)
	q.fillURL(&c)
	return &c
}
