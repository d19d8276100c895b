// Command deploys measures whole deploys of a running flakeship against
// their floors, with real git, nix and systemd:
//
//   - end to end (-e2e, needs a systemd user manager: run it under
//     scripts/with-systemd): a push of a test flake to a service target, from
//     the webhook to the deploy's end (built, switched, restarted, healthy),
//     against bench/deploy.sh doing the same steps by hand, the median of
//     -runs of each, alternating which goes first;
//   - a burst: -burst commits pushed to the git server, then their
//     deliveries sent back to back to one build-only target (ACTIVATE=none):
//     how many builds start and how long until the newest commit's deploy
//     has succeeded, against the median time of a single push.
//
// It prints one line of JSON.
//
//	deploys -flakeship BIN -service HEALTHSRV -script bench/deploy.sh [-e2e] -runs 5 -burst 50
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/flakeship/flakeship/bench/rig"
)

// nixFlags make test flakes build offline, as in the tests.
const nixFlags = "--extra-experimental-features 'nix-command flakes' --option substituters ''"

// result is what deploys prints; times in milliseconds.
type result struct {
	E2ERuns        int                `json:"e2e_runs,omitempty"`
	E2EFlakeshipMs float64            `json:"e2e_flakeship_ms,omitempty"`
	E2EScriptMs    float64            `json:"e2e_script_ms,omitempty"`
	E2EStepsMs     map[string]float64 `json:"e2e_steps_ms,omitempty"` // median of each step of flakeship's deploys
	SingleRuns     int                `json:"single_runs"`
	SingleMs       float64            `json:"single_ms"`
	SingleStepsMs  map[string]float64 `json:"single_steps_ms"` // median of each step
	BurstPushes    int                `json:"burst_pushes"`
	BurstSendMs    float64            `json:"burst_send_ms"`
	BurstBuilds    int                `json:"burst_builds"`
	BurstDeploys   map[string]int     `json:"burst_deploys"` // by final state
	BurstMs        float64            `json:"burst_ms"`
}

// options are the flags.
type options struct {
	flakeship, service, script string
	e2e                        bool
	runs, burst                int
}

func main() {
	var o options
	flag.StringVar(&o.flakeship, "flakeship", "", "the flakeship binary")
	flag.StringVar(&o.service, "service", "", "the test service (builder/testdata/healthsrv)")
	flag.StringVar(&o.script, "script", "", "the shell deploy to compare with (bench/deploy.sh)")
	flag.BoolVar(&o.e2e, "e2e", false, "measure end-to-end deploys to a systemd user service")
	flag.IntVar(&o.runs, "runs", 5, "timed deploys of each kind")
	flag.IntVar(&o.burst, "burst", 50, "pushes in the burst")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	res, err := run(ctx, o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "deploys:", err)
		os.Exit(1)
	}
	out, _ := json.Marshal(res)
	fmt.Println(string(out))
}

// bench is one run's setup.
type bench struct {
	dir, system, nonce string
	git                *rig.GitServer
	fs                 *rig.Process
	base               string // flakeship's URL
	client             *http.Client
	repos              map[string]*repo
}

func run(ctx context.Context, o options) (_ *result, err error) {
	if o.flakeship == "" || o.service == "" || (o.e2e && o.script == "") {
		return nil, errors.New("-flakeship and -service are required, and -script with -e2e")
	}
	if o.runs < 1 || o.burst < 2 {
		return nil, errors.New("-runs must be positive and -burst at least 2")
	}
	runtimeDir := os.Getenv("XDG_RUNTIME_DIR")
	if o.e2e && runtimeDir == "" {
		return nil, errors.New("-e2e needs a systemd user manager: XDG_RUNTIME_DIR is not set (run under scripts/with-systemd)")
	}
	dir, err := os.MkdirTemp("", "flakeship-bench-deploys-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	b := &bench{dir: dir, nonce: fmt.Sprintf("%x", time.Now().UnixNano()), repos: map[string]*repo{},
		client: &http.Client{Timeout: 30 * time.Second}}
	if b.system, err = rig.Output(exec.CommandContext(ctx, "nix", "--extra-experimental-features", "nix-command flakes",
		"eval", "--impure", "--raw", "--expr", "builtins.currentSystem")); err != nil {
		return nil, err
	}
	served := filepath.Join(dir, "served")
	for _, name := range []string{"web", "script", "burst"} {
		r, err := newRepo(ctx, served, filepath.Join(dir, "work"), name)
		if err != nil {
			return nil, err
		}
		b.repos[name] = r
	}
	if b.git, err = rig.ServeGit(ctx, served, os.Stderr); err != nil {
		return nil, err
	}
	defer b.git.Close()

	state := filepath.Join(dir, "state")
	env := []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + state,
		"FLAKESHIP_LISTEN=127.0.0.1:0",
		"FLAKESHIP_STATE_DIR=" + state,
		"FLAKESHIP_NIX_FLAGS=" + nixFlags,
		"FLAKESHIP_TARGET_BURST_FORGE=github",
		"FLAKESHIP_TARGET_BURST_REPO=bench/burst",
		"FLAKESHIP_TARGET_BURST_CLONE_URL=" + b.git.URL("burst"),
		"FLAKESHIP_TARGET_BURST_ATTR=packages." + b.system + ".default",
		"FLAKESHIP_TARGET_BURST_ACTIVATE=none",
		"FLAKESHIP_TARGET_BURST_WEBHOOK_SECRET=" + secret("burst"),
	}
	targets := "burst"
	var web, script *service
	if o.e2e {
		if web, err = newService(ctx, runtimeDir, o.service, "web", filepath.Join(state, "profiles", "web")); err != nil {
			return nil, err
		}
		defer web.remove()
		if script, err = newService(ctx, runtimeDir, o.service, "script", filepath.Join(dir, "script", "profile")); err != nil {
			return nil, err
		}
		defer script.remove()
		targets += ",web"
		env = append(env,
			"XDG_RUNTIME_DIR="+runtimeDir,
			"FLAKESHIP_TARGET_WEB_FORGE=github",
			"FLAKESHIP_TARGET_WEB_REPO=bench/web",
			"FLAKESHIP_TARGET_WEB_CLONE_URL="+b.git.URL("web"),
			"FLAKESHIP_TARGET_WEB_ATTR=packages."+b.system+".default",
			"FLAKESHIP_TARGET_WEB_UNIT="+web.unit,
			"FLAKESHIP_TARGET_WEB_SYSTEMD_SCOPE=user",
			"FLAKESHIP_TARGET_WEB_HEALTH_URL="+web.healthURL,
			"FLAKESHIP_TARGET_WEB_HEALTH_TIMEOUT=30s",
			"FLAKESHIP_TARGET_WEB_WEBHOOK_SECRET="+secret("web"),
		)
	}
	env = append(env, "FLAKESHIP_TARGETS="+targets)
	if b.fs, err = rig.Start(ctx, o.flakeship, nil, env, filepath.Join(dir, "flakeship.log")); err != nil {
		return nil, err
	}
	defer func() {
		if serr := b.fs.Stop(); serr != nil {
			err = errors.Join(err, fmt.Errorf("stop flakeship: %w", serr))
		}
		if err != nil {
			if log, rerr := os.ReadFile(filepath.Join(dir, "flakeship.log")); rerr == nil {
				os.Stderr.Write(tail(log, 40))
			}
		}
	}()
	b.base = "http://" + b.fs.Addr

	res := &result{}
	if o.e2e {
		if err := b.endToEnd(ctx, o, web, script, res); err != nil {
			return nil, fmt.Errorf("end to end: %w", err)
		}
	}
	if err := b.burst(ctx, o, res); err != nil {
		return nil, fmt.Errorf("burst: %w", err)
	}
	return res, nil
}

// secret is the webhook secret of a target.
func secret(target string) string { return "bench-secret-" + target }

// endToEnd times deploys of the web target by flakeship against the shell
// deploy of the script repository to its own unit, after a warm-up deploy
// of each (first fetch, first evaluation).
func (b *bench) endToEnd(ctx context.Context, o options, web, script *service, res *result) error {
	scriptCache := filepath.Join(b.dir, "script", "cache.git")
	shellDeploy := func(sha string) (time.Duration, error) {
		cmd := exec.CommandContext(ctx, o.script, scriptCache, b.git.URL("script"), sha, script.profile,
			"packages."+b.system+".default", script.unit, script.healthURL)
		cmd.Env = append(os.Environ(), "NIX_FLAGS="+nixFlags, "XDG_CACHE_HOME="+filepath.Join(b.dir, "script", "cache"))
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		t := time.Now()
		if err := cmd.Run(); err != nil {
			return 0, fmt.Errorf("%s: %w\n%s", filepath.Base(o.script), err, tail(out.Bytes(), 20))
		}
		return time.Since(t), nil
	}
	flakeshipDeploy := func(sha string) (time.Duration, map[string]time.Duration, error) {
		t := time.Now()
		d, err := b.deploy(ctx, "web", sha)
		if err != nil {
			return 0, nil, err
		}
		took := d.since(t)
		if d.State != "succeeded" {
			return 0, nil, fmt.Errorf("deploy %d of %.7s ended %s: %s", d.ID, sha, d.State, d.Error)
		}
		return took, d.stepTimes(), nil
	}
	check := func(s *service, version int) error {
		got, err := s.health(ctx)
		if err != nil {
			return err
		}
		if want := fmt.Sprintf("version=%d", version); got != want {
			return fmt.Errorf("%s answers %q, want %q", s.unit, got, want)
		}
		return nil
	}

	var fsTimes, shTimes []time.Duration
	steps := map[string][]time.Duration{}
	for i := 0; i <= o.runs; i++ { // run 0 is the warm-up
		webSHA, err := b.repos["web"].commitFlake(ctx, b, "web")
		if err != nil {
			return err
		}
		scriptSHA, err := b.repos["script"].commitFlake(ctx, b, "script")
		if err != nil {
			return err
		}
		viaFlakeship := func() error {
			took, st, err := flakeshipDeploy(webSHA)
			if err != nil {
				return err
			}
			if i > 0 {
				fsTimes = append(fsTimes, took)
				for name, d := range st {
					steps[name] = append(steps[name], d)
				}
			}
			return check(web, b.repos["web"].version)
		}
		viaScript := func() error {
			took, err := shellDeploy(scriptSHA)
			if err != nil {
				return err
			}
			if i > 0 {
				shTimes = append(shTimes, took)
			}
			return check(script, b.repos["script"].version)
		}
		first, second := viaFlakeship, viaScript
		if i%2 == 1 {
			first, second = second, first
		}
		if err := first(); err != nil {
			return err
		}
		if err := second(); err != nil {
			return err
		}
	}
	res.E2ERuns = o.runs
	res.E2EFlakeshipMs, res.E2EScriptMs = rig.Ms(rig.Median(fsTimes)), rig.Ms(rig.Median(shTimes))
	res.E2EStepsMs = medians(steps)
	return nil
}

// medians is the median of each list, in milliseconds.
func medians(lists map[string][]time.Duration) map[string]float64 {
	out := map[string]float64{}
	for name, ds := range lists {
		out[name] = rig.Ms(rig.Median(ds))
	}
	return out
}

// burst times single pushes to the build-only target, then a burst.
func (b *bench) burst(ctx context.Context, o options, res *result) error {
	r := b.repos["burst"]
	var single []time.Duration
	steps := map[string][]time.Duration{}
	for i := 0; i <= o.runs; i++ { // run 0 is the warm-up
		sha, err := r.commitFlake(ctx, b, "burst")
		if err != nil {
			return err
		}
		t := time.Now()
		d, err := b.deploy(ctx, "burst", sha)
		if err != nil {
			return err
		}
		if d.State != "succeeded" {
			return fmt.Errorf("deploy %d ended %s: %s", d.ID, d.State, d.Error)
		}
		if i > 0 {
			single = append(single, d.since(t))
			for name, d := range d.stepTimes() {
				steps[name] = append(steps[name], d)
			}
		}
	}
	res.SingleRuns, res.SingleMs = o.runs, rig.Ms(rig.Median(single))
	res.SingleStepsMs = medians(steps)

	// Every commit reaches the git server before the first delivery.
	before := r.head
	var shas []string
	for range o.burst {
		sha, err := r.commitFlake(ctx, b, "")
		if err != nil {
			return err
		}
		shas = append(shas, sha)
	}
	if err := r.push(ctx); err != nil {
		return err
	}
	t0 := time.Now()
	var ids []int64
	for _, sha := range shas {
		id, err := b.send(ctx, "burst", before, sha)
		if err != nil {
			return err
		}
		ids = append(ids, id)
		before = sha
	}
	res.BurstPushes, res.BurstSendMs = o.burst, rig.Ms(time.Since(t0))
	last, err := b.waitEnd(ctx, ids[len(ids)-1])
	if err != nil {
		return err
	}
	res.BurstMs = rig.Ms(last.since(t0))
	if last.State != "succeeded" {
		return fmt.Errorf("the newest commit's deploy %d ended %s: %s", last.ID, last.State, last.Error)
	}
	res.BurstDeploys = map[string]int{}
	for _, id := range ids {
		d, err := b.get(ctx, id)
		if err != nil {
			return err
		}
		res.BurstDeploys[d.State]++
		for _, s := range d.Steps {
			if s.Name == "build" {
				res.BurstBuilds++
			}
		}
	}
	return nil
}

// deploy sends the push of sha to target (the commit was pushed) and waits
// for its deploy to end.
func (b *bench) deploy(ctx context.Context, target, sha string) (*record, error) {
	id, err := b.send(ctx, target, "", sha)
	if err != nil {
		return nil, err
	}
	return b.waitEnd(ctx, id)
}

// send sends the signed push delivery of sha to target and returns the
// deploy id it was answered with.
func (b *bench) send(ctx context.Context, target, before, sha string) (int64, error) {
	body, h, err := rig.GitHubPush(rig.Push{Repo: "bench/" + target, Branch: "main", Before: before, After: sha,
		Message: "bench " + sha[:7]}, secret(target), fmt.Sprintf("%s-%s-%.12s", b.nonce, target, sha))
	if err != nil {
		return 0, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, b.base+"/hooks/github", bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header = h
	resp, err := b.client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	var a struct {
		DeployID int64 `json:"deploy_id"`
	}
	if resp.StatusCode != http.StatusAccepted || json.Unmarshal(answer, &a) != nil || a.DeployID == 0 {
		return 0, fmt.Errorf("push of %.7s to %s answered %d %s", sha, target, resp.StatusCode, answer)
	}
	return a.DeployID, nil
}

// record is the part of a deploy record the bench reads.
type record struct {
	ID         int64      `json:"id"`
	State      string     `json:"state"`
	Error      string     `json:"error"`
	FinishedAt *time.Time `json:"finished_at"`
	Steps      []struct {
		Name       string     `json:"name"`
		StartedAt  time.Time  `json:"started_at"`
		FinishedAt *time.Time `json:"finished_at"`
	} `json:"steps"`
}

// since is the time from t to the deploy's end as flakeship stamped it:
// unlike the moment a poll sees the end, it carries no polling delay.
func (r *record) since(t time.Time) time.Duration {
	if r.FinishedAt == nil {
		return time.Since(t)
	}
	return r.FinishedAt.Sub(t)
}

// stepTimes is how long each finished step took.
func (r *record) stepTimes() map[string]time.Duration {
	out := map[string]time.Duration{}
	for _, s := range r.Steps {
		if s.FinishedAt != nil {
			out[s.Name] = s.FinishedAt.Sub(s.StartedAt)
		}
	}
	return out
}

// waitEnd polls deploy id every 5 ms until it has ended, and returns its
// record. (Following its log would end up to a second late: a follower
// notices that a deploy stopped running on its next poll.)
func (b *bench) waitEnd(ctx context.Context, id int64) (*record, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		d, err := b.get(ctx, id)
		if err != nil {
			return nil, err
		}
		switch d.State {
		case "succeeded", "failed", "rolled_back", "superseded", "cancelled", "interrupted":
			return d, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("deploy %d did not end: %w", id, ctx.Err())
		case <-tick.C:
		}
	}
}

// get reads a deploy record.
func (b *bench) get(ctx context.Context, id int64) (*record, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s/api/deploys/%d", b.base, id), nil)
	if err != nil {
		return nil, err
	}
	resp, err := b.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET deploy %d: %s", id, resp.Status)
	}
	var d record
	if err := json.NewDecoder(resp.Body).Decode(&d); err != nil {
		return nil, fmt.Errorf("GET deploy %d: %w", id, err)
	}
	return &d, nil
}

// repo is a bare repository that the git server serves, and a work tree
// that commits to it.
type repo struct {
	name, bare, work string
	version          int
	head             string
}

func newRepo(ctx context.Context, served, workRoot, name string) (*repo, error) {
	r := &repo{name: name, bare: filepath.Join(served, name+".git"), work: filepath.Join(workRoot, name)}
	for _, dir := range []string{served, workRoot} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
	}
	if _, err := rig.Git(ctx, served, "init", "--quiet", "--bare", "--initial-branch=main", r.bare); err != nil {
		return nil, err
	}
	if _, err := rig.Git(ctx, workRoot, "init", "--quiet", "--initial-branch=main", r.work); err != nil {
		return nil, err
	}
	return r, nil
}

// commitFlake commits the next version of the test flake: its build writes
// the settings the test service reads. Unless push is "", the commit is
// pushed to the served repository at once.
func (r *repo) commitFlake(ctx context.Context, b *bench, push string) (string, error) {
	r.version++
	flake := fmt.Sprintf(`{
  outputs = { self }: {
    packages.%[1]s.default = derivation {
      name = "bench-%[2]s";
      system = "%[1]s";
      builder = "/bin/sh";
      args = [ "-c" ": %[3]s; echo version=%[4]d > $out; echo healthy=yes >> $out" ];
    };
  };
}
`, b.system, r.name, b.nonce, r.version)
	if err := os.WriteFile(filepath.Join(r.work, "flake.nix"), []byte(flake), 0o644); err != nil {
		return "", err
	}
	if _, err := rig.Git(ctx, r.work, "add", "flake.nix"); err != nil {
		return "", err
	}
	if _, err := rig.Git(ctx, r.work, "commit", "--quiet", "-m", fmt.Sprintf("version %d", r.version)); err != nil {
		return "", err
	}
	sha, err := rig.Git(ctx, r.work, "rev-parse", "HEAD")
	if err != nil {
		return "", err
	}
	r.head = sha
	if push != "" {
		if err := r.push(ctx); err != nil {
			return "", err
		}
	}
	return sha, nil
}

// push pushes the work tree's main to the served repository.
func (r *repo) push(ctx context.Context) error {
	_, err := rig.Git(ctx, r.work, "push", "--quiet", r.bare, "main")
	return err
}

// service is a systemd user unit running the test service on what a
// profile points at.
type service struct {
	unit, unitPath, profile, healthURL string
}

func newService(ctx context.Context, runtimeDir, bin, name, profile string) (*service, error) {
	port, err := servicePort()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(profile), 0o755); err != nil {
		return nil, err
	}
	s := &service{
		unit:      fmt.Sprintf("flakeship-bench-%s-%d.service", name, port),
		profile:   profile,
		healthURL: fmt.Sprintf("http://127.0.0.1:%d/health", port),
	}
	dir := filepath.Join(runtimeDir, "systemd", "user")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	s.unitPath = filepath.Join(dir, s.unit)
	// Without a start limit: the benchmark restarts the unit more often
	// than systemd's default allows (5 starts in 10 s), which flakeship
	// would handle with reset-failed and the shell deploy would not.
	unit := fmt.Sprintf("[Unit]\nDescription=flakeship benchmark service %s\nStartLimitIntervalSec=0\n\n[Service]\nExecStart=%s -profile %s -addr 127.0.0.1:%d\n",
		name, bin, profile, port)
	if err := os.WriteFile(s.unitPath, []byte(unit), 0o644); err != nil {
		return nil, err
	}
	if _, err := rig.Output(exec.CommandContext(ctx, "systemctl", "--user", "daemon-reload")); err != nil {
		return nil, err
	}
	return s, nil
}

// servicePort returns a free port below Linux's range of ephemeral ports
// (32768 and up), so that no client connection of flakeship, git or the
// health checks can take it between now and the service's start.
func servicePort() (int, error) {
	for range 100 {
		port := 20000 + rand.IntN(12000)
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		ln.Close()
		return port, nil
	}
	return 0, errors.New("no free port for the service between 20000 and 32000")
}

// health returns what the service's health URL answers.
func (s *service) health(ctx context.Context) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.healthURL, nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return strings.TrimSpace(string(b)), err
}

// remove stops the unit and removes it. It is cleanup: failures are
// ignored.
func (s *service) remove() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	exec.CommandContext(ctx, "systemctl", "--user", "stop", s.unit).Run()
	os.Remove(s.unitPath)
	exec.CommandContext(ctx, "systemctl", "--user", "daemon-reload").Run()
}

// tail is the last n lines of b.
func tail(b []byte, n int) []byte {
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return append(bytes.Join(lines, []byte("\n")), '\n')
}
