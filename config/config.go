// Package config reads flakeship's configuration from the environment (the
// names are in DESIGN.md and the README), validates it, and describes every
// deploy target. A bad or missing setting is one error naming the variable.
package config

import (
	"log/slog"
	"net/netip"
	"strings"
	"time"

	"github.com/flakeship/flakeship/forge"
)

// Config is the whole, validated configuration.
type Config struct {
	Listen      string     // FLAKESHIP_LISTEN
	PublicURL   string     // FLAKESHIP_PUBLIC_URL, no trailing slash
	StateDir    string     // FLAKESHIP_STATE_DIR, absolute
	AdminToken  Secret     // FLAKESHIP_ADMIN_TOKEN(_FILE)
	ReadToken   Secret     // FLAKESHIP_READ_TOKEN(_FILE)
	MaxParallel int        // FLAKESHIP_MAX_PARALLEL, >= 1
	Nix         string     // FLAKESHIP_NIX
	NixFlags    []string   // FLAKESHIP_NIX_FLAGS, split as shell words, without access tokens (NixSecrets)
	LogLevel    slog.Level // FLAKESHIP_LOG_LEVEL
	LogFormat   string     // FLAKESHIP_LOG_FORMAT: "text" or "json"
	BodyLimit   int        // FLAKESHIP_BODY_LIMIT: webhook body limit in bytes (default 25 MiB)
	// TrustedProxies (FLAKESHIP_TRUSTED_PROXIES) are the reverse proxies
	// whose X-Forwarded-For (and X-Forwarded-Host) the server believes;
	// single addresses are /32 or /128 networks. None by default.
	TrustedProxies []netip.Prefix
	// KeepDeploys and KeepFor say which finished deploys, with their logs
	// and delivery ids, are deleted: those beyond the newest KeepDeploys of
	// their target that are older than KeepFor (deploy.Queue.Prune).
	KeepDeploys int           // FLAKESHIP_KEEP_DEPLOYS, >= 0 (default 100)
	KeepFor     time.Duration // FLAKESHIP_KEEP_FOR, >= MinKeepFor (default 30 days)
	Targets     []Target      // FLAKESHIP_TARGETS, in the order listed

	// NixSecrets are the nix settings that hold credentials:
	// FLAKESHIP_NIX_ACCESS_TOKENS(_FILE) as access-tokens, then each
	// access-tokens or extra-access-tokens taken out of FLAKESHIP_NIX_FLAGS,
	// in order (an access-tokens there and the variable are refused
	// together: one would silently replace the other). They reach nix through a file (NixConf), never its
	// command line, which every user of the machine can read.
	NixSecrets []NixSetting
	// DeployLogLimit is FLAKESHIP_DEPLOY_LOG_LIMIT: the bytes of a deploy's
	// log beyond which command output is discarded (default 16 MiB).
	DeployLogLimit int64
}

// NixSetting is one nix.conf setting whose value is a secret.
type NixSetting struct {
	Name  string // "access-tokens" or "extra-access-tokens"
	Value Secret // space-separated host=token pairs
}

// Tokens are the secret parts of the setting's value, for redaction: the
// token of each host=token pair (a pair without '=' whole).
func (s NixSetting) Tokens() []string {
	var out []string
	for _, pair := range strings.Fields(s.Value.Reveal()) {
		if _, tok, ok := strings.Cut(pair, "="); ok {
			pair = tok
		}
		if pair != "" {
			out = append(out, pair)
		}
	}
	return out
}

// NixConf is NixSecrets in nix.conf syntax, one "name = value" line each,
// or "" when there are none.
func (c *Config) NixConf() Secret {
	var b strings.Builder
	for _, s := range c.NixSecrets {
		b.WriteString(s.Name + " = " + s.Value.Reveal() + "\n")
	}
	return Secret(b.String())
}

// MinKeepFor is the shortest KeepFor: a deploy's delivery id goes with it,
// and a delivery id must be remembered for longer than a forge may
// redeliver the delivery under the same id (GitHub: 3 days, 7 on GitHub
// Enterprise Server), or the redelivery would deploy again.
const MinKeepFor = 30 * 24 * time.Hour

// Activation is how a target puts a new build to use (ACTIVATE).
type Activation string

// Activation modes of a target.
const (
	ActivateService Activation = "service"
	ActivateNixOS   Activation = "nixos"
	ActivateNone    Activation = "none"
)

// NixOSAction is what a nixos target does with a new system (NIXOS_ACTION),
// named after the switch-to-configuration (and nixos-rebuild) actions.
type NixOSAction string

// NixOS actions: switch makes the new system the boot default and runs it,
// test runs it without making it the boot default, boot makes it the boot
// default without running it.
const (
	NixOSSwitch NixOSAction = "switch"
	NixOSTest   NixOSAction = "test"
	NixOSBoot   NixOSAction = "boot"
)

// Scope is the systemd manager of a target's unit (SYSTEMD_SCOPE).
type Scope string

// Systemd scopes of a target's unit.
const (
	ScopeSystem Scope = "system"
	ScopeUser   Scope = "user"
)

// Target is one deployable repository and what to do with its builds. All
// fields are filled: defaults are applied and values validated by Load.
type Target struct {
	Name          string        // as listed in FLAKESHIP_TARGETS
	Forge         forge.Kind    // forge.GitHub or forge.Forgejo ("gitea" is read as forge.Forgejo)
	Repo          string        // owner/name
	ForgeURL      string        // API base URL, with a trailing slash
	CloneURL      string        // what go-git fetches
	Branch        string        // branch that deploys
	Attr          string        // flake output attribute path
	Activate      Activation    // ActivateService, ActivateNixOS or ActivateNone
	NixOSAction   NixOSAction   // NixOSSwitch, NixOSTest or NixOSBoot (nixos mode; "" elsewhere unless given)
	Unit          string        // systemd unit (service mode; nixos: checked if set)
	SystemdScope  Scope         // ScopeSystem or ScopeUser
	Profile       string        // nix profile path
	HealthURL     string        // polled after activation, "" for none
	HealthTimeout time.Duration // how long activation may take to be healthy
	BuildTimeout  time.Duration // whole fetch+build limit
	WebhookSecret Secret        // HMAC key of the repository's webhook
	Token         Secret        // forge API token, "" for none
	StatusContext string        // commit status context
}

// Target returns the target with the given name.
func (c *Config) Target(name string) (Target, bool) {
	for _, t := range c.Targets {
		if t.Name == name {
			return t, true
		}
	}
	return Target{}, false
}
