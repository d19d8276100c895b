package config_test

// The NixOS module (nix/module.nix) renders flakeship's environment with
// nix/environment.nix, a plain Nix function. These tests evaluate it with
// nix on settings shaped like the module's options, hand the result to
// config.Load the way systemd would (credentials copied into a directory,
// specifiers expanded), and check that the server reads what the settings
// say, and that bad settings are refused with a message naming what to set.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode"

	"github.com/flakeship/flakeship/config"
	"github.com/flakeship/flakeship/internal/testenv"
)

// nixRendering is what nix/environment.nix returns.
type nixRendering struct {
	Environment map[string]string `json:"environment"`
	Credentials []string          `json:"credentials"`
	Problems    []string          `json:"problems"`
	SystemUnits []string          `json:"systemUnits"`
	UserScope   bool              `json:"userScope"`
	NeedsRoot   bool              `json:"needsRoot"`
}

// renderNix evaluates nix/environment.nix on settings, a Nix expression of
// services.flakeship's options (paths in it are relative to this package),
// after filling in the module's own defaults as the module's options do.
func renderNix(t *testing.T, settings string) nixRendering {
	t.Helper()
	expr := `
let
  render = import ../nix/environment.nix;
  defaults = (render { }).moduleDefaults;
  cfg = ` + settings + `;
  withDefaults = t: name: if builtins.isAttrs t then { profile = defaults.profile name t; } // t else t;
in
builtins.removeAttrs (render (cfg // {
  nixFlags = cfg.nixFlags or defaults.nixFlags;
  targets = builtins.mapAttrs (name: t: withDefaults t name) (cfg.targets or { });
})) [ "moduleDefaults" ]`
	var r nixRendering
	evalNixJSON(t, expr, &r)
	return r
}

// evalNixJSON evaluates the Nix expression expr (paths in it are relative
// to this package) strictly and decodes its JSON value into v.
func evalNixJSON(t *testing.T, expr string, v any) {
	t.Helper()
	args := append(testenv.NixFlags(), "--eval", "--strict", "--json", "--expr", expr)
	cmd := exec.CommandContext(t.Context(), "nix-instantiate", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("nix-instantiate: %v\n%s", err, stderr.String())
	}
	if err := json.Unmarshal(out, v); err != nil {
		t.Fatalf("decode the evaluation: %v\n%s", err, out)
	}
}

// secretOf is what the fake file at path holds: each test secret names its
// file, so a test sees which file a setting was read from.
func secretOf(path string) config.Secret { return config.Secret("secret of " + path) }

// asSystemd returns the environment flakeship's process gets from systemd
// for r: LoadCredential= copies each file into the credentials directory
// (here fake files, see secretOf), and Environment= values have their
// specifiers expanded (%d is that directory, %% a '%'); a value with a
// control character is dropped, as systemd drops it.
func asSystemd(t *testing.T, r nixRendering) map[string]string {
	t.Helper()
	credentials := t.TempDir()
	for _, c := range r.Credentials {
		id, path, ok := strings.Cut(c, ":")
		if !ok || id == "" || strings.Contains(id, "/") || !strings.HasPrefix(path, "/") {
			t.Fatalf("credential %q: want ID:/absolute/path", c)
		}
		if err := os.WriteFile(filepath.Join(credentials, id), []byte(secretOf(path).Reveal()+"\n"), 0o400); err != nil {
			t.Fatal(err)
		}
	}
	env := map[string]string{
		"STATE_DIRECTORY":       "/var/lib/flakeship", // StateDirectory=flakeship
		"CREDENTIALS_DIRECTORY": credentials,
	}
	for name, value := range r.Environment {
		if strings.IndexFunc(value, unicode.IsControl) >= 0 {
			continue
		}
		env[name] = expandSpecifiers(t, name, value, credentials)
	}
	return env
}

// expandSpecifiers expands the specifiers the rendering may use; any other
// would be expanded by systemd into something the settings did not say.
func expandSpecifiers(t *testing.T, name, value, credentials string) string {
	t.Helper()
	var b strings.Builder
	for i := 0; i < len(value); i++ {
		if value[i] != '%' {
			b.WriteByte(value[i])
			continue
		}
		if i++; i == len(value) {
			t.Fatalf("%s=%q ends with a lone %%", name, value)
		}
		switch value[i] {
		case '%':
			b.WriteByte('%')
		case 'd':
			b.WriteString(credentials)
		default:
			t.Fatalf("%s=%q: systemd would expand the specifier %%%c", name, value, value[i])
		}
	}
	return b.String()
}

// checkSecretsAreFiles fails unless every secret is a *_FILE variable that
// names a loaded credential in the credentials directory.
func checkSecretsAreFiles(t *testing.T, r nixRendering) {
	t.Helper()
	ids := map[string]bool{}
	for _, c := range r.Credentials {
		id, _, _ := strings.Cut(c, ":")
		ids[id] = true
	}
	for name, value := range r.Environment {
		switch {
		case strings.HasSuffix(name, "_SECRET"), strings.HasSuffix(name, "_TOKEN"):
			t.Errorf("%s is set in the environment; secrets must be files", name)
		case strings.HasSuffix(name, "_FILE"):
			id, ok := strings.CutPrefix(value, "%d/")
			if !ok || !ids[id] {
				t.Errorf("%s=%q: want %%d/<a credential of %q>", name, value, r.Credentials)
			}
		}
	}
}

// diffTargets lists the fields that differ, secrets shown (they are fakes).
func diffTargets(got, want []config.Target) string {
	if len(got) != len(want) {
		return fmt.Sprintf("got %d targets, want %d: %v", len(got), len(want), got)
	}
	var b strings.Builder
	for i := range got {
		g, w := reflect.ValueOf(got[i]), reflect.ValueOf(want[i])
		for f := range g.NumField() {
			gf, wf := g.Field(f).Interface(), w.Field(f).Interface()
			if reflect.DeepEqual(gf, wf) {
				continue
			}
			if s, ok := gf.(config.Secret); ok {
				gf, wf = s.Reveal(), wf.(config.Secret).Reveal()
			}
			fmt.Fprintf(&b, "\n%s.%s: got %#v, want %#v", got[i].Name, g.Type().Field(f).Name, gf, wf)
		}
	}
	return b.String()
}

func TestNixModuleRendersWhatConfigLoads(t *testing.T) {
	testenv.Require(t, "nix")
	system := testenv.System(t)

	tests := []struct {
		name     string
		settings string
		check    func(t *testing.T, c *config.Config, r nixRendering)
	}{
		{
			name:     "the README's GitHub and Forgejo example loads as written",
			settings: `(import ../nix/examples/github-and-forgejo.nix { }).services.flakeship`,
			check: func(t *testing.T, c *config.Config, r nixRendering) {
				want := []config.Target{
					{
						Name:          "api",
						Forge:         "forgejo",
						Repo:          "acme/api",
						ForgeURL:      "https://code.example.com/",
						CloneURL:      "https://code.example.com/acme/api.git",
						Branch:        "production",
						Attr:          "packages.x86_64-linux.api",
						Activate:      config.ActivateService,
						Unit:          "api.service",
						SystemdScope:  config.ScopeSystem,
						Profile:       "/nix/var/nix/profiles/flakeship/api",
						HealthURL:     "http://127.0.0.1:4000/health",
						HealthTimeout: time.Minute,
						BuildTimeout:  30 * time.Minute,
						WebhookSecret: secretOf("/run/secrets/api-webhook"),
						Token:         secretOf("/run/secrets/forgejo-token"),
						StatusContext: "flakeship/api",
					},
					{
						Name:          "web",
						Forge:         "github",
						Repo:          "acme/web",
						ForgeURL:      "https://api.github.com/",
						CloneURL:      "https://github.com/acme/web.git",
						Branch:        "main",
						Attr:          "packages." + system + ".default",
						Activate:      config.ActivateService,
						Unit:          "web.service",
						SystemdScope:  config.ScopeSystem,
						Profile:       "/nix/var/nix/profiles/flakeship/web",
						HealthURL:     "http://127.0.0.1:3000/healthz",
						HealthTimeout: 30 * time.Second,
						BuildTimeout:  30 * time.Minute,
						WebhookSecret: secretOf("/run/secrets/web-webhook"),
						Token:         secretOf("/run/secrets/github-token"),
						StatusContext: "flakeship/web",
					},
				}
				if d := diffTargets(c.Targets, want); d != "" {
					t.Errorf("targets differ:%s", d)
				}
				if c.Listen != "127.0.0.1:8080" || c.PublicURL != "https://deploy.example.com" || c.StateDir != "/var/lib/flakeship" {
					t.Errorf("listen %q, public URL %q, state dir %q", c.Listen, c.PublicURL, c.StateDir)
				}
				if c.AdminToken != secretOf("/run/secrets/flakeship-admin-token") || c.ReadToken.IsSet() {
					t.Errorf("admin token %q, read token set %v", c.AdminToken.Reveal(), c.ReadToken.IsSet())
				}
				if want := []string{"--extra-experimental-features", "nix-command flakes"}; !slices.Equal(c.NixFlags, want) {
					t.Errorf("nix flags %q, want the module's default %q", c.NixFlags, want)
				}
				if want := []string{"api.service", "web.service"}; !slices.Equal(r.SystemUnits, want) {
					t.Errorf("units polkit lets flakeship restart: %q, want %q", r.SystemUnits, want)
				}
				if r.NeedsRoot || r.UserScope {
					t.Errorf("needs root %v, user scope %v; want neither", r.NeedsRoot, r.UserScope)
				}
			},
		},
		{
			name:     "the NixOS self-deploy example switches the system as root",
			settings: `(import ../nix/examples/nixos-self-deploy.nix { }).services.flakeship`,
			check: func(t *testing.T, c *config.Config, r nixRendering) {
				h := c.Targets[0]
				if h.Activate != config.ActivateNixOS || h.NixOSAction != config.NixOSSwitch ||
					h.Profile != "/nix/var/nix/profiles/system" || h.Unit != "" ||
					h.Attr != "nixosConfigurations.web1.config.system.build.toplevel" || h.BuildTimeout != time.Hour {
					t.Errorf("target %+v", h)
				}
				if !r.NeedsRoot || len(r.SystemUnits) != 0 {
					t.Errorf("needs root %v, units %q; want root and no unit for polkit", r.NeedsRoot, r.SystemUnits)
				}
			},
		},
		{
			name: "a user-scope target restarts a unit of flakeship's own user manager",
			settings: `{
				targets.app = {
					forge = "github";
					repo = "acme/app";
					systemdScope = "user";
					unit = "app-web.service";
					webhookSecretFile = "/run/keys/app";
				};
			}`,
			check: func(t *testing.T, c *config.Config, r nixRendering) {
				a := c.Targets[0]
				if a.SystemdScope != config.ScopeUser || a.Unit != "app-web.service" || a.WebhookSecret != secretOf("/run/keys/app") {
					t.Errorf("target %+v", a)
				}
				if !r.UserScope || len(r.SystemUnits) != 0 {
					t.Errorf("user scope %v, system units %q; want user scope and no unit for polkit", r.UserScope, r.SystemUnits)
				}
			},
		},
		{
			name: "nix flags keep their spaces, quotes, backslashes and percent signs",
			settings: `{
				nixFlags = [ "--option" "allowed-uris" "github.com=ghp_x y" "it's" "say \"hi\"" "back\\slash"
					"" "100%" "%d" "$HOME" "` + "`date`" + `" "a'b'c" "--max-jobs" "4" ];
				targets.app = { forge = "github"; repo = "acme/app"; webhookSecretFile = "/run/keys/app"; };
			}`,
			check: func(t *testing.T, c *config.Config, r nixRendering) {
				want := []string{"--option", "allowed-uris", "github.com=ghp_x y", "it's", `say "hi"`, `back\slash`,
					"", "100%", "%d", "$HOME", "`date`", "a'b'c", "--max-jobs", "4"}
				if !slices.Equal(c.NixFlags, want) {
					t.Errorf("nix flags\n got %q\nwant %q\nfrom FLAKESHIP_NIX_FLAGS=%s", c.NixFlags, want, r.Environment["FLAKESHIP_NIX_FLAGS"])
				}
			},
		},
		{
			name: "extraEnvironment passes through and overrides the options",
			settings: `{
				logLevel = "warn";
				extraEnvironment = {
					FLAKESHIP_LOG_LEVEL = "debug";
					FLAKESHIP_NIX = "/run/current-system/sw/bin/nix";
					GODEBUG = "madvdontneed=1,x=100%";
				};
				targets.app = { forge = "github"; repo = "acme/app"; webhookSecretFile = "/run/keys/app"; };
			}`,
			check: func(t *testing.T, c *config.Config, r nixRendering) {
				if c.LogLevel.String() != "DEBUG" || c.Nix != "/run/current-system/sw/bin/nix" {
					t.Errorf("log level %v, nix %q", c.LogLevel, c.Nix)
				}
				if got := r.Environment["GODEBUG"]; got != "madvdontneed=1,x=100%%" {
					t.Errorf("GODEBUG rendered %q, want its '%%' escaped for systemd", got)
				}
			},
		},
		{
			name: "every global setting, durations in seconds, an empty flag list",
			settings: `{
				listen = "0.0.0.0:9090";
				publicUrl = "https://deploy.example.com/flake%20ship";
				stateDir = "/srv/flakeship";
				maxParallel = 4;
				readTokenFile = "/run/keys/read";
				nixAccessTokensFile = "/run/keys/nix-tokens";
				logFormat = "json";
				bodyLimit = 1048576;
				trustedProxies = [ "127.0.0.1" "10.0.0.0/8" "::1" ];
				keepDeploys = 0;
				keepFor = "90d";
				deployLogLimit = 65536;
				nixFlags = [ ];
				targets.app = {
					forge = "gitea";
					repo = "acme/app";
					forgeUrl = "https://git.example.com/";
					cloneUrl = "file:///srv/git/app.git";
					activate = "none";
					profile = "/srv/profiles/app";
					healthTimeout = 90;
					buildTimeout = "1h30m";
					statusContext = "deploy 100%";
					webhookSecretFile = "/run/keys/app";
				};
			}`,
			check: func(t *testing.T, c *config.Config, r nixRendering) {
				if c.Listen != "0.0.0.0:9090" || c.PublicURL != "https://deploy.example.com/flake%20ship" ||
					c.StateDir != "/srv/flakeship" || c.MaxParallel != 4 || c.LogFormat != "json" ||
					c.BodyLimit != 1<<20 || c.NixFlags != nil || c.ReadToken != secretOf("/run/keys/read") ||
					c.KeepDeploys != 0 || c.KeepFor != 90*24*time.Hour || c.DeployLogLimit != 64<<10 {
					t.Errorf("config %+v", c)
				}
				if want := []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32"), netip.MustParsePrefix("10.0.0.0/8"),
					netip.MustParsePrefix("::1/128")}; !slices.Equal(c.TrustedProxies, want) {
					t.Errorf("trusted proxies %v, want %v", c.TrustedProxies, want)
				}
				if want := []config.NixSetting{{Name: "access-tokens", Value: secretOf("/run/keys/nix-tokens")}}; !slices.Equal(c.NixSecrets, want) {
					t.Errorf("nix secrets %+v, want %+v", c.NixSecrets, want)
				}
				a := c.Targets[0]
				if a.Forge != "forgejo" || a.CloneURL != "file:///srv/git/app.git" || a.Activate != config.ActivateNone ||
					a.Unit != "" || a.Profile != "/srv/profiles/app" || a.HealthTimeout != 90*time.Second ||
					a.BuildTimeout != 90*time.Minute || a.StatusContext != "deploy 100%" {
					t.Errorf("target %+v", a)
				}
				if len(r.SystemUnits) != 0 {
					t.Errorf("a build-only target restarts nothing, got units %q", r.SystemUnits)
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := renderNix(t, tc.settings)
			if len(r.Problems) > 0 {
				t.Fatalf("problems with good settings:\n%s", strings.Join(r.Problems, "\n"))
			}
			checkSecretsAreFiles(t, r)
			c, err := config.Load(asSystemd(t, r))
			if err != nil {
				t.Fatalf("config.Load: %v\nenvironment: %q", err, r.Environment)
			}
			tc.check(t, c, r)
		})
	}
}

func TestNixModuleRefusesBadSettings(t *testing.T) {
	testenv.Require(t, "nix")

	const app = `forge = "github"; repo = "acme/app"; webhookSecretFile = "/run/keys/app";`
	tests := []struct {
		name        string
		settings    string
		wantProblem string // a problem (a module assertion) says this
		wantVar     string // config.Load names this variable; "" if it loads
	}{
		{
			name:        "a target without a repository",
			settings:    `{ targets.web = { forge = "github"; webhookSecretFile = "/run/keys/web"; }; }`,
			wantProblem: "services.flakeship.targets.web.repo: required: owner/name",
			wantVar:     "FLAKESHIP_TARGET_WEB_REPO",
		},
		{
			name:        "a Forgejo target without its URL",
			settings:    `{ targets.code = { forge = "forgejo"; repo = "acme/code"; webhookSecretFile = "/run/keys/code"; }; }`,
			wantProblem: "services.flakeship.targets.code.forgeUrl: required for forge forgejo",
			wantVar:     "FLAKESHIP_TARGET_CODE_FORGE_URL",
		},
		{
			name:        "no target",
			settings:    `{ listen = "127.0.0.1:8080"; }`,
			wantProblem: "services.flakeship.targets: define at least one target",
			wantVar:     "FLAKESHIP_TARGETS",
		},
		{
			name:        "an upper-case target name",
			settings:    `{ targets.Web = { ` + app + ` }; }`,
			wantProblem: "services.flakeship.targets.Web: a target name is 1 to 63 lower-case letters",
			wantVar:     "FLAKESHIP_TARGETS",
		},
		{
			name:        "two targets named for the same variables",
			settings:    `{ targets.a-b = { ` + app + ` }; targets.a_b = { ` + app + ` }; }`,
			wantProblem: `"a-b" and "a_b" would both be configured by FLAKESHIP_TARGET_A_B_* variables`,
			wantVar:     "FLAKESHIP_TARGETS",
		},
		{
			name:        "a target without a webhook secret",
			settings:    `{ targets.web = { forge = "github"; repo = "acme/web"; }; }`,
			wantProblem: "services.flakeship.targets.web.webhookSecretFile: required",
			wantVar:     "FLAKESHIP_TARGET_WEB_WEBHOOK_SECRET",
		},
		{
			name:        "a secret in the Nix store",
			settings:    `{ targets.web = { forge = "github"; repo = "acme/web"; webhookSecretFile = "/nix/store/0000-secret"; }; }`,
			wantProblem: "services.flakeship.targets.web.webhookSecretFile: /nix/store/0000-secret is in the Nix store, which every user can read",
			wantVar:     "FLAKESHIP_TARGET_WEB_WEBHOOK_SECRET",
		},
		{
			name:        "nix access tokens in the Nix store",
			settings:    `{ nixAccessTokensFile = "/nix/store/0000-tokens"; targets.app = { ` + app + ` }; }`,
			wantProblem: "services.flakeship.nixAccessTokensFile: /nix/store/0000-tokens is in the Nix store, which every user can read",
		},
		{
			name:        "a secret given as a Nix path",
			settings:    `{ targets.web = { forge = "github"; repo = "acme/web"; webhookSecretFile = ./nixmodule_test.go; tokenFile = ../nix/examples; }; }`,
			wantProblem: "services.flakeship.targets.web.tokenFile: a Nix path would be copied into the world-readable Nix store",
			wantVar:     "FLAKESHIP_TARGET_WEB_WEBHOOK_SECRET",
		},
		{
			name:        "a secret path systemd would not take literally",
			settings:    `{ targets.web = { forge = "github"; repo = "acme/web"; webhookSecretFile = "/run/keys/web 100%"; }; }`,
			wantProblem: `services.flakeship.targets.web.webhookSecretFile: the path "/run/keys/web 100%" has a space, quote, backslash or '%'`,
			wantVar:     "FLAKESHIP_TARGET_WEB_WEBHOOK_SECRET",
		},
		{
			name:        "a NixOS target with runAsRoot turned off",
			settings:    `{ runAsRoot = false; targets.host = { ` + app + ` activate = "nixos"; attr = "nixosConfigurations.h.config.system.build.toplevel"; }; }`,
			wantProblem: `services.flakeship.runAsRoot: activate = "nixos" (target host) switches the whole system, which only root can do`,
		},
		{
			name:        "a nixosAction on a service target",
			settings:    `{ targets.app = { ` + app + ` nixosAction = "boot"; }; }`,
			wantProblem: `services.flakeship.targets.app.nixosAction: only a target with activate = "nixos"`,
		},
		{
			name:        "a newline in a setting, which systemd would drop",
			settings:    `{ targets.app = { ` + app + ` healthUrl = "http://127.0.0.1:3000/\n"; }; }`,
			wantProblem: "services.flakeship.targets.app.healthUrl: the value has a control character",
		},
		{
			name:        "a tab in a nix flag",
			settings:    `{ nixFlags = [ "--option" "a\tb" ]; targets.app = { ` + app + ` }; }`,
			wantProblem: "services.flakeship.nixFlags: an argument has a control character",
		},
		{
			name:        "a trusted proxy entry that would split into two",
			settings:    `{ trustedProxies = [ "127.0.0.1" "10.0.0.1,10.0.0.2" ]; targets.app = { ` + app + ` }; }`,
			wantProblem: `services.flakeship.trustedProxies: want an IP address or a CIDR network like "10.0.0.0/8", got "10.0.0.1,10.0.0.2"`,
		},
		{
			name:        "keeping deploys for less than the redelivery window",
			settings:    `{ keepFor = "7d"; targets.app = { ` + app + ` }; }`,
			wantProblem: `services.flakeship.keepFor: want at least 30 days ("30d")`,
			wantVar:     "FLAKESHIP_KEEP_FOR",
		},
		{
			name:        "keeping deploys for less than the redelivery window, in seconds",
			settings:    `{ keepFor = 86400; targets.app = { ` + app + ` }; }`,
			wantProblem: `services.flakeship.keepFor: want at least 30 days ("30d")`,
			wantVar:     "FLAKESHIP_KEEP_FOR",
		},
		{
			name:        "a variable name systemd refuses",
			settings:    `{ extraEnvironment."NOT-A-NAME" = "x"; targets.app = { ` + app + ` }; }`,
			wantProblem: `services.flakeship.extraEnvironment: "NOT-A-NAME" is not a variable name systemd accepts`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := renderNix(t, tc.settings)
			found := false
			for _, p := range r.Problems {
				found = found || strings.Contains(p, tc.wantProblem)
			}
			if !found {
				t.Errorf("no problem says %q; problems:\n%s", tc.wantProblem, strings.Join(r.Problems, "\n"))
			}
			for _, c := range r.Credentials {
				if strings.Contains(c, "/nix/store/") {
					t.Errorf("credential %q is in the Nix store", c)
				}
			}
			checkSecretsAreFiles(t, r)

			_, err := config.Load(asSystemd(t, r))
			var cerr *config.Error
			switch {
			case tc.wantVar == "" && err != nil:
				t.Errorf("config.Load: %v; want it to load (the module's assertion is what stops it)", err)
			case tc.wantVar == "":
			case !errors.As(err, &cerr):
				t.Errorf("config.Load: %v; want an error naming %s", err, tc.wantVar)
			case cerr.Var != tc.wantVar:
				t.Errorf("config.Load: %v; want it to name %s", err, tc.wantVar)
			}
		})
	}
}
