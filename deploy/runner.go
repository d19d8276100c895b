package deploy

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/flakeship/flakeship/builder"
	"github.com/flakeship/flakeship/config"
)

// activationSlack is how long activation may take beyond the target's
// HEALTH_TIMEOUT: the profile switch, the restart and a possible rollback.
// A whole-system switch restarts many units and may take much longer.
const (
	activationSlack      = 2 * time.Minute
	nixosActivationSlack = 20 * time.Minute
)

// activationTimeout bounds the activation and verification of target t,
// rollback included.
func activationTimeout(t config.Target) time.Duration {
	if t.Activate == config.ActivateNixOS {
		return 2*t.HealthTimeout + nixosActivationSlack
	}
	return 2*t.HealthTimeout + activationSlack
}

// execute walks d through fetch, build, activate and verify. ctx is
// cancelled by Cancel or by the end of Shutdown's grace period, and only cuts
// short the fetch and the build.
func (q *Queue) execute(ctx context.Context, t config.Target, d *Deploy) {
	log := q.log.With("target", d.Target, "deploy_id", d.ID, "sha", short(d.SHA))
	// Store writes use their own context: a cancelled deploy must still be
	// recorded as such.
	rec := context.Background()

	lf, err := openLog(logPath(q.cfg.StateDir, d.ID), q.secrets, q.cfg.DeployLogLimit)
	if err != nil {
		log.Error("deploy log unavailable", "err", err)
		q.fail(rec, d, Failed, fmt.Sprintf("open deploy log: %v", err))
		return
	}
	q.mu.Lock()
	q.live[d.ID] = lf
	q.wakeLocked(d.ID) // its followers now wait for its log too
	q.mu.Unlock()
	defer func() {
		if err := lf.Close(); err != nil {
			log.Error("deploy log incomplete", "err", err)
		}
		q.mu.Lock()
		delete(q.live, d.ID)
		q.mu.Unlock()
	}()
	lf.Printf("flakeship deploy %d of target %s: %s@%s (%s, branch %s)",
		d.ID, d.Target, d.Repo, d.SHA, d.Trigger, d.Branch)

	spec := SpecFor(t, q.cfg)
	if d.Trigger == TriggerRollback {
		q.executeRollback(spec, d, lf)
		return
	}
	buildCtx, cancelBuild := context.WithTimeoutCause(ctx, t.BuildTimeout,
		fmt.Errorf("BUILD_TIMEOUT of %s exceeded", t.BuildTimeout))
	defer cancelBuild()
	began := q.now()

	// stopped ends the deploy if its fetch or build was cut short.
	stopped := func(step string, err error) bool {
		cause := context.Cause(buildCtx)
		if cause != nil && step == "build" {
			q.resetCache(t.Name)
		}
		switch {
		case errors.Is(cause, errCancelled):
			lf.Printf("== %s cancelled", step)
			q.fail(rec, d, Cancelled, step+" cancelled by request")
		case errors.Is(cause, errShutdown) || (cause != nil && errors.Is(context.Cause(ctx), context.Canceled)):
			// The record stays in its running state, as after a crash:
			// the next start marks it interrupted and retries it, the one
			// way both kinds of stop are recovered. Its status stays
			// pending for that retry.
			lf.Printf("== %s interrupted: flakeship is stopping; the deploy is retried on the next start", step)
			q.log.Warn("deploy left for a retry on the next start", "target", d.Target,
				"deploy_id", d.ID, "sha", short(d.SHA), "state", d.State)
		case cause != nil:
			lf.Printf("== %s stopped: %v", step, cause)
			q.fail(rec, d, Failed, fmt.Sprintf("%s: %v", step, cause))
		default:
			return false
		}
		return true
	}

	if !q.step(rec, d, Fetching, lf) {
		return
	}
	checkout, err := q.fetcher.Fetch(buildCtx, spec, d.SHA, lf)
	if err != nil {
		if stopped("fetch", err) {
			return
		}
		lf.Printf("== fetch failed: %v", err)
		q.fail(rec, d, Failed, fmt.Sprintf("fetch: %v", err))
		return
	}

	current, stale, err := q.stale(buildCtx, d, checkout, lf)
	if err != nil {
		if stopped("fetch", err) {
			return
		}
		// The replay guard fails closed: a deploy it cannot clear does not
		// go ahead, and is not retried (a failed deploy never is).
		deployed := "deployed commit"
		if current != nil {
			deployed = "deployed " + short(current.SHA)
		}
		msg := fmt.Sprintf("cannot tell whether %s is older than the %s: %v; not deploying it", short(d.SHA), deployed, err)
		lf.Printf("== %s", msg)
		log.Error("replay guard undecided: deploy refused", "err", err)
		q.mu.Lock()
		d.describeText = fmt.Sprintf("Not deployed: cannot tell whether %s is older than the %s", short(d.SHA), deployed)
		q.mu.Unlock()
		q.fail(rec, d, Failed, msg)
		return
	}
	if stale {
		q.mu.Lock()
		d.describeSHA = current.SHA
		q.mu.Unlock()
		q.fail(rec, d, Superseded, fmt.Sprintf("%s is deployed already, and %s is not newer than it: not deployed again",
			short(current.SHA), short(d.SHA)))
		return
	}

	if !q.step(rec, d, Building, lf) {
		return
	}
	// What runs now is read before the build: a build may set itself into
	// the profile (builder.Nix.Build), and the rollback must go to what ran
	// before it.
	sw, err := q.switcher(spec)
	if err != nil {
		lf.Printf("== activation failed: %v", err)
		q.fail(rec, d, Failed, fmt.Sprintf("activate: %v", err))
		return
	}
	prev, err := sw.Current(buildCtx)
	hasPrev := err == nil
	if err != nil && !errors.Is(err, builder.ErrNoGeneration) {
		lf.Printf("== activation failed: %v", err)
		q.fail(rec, d, Failed, fmt.Sprintf("activate: read profile: %v", err))
		return
	}
	outPath, err := q.builder.Build(buildCtx, spec, checkout, lf)
	if err != nil {
		if stopped("build", err) {
			return
		}
		lf.Printf("== build failed: %v", err)
		q.fail(rec, d, Failed, fmt.Sprintf("build: %v", err))
		return
	}
	lf.Printf("== built %s", outPath)
	q.mu.Lock()
	d.OutPath = outPath
	q.mu.Unlock()

	// From here on the deploy changes what runs: only the activation
	// deadline ends it, never a cancel or a shutdown.
	actCtx, cancelAct := context.WithTimeout(context.Background(), activationTimeout(t))
	defer cancelAct()
	if !q.step(rec, d, Activating, lf) {
		return
	}
	gen, err := sw.Switch(actCtx, outPath, lf)
	if err != nil && gen.Number == 0 {
		// Nothing was switched: the previous generation still runs.
		lf.Printf("== activation failed: %v", err)
		q.fail(rec, d, Failed, fmt.Sprintf("activate: %v", err))
		return
	}
	q.mu.Lock()
	d.Generation = gen.Number
	q.mu.Unlock()
	if err == nil {
		if !q.step(rec, d, Verifying, lf) {
			return
		}
		err = sw.Verify(actCtx, lf)
	}
	if err != nil {
		q.rollback(actCtx, rec, d, sw, prev, hasPrev, err, lf)
		return
	}
	elapsed := q.now().Sub(began).Round(time.Second)
	lf.Printf("== deployed %s as generation %d in %s", short(d.SHA), gen.Number, elapsed)
	q.fail(rec, d, Succeeded, "")
	log.Info("deploy succeeded", "generation", gen.Number, "duration", q.now().Sub(began), "steps", stepTimes(d))
}

// stale reports whether a push (or its retry) asks for nothing new: its
// commit is the newest one deployed by a push or by hand (the high-water
// mark; rollbacks do not lower it) or an older one, while that commit is
// still on the branch. So a forge redelivering an old push, a captured
// delivery replayed under a new delivery id, or deliveries arriving out of
// order never restart the service, roll it back, or undo an operator's
// rollback. A branch that was rewound (force-pushed back) no longer holds the
// high-water commit, so its older commit deploys. Manual deploys and
// rollbacks are never stale: they are what an operator asked for.
//
// When the store or the git cache cannot answer, stale returns the error
// (and the high-water deploy, if it was found): the caller must not deploy,
// or a replay would go ahead whenever the guard fails.
func (q *Queue) stale(ctx context.Context, d *Deploy, c builder.Checkout, lf *logFile) (*Deploy, bool, error) {
	if d.Trigger != TriggerPush && d.Trigger != TriggerRetry {
		return nil, false, nil
	}
	succeeded, err := q.store.List(ctx, Filter{Target: d.Target, State: Succeeded, Limit: 100})
	if err != nil {
		return nil, false, err
	}
	var current *Deploy
	for _, s := range succeeded {
		if s.Trigger != TriggerRollback {
			current = s
			break
		}
	}
	if current == nil {
		return nil, false, nil
	}
	if current.SHA == d.SHA {
		lf.Printf("== %s was deployed already (deploy %d): not deploying it again", short(d.SHA), current.ID)
		return current, true, nil
	}
	older, err := q.fetcher.IsAncestor(ctx, c, d.SHA, current.SHA)
	if err != nil {
		return current, false, err
	}
	if !older {
		return nil, false, nil
	}
	onBranch, err := q.fetcher.IsAncestor(ctx, c, current.SHA, c.Head)
	if err != nil {
		return current, false, fmt.Errorf("is %s still on %s: %w", short(current.SHA), d.Branch, err)
	}
	if !onBranch {
		lf.Printf("== %s is older than the deployed %s, but the branch no longer holds %s: deploying it",
			short(d.SHA), short(current.SHA), short(current.SHA))
		return nil, false, nil
	}
	lf.Printf("== %s is older than the deployed %s, which is still on %s: not deploying it",
		short(d.SHA), short(current.SHA), d.Branch)
	return current, true, nil
}

// rollback restores the generation that ran before d after d came up
// unhealthy, and ends d rolled_back (or failed when there was nothing to roll
// back to, or the rollback itself did not come up).
func (q *Queue) rollback(ctx, rec context.Context, d *Deploy, sw builder.Switcher, prev builder.Generation, hasPrev bool, cause error, lf *logFile) {
	lf.Printf("== unhealthy: %v", cause)
	if !hasPrev {
		lf.Printf("== no earlier generation to roll back to")
		q.fail(rec, d, Failed, fmt.Sprintf("unhealthy: %v; no earlier generation to roll back to", cause))
		return
	}
	lf.Printf("== rolling back to generation %d (%s)", prev.Number, prev.OutPath)
	if err := sw.Rollback(ctx, prev, lf); err != nil {
		lf.Printf("== rollback to generation %d is unhealthy too: %v", prev.Number, err)
		q.fail(rec, d, Failed, fmt.Sprintf("unhealthy: %v; rollback to generation %d failed: %v", cause, prev.Number, err))
		return
	}
	lf.Printf("== rolled back to generation %d", prev.Number)
	last, err := q.store.LastSucceeded(rec, d.Target)
	q.mu.Lock()
	d.Generation = prev.Number
	if err == nil && last.Generation == prev.Number {
		d.describeSHA = last.SHA
	}
	q.mu.Unlock()
	q.fail(rec, d, RolledBack, fmt.Sprintf("unhealthy: %v; rolled back to generation %d", cause, prev.Number))
}

// executeRollback runs a rollback deploy: the generation it names becomes
// current again (activate), and must come up healthy (verify); otherwise the
// generation that was current is restored.
func (q *Queue) executeRollback(spec builder.Spec, d *Deploy, lf *logFile) {
	rec := context.Background()
	t, _ := q.cfg.Target(d.Target)
	ctx, cancel := context.WithTimeout(context.Background(), activationTimeout(t))
	defer cancel()
	to := builder.Generation{Number: d.Generation, OutPath: d.OutPath}
	if !q.step(rec, d, Activating, lf) {
		return
	}
	lf.Printf("== rolling back to generation %d (%s), deployed from %s", to.Number, to.OutPath, short(d.SHA))
	sw, err := q.switcher(spec)
	if err != nil {
		lf.Printf("== activation failed: %v", err)
		q.fail(rec, d, Failed, fmt.Sprintf("activate: %v", err))
		return
	}
	cur, err := sw.Current(ctx)
	if err != nil {
		lf.Printf("== activation failed: %v", err)
		q.fail(rec, d, Failed, fmt.Sprintf("activate: read profile: %v", err))
		return
	}
	if cur.Number == to.Number {
		lf.Printf("== generation %d is current already", to.Number)
		q.fail(rec, d, Failed, fmt.Sprintf("activate: generation %d is current already", to.Number))
		return
	}
	if err := sw.SwitchTo(ctx, to, lf); err != nil {
		q.rollback(ctx, rec, d, sw, cur, true, err, lf)
		return
	}
	if !q.step(rec, d, Verifying, lf) {
		return
	}
	if err := sw.Verify(ctx, lf); err != nil {
		q.rollback(ctx, rec, d, sw, cur, true, err, lf)
		return
	}
	lf.Printf("== rolled back to generation %d (%s)", to.Number, short(d.SHA))
	q.fail(rec, d, Succeeded, "")
}

// step moves d into a running state and marks it in the log.
func (q *Queue) step(ctx context.Context, d *Deploy, s State, lf *logFile) bool {
	q.mu.Lock()
	err := q.transition(ctx, d, s, true)
	q.mu.Unlock()
	if err != nil {
		q.log.Error("deploy state not recorded", "deploy_id", d.ID, "state", s, "err", err)
		lf.Printf("== flakeship could not record the deploy state: %v", err)
		return false
	}
	lf.Printf("== %s", s.step())
	return true
}

// fail ends d in the terminal state s with the one-line error msg.
func (q *Queue) fail(ctx context.Context, d *Deploy, s State, msg string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	d.Error = msg
	if err := q.transition(ctx, d, s, true); err != nil {
		q.log.Error("deploy end not recorded", "deploy_id", d.ID, "state", s, "err", err)
	}
}

// stepTimes lists each finished step's duration for the log.
func stepTimes(d *Deploy) map[string]string {
	out := map[string]string{}
	for _, s := range d.Steps {
		if s.FinishedAt != nil {
			out[s.Name] = s.FinishedAt.Sub(s.StartedAt).String()
		}
	}
	return out
}

// describe is the one-line description of d's commit status.
func describe(d *Deploy) string {
	sha := short(d.SHA)
	switch d.State {
	case Queued:
		return "Queued for deploy"
	case Fetching:
		return "Fetching " + sha
	case Building:
		return "Building " + sha
	case Activating:
		return "Activating " + sha
	case Verifying:
		return "Checking health of " + sha
	case Succeeded:
		if d.Trigger == TriggerRollback {
			return "Rolled back to " + sha
		}
		took := time.Duration(0)
		if d.StartedAt != nil && d.FinishedAt != nil {
			took = d.FinishedAt.Sub(*d.StartedAt).Round(time.Second)
		}
		return fmt.Sprintf("Deployed %s in %s", sha, took)
	case Failed:
		if d.describeText != "" {
			return d.describeText
		}
		if len(d.Steps) > 0 {
			switch d.Steps[len(d.Steps)-1].Name {
			case "fetch":
				return "Fetch failed: see log"
			case "build":
				return "Build failed: see log"
			case "verify":
				return "Unhealthy: see log"
			}
		}
		return "Activation failed: see log"
	case RolledBack:
		if d.describeSHA != "" {
			return "Unhealthy, rolled back to " + short(d.describeSHA)
		}
		return fmt.Sprintf("Unhealthy, rolled back to generation %d", d.Generation)
	case Superseded:
		if d.describeSHA != "" {
			return "Superseded by " + short(d.describeSHA)
		}
		return "Superseded"
	case Cancelled:
		return "Cancelled"
	case Interrupted:
		return "Interrupted: flakeship stopped"
	}
	return string(d.State)
}
