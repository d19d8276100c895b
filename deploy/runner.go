package deploy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/flakeship/flakeship/builder"
	"github.com/flakeship/flakeship/config"
	"github.com/flakeship/flakeship/forge"
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

// job is one deploy being run: the deploy, its target, its log, and the
// contexts that bound it. Only its runner changes the deploy.
type job struct {
	q    *Queue
	d    *Deploy
	t    config.Target
	spec builder.Spec
	lf   *logFile
	log  *slog.Logger
	// ctx is cancelled by Cancel or by the end of Shutdown's grace period;
	// buildCtx also by BUILD_TIMEOUT. Both only cut short the fetch and
	// the build. rec records the deploy: a cancelled deploy must still be
	// recorded as such.
	ctx, buildCtx, rec context.Context
}

// execute walks d through fetch, build, activate and verify (or, for a
// rollback, activate and verify). ctx is cancelled by Cancel or by the end
// of Shutdown's grace period, and only cuts short the fetch and the build.
func (q *Queue) execute(ctx context.Context, t config.Target, d *Deploy) {
	j := &job{q: q, d: d, t: t, spec: SpecFor(t, q.cfg), ctx: ctx, rec: context.Background(),
		log: q.log.With("target", d.Target, "deploy_id", d.ID, "sha", forge.ShortSHA(d.SHA))}
	lf, err := openLog(logPath(q.cfg.StateDir, d.ID), q.tools.secrets, q.cfg.DeployLogLimit)
	if err != nil {
		j.log.Error("deploy log unavailable", "err", err)
		j.end(Failed, fmt.Sprintf("open deploy log: %v", err))
		return
	}
	j.lf = lf
	q.streams.open(d.ID, lf)
	defer func() {
		if err := lf.Close(); err != nil {
			j.log.Error("deploy log incomplete", "err", err)
		}
		q.streams.open(d.ID, nil)
	}()
	lf.Printf("flakeship deploy %d of target %s: %s@%s (%s, branch %s)",
		d.ID, d.Target, d.Repo, d.SHA, d.Trigger, d.Branch)
	if d.Trigger == TriggerRollback {
		j.runRollback()
		return
	}
	buildCtx, cancelBuild := context.WithTimeoutCause(ctx, t.BuildTimeout,
		fmt.Errorf("BUILD_TIMEOUT of %s exceeded", t.BuildTimeout))
	defer cancelBuild()
	j.buildCtx = buildCtx
	j.run()
}

// run is the steps of a push, manual or retry deploy.
func (j *job) run() {
	began := j.q.now()
	checkout, ok := j.fetch()
	if !ok || !j.guard(checkout) {
		return
	}
	sw, prev, hasPrev, outPath, ok := j.build(checkout)
	if !ok {
		return
	}
	// From here on the deploy changes what runs: only the activation
	// deadline ends it, never a cancel or a shutdown.
	actCtx, cancelAct := context.WithTimeout(context.Background(), activationTimeout(j.t))
	defer cancelAct()
	if !j.step(Activating) {
		return
	}
	gen, err := sw.Switch(actCtx, outPath, j.lf)
	if err != nil && gen.Number == 0 {
		// Nothing was switched: the previous generation still runs.
		j.lf.Printf("== activation failed: %v", err)
		j.end(Failed, fmt.Sprintf("activate: %v", err))
		return
	}
	j.q.sched.edit(func() { j.d.Generation = gen.Number })
	if err == nil {
		if !j.step(Verifying) {
			return
		}
		err = sw.Verify(actCtx, j.lf)
	}
	if err != nil {
		j.rollback(actCtx, sw, prev, hasPrev, err)
		return
	}
	elapsed := j.q.now().Sub(began).Round(time.Second)
	j.lf.Printf("== deployed %s as generation %d in %s", forge.ShortSHA(j.d.SHA), gen.Number, elapsed)
	j.end(Succeeded, "")
	j.log.Info("deploy succeeded", "generation", gen.Number, "duration", j.q.now().Sub(began), "steps", stepTimes(j.d))
}

// stopped ends the deploy if its fetch or build was cut short, and says
// whether it was.
func (j *job) stopped(step string) bool {
	cause := context.Cause(j.buildCtx)
	if cause != nil && step == "build" {
		j.q.resetCache(j.t.Name)
	}
	switch {
	case errors.Is(cause, errCancelled):
		j.lf.Printf("== %s cancelled", step)
		j.end(Cancelled, step+" cancelled by request")
	case errors.Is(cause, errShutdown) || (cause != nil && errors.Is(context.Cause(j.ctx), context.Canceled)):
		// The record stays in its running state, as after a crash: the
		// next start marks it interrupted and retries it, the one way
		// both kinds of stop are recovered. Its status stays pending for
		// that retry.
		j.lf.Printf("== %s interrupted: flakeship is stopping; the deploy is retried on the next start", step)
		j.q.log.Warn("deploy left for a retry on the next start", "target", j.d.Target,
			"deploy_id", j.d.ID, "sha", forge.ShortSHA(j.d.SHA), "state", j.d.State)
	case cause != nil:
		j.lf.Printf("== %s stopped: %v", step, cause)
		j.end(Failed, fmt.Sprintf("%s: %v", step, cause))
	default:
		return false
	}
	return true
}

// fetch fetches the deploy's commit.
func (j *job) fetch() (builder.Checkout, bool) {
	if !j.step(Fetching) {
		return builder.Checkout{}, false
	}
	checkout, err := j.q.tools.fetcher.Fetch(j.buildCtx, j.spec, j.d.SHA, j.lf)
	if err != nil {
		if !j.stopped("fetch") {
			j.lf.Printf("== fetch failed: %v", err)
			j.end(Failed, fmt.Sprintf("fetch: %v", err))
		}
		return builder.Checkout{}, false
	}
	return checkout, true
}

// guard runs the replay guard (Queue.stale) and says whether the deploy
// goes ahead.
func (j *job) guard(checkout builder.Checkout) bool {
	d := j.d
	current, stale, err := j.q.stale(j.buildCtx, d, checkout, j.lf)
	if err != nil {
		if j.stopped("fetch") {
			return false
		}
		// The replay guard fails closed: a deploy it cannot clear does not
		// go ahead, and is not retried (a failed deploy never is).
		deployed := "deployed commit"
		if current != nil {
			deployed = "deployed " + forge.ShortSHA(current.SHA)
		}
		msg := fmt.Sprintf("cannot tell whether %s is older than the %s: %v; not deploying it", forge.ShortSHA(d.SHA), deployed, err)
		j.lf.Printf("== %s", msg)
		j.log.Error("replay guard undecided: deploy refused", "err", err)
		j.q.sched.edit(func() {
			d.statusText = fmt.Sprintf("Not deployed: cannot tell whether %s is older than the %s", forge.ShortSHA(d.SHA), deployed)
		})
		j.end(Failed, msg)
		return false
	}
	if stale {
		j.q.sched.edit(func() { d.statusText = "Superseded by " + forge.ShortSHA(current.SHA) })
		j.end(Superseded, fmt.Sprintf("%s is deployed already, and %s is not newer than it: not deployed again",
			forge.ShortSHA(current.SHA), forge.ShortSHA(d.SHA)))
		return false
	}
	return true
}

// build builds the fetched commit. It returns the target's switcher and
// what ran before the build (hasPrev: anything did), for the rollback.
func (j *job) build(checkout builder.Checkout) (sw builder.Switcher, prev builder.Generation, hasPrev bool, outPath string, ok bool) {
	if !j.step(Building) {
		return nil, prev, false, "", false
	}
	// What runs now is read before the build: a build may set itself into
	// the profile (builder.Nix.Build), and the rollback must go to what ran
	// before it.
	sw, err := j.q.tools.switcher(j.spec)
	if err != nil {
		j.lf.Printf("== activation failed: %v", err)
		j.end(Failed, fmt.Sprintf("activate: %v", err))
		return nil, prev, false, "", false
	}
	prev, err = sw.Current(j.buildCtx)
	hasPrev = err == nil
	if err != nil && !errors.Is(err, builder.ErrNoGeneration) {
		j.lf.Printf("== activation failed: %v", err)
		j.end(Failed, fmt.Sprintf("activate: read profile: %v", err))
		return nil, prev, false, "", false
	}
	outPath, err = j.q.tools.builder.Build(j.buildCtx, j.spec, checkout, j.lf)
	if err != nil {
		if !j.stopped("build") {
			j.lf.Printf("== build failed: %v", err)
			j.end(Failed, fmt.Sprintf("build: %v", err))
		}
		return nil, prev, false, "", false
	}
	j.lf.Printf("== built %s", outPath)
	j.q.sched.edit(func() { j.d.OutPath = outPath })
	return sw, prev, hasPrev, outPath, true
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
		lf.Printf("== %s was deployed already (deploy %d): not deploying it again", forge.ShortSHA(d.SHA), current.ID)
		return current, true, nil
	}
	older, err := q.tools.fetcher.IsAncestor(ctx, c, d.SHA, current.SHA)
	if err != nil {
		return current, false, err
	}
	if !older {
		return nil, false, nil
	}
	onBranch, err := q.tools.fetcher.IsAncestor(ctx, c, current.SHA, c.Head)
	if err != nil {
		return current, false, fmt.Errorf("is %s still on %s: %w", forge.ShortSHA(current.SHA), d.Branch, err)
	}
	if !onBranch {
		lf.Printf("== %s is older than the deployed %s, but the branch no longer holds %s: deploying it",
			forge.ShortSHA(d.SHA), forge.ShortSHA(current.SHA), forge.ShortSHA(current.SHA))
		return nil, false, nil
	}
	lf.Printf("== %s is older than the deployed %s, which is still on %s: not deploying it",
		forge.ShortSHA(d.SHA), forge.ShortSHA(current.SHA), d.Branch)
	return current, true, nil
}

// rollback restores the generation that ran before the deploy after it
// came up unhealthy, and ends it rolled_back (or failed when there was
// nothing to roll back to, or the rollback itself did not come up).
func (j *job) rollback(ctx context.Context, sw builder.Switcher, prev builder.Generation, hasPrev bool, cause error) {
	lf, d := j.lf, j.d
	lf.Printf("== unhealthy: %v", cause)
	if !hasPrev {
		lf.Printf("== no earlier generation to roll back to")
		j.end(Failed, fmt.Sprintf("unhealthy: %v; no earlier generation to roll back to", cause))
		return
	}
	lf.Printf("== rolling back to generation %d (%s)", prev.Number, prev.OutPath)
	if err := sw.Rollback(ctx, prev, lf); err != nil {
		lf.Printf("== rollback to generation %d is unhealthy too: %v", prev.Number, err)
		j.end(Failed, fmt.Sprintf("unhealthy: %v; rollback to generation %d failed: %v", cause, prev.Number, err))
		return
	}
	lf.Printf("== rolled back to generation %d", prev.Number)
	last, err := j.q.store.LastSucceeded(j.rec, d.Target)
	j.q.sched.edit(func() {
		d.Generation = prev.Number
		if err == nil && last.Generation == prev.Number {
			d.statusText = "Unhealthy, rolled back to " + forge.ShortSHA(last.SHA)
		}
	})
	j.end(RolledBack, fmt.Sprintf("unhealthy: %v; rolled back to generation %d", cause, prev.Number))
}

// runRollback runs a rollback deploy: the generation it names becomes
// current again (activate), and must come up healthy (verify); otherwise the
// generation that was current is restored.
func (j *job) runRollback() {
	lf, d := j.lf, j.d
	ctx, cancel := context.WithTimeout(context.Background(), activationTimeout(j.t))
	defer cancel()
	to := builder.Generation{Number: d.Generation, OutPath: d.OutPath}
	if !j.step(Activating) {
		return
	}
	lf.Printf("== rolling back to generation %d (%s), deployed from %s", to.Number, to.OutPath, forge.ShortSHA(d.SHA))
	sw, err := j.q.tools.switcher(j.spec)
	if err != nil {
		lf.Printf("== activation failed: %v", err)
		j.end(Failed, fmt.Sprintf("activate: %v", err))
		return
	}
	cur, err := sw.Current(ctx)
	if err != nil {
		lf.Printf("== activation failed: %v", err)
		j.end(Failed, fmt.Sprintf("activate: read profile: %v", err))
		return
	}
	if cur.Number == to.Number {
		lf.Printf("== generation %d is current already", to.Number)
		j.end(Failed, fmt.Sprintf("activate: generation %d is current already", to.Number))
		return
	}
	if err := sw.SwitchTo(ctx, to, lf); err != nil {
		j.rollback(ctx, sw, cur, true, err)
		return
	}
	if !j.step(Verifying) {
		return
	}
	if err := sw.Verify(ctx, lf); err != nil {
		j.rollback(ctx, sw, cur, true, err)
		return
	}
	lf.Printf("== rolled back to generation %d (%s)", to.Number, forge.ShortSHA(d.SHA))
	j.end(Succeeded, "")
}

// step moves the deploy into a running state and marks it in the log.
func (j *job) step(s State) bool {
	if err := j.q.move(j.rec, j.d, s, "", true); err != nil {
		j.q.log.Error("deploy state not recorded", "deploy_id", j.d.ID, "state", s, "err", err)
		j.lf.Printf("== flakeship could not record the deploy state: %v", err)
		return false
	}
	j.lf.Printf("== %s", s.step())
	return true
}

// end ends the deploy in the terminal state s (succeeded included), with
// the one-line error msg.
func (j *job) end(s State, msg string) {
	if err := j.q.move(j.rec, j.d, s, msg, true); err != nil {
		j.q.log.Error("deploy end not recorded", "deploy_id", j.d.ID, "state", s, "err", err)
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
