package deploy_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flakeship/flakeship/builder"
	"github.com/flakeship/flakeship/config"
	"github.com/flakeship/flakeship/deploy"
	"github.com/flakeship/flakeship/forge"
	"github.com/flakeship/flakeship/internal/forgetest"
	"github.com/flakeship/flakeship/internal/gittest"
	"github.com/flakeship/flakeship/internal/testenv"
	"github.com/flakeship/flakeship/notifier"
	"github.com/flakeship/flakeship/store"
)

// The queue tests run real deploys of build-only targets (ACTIVATE=none):
// a real git server, the real fetcher, real nix builds, a real profile and a
// real SQLite store. Only the forge is a fake.

type rig struct {
	t      *testing.T
	cfg    *config.Config
	store  *store.Store
	forge  *forgetest.Server
	repo   *gittest.Repo
	system string
	nonce  string
	n      int
	gates  *buildGates // builds the test holds (holdBuild)
}

func newRig(t *testing.T, targets ...string) *rig {
	t.Helper()
	testenv.Require(t, "git", "nix")
	state := t.TempDir()
	gs := gittest.NewServer(t)
	r := &rig{
		t:      t,
		repo:   gs.NewRepo(t, "app"),
		forge:  forgetest.NewGitHub(t, "tok-queue-test"),
		system: testenv.System(t),
		nonce:  fmt.Sprintf("%x", time.Now().UnixNano()),
		gates:  &buildGates{byCommit: map[string]*buildGate{}},
	}
	r.cfg = &config.Config{
		StateDir:    state,
		PublicURL:   "https://deploy.example.test",
		MaxParallel: 1,
		Nix:         "nix",
		NixFlags:    testenv.NixFlags(),
	}
	for _, name := range targets {
		r.cfg.Targets = append(r.cfg.Targets, config.Target{
			Name: name, Forge: "github", Repo: "acme/" + name, CloneURL: gs.URL("app"),
			Branch: "main", Attr: "packages." + r.system + ".default", Activate: config.ActivateNone,
			Profile: filepath.Join(state, "profiles", name), HealthTimeout: 5 * time.Second,
			BuildTimeout: time.Minute, WebhookSecret: "hook-secret", Token: "tok-queue-test",
			StatusContext: "flakeship/" + name,
		})
	}
	st, err := store.Open(context.Background(), filepath.Join(state, "flakeship.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	r.store = st
	return r
}

// commit pushes a commit whose build succeeds (or fails) and returns it.
func (r *rig) commit(ok bool) string {
	script := "echo broken >&2; exit 1"
	if ok {
		script = "echo built > $out"
	}
	return r.commitScript(script)
}

func (r *rig) commitScript(script string) string {
	r.n++
	script = fmt.Sprintf(": %s %d; %s", r.nonce, r.n, script)
	flake := fmt.Sprintf(`{ outputs = { self }: { packages.%[1]s.default = derivation {
  name = "queue-test"; system = "%[1]s"; builder = "/bin/sh"; args = [ "-c" %[2]q ]; }; }; }
`, r.system, script)
	sha := r.repo.Commit(r.t, fmt.Sprintf("build %d", r.n), map[string]string{"flake.nix": flake})
	r.repo.Push(r.t, "main")
	return sha
}

func (r *rig) queue() *deploy.Queue {
	r.t.Helper()
	q := r.newQueue()
	r.t.Cleanup(func() {
		r.gates.openAll() // no build waits out the grace period, should the test stop early
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		q.Shutdown(ctx)
	})
	return q
}

// newQueue starts a queue on the rig's store; the caller shuts it down.
func (r *rig) newQueue() *deploy.Queue {
	r.t.Helper()
	return r.newQueueOn(r.store)
}

// newQueueOn starts a queue on st; the caller shuts it down.
func (r *rig) newQueueOn(st deploy.Store) *deploy.Queue {
	r.t.Helper()
	log := slog.New(slog.DiscardHandler)
	return r.startQueue(st, builder.NewFetcher(log), nil, 0, log)
}

// startQueue starts a queue on st with fetcher f, the clock now (nil: the
// real one), pruning every pruneEvery (0: the default; negative: only when
// called) and log; the caller shuts it down. The rig's fake forge records
// its statuses; its builds are real nix builds, held at a gate for the
// commits the test holds (holdBuild).
func (r *rig) startQueue(st deploy.Store, f deploy.Fetcher, now func() time.Time, pruneEvery time.Duration, log *slog.Logger) *deploy.Queue {
	r.t.Helper()
	nix := &builder.Nix{Binary: r.cfg.Nix, Flags: r.cfg.NixFlags}
	held := &heldBuilder{Builder: nix, gates: r.gates}
	notifiers := map[string]notifier.Notifier{}
	for _, t := range r.cfg.Targets {
		n, err := notifier.NewGitHub(notifier.GitHubOptions{BaseURL: r.forge.URL(), Token: t.Token, Log: log})
		if err != nil {
			r.t.Fatal(err)
		}
		notifiers[t.Name] = n
	}
	q, err := deploy.New(deploy.Options{
		Config: r.cfg, Store: st, Fetcher: f, Builder: held,
		Switcher:  func(s builder.Spec) (builder.Switcher, error) { return builder.NewSwitcher(s, nix, log) },
		Notifiers: notifiers, Log: log, Now: now, PruneEvery: pruneEvery,
	})
	if err != nil {
		r.t.Fatal(err)
	}
	if err := q.Start(context.Background()); err != nil {
		r.t.Fatal(err)
	}
	return q
}

// buildGates are the gates of the commits whose builds a test holds.
type buildGates struct {
	mu       sync.Mutex
	byCommit map[string]*buildGate
}

func (g *buildGates) of(sha string) *buildGate {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.byCommit[sha]
}

// openAll opens every gate.
func (g *buildGates) openAll() {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, gate := range g.byCommit {
		gate.open()
	}
}

// buildGate holds the builds of one commit until the test opens it.
type buildGate struct {
	reached   chan struct{} // closed when a build of the commit first waits at the gate
	opened    chan struct{} // closed by open
	reachOnce sync.Once
	openOnce  sync.Once
}

// open lets the builds of the commit through, now and later.
func (g *buildGate) open() { g.openOnce.Do(func() { close(g.opened) }) }

// waitReached waits until a build of the commit waits at the gate.
func (g *buildGate) waitReached(t *testing.T) {
	t.Helper()
	select {
	case <-g.reached:
	case <-time.After(2 * time.Minute): // a safety net: the build is held, not timed
		t.Fatal("no build reached the gate within 2 minutes")
	}
}

// holdBuild holds every build of sha at a gate until the test opens it (or
// the deploy's context ends): the deploy stays in its build for as long as
// the test needs, with no timer. The gate opens when the test ends.
func (r *rig) holdBuild(sha string) *buildGate {
	r.t.Helper()
	g := &buildGate{reached: make(chan struct{}), opened: make(chan struct{})}
	r.gates.mu.Lock()
	r.gates.byCommit[sha] = g
	r.gates.mu.Unlock()
	r.t.Cleanup(g.open)
	return g
}

// heldBuilder is the real nix builder behind the rig's gates: a build of a
// held commit writes "waiting at the gate" to its deploy's log, waits for
// the gate, writes "through the gate" and then builds.
type heldBuilder struct {
	deploy.Builder
	gates *buildGates
}

func (h *heldBuilder) Build(ctx context.Context, s builder.Spec, c builder.Checkout, log io.Writer) (string, error) {
	if g := h.gates.of(c.SHA); g != nil {
		fmt.Fprintln(log, "waiting at the gate")
		g.reachOnce.Do(func() { close(g.reached) })
		select {
		case <-g.opened:
		case <-ctx.Done():
			return "", fmt.Errorf("build held at the gate: %w", context.Cause(ctx))
		}
		fmt.Fprintln(log, "through the gate")
	}
	return h.Builder.Build(ctx, s, c, log)
}

func push(sha, delivery string) forge.PushEvent {
	return forge.PushEvent{Forge: forge.GitHub, DeliveryID: delivery, Repo: "acme/app", Branch: "main", SHA: sha, Pusher: "octocat"}
}

// waitEnd waits until deploy id ends. The deadline is a safety net for a
// deploy that never ends, generous for a loaded machine, not a time window
// the deploy must hit.
func waitEnd(t *testing.T, q *deploy.Queue, id int64) *deploy.Deploy {
	t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for {
		d, err := q.Get(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if d.State.Terminal() {
			return d
		}
		if time.Now().After(deadline) {
			t.Fatalf("deploy %d still %s after 3 minutes", id, d.State)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func built(d *deploy.Deploy) bool {
	for _, s := range d.Steps {
		if s.Name == "build" {
			return true
		}
	}
	return false
}

// TestQueueCoalescesABurstIntoTheNewestCommit pushes six commits while the
// first one's build is held at a gate: the four in between end superseded,
// each by the next, and only the first and the newest are built.
func TestQueueCoalescesABurstIntoTheNewestCommit(t *testing.T) {
	t.Parallel()
	r := newRig(t, "app")
	var shas []string
	for i := 0; i < 6; i++ {
		shas = append(shas, r.commit(true))
	}
	first := r.holdBuild(shas[0])
	q := r.queue()
	var ids []int64
	for i, sha := range shas {
		d, dup, err := q.SubmitPush(context.Background(), "app", push(sha, fmt.Sprintf("d-%d", i)))
		if err != nil || dup {
			t.Fatalf("submit %d: dup=%v err=%v", i, dup, err)
		}
		if d.State != deploy.Queued || d.URL != fmt.Sprintf("https://deploy.example.test/deploys/%d", d.ID) {
			t.Fatalf("submitted deploy = %+v", d)
		}
		ids = append(ids, d.ID)
	}
	first.waitReached(t)
	first.open()
	last := waitEnd(t, q, ids[5])
	if last.State != deploy.Succeeded || last.Generation == 0 || !built(last) {
		t.Fatalf("newest deploy = %+v, want built and succeeded", last)
	}
	if d := waitEnd(t, q, ids[0]); d.State != deploy.Succeeded || !built(d) {
		t.Errorf("the first deploy, held in its build as the others came, = %+v, want built and succeeded", d)
	}
	for i, id := range ids[1:5] {
		d := waitEnd(t, q, id)
		if d.State != deploy.Superseded || built(d) || d.SupersededBy == nil || *d.SupersededBy != ids[i+2] {
			t.Errorf("deploy %d = %s, built %v, superseded by %v; want superseded by %d, never built",
				d.ID, d.State, built(d), d.SupersededBy, ids[i+2])
		}
	}
}

func TestQueueStoresARedeliveryOnce(t *testing.T) {
	t.Parallel()
	r := newRig(t, "app")
	sha := r.commit(true)
	q := r.queue()
	first, dup, err := q.SubmitPush(context.Background(), "app", push(sha, "same-delivery"))
	if err != nil || dup {
		t.Fatalf("first: dup=%v err=%v", dup, err)
	}
	again, dup, err := q.SubmitPush(context.Background(), "app", push(sha, "same-delivery"))
	if err != nil || !dup || again.ID != first.ID {
		t.Fatalf("redelivery: %+v dup=%v err=%v, want the first deploy %d", again, dup, err, first.ID)
	}
	waitEnd(t, q, first.ID)
	all, err := q.List(context.Background(), deploy.Filter{})
	if err != nil || len(all) != 1 {
		t.Fatalf("%d deploys stored (%v), want 1", len(all), err)
	}
}

func TestQueueReportsABrokenBuildAndKeepsTheProfile(t *testing.T) {
	t.Parallel()
	r := newRig(t, "app")
	good, bad := r.commit(true), r.commit(false)
	q := r.queue()
	d1, _, _ := q.SubmitPush(context.Background(), "app", push(good, "good"))
	if d := waitEnd(t, q, d1.ID); d.State != deploy.Succeeded {
		t.Fatalf("good deploy = %+v", d)
	}
	d2, _, _ := q.SubmitPush(context.Background(), "app", push(bad, "bad"))
	d := waitEnd(t, q, d2.ID)
	if d.State != deploy.Failed || d.Error != "build: nix build: exit status 1" {
		t.Fatalf("broken deploy = %+v, want failed with a one-line build error", d)
	}
	st := r.forge.WaitFor(t, 30*time.Second, func(rs []forgetest.Recorded) bool {
		return len(rs) > 0 && rs[len(rs)-1].SHA == bad && rs[len(rs)-1].State == "failure"
	})
	if got := st[len(st)-1]; got.Description != "Build failed: see log" || got.TargetURL != d.URL {
		t.Errorf("failure status = %+v", got)
	}
}

// TestQueueCancelsAQueuedDeploy holds the target's first deploy in its
// build at a gate, so the second is queued when Cancel is called.
func TestQueueCancelsAQueuedDeploy(t *testing.T) {
	t.Parallel()
	r := newRig(t, "app")
	r.cfg.NixFlags = append(r.cfg.NixFlags, testenv.NoSandbox...)
	gate := testenv.NewGate(t)
	a, b := r.commitScript(gate.Script()+"; echo built > $out"), r.commit(true)
	q := r.queue()
	t.Cleanup(func() { gate.Open() }) // before the queue's shutdown, should the test stop early
	ctx := context.Background()
	d1, _, err := q.SubmitPush(ctx, "app", push(a, "a"))
	if err != nil {
		t.Fatal(err)
	}
	waitState(t, q, d1.ID, deploy.Building)
	d2, _, err := q.SubmitPush(ctx, "app", push(b, "b"))
	if err != nil {
		t.Fatal(err)
	}
	if d, err := q.Get(ctx, d2.ID); err != nil || d.State != deploy.Queued {
		t.Fatalf("the deploy behind the held build is %+v (%v), want queued", d, err)
	}
	if err := q.Cancel(ctx, d2.ID); err != nil {
		t.Fatalf("cancel of a queued deploy: %v", err)
	}
	got := waitEnd(t, q, d2.ID)
	if got.State != deploy.Cancelled || built(got) {
		t.Fatalf("cancelled deploy = %+v, want cancelled and never built", got)
	}
	r.forge.WaitFor(t, 30*time.Second, func(rs []forgetest.Recorded) bool {
		for _, s := range rs {
			if s.SHA == b && s.State == "error" && s.Description == "Cancelled" {
				return true
			}
		}
		return false
	})

	if err := gate.Open(); err != nil {
		t.Fatal(err)
	}
	if d := waitEnd(t, q, d1.ID); d.State != deploy.Succeeded {
		t.Fatalf("the held deploy ended %s: %s", d.State, d.Error)
	}
	if d := waitEnd(t, q, d2.ID); d.State != deploy.Cancelled || built(d) {
		t.Fatalf("after the target freed up the cancelled deploy is %+v, want cancelled and never built", d)
	}
	if err := q.Cancel(ctx, d1.ID); err == nil {
		t.Error("cancelling a finished deploy succeeded")
	}
	if err := q.Cancel(ctx, 999); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Errorf("cancelling an unknown deploy: %v", err)
	}
}

// TestStartRecoversWhatAStopLeft stores deploys as a killed flakeship
// would have left them, then starts a queue on that store.
func TestStartRecoversWhatAStopLeft(t *testing.T) {
	t.Parallel()
	r := newRig(t, "app", "api")
	a, b, c, d := r.commit(true), r.commit(true), r.commit(true), r.commit(true)
	ctx := context.Background()
	now := time.Now()
	put := func(target, sha string, trigger deploy.Trigger, states ...deploy.State) *deploy.Deploy {
		dep := &deploy.Deploy{Target: target, Forge: forge.GitHub, Repo: "acme/" + target, Branch: "main",
			SHA: sha, Trigger: trigger, State: deploy.Queued, CreatedAt: now}
		if err := r.store.Create(ctx, dep); err != nil {
			t.Fatal(err)
		}
		for _, s := range states {
			if err := dep.Advance(s, now); err != nil {
				t.Fatal(err)
			}
		}
		if err := r.store.Update(ctx, dep); err != nil {
			t.Fatal(err)
		}
		return dep
	}
	// app: one deploy was building; it is retried once.
	building := put("app", a, deploy.TriggerPush, deploy.Fetching, deploy.Building)
	// api: a retry was building (not retried again) and two pushes were
	// queued behind it (the newer one deploys).
	retried := put("api", b, deploy.TriggerRetry, deploy.Fetching, deploy.Building)
	older := put("api", c, deploy.TriggerPush)
	newer := put("api", d, deploy.TriggerPush)

	q := r.queue()
	if got := waitEnd(t, q, building.ID); got.State != deploy.Interrupted {
		t.Errorf("building deploy ended %s, want interrupted", got.State)
	}
	if got := waitEnd(t, q, retried.ID); got.State != deploy.Interrupted {
		t.Errorf("interrupted retry ended %s, want interrupted", got.State)
	}
	if got := waitEnd(t, q, older.ID); got.State != deploy.Superseded || got.SupersededBy == nil || *got.SupersededBy != newer.ID {
		t.Errorf("older queued deploy = %+v, want superseded by %d", got, newer.ID)
	}
	if got := waitEnd(t, q, newer.ID); got.State != deploy.Succeeded {
		t.Errorf("newer queued deploy = %+v, want succeeded", got)
	}
	all, err := q.List(ctx, deploy.Filter{Target: "app"})
	if err != nil {
		t.Fatal(err)
	}
	var retries []*deploy.Deploy
	for _, dep := range all {
		if dep.Trigger == deploy.TriggerRetry {
			retries = append(retries, dep)
		}
	}
	if len(retries) != 1 || retries[0].SHA != a || retries[0].RetryOf == nil || *retries[0].RetryOf != building.ID {
		t.Fatalf("retries of app = %+v, want one retry of deploy %d", retries, building.ID)
	}
	if got := waitEnd(t, q, retries[0].ID); got.State != deploy.Succeeded {
		t.Errorf("retry = %+v, want succeeded", got)
	}
	apiAll, _ := q.List(ctx, deploy.Filter{Target: "api", Limit: 100})
	if len(apiAll) != 3 {
		t.Errorf("api has %d deploys, want 3 (a retry of a retry is never made)", len(apiAll))
	}
}

// TestShutdownInterruptsABuildThatOutlastsTheGrace stops a queue whose
// grace period is over while a build (a real nix build waiting at a gate)
// runs; the next start retries it.
func TestShutdownInterruptsABuildThatOutlastsTheGrace(t *testing.T) {
	t.Parallel()
	r := newRig(t, "app")
	r.cfg.NixFlags = append(r.cfg.NixFlags, testenv.NoSandbox...)
	gate := testenv.NewGate(t)
	slow, queued := r.commitScript(gate.Script()+"; echo built > $out"), r.commit(true)
	ctx := context.Background()
	q := r.newQueue()
	running, _, err := q.SubmitPush(ctx, "app", push(slow, "slow"))
	if err != nil {
		t.Fatal(err)
	}
	waitState(t, q, running.ID, deploy.Building)
	graceOver, cancel := context.WithCancel(ctx)
	cancel()
	if err := q.Shutdown(graceOver); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if _, _, err := q.SubmitPush(ctx, "app", push(queued, "late")); err == nil {
		t.Fatal("a stopped queue accepted a push")
	}
	left, err := r.store.Get(ctx, running.ID)
	if err != nil {
		t.Fatal(err)
	}
	if left.State != deploy.Building {
		t.Fatalf("interrupted build stored as %s, want it left building for the next start", left.State)
	}

	// The retry builds through the gate.
	if err := gate.Open(); err != nil {
		t.Fatal(err)
	}
	q2 := r.queue()
	if got := waitEnd(t, q2, running.ID); got.State != deploy.Interrupted {
		t.Errorf("build cut short by the stop ended %s, want interrupted", got.State)
	}
	all, err := q2.List(ctx, deploy.Filter{Target: "app"})
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 2 || all[0].Trigger != deploy.TriggerRetry || all[0].SHA != slow {
		t.Fatalf("deploys after the restart = %+v, want the interrupted one and its retry", all)
	}
	if got := waitEnd(t, q2, all[0].ID); got.State != deploy.Succeeded {
		t.Errorf("retry ended %s, want succeeded", got.State)
	}
}

// waitState waits until deploy id is in state s: a state the test holds
// the deploy in (a build held at a gate), not one it passes through, which
// polling could miss.
func waitState(t *testing.T, q *deploy.Queue, id int64, s deploy.State) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Minute) // a safety net, as in waitEnd
	for {
		d, err := q.Get(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if d.State == s {
			return
		}
		if d.State.Terminal() || time.Now().After(deadline) {
			t.Fatalf("deploy %d is %s, want %s", id, d.State, s)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
