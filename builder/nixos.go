package builder

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/flakeship/flakeship/config"
)

// systemProfile is the profile NixOS boots from and nixos-rebuild sets: the
// default profile of a nixos target.
const systemProfile = "/nix/var/nix/profiles/system"

// nixStoreDir is the nix store: a system to activate must be one of its
// paths. flakeship supports only the default store location, as NixOS does.
const nixStoreDir = "/nix/store"

// nixosSwitcher is activation "nixos": the build is a NixOS system (the
// toplevel, config.system.build.toplevel), and a switch does what
// `nixos-rebuild <action>` does with a built system:
//
//   - switch: the system profile gets the build as a new generation, then
//     `<out>/bin/switch-to-configuration switch` makes it the boot default
//     and activates it (starting, restarting and stopping units).
//   - boot: the same, but `switch-to-configuration boot` only makes it the
//     boot default; nothing runs it until the next boot.
//   - test: `switch-to-configuration test` activates the build without
//     making it the boot default, and the profile is not touched: like
//     `nixos-rebuild test`, a reboot returns to the profile's generation.
//
// The environment is flakeship's own (switch-to-configuration needs PATH and
// LOCALE_ARCHIVE), with NIXOS_INSTALL_BOOTLOADER empty, as nixos-rebuild
// passes it when not asked to --install-bootloader: an activation updates
// the boot entries and never reinstalls the boot loader.
//
// Verify checks what the Spec names: its Unit, if set, must be active and
// its HealthURL, if set, must answer 2xx (the service mode's verifier);
// with neither, there is nothing to wait for.
//
// Rollback mirrors Switch: the profile goes back to the earlier generation
// (switch and boot), and that generation's own switch-to-configuration runs
// with the same action, as `nixos-rebuild --rollback switch` does for switch.
//
// A test activation has no generation of its own, yet a caller (the deploy
// runner) reads a Generation with Number 0 from a failed Switch as "nothing
// was switched", and would not roll back. So Switch reports the profile's current
// generation number with the test build's out path: the number says which
// generation a rollback returns to (the one the profile, and the boot
// loader, still hold), and the out path what was activated. Rolling back a
// test activation runs `switch-to-configuration test` of the profile's
// generation, which makes the running system that generation again without
// touching the boot entries. (With no generation in the profile yet, there
// is nothing to return to: Switch reports Number 0, and a failure is final.)
// The consequence: every test deploy of a target records the same
// generation number, so a rollback by generation number cannot tell them
// apart; a test target is for trying a system out, and rolls back by
// rebooting or deploying again.
//
// switch-to-configuration may restart flakeship's own unit when the new
// system changes it, which would cut the activation short: the unit that
// runs flakeship should not be restarted by a switch (NixOS:
// restartIfChanged = false).
type nixosSwitcher struct {
	profile  profile
	action   config.NixOSAction // config.NixOSSwitch, NixOSTest or NixOSBoot
	verifier verifier
}

// newNixOSSwitcher is NewSwitcher for s.Activate "nixos", with the profile
// and verifier it made.
func newNixOSSwitcher(s Spec, p profile, v verifier) (*nixosSwitcher, error) {
	action := s.NixOSAction
	switch action {
	case "":
		action = config.NixOSSwitch
	case config.NixOSSwitch, config.NixOSTest, config.NixOSBoot:
	default:
		return nil, fmt.Errorf("target %s: unknown nixos action %q", s.Name, s.NixOSAction)
	}
	return &nixosSwitcher{profile: p, action: action, verifier: v}, nil
}

// Current implements Switcher: the system profile's current generation,
// which a test activation leaves as it was.
func (s *nixosSwitcher) Current(ctx context.Context) (Generation, error) {
	return s.profile.current()
}

// Switch implements Switcher. It checks that outPath is a NixOS system
// before anything changes. If the profile was set but switch-to-configuration
// failed, it returns the new generation with the error, so the caller knows
// the system moved and can roll back; for a test activation, see
// nixosSwitcher.
func (s *nixosSwitcher) Switch(ctx context.Context, outPath string, log io.Writer) (Generation, error) {
	top, err := toplevel(outPath)
	if err != nil {
		return Generation{}, err
	}
	if s.action == config.NixOSTest {
		cur, err := s.profile.current()
		if err != nil && !errors.Is(err, ErrNoGeneration) {
			return Generation{}, err
		}
		if cur.Number > 0 {
			fmt.Fprintf(log, "profile %s stays at generation %d (%s): a test activation adds none\n",
				s.profile.path, cur.Number, cur.OutPath)
		} else {
			fmt.Fprintf(log, "profile %s has no generation, and a test activation adds none\n", s.profile.path)
		}
		return Generation{Number: cur.Number, OutPath: top}, s.activate(ctx, top, log)
	}
	g, err := s.profile.set(ctx, top, log)
	if err != nil {
		return Generation{}, err
	}
	fmt.Fprintf(log, "profile %s is at generation %d: %s\n", s.profile.path, g.Number, g.OutPath)
	return g, s.activate(ctx, top, log)
}

// Verify implements Switcher: see nixosSwitcher.
func (s *nixosSwitcher) Verify(ctx context.Context, log io.Writer) error {
	return s.verifier.verify(ctx, log)
}

// SwitchTo implements Switcher: the profile goes to generation to (unless
// the action is test, which never moves it) and that system is activated
// with the switcher's action. A test switcher activates to.OutPath, or the
// generation's when that is unset.
func (s *nixosSwitcher) SwitchTo(ctx context.Context, to Generation, log io.Writer) error {
	outPath := to.OutPath
	if outPath == "" || s.action != config.NixOSTest {
		if to.Number < 1 {
			return fmt.Errorf("switch profile %s to generation %d: %w", s.profile.path, to.Number, ErrNoGeneration)
		}
		g, err := s.profile.generation(to.Number)
		if err != nil {
			return fmt.Errorf("switch profile %s to generation %d: %w", s.profile.path, to.Number, err)
		}
		if outPath == "" {
			outPath = g.OutPath
		}
	}
	top, err := toplevel(outPath)
	if err != nil {
		return fmt.Errorf("activate generation %d: %w", to.Number, err)
	}
	if s.action != config.NixOSTest {
		// switchTo checks that the generation still points at top.
		if err := s.profile.switchTo(ctx, Generation{Number: to.Number, OutPath: top}, log); err != nil {
			return err
		}
		fmt.Fprintf(log, "profile %s is at generation %d: %s\n", s.profile.path, to.Number, top)
	}
	return s.activate(ctx, top, log)
}

// Rollback implements Switcher: SwitchTo, then Verify, so the error says
// whether even the rolled-back system is unhealthy.
func (s *nixosSwitcher) Rollback(ctx context.Context, to Generation, log io.Writer) error {
	fmt.Fprintf(log, "rolling back the system to generation %d: %s\n", to.Number, to.OutPath)
	if err := s.SwitchTo(ctx, to, log); err != nil {
		return fmt.Errorf("rollback: %w", err)
	}
	if err := s.Verify(ctx, log); err != nil {
		return fmt.Errorf("rollback: %w", err)
	}
	return nil
}

// activate runs `<top>/bin/switch-to-configuration <action>`, its output
// to log. Any exit status but 0 is a failure, including 4 (the system is
// active, but some of its units failed to start): a deploy rolls back then.
func (s *nixosSwitcher) activate(ctx context.Context, top string, log io.Writer) error {
	start := time.Now()
	fmt.Fprintf(log, "activating %s: switch-to-configuration %s\n", top, s.action)
	err := runCommandEnv(ctx, log, []string{"NIXOS_INSTALL_BOOTLOADER="}, switchToConfiguration(top), string(s.action))
	if err != nil {
		return fmt.Errorf("switch-to-configuration %s: %w", s.action, err)
	}
	fmt.Fprintf(log, "switch-to-configuration %s done after %s\n", s.action, since(start))
	return nil
}

// toplevel checks that outPath is a NixOS system in the nix store, a path
// right under the store directory with an executable
// bin/switch-to-configuration, and returns it cleaned.
func toplevel(outPath string) (string, error) {
	clean := filepath.Clean(outPath)
	if !filepath.IsAbs(outPath) || filepath.Dir(clean) != nixStoreDir || strings.IndexFunc(clean, unicode.IsControl) >= 0 {
		return "", fmt.Errorf("%q is not a path in %s", outPath, nixStoreDir)
	}
	stc := switchToConfiguration(clean)
	fi, err := os.Stat(stc)
	if err != nil {
		return "", fmt.Errorf("%s is not a NixOS system: %w", clean, err)
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		return "", fmt.Errorf("%s is not a NixOS system: %s is not an executable file", clean, stc)
	}
	return clean, nil
}

// switchToConfiguration is the activation program of the system top.
func switchToConfiguration(top string) string {
	return filepath.Join(top, "bin", "switch-to-configuration")
}

// runCommandEnv is runCommand with env ("KEY=value") added to the
// command's environment (see childEnv); an entry overrides one of the same
// key.
func runCommandEnv(ctx context.Context, log io.Writer, env []string, name string, args ...string) error {
	var mu sync.Mutex
	return execute(ctx, killGrace, env, &lineWriter{mu: &mu, w: log}, &lineWriter{mu: &mu, w: log}, name, args...)
}
