package builder

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os/exec"
	"strings"
	"time"

	"github.com/flakeship/flakeship/config"
)

// defaultHealthTimeout is Verify's limit when the Spec sets none.
const defaultHealthTimeout = 30 * time.Second

// Verify polls with a delay that starts at pollMin and doubles up to pollMax:
// a service that listens within a few milliseconds of its restart is seen
// healthy within a few more, and a slow one is asked about once a second.
const (
	pollMin = 10 * time.Millisecond
	pollMax = time.Second
)

// probeEvery is how often Verify asks systemd about a unit whose health URL
// does not answer yet.
const probeEvery = 100 * time.Millisecond

// settle is how long a unit without a health URL must stay active before
// Verify believes it: systemd calls a simple service active as soon as its
// process is forked, even one that is about to crash.
const settle = time.Second

// NewSwitcher returns the Switcher of s.Activate: for "service", one that
// sets the profile and restarts s.Unit; for "nixos", one that sets the
// system profile and runs the build's switch-to-configuration (see
// nixosSwitcher); for "none", one that only sets the profile. nix-env is
// taken from beside n's nix binary (see Nix). log receives events an
// operator may want; command output goes to the log writers of each call.
func NewSwitcher(s Spec, n *Nix, log *slog.Logger) (Switcher, error) {
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	switch s.Activate {
	case config.ActivateService, config.ActivateNixOS, config.ActivateNone:
	default:
		return nil, fmt.Errorf("target %s: unknown activation %q", s.Name, s.Activate)
	}
	profilePath := s.Profile
	if profilePath == "" && s.Activate == config.ActivateNixOS {
		profilePath = systemProfile
	}
	p, err := newProfile(profilePath, n.tool(s, "nix-env"))
	if err != nil {
		return nil, fmt.Errorf("target %s: %w", s.Name, err)
	}
	if s.Activate == config.ActivateNone {
		return &profileSwitcher{profile: p}, nil
	}

	// A service has a unit to restart; a NixOS system restarts what its
	// activation decides, and has its unit checked only if one is named.
	if s.Activate == config.ActivateService || s.Unit != "" {
		if err := config.ValidateUnit(s.Unit); err != nil {
			return nil, fmt.Errorf("target %s: unit: %w", s.Name, err)
		}
	}
	var scope []string
	switch s.SystemdScope {
	case config.ScopeSystem, "":
	case config.ScopeUser:
		scope = []string{"--user"}
	default:
		return nil, fmt.Errorf("target %s: unknown systemd scope %q", s.Name, s.SystemdScope)
	}
	var healthDisplay string
	if s.HealthURL != "" {
		if healthDisplay, err = parseHealthURL(s.HealthURL); err != nil {
			return nil, fmt.Errorf("target %s: %w", s.Name, err)
		}
	}
	timeout := s.HealthTimeout
	if timeout <= 0 {
		timeout = defaultHealthTimeout
	}
	v := verifier{
		subject:   s.Unit,
		unit:      s.Unit,
		scope:     scope,
		healthURL: s.HealthURL,
		health:    healthDisplay,
		timeout:   timeout,
		client:    newHealthClient(),
	}
	if s.Activate == config.ActivateNixOS {
		if v.subject == "" {
			v.subject = "the system"
		}
		return newNixOSSwitcher(s, p, v)
	}
	return &serviceSwitcher{
		profile:  p,
		verifier: v,
		log:      log.With("target", s.Name, "unit", s.Unit),
	}, nil
}

// profileSwitcher is activation "none": a build becomes a generation of the
// profile and nothing runs it.
type profileSwitcher struct {
	profile profile
}

// Current implements Switcher.
func (p *profileSwitcher) Current(ctx context.Context) (Generation, error) {
	return p.profile.current()
}

// Switch implements Switcher.
func (p *profileSwitcher) Switch(ctx context.Context, outPath string, log io.Writer) (Generation, error) {
	g, err := p.profile.set(ctx, outPath, log)
	if err != nil {
		return Generation{}, err
	}
	fmt.Fprintf(log, "profile %s is at generation %d: %s\n", p.profile.path, g.Number, g.OutPath)
	return g, nil
}

// Verify implements Switcher: there is nothing running to check.
func (p *profileSwitcher) Verify(ctx context.Context, log io.Writer) error {
	return nil
}

// SwitchTo implements Switcher.
func (p *profileSwitcher) SwitchTo(ctx context.Context, to Generation, log io.Writer) error {
	if err := p.profile.switchTo(ctx, to, log); err != nil {
		return err
	}
	fmt.Fprintf(log, "profile %s is at generation %d: %s\n", p.profile.path, to.Number, to.OutPath)
	return nil
}

// Rollback implements Switcher.
func (p *profileSwitcher) Rollback(ctx context.Context, to Generation, log io.Writer) error {
	if err := p.SwitchTo(ctx, to, log); err != nil {
		return fmt.Errorf("rollback: %w", err)
	}
	return nil
}

// serviceSwitcher is activation "service": the unit runs what the profile
// points at, and a switch is a new generation and a restart. Its verifier
// always has a unit.
type serviceSwitcher struct {
	profile profile
	verifier
	log *slog.Logger
}

// Current implements Switcher.
func (s *serviceSwitcher) Current(ctx context.Context) (Generation, error) {
	return s.profile.current()
}

// Switch implements Switcher. If the profile was set but the unit would not
// restart, it returns the new generation with the error, so the caller
// knows the profile moved and can roll back.
func (s *serviceSwitcher) Switch(ctx context.Context, outPath string, log io.Writer) (Generation, error) {
	// The unit's state is read while nix-env sets the profile: neither
	// waits for the other.
	unitState := make(chan probed, 1)
	go func() {
		state, err := s.probe(ctx, "is-failed")
		unitState <- probed{state, err}
	}()
	g, err := s.profile.set(ctx, outPath, log)
	before := <-unitState
	if err != nil {
		return Generation{}, err
	}
	fmt.Fprintf(log, "profile %s is at generation %d: %s\n", s.profile.path, g.Number, g.OutPath)
	return g, s.restartFrom(ctx, log, before)
}

// probed is the answer of a systemctl probe.
type probed struct {
	answer string
	err    error
}

// Verify implements Switcher: see verifier.verify.
func (s *serviceSwitcher) Verify(ctx context.Context, log io.Writer) error {
	return s.verify(ctx, log)
}

// verifier checks that an activation came up: a unit that must be active
// (and stay so), a health URL that must answer 2xx, or both. A service
// always has a unit; a NixOS system has what its target configures, maybe
// nothing.
type verifier struct {
	subject   string   // what is checked, for messages: the unit, or "the system"
	unit      string   // "" for none
	scope     []string // systemctl flags of the scope: none, or --user
	healthURL string   // "" for none
	health    string   // healthURL to show: without a password
	timeout   time.Duration
	client    *http.Client
}

// verify polls until the unit is active and then, if a health URL is set,
// until that answers 2xx while the unit is still active; without one, the
// unit must stay active for a moment (settle). Without a unit, only the
// health URL is polled. It gives up early when the unit fails, writing its
// status to log, and when its timeout passes.
func (s *verifier) verify(ctx context.Context, log io.Writer) error {
	switch {
	case s.unit == "" && s.healthURL == "":
		fmt.Fprintf(log, "no unit and no health url to check %s with\n", s.subject)
		return nil
	case s.unit == "":
		fmt.Fprintf(log, "waiting for health %s to answer 2xx\n", s.health)
	default:
		fmt.Fprintf(log, "waiting for %s to become active\n", s.unit)
	}
	waitCtx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	// The first probe waits probeEvery: the unit was (re)started a moment
	// ago, and its health URL may well answer first.
	v := verification{start: time.Now(), last: "no answer yet"}
	v.lastProbe = v.start
	delay := pollMin
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-waitCtx.Done():
			if ctx.Err() != nil {
				return fmt.Errorf("verify %s: %w", s.subject, ctx.Err())
			}
			err := fmt.Errorf("%s not healthy after %s: %s", s.subject, s.timeout, v.last)
			if s.unit == "" {
				fmt.Fprintln(log, err)
				return err
			}
			fmt.Fprintf(log, "%v; its status:\n", err)
			s.writeStatus(ctx, log)
			return err
		case <-timer.C:
		}
		seen, done, err := s.check(waitCtx, log, &v)
		if done {
			return err
		}
		if seen != "" && seen != v.last {
			fmt.Fprintln(log, seen)
			v.last = seen
		}
		timer.Reset(delay)
		delay = min(2*delay, pollMax)
	}
}

// verification is what one Verify has seen so far.
type verification struct {
	start       time.Time
	last        string    // the latest observation, logged when it changes
	activeSince time.Time // when the unit was first seen active (no health URL)
	lastProbe   time.Time // when the unit was last asked about
}

// check looks once. It returns what it saw, or done and Verify's result.
// An error of a check cut short by ctx is not final: Verify's loop reports
// the timeout or cancellation.
func (s *verifier) check(ctx context.Context, log io.Writer, v *verification) (seen string, done bool, err error) {
	if s.unit == "" {
		code, err := checkHealth(ctx, s.client, s.healthURL, s.health)
		if err != nil {
			return err.Error(), false, nil
		}
		fmt.Fprintf(log, "health %s answered %d after %s\n", s.health, code, since(v.start))
		return "", true, nil
	}
	// With a health URL, ask it first and the unit after: an answer counts
	// only if the unit is still active after it (not the last breath of a
	// process on its way down), and one probe of the unit per round tells
	// both that and whether it failed.
	var code int
	var healthErr error
	if s.healthURL != "" {
		code, healthErr = checkHealth(ctx, s.client, s.healthURL, s.health)
		// While the health URL does not answer, the unit is asked about
		// only every probeEvery: a service that listens a few
		// milliseconds after its restart is not kept waiting for
		// systemctl, and one that failed is still seen within moments.
		if healthErr != nil && time.Since(v.lastProbe) < probeEvery {
			return healthErr.Error(), false, nil
		}
	}
	v.lastProbe = time.Now()
	state, err := s.probe(ctx, "is-active")
	switch {
	case err != nil && ctx.Err() != nil:
		return "", false, nil
	case err != nil:
		return "", true, fmt.Errorf("verify %s: %w", s.unit, err)
	case state == "failed":
		fmt.Fprintf(log, "%s failed after %s; its status:\n", s.unit, since(v.start))
		s.writeStatus(ctx, log)
		return "", true, fmt.Errorf("%s failed after %s", s.unit, since(v.start))
	case state != "active" && healthErr == nil && s.healthURL != "":
		return fmt.Sprintf("%s is %s after health answered %d", s.unit, state, code), false, nil
	case state != "active":
		v.activeSince = time.Time{}
		return s.unit + " is " + state, false, nil
	case s.healthURL == "":
		if v.activeSince.IsZero() {
			v.activeSince = time.Now()
		}
		if time.Since(v.activeSince) < min(settle, s.timeout/2) {
			return s.unit + " is active", false, nil
		}
		fmt.Fprintf(log, "%s is active after %s\n", s.unit, since(v.start))
		return "", true, nil
	case healthErr != nil:
		return healthErr.Error(), false, nil
	}
	fmt.Fprintf(log, "health %s answered %d after %s\n", s.health, code, since(v.start))
	return "", true, nil
}

// Rollback implements Switcher: it switches the profile back to generation
// to, restarts the unit and verifies it again, so the error says whether
// even the rolled-back build is unhealthy.
func (s *serviceSwitcher) Rollback(ctx context.Context, to Generation, log io.Writer) error {
	fmt.Fprintf(log, "rolling back %s to generation %d: %s\n", s.unit, to.Number, to.OutPath)
	if err := s.SwitchTo(ctx, to, log); err != nil {
		return fmt.Errorf("rollback: %w", err)
	}
	if err := s.Verify(ctx, log); err != nil {
		return fmt.Errorf("rollback: %w", err)
	}
	return nil
}

// SwitchTo implements Switcher: the profile goes to generation to and the
// unit restarts.
func (s *serviceSwitcher) SwitchTo(ctx context.Context, to Generation, log io.Writer) error {
	if err := s.profile.switchTo(ctx, to, log); err != nil {
		return err
	}
	state, err := s.probe(ctx, "is-failed")
	return s.restartFrom(ctx, log, probed{state, err})
}

// restartFrom restarts the unit, whose `is-failed` answer was before.
// systemd refuses a start beyond the unit's StartLimitBurst (5 in 10s by
// default) and leaves it failed, so a burst of deploys and rollbacks could
// leave the service down: a failed unit gets reset-failed (which also
// clears the start count) first, and a restart refused for the start limit
// is retried once after reset-failed. Both are written to log when they
// happen.
func (s *serviceSwitcher) restartFrom(ctx context.Context, log io.Writer, before probed) error {
	if before.err != nil {
		return fmt.Errorf("restart %s: %w", s.unit, before.err)
	}
	if before.answer == "failed" {
		fmt.Fprintf(log, "unit %s was in failed state; reset-failed before restart\n", s.unit)
		s.log.Info("unit was in failed state; reset-failed before restart")
		if err := s.systemctl(ctx, log, "reset-failed"); err != nil {
			return fmt.Errorf("restart %s: %w", s.unit, err)
		}
	}
	fmt.Fprintf(log, "restarting %s\n", s.unit)
	err := s.systemctl(ctx, log, "restart")
	if err == nil || ctx.Err() != nil {
		return wrapIf(err, "restart "+s.unit)
	}
	result, rerr := s.probe(ctx, "show", "--property=Result", "--value")
	if rerr != nil || result != "start-limit-hit" {
		return fmt.Errorf("restart %s: %w", s.unit, err)
	}
	fmt.Fprintf(log, "unit %s hit its start limit; reset-failed and restarting again\n", s.unit)
	s.log.Warn("unit hit its start limit; reset-failed and restarting again")
	if err := s.systemctl(ctx, log, "reset-failed"); err != nil {
		return fmt.Errorf("restart %s: %w", s.unit, err)
	}
	return wrapIf(s.systemctl(ctx, log, "restart"), "restart "+s.unit)
}

// systemctl runs `systemctl [--user] <verb> <unit>`, its output to log.
func (s *serviceSwitcher) systemctl(ctx context.Context, log io.Writer, verb string) error {
	args := append(append([]string(nil), s.scope...), verb, s.unit)
	return wrapIf(runCommand(ctx, log, "systemctl", args...), "systemctl "+verb)
}

// probe runs `systemctl [--user] <verb> [flags...] <unit>` and returns its
// output, trimmed. Its exit status is not an error: is-active and is-failed
// answer with it as well as with the word they print.
func (s *verifier) probe(ctx context.Context, verb string, flags ...string) (string, error) {
	args := append(append(append([]string(nil), s.scope...), verb), flags...)
	var stderr bytes.Buffer
	out, err := outputCommand(ctx, &stderr, "systemctl", append(args, s.unit)...)
	answer := strings.TrimSpace(string(out))
	var exit *exec.ExitError
	if err != nil && !(errors.As(err, &exit) && answer != "") {
		if msg := firstLine(stderr.String()); msg != "" {
			return "", fmt.Errorf("systemctl %s: %w: %s", verb, err, msg)
		}
		return "", fmt.Errorf("systemctl %s: %w", verb, err)
	}
	return answer, nil
}

// writeStatus writes the unit's `systemctl status` to log: its state and
// its last lines of output where the manager has a journal.
func (s *verifier) writeStatus(ctx context.Context, log io.Writer) {
	if ctx.Err() != nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	args := append(append([]string(nil), s.scope...), "status", "--no-pager", "--lines=20", s.unit)
	// status exits non-zero for any unit that is not running; what it
	// printed is all that matters here.
	if err := runCommand(ctx, log, "systemctl", args...); err != nil {
		var exit *exec.ExitError
		if !errors.As(err, &exit) {
			fmt.Fprintf(log, "systemctl status: %v\n", err)
		}
	}
}

// wrapIf wraps err with op, and is nil for a nil err.
func wrapIf(err error, op string) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s: %w", op, err)
}

// firstLine is the first non-empty line of s, trimmed.
func firstLine(s string) string {
	for _, line := range strings.Split(s, "\n") {
		if line = strings.TrimSpace(line); line != "" {
			return line
		}
	}
	return ""
}

// since is the time since start for a log line: 1.234s.
func since(start time.Time) time.Duration {
	return time.Since(start).Round(time.Millisecond)
}
