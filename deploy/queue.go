package deploy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"time"

	"github.com/flakeship/flakeship/builder"
	"github.com/flakeship/flakeship/config"
	"github.com/flakeship/flakeship/forge"
	"github.com/flakeship/flakeship/notifier"
)

// Fetcher fetches one commit of a target (builder.Fetcher).
type Fetcher interface {
	Fetch(ctx context.Context, s builder.Spec, sha string, log io.Writer) (builder.Checkout, error)
	// ResolveBranch returns the head of a branch of the target's repository.
	ResolveBranch(ctx context.Context, s builder.Spec, branch string) (string, error)
	// IsAncestor reports whether one commit is in the history of another,
	// in the cache of a checkout.
	IsAncestor(ctx context.Context, c builder.Checkout, ancestor, descendant string) (bool, error)
}

// Builder builds a fetched commit (builder.Nix).
type Builder interface {
	Build(ctx context.Context, s builder.Spec, c builder.Checkout, log io.Writer) (outPath string, err error)
	// ResetCache drops what a build cut short may have left half written.
	ResetCache(s builder.Spec) error
}

// SwitcherFunc makes the Switcher for a target's activation mode
// (builder.NewSwitcher).
type SwitcherFunc func(s builder.Spec) (builder.Switcher, error)

// Options configure a Queue. Config, Store, Fetcher, Builder, Switcher and Log
// are required.
type Options struct {
	Config    *config.Config
	Store     Store
	Fetcher   Fetcher
	Builder   Builder
	Switcher  SwitcherFunc
	Notifiers map[string]notifier.Notifier // by target name; missing: no statuses
	Log       *slog.Logger
	Now       func() time.Time // default time.Now
	// Observer is told of every transition and of the number of waiting
	// deploys (metrics); nil tells no one.
	Observer Observer
	// PruneEvery is how often old deploys are pruned (Prune) after the
	// first time, at Start: 0 means hourly; a negative value turns the
	// pruning off, leaving Prune to the caller.
	PruneEvery time.Duration
}

// ErrUnknownTarget is returned for a target name that is not configured.
var ErrUnknownTarget = errors.New("unknown target")

// ErrClosed is returned by SubmitPush after Shutdown began.
var ErrClosed = errors.New("deploy queue is shutting down")

// Queue runs deploys: one per target at a time, up to MaxParallel targets at
// once. A deploy submitted while its target is busy waits; a newer one
// submitted meanwhile replaces it, and the replaced one ends superseded.
//
// It is made of parts with one job each: the intake (intake.go) stores new
// deploys with group commits; the scheduler (scheduler.go) keeps what waits
// and what runs and dispatches; the runner (runner.go) walks one deploy
// through its steps; streams (follow.go) serve live logs; statuses
// (statuses.go) post commit statuses; recovery (recovery.go) picks up what a
// stop left. Every state change is made by changed and stored by its owner
// (transition.go).
type Queue struct {
	// cfg holds no secret the core does not use: the admin and read
	// tokens and the webhook secrets are left out of it (New).
	cfg      *config.Config
	store    Store
	log      *slog.Logger
	now      func() time.Time
	observer Observer // may be nil
	tools    tools

	intake   *intake
	sched    *scheduler
	streams  *streams
	statuses *statuses
	pruner   *pruner
}

// tools are what a deploy runs: fetch, build and switch, and the secrets
// its log must never show.
type tools struct {
	fetcher  Fetcher
	builder  Builder
	switcher SwitcherFunc
	secrets  []string
}

// errCancelled and errShutdown are the causes a running deploy is cancelled
// with.
var (
	errCancelled = errors.New("cancelled by request")
	errShutdown  = errors.New("flakeship is shutting down")
)

// New makes a Queue. Call Start to recover stored deploys and begin work.
func New(opts Options) (*Queue, error) {
	if opts.Config == nil || opts.Store == nil || opts.Fetcher == nil || opts.Builder == nil ||
		opts.Switcher == nil || opts.Log == nil {
		return nil, errors.New("deploy.New: Config, Store, Fetcher, Builder, Switcher and Log are required")
	}
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	cfg := coreConfig(opts.Config)
	q := &Queue{
		cfg:      cfg,
		store:    opts.Store,
		log:      opts.Log,
		now:      now,
		observer: opts.Observer,
		tools: tools{
			fetcher:  opts.Fetcher,
			builder:  opts.Builder,
			switcher: opts.Switcher,
			secrets:  buildSecrets(cfg),
		},
		sched:    newScheduler(cfg.Targets, cfg.MaxParallel),
		streams:  newStreams(),
		statuses: newStatuses(cfg.Targets, opts.Notifiers, opts.Store, opts.Log, now),
		pruner:   newPruner(opts.PruneEvery),
	}
	q.intake = newIntake(q.commitBatch, opts.Log)
	return q, nil
}

// coreConfig is a copy of c without the secrets that the deploy core never
// uses (the admin and read tokens, the webhook secrets): what the core does
// not hold, no deploy can leak.
func coreConfig(c *config.Config) *config.Config {
	cfg := *c
	cfg.AdminToken, cfg.ReadToken = "", ""
	cfg.Targets = append([]config.Target(nil), c.Targets...)
	for i := range cfg.Targets {
		cfg.Targets[i].WebhookSecret = ""
	}
	return &cfg
}

// buildSecrets are the secrets a deploy's log must never show: those a
// fetch or a build is given (the git tokens, the nix access tokens).
func buildSecrets(c *config.Config) []string {
	var secrets []string
	for _, s := range c.NixSecrets {
		secrets = append(secrets, s.Tokens()...)
	}
	for _, t := range c.Targets {
		secrets = append(secrets, t.Token.Reveal())
	}
	return secrets
}

// SubmitPush stores a deploy of ev for the named target, with ev's delivery
// id in the same transaction, and queues it. For a delivery id seen before it
// returns the first deploy and duplicate=true and stores nothing.
func (q *Queue) SubmitPush(ctx context.Context, target string, ev forge.PushEvent) (*Deploy, bool, error) {
	t, ok := q.target(target)
	if !ok {
		return nil, false, fmt.Errorf("submit push: %w %q", ErrUnknownTarget, target)
	}
	if err := config.ValidateSHA(ev.SHA); err != nil {
		return nil, false, fmt.Errorf("submit push: %w", err)
	}
	d := &Deploy{
		Target: t.Name, Forge: ev.Forge, Repo: t.Repo, Branch: ev.Branch, SHA: ev.SHA,
		Trigger: TriggerPush, State: Queued, CreatedAt: q.now().UTC(),
		Author: clipText(ev.Author, maxName), Message: clipText(ev.Message, maxMessage),
		Pusher: clipText(ev.Pusher, maxName), DeliveryID: ev.DeliveryID,
	}
	return q.submit(ctx, d)
}

// target returns the configured target name (the scheduler's slots are
// fixed at New, so no lock is needed).
func (q *Queue) target(name string) (config.Target, bool) {
	sl, ok := q.sched.slots[name]
	if !ok {
		return config.Target{}, false
	}
	return sl.target, true
}

func (q *Queue) submit(_ context.Context, d *Deploy) (*Deploy, bool, error) {
	// The request going away does not take the deploy back: it is
	// committed, or refused, with the others of its group.
	return q.intake.submit(d)
}

// Get returns a stored deploy.
func (q *Queue) Get(ctx context.Context, id int64) (*Deploy, error) {
	d, err := q.store.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	q.fillURL(d)
	return d, nil
}

// List returns stored deploys, newest first.
func (q *Queue) List(ctx context.Context, f Filter) ([]*Deploy, error) {
	ds, err := q.store.List(ctx, f)
	if err != nil {
		return nil, err
	}
	for _, d := range ds {
		q.fillURL(d)
	}
	return ds, nil
}

// Shutdown stops intake, lets running deploys finish until ctx ends, then
// cancels their fetch or build (their records stay as they are, and the next
// Start marks them interrupted and retries them), waits for them, and gives
// the forge a last chance to receive the final statuses. Queued deploys stay
// queued for the next start.
func (q *Queue) Shutdown(ctx context.Context) error {
	q.sched.mu.Lock()
	q.sched.closed = true
	q.sched.mu.Unlock()
	q.intake.close()
	q.pruner.stop()

	done := make(chan struct{})
	go func() {
		q.sched.runs.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		q.log.Warn("grace period over, interrupting running deploys")
		q.sched.mu.Lock()
		for _, sl := range q.sched.slots {
			if sl.running != nil {
				sl.running.cancel(errShutdown)
			}
		}
		q.sched.mu.Unlock()
		q.sched.cancelRuns()
		<-done
	}
	q.sched.cancelRuns()

	flushCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return q.statuses.shutdown(flushCtx)
}

// resetCache drops the build cache of a target whose build was cut short.
func (q *Queue) resetCache(target string) {
	t, ok := q.target(target)
	if !ok {
		return
	}
	if err := q.tools.builder.ResetCache(SpecFor(t, q.cfg)); err != nil {
		q.log.Warn("build cache not reset", "target", target, "err", err)
	}
}

func (q *Queue) fillURL(d *Deploy) {
	d.URL = q.cfg.PublicURL + "/deploys/" + strconv.FormatInt(d.ID, 10)
}
