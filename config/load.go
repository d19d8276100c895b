package config

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/caarlos0/env/v10"

	"github.com/flakeship/flakeship/forge"
)

// Error is one configuration problem: the variable and what is wrong with
// it. Load returns it as *Error; match it with errors.As. Problem never
// holds a secret's value.
type Error struct {
	Var     string // the environment variable, like FLAKESHIP_TARGET_APP_REPO
	Problem string // what is wrong, like `want owner/name, got "app"`
}

// Error returns the one-line form "VAR: problem".
func (e *Error) Error() string { return e.Var + ": " + e.Problem }

const (
	// globalPrefix starts every flakeship variable.
	globalPrefix = "FLAKESHIP_"
	// targetPrefix starts every per-target variable: the target's name,
	// upper-cased with '-' as '_', and '_' follow it.
	targetPrefix = "FLAKESHIP_TARGET_"
	// testPrefix starts variables read by the test suite, not the server;
	// they may be in the environment of a test run.
	testPrefix = "FLAKESHIP_TEST_"
	// clientURL is where the command line finds a running flakeship; it
	// may share an environment with the server, which ignores it.
	clientURL = "FLAKESHIP_URL"

	// maxSecretFile bounds what a *_FILE secret may hold, so a wrong path
	// (a device, a huge file) fails fast instead of filling memory.
	maxSecretFile = 64 << 10

	githubAPI = "https://api.github.com/"

	// maxLogLimit is the largest FLAKESHIP_DEPLOY_LOG_LIMIT, 1 TiB.
	maxLogLimit = 1 << 40
)

// The tags of globalEnv and targetEnv are the one list of variable names:
// Load reads them through env, names them in errors with vars.name, and
// rejects FLAKESHIP_* names that none of them declares. Every value is read
// as a string and converted by Load, so each problem gets its own message.
// An empty value counts as unset (and gets the default).

// globalEnv holds the global variables in the order they are checked.
type globalEnv struct {
	Listen          string `env:"FLAKESHIP_LISTEN" envDefault:"127.0.0.1:8080"`
	PublicURL       string `env:"FLAKESHIP_PUBLIC_URL"`
	StateDir        string `env:"FLAKESHIP_STATE_DIR"`
	SystemdStateDir string `env:"STATE_DIRECTORY"` // set by systemd's StateDirectory=
	AdminToken      string `env:"FLAKESHIP_ADMIN_TOKEN"`
	AdminTokenFile  string `env:"FLAKESHIP_ADMIN_TOKEN_FILE"`
	ReadToken       string `env:"FLAKESHIP_READ_TOKEN"`
	ReadTokenFile   string `env:"FLAKESHIP_READ_TOKEN_FILE"`
	MaxParallel     string `env:"FLAKESHIP_MAX_PARALLEL" envDefault:"1"`
	Nix             string `env:"FLAKESHIP_NIX" envDefault:"nix"`
	NixFlags        string `env:"FLAKESHIP_NIX_FLAGS"`
	NixTokens       string `env:"FLAKESHIP_NIX_ACCESS_TOKENS"`
	NixTokensFile   string `env:"FLAKESHIP_NIX_ACCESS_TOKENS_FILE"`
	LogLevel        string `env:"FLAKESHIP_LOG_LEVEL" envDefault:"info"`
	LogFormat       string `env:"FLAKESHIP_LOG_FORMAT" envDefault:"text"`
	BodyLimit       string `env:"FLAKESHIP_BODY_LIMIT" envDefault:"26214400"`
	TrustedProxies  string `env:"FLAKESHIP_TRUSTED_PROXIES"`
	KeepDeploys     string `env:"FLAKESHIP_KEEP_DEPLOYS" envDefault:"100"`
	KeepFor         string `env:"FLAKESHIP_KEEP_FOR" envDefault:"30d"`
	LogLimit        string `env:"FLAKESHIP_DEPLOY_LOG_LIMIT" envDefault:"16777216"`
	Targets         string `env:"FLAKESHIP_TARGETS"`
}

// targetEnv holds one target's variables, read with the prefix
// FLAKESHIP_TARGET_<NAME>_, in the order they are checked (DESIGN.md's table).
type targetEnv struct {
	Forge             string `env:"FORGE"`
	Repo              string `env:"REPO"`
	ForgeURL          string `env:"FORGE_URL"`
	CloneURL          string `env:"CLONE_URL"`
	Branch            string `env:"BRANCH" envDefault:"main"`
	Attr              string `env:"ATTR"`
	Activate          string `env:"ACTIVATE" envDefault:"service"`
	NixOSAction       string `env:"NIXOS_ACTION"`
	Unit              string `env:"UNIT"`
	SystemdScope      string `env:"SYSTEMD_SCOPE" envDefault:"system"`
	Profile           string `env:"PROFILE"`
	HealthURL         string `env:"HEALTH_URL"`
	HealthTimeout     string `env:"HEALTH_TIMEOUT" envDefault:"30s"`
	BuildTimeout      string `env:"BUILD_TIMEOUT" envDefault:"30m"`
	WebhookSecret     string `env:"WEBHOOK_SECRET"`
	WebhookSecretFile string `env:"WEBHOOK_SECRET_FILE"`
	Token             string `env:"TOKEN"`
	TokenFile         string `env:"TOKEN_FILE"`
	StatusContext     string `env:"STATUS_CONTEXT"`
}

// Environ turns an os.Environ-style list of "KEY=value" entries into the map
// Load takes. Entries without '=' or with an empty key are skipped; when a
// key repeats, the first entry wins, as it does for os.Getenv.
func Environ(kv []string) map[string]string {
	m := make(map[string]string, len(kv))
	for _, e := range kv {
		k, v, ok := strings.Cut(e, "=")
		if !ok || k == "" {
			continue
		}
		if _, dup := m[k]; !dup {
			m[k] = v
		}
	}
	return m
}

// Load reads and validates the configuration from environ (see Environ; the
// process environment is never read directly). Defaults are applied, secrets
// given as NAME_FILE are read, and every target is filled in. It returns the
// first problem as *Error, checking the global variables first, then any
// FLAKESHIP_* name that is not a setting (a typo would otherwise be ignored,
// sorted by name), then each target in the order listed, its settings in
// DESIGN.md's order.
func Load(environ map[string]string) (*Config, error) {
	l := loader{hostname: os.Hostname, goos: runtime.GOOS, goarch: runtime.GOARCH}
	return l.load(environ)
}

// Logger builds the logger main passes to every constructor: a text or JSON
// handler (LogFormat) writing to w at LogLevel and above.
func (c *Config) Logger(w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: c.LogLevel}
	if c.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// loader is Load with the machine's facts injectable, so tests are
// deterministic.
type loader struct {
	hostname     func() (string, error) // for the default nixos ATTR
	goos, goarch string                 // for the default service ATTR
}

func (l loader) load(environ map[string]string) (*Config, error) {
	if environ == nil {
		// env reads the process environment when given none.
		environ = map[string]string{}
	}
	var g globalEnv
	if err := env.ParseWithOptions(&g, env.Options{Environment: environ}); err != nil {
		return nil, fmt.Errorf("read global variables: %w", err)
	}
	cfg, names, err := globals(&g, environ)
	if err != nil {
		return nil, err
	}
	if err := checkNames(environ, &g, names); err != nil {
		return nil, err
	}
	profiles := map[string]string{} // profile path -> target name
	for _, name := range names {
		t, err := l.target(cfg, name, environ, profiles)
		if err != nil {
			return nil, err
		}
		cfg.Targets = append(cfg.Targets, t)
	}
	return cfg, nil
}

// globals checks the global variables and returns the config without
// targets and the listed target names.
func globals(g *globalEnv, environ map[string]string) (*Config, []string, error) {
	v := vars{s: g}
	c := &Config{}

	host, port, err := net.SplitHostPort(g.Listen)
	if err != nil {
		return nil, nil, v.errorf(&g.Listen, "want host:port, got %q", clip(g.Listen))
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || strconv.FormatUint(n, 10) != port {
		return nil, nil, v.errorf(&g.Listen, "want host:port with a port from 0 to 65535, got %q", clip(g.Listen))
	}
	c.Listen = g.Listen

	publicURL := g.PublicURL
	if publicURL == "" {
		if host == "" {
			host = "localhost" // ":8080" listens everywhere, including here
		}
		publicURL = "http://" + net.JoinHostPort(host, port)
	}
	u, err := parseHTTPURL(publicURL)
	if err != nil {
		return nil, nil, v.err(&g.PublicURL, err)
	}
	if u.RawQuery != "" || u.ForceQuery || u.Fragment != "" {
		return nil, nil, v.errorf(&g.PublicURL, "want a base URL without query or fragment, got %s", quoteURL(publicURL))
	}
	c.PublicURL = strings.TrimRight(publicURL, "/")

	stateDir, stateVar := g.StateDir, &g.StateDir
	if stateDir == "" && g.SystemdStateDir != "" {
		// systemd lists several directories separated by ':'.
		stateDir, _, _ = strings.Cut(g.SystemdStateDir, ":")
		stateVar = &g.SystemdStateDir
	}
	if stateDir == "" {
		stateDir = "flakeship-state"
	}
	if hasControl(stateDir) {
		return nil, nil, v.errorf(stateVar, "want a directory path, got %q", clip(stateDir))
	}
	if c.StateDir, err = filepath.Abs(stateDir); err != nil {
		return nil, nil, v.errorf(stateVar, "make %q absolute: %v", clip(stateDir), err)
	}

	if c.AdminToken, err = v.secret(&g.AdminToken, &g.AdminTokenFile); err != nil {
		return nil, nil, err
	}
	if err := v.headerSafe(c.AdminToken, &g.AdminToken, &g.AdminTokenFile); err != nil {
		return nil, nil, err
	}
	if c.ReadToken, err = v.secret(&g.ReadToken, &g.ReadTokenFile); err != nil {
		return nil, nil, err
	}
	if err := v.headerSafe(c.ReadToken, &g.ReadToken, &g.ReadTokenFile); err != nil {
		return nil, nil, err
	}

	if c.MaxParallel, err = intIn(g.MaxParallel, 1, 64); err != nil {
		return nil, nil, v.errorf(&g.MaxParallel, "want a whole number from 1 to 64, got %q", clip(g.MaxParallel))
	}

	if strings.HasPrefix(g.Nix, "-") || hasControl(g.Nix) ||
		(strings.Contains(g.Nix, "/") && !filepath.IsAbs(g.Nix)) {
		return nil, nil, v.errorf(&g.Nix, "want a program name on PATH or an absolute path, got %q", clip(g.Nix))
	}
	c.Nix = g.Nix

	// The flags may carry credentials (--option access-tokens ...), so the
	// problem never quotes them. Those are taken out: nix gets them in a
	// file (Config.NixConf), not on its command line.
	words, err := splitWords(g.NixFlags)
	if err != nil {
		return nil, nil, v.err(&g.NixFlags, err)
	}
	var fromFlags []NixSetting
	if c.NixFlags, fromFlags, err = takeNixSecrets(words); err != nil {
		return nil, nil, v.err(&g.NixFlags, err)
	}
	tokens, err := v.secret(&g.NixTokens, &g.NixTokensFile)
	if err != nil {
		return nil, nil, err
	}
	if tokens.IsSet() {
		field := &g.NixTokens
		if g.NixTokensFile != "" {
			field = &g.NixTokensFile
		}
		if err := nixConfSafe(tokens.Reveal()); err != nil {
			return nil, nil, v.err(field, err)
		}
		// Two access-tokens settings: the later one would silently win.
		if slices.ContainsFunc(fromFlags, func(s NixSetting) bool { return s.Name == "access-tokens" }) {
			return nil, nil, v.errorf(field, "%s sets access-tokens too; give the tokens in one place (--extra-access-tokens adds to them)", v.name(&g.NixFlags))
		}
		c.NixSecrets = append(c.NixSecrets, NixSetting{Name: "access-tokens", Value: tokens})
	}
	c.NixSecrets = append(c.NixSecrets, fromFlags...)

	switch strings.ToLower(g.LogLevel) {
	case "debug":
		c.LogLevel = slog.LevelDebug
	case "info":
		c.LogLevel = slog.LevelInfo
	case "warn":
		c.LogLevel = slog.LevelWarn
	case "error":
		c.LogLevel = slog.LevelError
	default:
		return nil, nil, v.errorf(&g.LogLevel, "want debug, info, warn or error, got %q", clip(g.LogLevel))
	}

	switch c.LogFormat = strings.ToLower(g.LogFormat); c.LogFormat {
	case "text", "json":
	default:
		return nil, nil, v.errorf(&g.LogFormat, "want text or json, got %q", clip(g.LogFormat))
	}

	if c.BodyLimit, err = intIn(g.BodyLimit, 1, 1<<30); err != nil {
		return nil, nil, v.errorf(&g.BodyLimit, "want a number of bytes from 1 to %d, got %q", 1<<30, clip(g.BodyLimit))
	}

	if c.TrustedProxies, err = parseNetworks(g.TrustedProxies); err != nil {
		return nil, nil, v.err(&g.TrustedProxies, err)
	}
	if c.KeepDeploys, err = intIn(g.KeepDeploys, 0, maxKeepDeploys); err != nil {
		return nil, nil, v.errorf(&g.KeepDeploys, "want a whole number of deploys from 0 to %d, got %q", maxKeepDeploys, clip(g.KeepDeploys))
	}
	if c.KeepFor, err = keepDuration(g.KeepFor); err != nil {
		return nil, nil, v.err(&g.KeepFor, err)
	}
	if c.DeployLogLimit, err = strconv.ParseInt(g.LogLimit, 10, 64); err != nil || c.DeployLogLimit < 1 || c.DeployLogLimit > maxLogLimit {
		return nil, nil, v.errorf(&g.LogLimit, "want a number of bytes from 1 to %d, got %q", int64(maxLogLimit), clip(g.LogLimit))
	}

	names, err := targetNames(g.Targets)
	if err != nil {
		return nil, nil, v.err(&g.Targets, err)
	}
	return c, names, nil
}

// parseNetworks reads a comma-separated list of IP addresses and CIDR
// networks (FLAKESHIP_TRUSTED_PROXIES); an address is the network of that
// address alone, and an IPv4 address written as IPv6 (::ffff:a.b.c.d) is
// taken as IPv4, as the server sees its peers. An empty list is nil.
func parseNetworks(list string) ([]netip.Prefix, error) {
	if strings.TrimSpace(list) == "" {
		return nil, nil
	}
	var nets []netip.Prefix
	for _, item := range strings.Split(list, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			return nil, fmt.Errorf("empty entry in %q: want IP addresses or CIDR networks separated by commas", clip(list))
		}
		var p netip.Prefix
		if strings.Contains(item, "/") {
			parsed, err := netip.ParsePrefix(item)
			if err != nil || parsed.Addr().Zone() != "" {
				return nil, fmt.Errorf("want an IP address or a CIDR network like 10.0.0.0/8, got %q", clip(item))
			}
			p = parsed.Masked()
		} else {
			a, err := netip.ParseAddr(item)
			if err != nil || a.Zone() != "" {
				return nil, fmt.Errorf("want an IP address or a CIDR network like 10.0.0.0/8, got %q", clip(item))
			}
			a = a.Unmap()
			p = netip.PrefixFrom(a, a.BitLen())
		}
		nets = append(nets, p)
	}
	return nets, nil
}

// targetNames splits and checks FLAKESHIP_TARGETS.
func targetNames(list string) ([]string, error) {
	if strings.TrimSpace(list) == "" {
		return nil, errors.New("required: a comma-separated list of target names")
	}
	var names []string
	prefixes := map[string]string{} // variable prefix -> target name
	for _, name := range strings.Split(list, ",") {
		name = strings.TrimSpace(name)
		if name == "" {
			return nil, fmt.Errorf("empty target name in %q", clip(list))
		}
		if err := ValidateTargetName(name); err != nil {
			return nil, err
		}
		if slices.Contains(names, name) {
			return nil, fmt.Errorf("target %q is listed twice", name)
		}
		p := targetVarPrefix(name)
		if other, ok := prefixes[p]; ok {
			return nil, fmt.Errorf("targets %q and %q would both be configured by %s* variables", other, name, p)
		}
		prefixes[p] = name
		names = append(names, name)
	}
	return names, nil
}

// targetVarPrefix is the prefix of a target's variables.
func targetVarPrefix(name string) string {
	return targetPrefix + strings.ToUpper(strings.ReplaceAll(name, "-", "_")) + "_"
}

// checkNames rejects FLAKESHIP_* variables that are not settings: an unknown
// global, a setting of an unlisted target, an unknown setting of a target.
func checkNames(environ map[string]string, g *globalEnv, targets []string) error {
	globalNames, err := tagNames(g)
	if err != nil {
		return err
	}
	suffixes, err := tagNames(&targetEnv{})
	if err != nil {
		return err
	}
	keys := make([]string, 0, len(environ))
	for k := range environ {
		if strings.HasPrefix(k, globalPrefix) && !strings.HasPrefix(k, testPrefix) && k != clientURL && !slices.Contains(globalNames, k) {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for _, k := range keys {
		if !strings.HasPrefix(k, targetPrefix) {
			return &Error{Var: k, Problem: "unknown variable"}
		}
		// A name may start with several listed prefixes ("a_b" and "a").
		known, target, setting := false, "", ""
		for _, name := range targets {
			rest, ok := strings.CutPrefix(k, targetVarPrefix(name))
			if !ok {
				continue
			}
			if slices.Contains(suffixes, rest) {
				known = true
				break
			}
			if target == "" || len(rest) < len(setting) { // the longest prefix
				target, setting = name, rest
			}
		}
		if known {
			continue
		}
		if target != "" {
			return &Error{Var: k, Problem: fmt.Sprintf("target %q has no setting %q", target, setting)}
		}
		for _, s := range suffixes {
			if middle, ok := strings.CutSuffix(strings.TrimPrefix(k, targetPrefix), "_"+s); ok && middle != "" {
				return &Error{Var: k, Problem: fmt.Sprintf("no target %q in %s", strings.ToLower(middle), vars{s: g}.name(&g.Targets))}
			}
		}
		return &Error{Var: k, Problem: fmt.Sprintf("unknown variable; a target's settings are %s<NAME>_<SETTING>", targetPrefix)}
	}
	return nil
}

// target reads and checks the settings of the target called name. profiles
// maps the profiles of the targets before it to their names, and gets this
// one's: two targets setting generations of one profile would undo each other.
func (l loader) target(c *Config, name string, environ map[string]string, profiles map[string]string) (Target, error) {
	var e targetEnv
	v := vars{prefix: targetVarPrefix(name), s: &e}
	if err := env.ParseWithOptions(&e, env.Options{Environment: environ, Prefix: v.prefix}); err != nil {
		return Target{}, fmt.Errorf("read variables of target %s: %w", name, err)
	}
	t := Target{Name: name}
	var err error

	if e.Forge == "" {
		return Target{}, v.errorf(&e.Forge, "required: github, forgejo or gitea")
	}
	if t.Forge, err = forge.ParseKind(strings.ToLower(e.Forge)); err != nil {
		return Target{}, v.errorf(&e.Forge, "want github, forgejo or gitea, got %q", clip(e.Forge))
	}

	if e.Repo == "" {
		return Target{}, v.errorf(&e.Repo, "required: owner/name of the repository")
	}
	if err := ValidateRepo(e.Repo); err != nil {
		return Target{}, v.err(&e.Repo, err)
	}
	t.Repo = e.Repo

	forgeURL := e.ForgeURL
	if forgeURL == "" {
		if t.Forge != forge.GitHub {
			return Target{}, v.errorf(&e.ForgeURL, "required for forge %s: the server's base URL, like https://codeberg.org/", t.Forge)
		}
		forgeURL = githubAPI
	}
	u, err := parseHTTPURL(forgeURL)
	if err != nil {
		return Target{}, v.err(&e.ForgeURL, err)
	}
	if u.RawQuery != "" || u.ForceQuery || u.Fragment != "" {
		return Target{}, v.errorf(&e.ForgeURL, "want a base URL without query or fragment, got %s", quoteURL(forgeURL))
	}
	t.ForgeURL = strings.TrimRight(forgeURL, "/") + "/"

	if t.CloneURL = e.CloneURL; t.CloneURL == "" {
		t.CloneURL = defaultCloneURL(t.Forge, t.ForgeURL, t.Repo)
	}
	if err := checkCloneURL(t.CloneURL); err != nil {
		return Target{}, v.err(&e.CloneURL, err)
	}

	if err := ValidateBranch(e.Branch); err != nil {
		return Target{}, v.err(&e.Branch, err)
	}
	t.Branch = e.Branch

	// ATTR's default depends on ACTIVATE, checked right after it.
	activate := Activation(strings.ToLower(e.Activate))
	var activateErr error
	switch activate {
	case ActivateService, ActivateNixOS, ActivateNone:
	default:
		activateErr = v.errorf(&e.Activate, "want service, nixos or none, got %q", clip(e.Activate))
	}

	if t.Attr = e.Attr; t.Attr == "" {
		if activateErr != nil {
			return Target{}, activateErr
		}
		if t.Attr, err = l.defaultAttr(activate); err != nil {
			return Target{}, v.errorf(&e.Attr, "no default (%v); set it", err)
		}
	}
	if err := ValidateAttr(t.Attr); err != nil {
		return Target{}, v.err(&e.Attr, err)
	}

	if activateErr != nil {
		return Target{}, activateErr
	}
	t.Activate = activate

	// NIXOS_ACTION matters only in nixos mode; elsewhere it is kept if
	// given, like UNIT, and checked all the same.
	switch t.NixOSAction = NixOSAction(strings.ToLower(e.NixOSAction)); t.NixOSAction {
	case "":
		if t.Activate == ActivateNixOS {
			t.NixOSAction = NixOSSwitch
		}
	case NixOSSwitch, NixOSTest, NixOSBoot:
	default:
		return Target{}, v.errorf(&e.NixOSAction, "want switch, test or boot, got %q", clip(e.NixOSAction))
	}

	// UNIT matters only in service mode; elsewhere it is kept if given.
	if t.Unit = e.Unit; t.Unit == "" && t.Activate == ActivateService {
		t.Unit = name + ".service"
	}
	if t.Unit != "" {
		if err := ValidateUnit(t.Unit); err != nil {
			return Target{}, v.err(&e.Unit, err)
		}
	}

	switch t.SystemdScope = Scope(strings.ToLower(e.SystemdScope)); t.SystemdScope {
	case ScopeSystem, ScopeUser:
	default:
		return Target{}, v.errorf(&e.SystemdScope, "want system or user, got %q", clip(e.SystemdScope))
	}

	profile := e.Profile
	if profile == "" {
		profile = filepath.Join(c.StateDir, "profiles", name)
		if t.Activate == ActivateNixOS {
			profile = "/nix/var/nix/profiles/system"
		}
	}
	if !filepath.IsAbs(profile) || hasControl(profile) {
		return Target{}, v.errorf(&e.Profile, "want an absolute path, got %q", clip(profile))
	}
	t.Profile = filepath.Clean(profile)
	if other, ok := profiles[t.Profile]; ok {
		return Target{}, v.errorf(&e.Profile, "%q is also the profile of target %q; each target needs its own", t.Profile, other)
	}
	profiles[t.Profile] = name

	if e.HealthURL != "" {
		u, err := parseHTTPURL(e.HealthURL)
		if err != nil {
			return Target{}, v.err(&e.HealthURL, err)
		}
		if u.Fragment != "" {
			return Target{}, v.errorf(&e.HealthURL, "want a URL without fragment, got %s", quoteURL(e.HealthURL))
		}
		t.HealthURL = e.HealthURL
	}

	if t.HealthTimeout, err = positiveDuration(e.HealthTimeout); err != nil {
		return Target{}, v.err(&e.HealthTimeout, err)
	}
	if t.BuildTimeout, err = positiveDuration(e.BuildTimeout); err != nil {
		return Target{}, v.err(&e.BuildTimeout, err)
	}

	if t.WebhookSecret, err = v.secret(&e.WebhookSecret, &e.WebhookSecretFile); err != nil {
		return Target{}, err
	}
	if !t.WebhookSecret.IsSet() {
		return Target{}, v.errorf(&e.WebhookSecret, "required: the webhook's HMAC secret (or set %s)", v.name(&e.WebhookSecretFile))
	}

	if t.Token, err = v.secret(&e.Token, &e.TokenFile); err != nil {
		return Target{}, err
	}
	if err := v.headerSafe(t.Token, &e.Token, &e.TokenFile); err != nil {
		return Target{}, err
	}

	if t.StatusContext = e.StatusContext; t.StatusContext == "" {
		t.StatusContext = "flakeship/" + name
	}
	if utf8.RuneCountInString(t.StatusContext) > 255 || !utf8.ValidString(t.StatusContext) ||
		strings.IndexFunc(t.StatusContext, func(r rune) bool { return !unicode.IsPrint(r) }) >= 0 {
		return Target{}, v.errorf(&e.StatusContext, "want 1 to 255 printable characters, got %q", clip(t.StatusContext))
	}
	return t, nil
}

// defaultAttr is the flake output built when ATTR is not set.
func (l loader) defaultAttr(activate Activation) (string, error) {
	if activate == ActivateNixOS {
		host, err := l.hostname()
		if err != nil {
			return "", fmt.Errorf("hostname: %w", err)
		}
		host, _, _ = strings.Cut(host, ".")
		if host == "" {
			return "", errors.New("the hostname is empty")
		}
		return "nixosConfigurations." + host + ".config.system.build.toplevel", nil
	}
	system, err := nixSystem(l.goos, l.goarch)
	if err != nil {
		return "", err
	}
	return "packages." + system + ".default", nil
}

// nixSystem is nix's name for the platform Go calls goos/goarch.
func nixSystem(goos, goarch string) (string, error) {
	arch := map[string]string{"amd64": "x86_64", "arm64": "aarch64", "386": "i686", "riscv64": "riscv64"}[goarch]
	switch {
	case goos == "linux" && arch != "":
		return arch + "-linux", nil
	case goos == "darwin" && (goarch == "amd64" || goarch == "arm64"):
		return arch + "-darwin", nil
	}
	return "", fmt.Errorf("nix has no system for %s/%s", goos, goarch)
}

// defaultCloneURL derives the clone URL from the forge's API URL (valid,
// with its trailing slash): api.github.com serves github.com, GitHub
// Enterprise serves its API under /api/v3/ and Forgejo under /api/v1/.
func defaultCloneURL(kind forge.Kind, forgeURL, repo string) string {
	if u, err := url.Parse(forgeURL); err == nil && strings.EqualFold(u.Hostname(), "api.github.com") {
		return "https://github.com/" + repo + ".git"
	}
	apiPath := "api/v1/"
	if kind == forge.GitHub {
		apiPath = "api/v3/"
	}
	return strings.TrimSuffix(forgeURL, apiPath) + repo + ".git"
}

// checkCloneURL allows what go-git should fetch from: http(s) and file URLs
// and absolute paths. Anything else (ssh, git's "ext::" transport, a string
// that could be read as an option) is refused.
func checkCloneURL(raw string) error {
	if strings.HasPrefix(raw, "/") {
		if hasControl(raw) {
			return fmt.Errorf("want an absolute path without control characters, got %q", clip(raw))
		}
		return nil
	}
	scheme, _, _ := strings.Cut(raw, "://")
	switch strings.ToLower(scheme) {
	case "http", "https":
		_, err := parseHTTPURL(raw)
		return err
	case "file":
		u, err := url.Parse(raw)
		if err != nil || u.User != nil || (u.Host != "" && u.Host != "localhost") ||
			!strings.HasPrefix(u.Path, "/") || u.RawQuery != "" || u.Fragment != "" {
			return fmt.Errorf("want file:///absolute/path, got %s", quoteURL(raw))
		}
		return nil
	}
	return fmt.Errorf("want an http(s):// or file:// URL or an absolute path, got %s", quoteURL(raw))
}

// parseHTTPURL parses an absolute http(s) URL without credentials (put them
// in a TOKEN, which is a secret). Its errors never quote a credential.
func parseHTTPURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // without the URL
		}
		return nil, fmt.Errorf("want an absolute http(s) URL: %v", err)
	}
	if u.User != nil {
		return nil, errors.New("want a URL without credentials (user:password@)")
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Opaque != "" || u.Hostname() == "" {
		return nil, fmt.Errorf("want an absolute http(s) URL, got %s", quoteURL(raw))
	}
	return u, nil
}

// quoteURL quotes a URL for an error message unless it may hold
// credentials (anything with an '@').
func quoteURL(raw string) string {
	if strings.Contains(raw, "@") {
		return "a value with '@' (not shown: it may hold credentials)"
	}
	return strconv.Quote(clip(raw))
}

// Bounds of the retention settings: a million deploys per target, and a
// century, far below what time.Duration holds.
const (
	maxKeepDeploys = 1_000_000
	maxKeepFor     = 36500 * 24 * time.Hour
)

// keepDuration parses FLAKESHIP_KEEP_FOR: whole days ("90d") or a Go
// duration ("2160h"), from MinKeepFor to maxKeepFor.
func keepDuration(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if days, ok := strings.CutSuffix(s, "d"); ok {
		var n int
		if n, err = intIn(days, 0, int(maxKeepFor/(24*time.Hour))); err == nil {
			d = time.Duration(n) * 24 * time.Hour
		}
	}
	if err != nil || d < MinKeepFor || d > maxKeepFor {
		return 0, fmt.Errorf("want days like 90d or a duration like 2160h, from 30d (delivery ids must outlive the forges' redelivery windows) to 36500d, got %q", clip(s))
	}
	return d, nil
}

func positiveDuration(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("want a positive duration like 30s, 5m or 1h30m, got %q", clip(s))
	}
	return d, nil
}

// intIn parses a decimal integer from lo to hi.
func intIn(s string, lo, hi int) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < lo || n > hi {
		return 0, errors.New("out of range")
	}
	return n, nil
}

func hasControl(s string) bool {
	return strings.IndexFunc(s, unicode.IsControl) >= 0
}

// nixSecretSettings are the nix settings whose values are credentials.
var nixSecretSettings = []string{"access-tokens", "extra-access-tokens"}

// takeNixSecrets takes the settings of nixSecretSettings out of nix's
// command-line flags, in each form nix reads them: "--option NAME VALUE"
// and "--NAME VALUE" (and "--NAME=VALUE", which nix itself would refuse
// but which holds the token all the same). It returns the other flags and
// the settings taken, in order. Its errors never quote a value.
func takeNixSecrets(words []string) (kept []string, taken []NixSetting, err error) {
	for i := 0; i < len(words); i++ {
		w := words[i]
		name, value, n := "", "", 0 // n: how many words the setting spans
		switch {
		case w == "--option" && i+1 < len(words) && slices.Contains(nixSecretSettings, words[i+1]):
			name, n = words[i+1], 3
		case w == "--option":
			// Another setting: keep it and its value as they are, so the
			// value is never read as a flag.
			end := min(i+3, len(words))
			kept = append(kept, words[i:end]...)
			i = end - 1
			continue
		case strings.HasPrefix(w, "--") && slices.Contains(nixSecretSettings, w[2:]):
			name, n = w[2:], 2
		default:
			if flag, v, ok := strings.Cut(w, "="); ok && strings.HasPrefix(flag, "--") && slices.Contains(nixSecretSettings, flag[2:]) {
				name, value, n = flag[2:], v, 1
			}
		}
		if n == 0 {
			kept = append(kept, w)
			continue
		}
		if n > 1 {
			if i+n-1 >= len(words) {
				return nil, nil, fmt.Errorf("%s needs a value", strings.Join(words[i:], " "))
			}
			value = words[i+n-1]
		}
		if err := nixConfSafe(value); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", name, err)
		}
		taken = append(taken, NixSetting{Name: name, Value: Secret(value)})
		i += n - 1
	}
	return kept, taken, nil
}

// nixConfSafe checks that a secret setting can be written on one line of
// nix.conf and mean what it says there. The error never quotes it.
func nixConfSafe(value string) error {
	switch {
	case strings.TrimSpace(value) == "":
		return errors.New("want space-separated host=token pairs, got nothing")
	case hasControl(value):
		return errors.New("the value has a control character (not shown)")
	case strings.Contains(value, "#"):
		return errors.New("the value has a '#', which nix.conf reads as the start of a comment (not shown)")
	}
	return nil
}

// splitWords splits s into words the way a POSIX shell would, without any
// expansion: blanks separate words, '...' is literal, "..." is literal but
// for \\, \", \$, \` and backslash-newline, and a backslash outside quotes
// takes the next character literally. Its errors never quote s.
func splitWords(s string) ([]string, error) {
	var (
		words  []string
		word   strings.Builder
		inWord bool // also true for an empty quoted word ("")
	)
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case ' ', '\t', '\n', '\r':
			if inWord {
				words = append(words, word.String())
				word.Reset()
				inWord = false
			}
		case '\\':
			i++
			if i == len(s) {
				return nil, errors.New("ends with a lone backslash")
			}
			if s[i] != '\n' { // backslash-newline joins lines
				word.WriteByte(s[i])
				inWord = true
			}
		case '\'':
			end := strings.IndexByte(s[i+1:], '\'')
			if end < 0 {
				return nil, errors.New("unterminated single quote")
			}
			word.WriteString(s[i+1 : i+1+end])
			i += end + 1
			inWord = true
		case '"':
			inWord = true
			for i++; ; i++ {
				if i == len(s) {
					return nil, errors.New("unterminated double quote")
				}
				if s[i] == '"' {
					break
				}
				if s[i] == '\\' && i+1 < len(s) && strings.IndexByte("\\\"$`\n", s[i+1]) >= 0 {
					i++
					if s[i] == '\n' {
						continue
					}
				}
				word.WriteByte(s[i])
			}
		default:
			word.WriteByte(c)
			inWord = true
		}
	}
	if inWord {
		words = append(words, word.String())
	}
	return words, nil
}

// vars names the variables behind the fields of one env struct (globalEnv
// or targetEnv), so names are written only in the struct tags.
type vars struct {
	prefix string // "" for globals, FLAKESHIP_TARGET_<NAME>_ for a target
	s      any    // pointer to the struct
}

// name returns the variable read into field, a pointer to a field of v.s.
func (v vars) name(field *string) string {
	sv := reflect.ValueOf(v.s).Elem()
	st := sv.Type()
	for i := range st.NumField() {
		if sv.Field(i).Addr().Interface() == any(field) {
			return v.prefix + tagName(st.Field(i))
		}
	}
	panic(fmt.Sprintf("config: field %p is not in %s", field, st))
}

func (v vars) errorf(field *string, format string, args ...any) *Error {
	return &Error{Var: v.name(field), Problem: fmt.Sprintf(format, args...)}
}

func (v vars) err(field *string, err error) *Error {
	return &Error{Var: v.name(field), Problem: err.Error()}
}

// secret reads a secret given either in *value or in the file named by
// *file (trimmed of one trailing newline). Errors name the variable, never
// the value.
func (v vars) secret(value, file *string) (Secret, error) {
	switch {
	case *value != "" && *file != "":
		return "", v.errorf(value, "set either %s or %s, not both", v.name(value), v.name(file))
	case *file == "":
		return Secret(*value), nil
	}
	f, err := os.Open(*file)
	if err != nil {
		return "", v.err(file, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxSecretFile+1))
	if err != nil {
		return "", v.err(file, err)
	}
	if len(b) > maxSecretFile {
		return "", v.errorf(file, "file %q is larger than %d bytes", clip(*file), maxSecretFile)
	}
	s := string(b)
	if rest, ok := strings.CutSuffix(s, "\n"); ok { // one \n or \r\n
		s = strings.TrimSuffix(rest, "\r")
	}
	if s == "" {
		return "", v.errorf(file, "file %q is empty", clip(*file))
	}
	return Secret(s), nil
}

// headerSafe refuses a token that cannot be sent in an HTTP header.
func (v vars) headerSafe(s Secret, value, file *string) error {
	if !hasControl(s.Reveal()) {
		return nil
	}
	field := value
	if *file != "" {
		field = file
	}
	return v.errorf(field, "the token contains a control character (not shown)")
}

// tagNames lists the variable names (without prefix) that env reads into
// the struct s points to.
func tagNames(s any) ([]string, error) {
	params, err := env.GetFieldParamsWithOptions(s, env.Options{Environment: map[string]string{}})
	if err != nil {
		return nil, fmt.Errorf("list variables: %w", err)
	}
	names := make([]string, len(params))
	for i, p := range params {
		names[i] = p.OwnKey
	}
	return names, nil
}

func tagName(f reflect.StructField) string {
	name, _, _ := strings.Cut(f.Tag.Get("env"), ",")
	return name
}
