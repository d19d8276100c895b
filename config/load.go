package config

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

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

	githubAPI = "https://api.github.com/"
)

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
	v, err := read(&g, "", environ)
	if err != nil {
		return nil, err
	}
	cfg, names, err := globals(&g, v)
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

// globals checks the global variables (read into g, with v) and returns the
// config without targets and the listed target names.
func globals(g *globalEnv, v *vars) (*Config, []string, error) {
	if err := v.upTo(&g.PublicURL); err != nil {
		return nil, nil, err
	}
	if g.PublicURL == "" {
		host, port, _ := net.SplitHostPort(string(g.Listen)) // checked by listenAddr
		if host == "" {
			host = "localhost" // ":8080" listens everywhere, including here
		}
		if err := v.fill(&g.PublicURL, "http://"+net.JoinHostPort(host, port)); err != nil {
			return nil, nil, err
		}
	}

	if err := v.upTo(&g.SystemdStateDir); err != nil {
		return nil, nil, err
	}
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
	absState, err := filepath.Abs(stateDir)
	if err != nil {
		return nil, nil, v.errorf(stateVar, "make %q absolute: %v", clip(stateDir), err)
	}

	admin, from, err := v.secret(&g.AdminToken, &g.AdminTokenFile)
	if err == nil {
		err = v.headerSafe(admin, from)
	}
	if err != nil {
		return nil, nil, err
	}
	readToken, from, err := v.secret(&g.ReadToken, &g.ReadTokenFile)
	if err == nil {
		err = v.headerSafe(readToken, from)
	}
	if err != nil {
		return nil, nil, err
	}

	nixFlags, nixSecrets, err := nixSettings(g, v)
	if err != nil {
		return nil, nil, err
	}
	if err := v.first(); err != nil {
		return nil, nil, err
	}
	return &Config{
		Listen:         string(g.Listen),
		PublicURL:      string(g.PublicURL),
		StateDir:       absState,
		AdminToken:     admin,
		ReadToken:      readToken,
		MaxParallel:    g.MaxParallel,
		Nix:            string(g.Nix),
		NixFlags:       nixFlags,
		LogLevel:       slog.Level(g.LogLevel),
		LogFormat:      string(g.LogFormat),
		BodyLimit:      g.BodyLimit,
		TrustedProxies: g.TrustedProxies,
		KeepDeploys:    g.KeepDeploys,
		KeepFor:        time.Duration(g.KeepFor),
		NixSecrets:     nixSecrets,
		DeployLogLimit: g.LogLimit,
	}, g.Targets, nil
}

// nixSettings takes the access tokens out of FLAKESHIP_NIX_FLAGS (nix gets
// them in a file, Config.NixConf, not on its command line) and adds
// FLAKESHIP_NIX_ACCESS_TOKENS(_FILE) before them. Its problems never quote
// a flag, which may be a credential.
func nixSettings(g *globalEnv, v *vars) ([]string, []NixSetting, error) {
	if err := v.upTo(&g.NixFlags); err != nil {
		return nil, nil, err
	}
	flags, fromFlags, err := takeNixSecrets(g.NixFlags)
	if err != nil {
		return nil, nil, v.err(&g.NixFlags, err)
	}
	tokens, from, err := v.secret(&g.NixTokens, &g.NixTokensFile)
	if err != nil || !tokens.IsSet() {
		return flags, fromFlags, err
	}
	if err := nixConfSafe(tokens.Reveal()); err != nil {
		return nil, nil, v.err(from, err)
	}
	// Two access-tokens settings: the later one would silently win.
	if slices.ContainsFunc(fromFlags, func(s NixSetting) bool { return s.Name == "access-tokens" }) {
		return nil, nil, v.errorf(from, "%s sets access-tokens too; give the tokens in one place (--extra-access-tokens adds to them)", v.name(&g.NixFlags))
	}
	return flags, append([]NixSetting{{Name: "access-tokens", Value: tokens}}, fromFlags...), nil
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
				return &Error{Var: k, Problem: fmt.Sprintf("no target %q in %s", strings.ToLower(middle), (&vars{s: g}).name(&g.Targets))}
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
	v, err := read(&e, targetVarPrefix(name), environ)
	if err != nil {
		return Target{}, err
	}

	if err := v.upTo(&e.ForgeURL); err != nil {
		return Target{}, err
	}
	forgeURL := string(e.ForgeURL) + "/"
	if e.ForgeURL == "" {
		if e.Forge != forge.GitHub {
			return Target{}, v.errorf(&e.ForgeURL, "required for forge %s: the server's base URL, like https://codeberg.org/", e.Forge)
		}
		forgeURL = githubAPI
	}
	if err := v.upTo(&e.CloneURL); err != nil {
		return Target{}, err
	}
	if e.CloneURL == "" {
		if err := v.fill(&e.CloneURL, defaultCloneURL(e.Forge, forgeURL, string(e.Repo))); err != nil {
			return Target{}, err
		}
	}

	// ATTR's default depends on ACTIVATE, checked right after it.
	if err := v.upTo(&e.Activate); err != nil {
		return Target{}, err
	}
	if e.Attr == "" {
		attr, err := l.defaultAttr(e.Activate)
		if err != nil {
			return Target{}, v.errorf(&e.Attr, "no default (%v); set it", err)
		}
		if err := v.fill(&e.Attr, attr); err != nil {
			return Target{}, err
		}
	}
	// NIXOS_ACTION matters only in nixos mode, UNIT only in service mode;
	// elsewhere each is kept if given, and checked all the same.
	if e.NixOSAction == "" && e.Activate == ActivateNixOS {
		e.NixOSAction = NixOSSwitch
	}
	if err := v.upTo(&e.Unit); err != nil {
		return Target{}, err
	}
	if e.Unit == "" && e.Activate == ActivateService {
		if err := v.fill(&e.Unit, name+".service"); err != nil {
			return Target{}, err
		}
	}

	if err := claimProfile(c, name, &e, v, profiles); err != nil {
		return Target{}, err
	}

	webhookSecret, token, err := targetSecrets(&e, v)
	if err != nil {
		return Target{}, err
	}

	if err := v.upTo(&e.StatusContext); err != nil {
		return Target{}, err
	}
	if e.StatusContext == "" {
		if err := v.fill(&e.StatusContext, "flakeship/"+name); err != nil {
			return Target{}, err
		}
	}
	if err := v.first(); err != nil {
		return Target{}, err
	}
	return Target{
		Name:          name,
		Forge:         e.Forge,
		Repo:          string(e.Repo),
		ForgeURL:      forgeURL,
		CloneURL:      string(e.CloneURL),
		Branch:        string(e.Branch),
		Attr:          string(e.Attr),
		Activate:      e.Activate,
		NixOSAction:   e.NixOSAction,
		Unit:          string(e.Unit),
		SystemdScope:  e.SystemdScope,
		Profile:       string(e.Profile),
		HealthURL:     string(e.HealthURL),
		HealthTimeout: e.HealthTimeout,
		BuildTimeout:  e.BuildTimeout,
		WebhookSecret: webhookSecret,
		Token:         token,
		StatusContext: string(e.StatusContext),
	}, nil
}

// targetSecrets returns the target's webhook secret, which is required, and
// its forge token, if any.
func targetSecrets(e *targetEnv, v *vars) (webhookSecret, token Secret, err error) {
	webhookSecret, _, err = v.secret(&e.WebhookSecret, &e.WebhookSecretFile)
	if err == nil && !webhookSecret.IsSet() {
		err = v.errorf(&e.WebhookSecret, "required: the webhook's HMAC secret (or set %s)", v.name(&e.WebhookSecretFile))
	}
	if err != nil {
		return "", "", err
	}
	token, from, err := v.secret(&e.Token, &e.TokenFile)
	if err == nil {
		err = v.headerSafe(token, from)
	}
	return webhookSecret, token, err
}

// claimProfile fills in the target's PROFILE when unset (the system profile
// for nixos, one in the state directory otherwise) and claims it in profiles.
func claimProfile(c *Config, name string, e *targetEnv, v *vars, profiles map[string]string) error {
	if err := v.upTo(&e.Profile); err != nil {
		return err
	}
	if e.Profile == "" {
		def := filepath.Join(c.StateDir, "profiles", name)
		if e.Activate == ActivateNixOS {
			def = "/nix/var/nix/profiles/system"
		}
		if err := v.fill(&e.Profile, def); err != nil {
			return err
		}
	}
	if other, ok := profiles[string(e.Profile)]; ok {
		return v.errorf(&e.Profile, "%q is also the profile of target %q; each target needs its own", e.Profile, other)
	}
	profiles[string(e.Profile)] = name
	return nil
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
