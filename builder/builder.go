// Package builder does the work a deploy orders: it fetches the exact commit
// into a persistent bare go-git cache, builds the flake output with nix, sets
// the build into a profile as a new generation, restarts the unit, checks its
// health, and rolls back. It knows nothing of deploys or forges.
package builder

import (
	"context"
	"errors"
	"io"
	"time"

	"github.com/flakeship/flakeship/config"
)

// Spec is everything the builder needs to know about one target. It is made
// from a config.Target by deploy.SpecFor; every field is validated there.
type Spec struct {
	Name          string             // target name, for messages
	CloneURL      string             // what go-git fetches (https://, http://, file:// or a path)
	Branch        string             // the commit must be on this branch
	Token         config.Secret      // basic-auth password for http(s) fetches, "" for none
	CacheDir      string             // the target's bare git cache (created on first fetch)
	Attr          string             // flake output attribute path
	NixCache      string             // XDG_CACHE_HOME of nix for this target, "" for nix's default
	Nix           string             // nix binary
	NixFlags      []string           // extra flags for every nix call
	Activate      config.Activation  // config.ActivateService, ActivateNixOS or ActivateNone
	NixOSAction   config.NixOSAction // config.NixOSSwitch, NixOSTest or NixOSBoot (nixos mode), "" for switch
	Unit          string             // systemd unit restarted after the switch (service mode); nixos: checked if set
	SystemdScope  config.Scope       // config.ScopeSystem or config.ScopeUser
	Profile       string             // nix profile the build is set into
	HealthURL     string             // polled after activation until 2xx, "" for none
	HealthTimeout time.Duration      // how long activation may take to be healthy
}

// Checkout is a fetched commit, ready to build with
// `nix build 'git+file://<Dir>?ref=<Branch>&rev=<SHA>#<attr>'`. nix treats a
// bare repository as a remote: it fetches refs/heads/<Branch> from Dir into a
// git cache of its own (under $XDG_CACHE_HOME or ~/.cache, which must be
// writable; it runs the git CLI) and then needs SHA in what it fetched, so
// SHA is reachable from that ref, and the history is whole (nix refuses a
// shallow repository). Fetch leaves the cache so; no other ref is needed.
type Checkout struct {
	Dir    string // the bare repository holding the commit, absolute
	SHA    string // full hex commit id
	Branch string // branch the commit was found on: refs/heads/<Branch> in Dir reaches SHA
	Head   string // the branch's head commit when it was fetched
}

// Generation is one generation of a nix profile.
type Generation struct {
	Number  int    // as in <profile>-<Number>-link
	OutPath string // the store path it points at
}

// ErrNotOnBranch is returned by Fetch when the commit exists but is not
// reachable from the configured branch.
var ErrNotOnBranch = errors.New("commit is not on the branch")

// ErrNoGeneration is returned when a profile has no generation yet.
var ErrNoGeneration = errors.New("profile has no generation")

// Switcher makes a build current and undoes it. Each activation mode has one.
type Switcher interface {
	// Current returns the profile's current generation, or ErrNoGeneration.
	Current(ctx context.Context) (Generation, error)
	// Switch sets outPath into the profile as a new generation and makes it
	// run (service: reset-failed if needed, then restart the unit).
	Switch(ctx context.Context, outPath string, log io.Writer) (Generation, error)
	// Verify waits, up to the spec's HealthTimeout, until the unit is active
	// and HealthURL (if set) answers 2xx.
	Verify(ctx context.Context, log io.Writer) error
	// SwitchTo makes the existing generation to current and makes it run,
	// without waiting for it to be healthy (call Verify for that).
	SwitchTo(ctx context.Context, to Generation, log io.Writer) error
	// Rollback makes generation to current again, makes it run, and
	// verifies it.
	Rollback(ctx context.Context, to Generation, log io.Writer) error
}
