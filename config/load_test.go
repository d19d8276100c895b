package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// The secrets fed to Load; none may appear in any error or printed Config.
const (
	testSecret = "s3cret-XYZ"
	testToken  = "t0ken-ABC"
	testAdmin  = "adm1n-DEF"
	testRead   = "r3ad-GHI"
)

// unset, as a value in with(), removes the variable.
const unset = "\x00unset"

// testLoader is a loader on a fixed machine: x86_64-linux named web1.
func testLoader() loader {
	return loader{
		hostname: func() (string, error) { return "web1.example.org", nil },
		goos:     "linux",
		goarch:   "amd64",
	}
}

// with returns the minimal valid environment changed by key, value pairs.
func with(kv ...string) map[string]string {
	m := map[string]string{
		"FLAKESHIP_STATE_DIR":                 "/srv/flakeship",
		"FLAKESHIP_TARGETS":                   "app",
		"FLAKESHIP_TARGET_APP_FORGE":          "github",
		"FLAKESHIP_TARGET_APP_REPO":           "owner/app",
		"FLAKESHIP_TARGET_APP_WEBHOOK_SECRET": testSecret,
	}
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] == unset {
			delete(m, kv[i])
		} else {
			m[kv[i]] = kv[i+1]
		}
	}
	return m
}

// minimalConfig is what with() loads to, with every default.
func minimalConfig() *Config {
	return &Config{
		Listen:      "127.0.0.1:8080",
		PublicURL:   "http://127.0.0.1:8080",
		StateDir:    "/srv/flakeship",
		MaxParallel: 1,
		Nix:         "nix",
		LogLevel:    slog.LevelInfo,
		LogFormat:   "text",
		BodyLimit:   26214400,
		KeepDeploys: 100,
		KeepFor:     30 * 24 * time.Hour,
		Targets:     []Target{appTarget()},

		DeployLogLimit: 16 << 20,
	}
}

func appTarget() Target {
	return Target{
		Name:          "app",
		Forge:         "github",
		Repo:          "owner/app",
		ForgeURL:      "https://api.github.com/",
		CloneURL:      "https://github.com/owner/app.git",
		Branch:        "main",
		Attr:          "packages.x86_64-linux.default",
		Activate:      ActivateService,
		Unit:          "app.service",
		SystemdScope:  ScopeSystem,
		Profile:       "/srv/flakeship/profiles/app",
		HealthTimeout: 30 * time.Second,
		BuildTimeout:  30 * time.Minute,
		WebhookSecret: testSecret,
		StatusContext: "flakeship/app",
	}
}

// diffConfig lists the fields that differ; secrets print as [redacted], so
// a differing secret shows only its field name.
func diffConfig(got, want *Config) string {
	var b strings.Builder
	diffStruct(&b, "", reflect.ValueOf(*got), reflect.ValueOf(*want))
	return b.String()
}

func diffStruct(b *strings.Builder, path string, got, want reflect.Value) {
	for i := range got.NumField() {
		name := path + got.Type().Field(i).Name
		g, w := got.Field(i), want.Field(i)
		if name == "Targets" && g.Len() == w.Len() {
			for j := range g.Len() {
				diffStruct(b, fmt.Sprintf("Targets[%d].", j), g.Index(j), w.Index(j))
			}
			continue
		}
		if !reflect.DeepEqual(g.Interface(), w.Interface()) {
			fmt.Fprintf(b, "\n%s: got %#v, want %#v", name, g.Interface(), w.Interface())
		}
	}
}

func TestLoadAppliesDefaultsAndReadsEverySetting(t *testing.T) {
	stateDirectoryAbs, err := filepath.Abs("flakeship-state")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		env  map[string]string
		edit func(c *Config) // applied to minimalConfig() to get the want
	}{
		{
			name: "minimal environment gets every default",
			env:  with(),
			edit: func(c *Config) {},
		},
		{
			name: "every global setting",
			env: with(
				"FLAKESHIP_LISTEN", "[::1]:9000",
				"FLAKESHIP_PUBLIC_URL", "https://deploy.example.org/flakeship//",
				"FLAKESHIP_ADMIN_TOKEN", testAdmin,
				"FLAKESHIP_READ_TOKEN", testRead,
				"FLAKESHIP_MAX_PARALLEL", "64",
				"FLAKESHIP_NIX", "/run/current-system/sw/bin/nix",
				"FLAKESHIP_NIX_FLAGS", `--option substituters '' --extra-experimental-features "nix-command flakes"`,
				"FLAKESHIP_LOG_LEVEL", "DEBUG",
				"FLAKESHIP_LOG_FORMAT", "JSON",
				"FLAKESHIP_BODY_LIMIT", "1048576",
				"FLAKESHIP_TRUSTED_PROXIES", "127.0.0.1, 10.1.2.3/8 ,::1,2001:db8::/32,::ffff:192.0.2.1",
				"FLAKESHIP_KEEP_DEPLOYS", "0",
				"FLAKESHIP_KEEP_FOR", "365d",
				"FLAKESHIP_NIX_ACCESS_TOKENS", "github.com="+testToken,
				"FLAKESHIP_DEPLOY_LOG_LIMIT", "1024",
			),
			edit: func(c *Config) {
				c.Listen = "[::1]:9000"
				c.PublicURL = "https://deploy.example.org/flakeship"
				c.AdminToken = testAdmin
				c.ReadToken = testRead
				c.MaxParallel = 64
				c.Nix = "/run/current-system/sw/bin/nix"
				c.NixFlags = []string{"--option", "substituters", "", "--extra-experimental-features", "nix-command flakes"}
				c.LogLevel = slog.LevelDebug
				c.LogFormat = "json"
				c.BodyLimit = 1048576
				c.TrustedProxies = []netip.Prefix{
					netip.MustParsePrefix("127.0.0.1/32"), netip.MustParsePrefix("10.0.0.0/8"),
					netip.MustParsePrefix("::1/128"), netip.MustParsePrefix("2001:db8::/32"),
					netip.MustParsePrefix("192.0.2.1/32"),
				}
				c.KeepDeploys = 0
				c.KeepFor = 365 * 24 * time.Hour
				c.NixSecrets = []NixSetting{{Name: "access-tokens", Value: "github.com=" + testToken}}
				c.DeployLogLimit = 1024
			},
		},
		{
			name: "every target setting",
			env: with(
				"FLAKESHIP_TARGET_APP_FORGE", "GitHub",
				"FLAKESHIP_TARGET_APP_FORGE_URL", "https://ghe.example.com/api/v3",
				"FLAKESHIP_TARGET_APP_CLONE_URL", "file:///srv/git/app.git",
				"FLAKESHIP_TARGET_APP_BRANCH", "release/v2",
				"FLAKESHIP_TARGET_APP_ATTR", `packages.aarch64-linux."app-server"`,
				"FLAKESHIP_TARGET_APP_ACTIVATE", "Service",
				"FLAKESHIP_TARGET_APP_UNIT", "app@blue.service",
				"FLAKESHIP_TARGET_APP_SYSTEMD_SCOPE", "user",
				"FLAKESHIP_TARGET_APP_PROFILE", "/nix/var/nix/profiles/per-user/app/../app/current/",
				"FLAKESHIP_TARGET_APP_HEALTH_URL", "http://127.0.0.1:3000/healthz?full=1",
				"FLAKESHIP_TARGET_APP_HEALTH_TIMEOUT", "1m30s",
				"FLAKESHIP_TARGET_APP_BUILD_TIMEOUT", "2h",
				"FLAKESHIP_TARGET_APP_TOKEN", testToken,
				"FLAKESHIP_TARGET_APP_STATUS_CONTEXT", "deploy/production ✓",
			),
			edit: func(c *Config) {
				t := &c.Targets[0]
				t.ForgeURL = "https://ghe.example.com/api/v3/"
				t.CloneURL = "file:///srv/git/app.git"
				t.Branch = "release/v2"
				t.Attr = `packages.aarch64-linux."app-server"`
				t.Unit = "app@blue.service"
				t.SystemdScope = ScopeUser
				t.Profile = "/nix/var/nix/profiles/per-user/app/current"
				t.HealthURL = "http://127.0.0.1:3000/healthz?full=1"
				t.HealthTimeout = 90 * time.Second
				t.BuildTimeout = 2 * time.Hour
				t.Token = testToken
				t.StatusContext = "deploy/production ✓"
			},
		},
		{
			name: "empty values count as unset",
			env: with(
				"FLAKESHIP_LISTEN", "",
				"FLAKESHIP_PUBLIC_URL", "",
				"FLAKESHIP_ADMIN_TOKEN", "",
				"FLAKESHIP_ADMIN_TOKEN_FILE", "",
				"FLAKESHIP_NIX", "",
				"FLAKESHIP_NIX_FLAGS", "",
				"FLAKESHIP_TARGET_APP_BRANCH", "",
				"FLAKESHIP_TARGET_APP_HEALTH_URL", "",
				"FLAKESHIP_TARGET_APP_TOKEN_FILE", "",
				"FLAKESHIP_TRUSTED_PROXIES", " ",
				"FLAKESHIP_KEEP_DEPLOYS", "",
				"FLAKESHIP_KEEP_FOR", "",
			),
			edit: func(c *Config) {},
		},
		{
			name: "keep for as a Go duration, at the redelivery window",
			env:  with("FLAKESHIP_KEEP_FOR", "720h"),
			edit: func(c *Config) { c.KeepFor = MinKeepFor },
		},
		{
			name: "access tokens are taken out of the nix flags, in order",
			env: with(
				"FLAKESHIP_NIX_FLAGS", `--option substituters '' --option access-tokens 'github.com=ghp_a gitlab.com=PAT:b' `+
					`--max-jobs 2 --extra-access-tokens example.org=c --option extra-access-tokens d.org=e `+
					`--access-tokens=f.org=g --option sandbox --access-tokens --quiet`,
			),
			edit: func(c *Config) {
				// "--option sandbox --access-tokens" sets sandbox to the
				// word "--access-tokens": nix reads it so, and so does Load.
				c.NixFlags = []string{"--option", "substituters", "", "--max-jobs", "2",
					"--option", "sandbox", "--access-tokens", "--quiet"}
				c.NixSecrets = []NixSetting{
					{Name: "access-tokens", Value: "github.com=ghp_a gitlab.com=PAT:b"},
					{Name: "extra-access-tokens", Value: "example.org=c"},
					{Name: "extra-access-tokens", Value: "d.org=e"},
					{Name: "access-tokens", Value: "f.org=g"},
				}
			},
		},
		{
			name: "extra access tokens in the nix flags add to FLAKESHIP_NIX_ACCESS_TOKENS",
			env: with(
				"FLAKESHIP_NIX_ACCESS_TOKENS", "github.com=ghp_first",
				"FLAKESHIP_NIX_FLAGS", "--extra-access-tokens gitlab.com=PAT:b",
			),
			edit: func(c *Config) {
				c.NixSecrets = []NixSetting{
					{Name: "access-tokens", Value: "github.com=ghp_first"},
					{Name: "extra-access-tokens", Value: "gitlab.com=PAT:b"},
				}
			},
		},
		{
			name: "nix flags of only access tokens leave no flags",
			env:  with("FLAKESHIP_NIX_FLAGS", `--access-tokens github.com=ghp_a`),
			edit: func(c *Config) {
				c.NixSecrets = []NixSetting{{Name: "access-tokens", Value: "github.com=ghp_a"}}
			},
		},
		{
			name: "listening on every address links to localhost",
			env:  with("FLAKESHIP_LISTEN", ":8080"),
			edit: func(c *Config) {
				c.Listen = ":8080"
				c.PublicURL = "http://localhost:8080"
			},
		},
		{
			name: "an IPv6 listen address is bracketed in the public URL",
			env:  with("FLAKESHIP_LISTEN", "[::1]:0"),
			edit: func(c *Config) {
				c.Listen = "[::1]:0"
				c.PublicURL = "http://[::1]:0"
			},
		},
		{
			name: "systemd's first STATE_DIRECTORY is the state dir",
			env:  with("FLAKESHIP_STATE_DIR", unset, "STATE_DIRECTORY", "/var/lib/flakeship:/var/lib/other"),
			edit: func(c *Config) {
				c.StateDir = "/var/lib/flakeship"
				c.Targets[0].Profile = "/var/lib/flakeship/profiles/app"
			},
		},
		{
			name: "FLAKESHIP_STATE_DIR wins over STATE_DIRECTORY",
			env:  with("STATE_DIRECTORY", "/var/lib/flakeship"),
			edit: func(c *Config) {},
		},
		{
			name: "the state dir defaults to ./flakeship-state, made absolute",
			env:  with("FLAKESHIP_STATE_DIR", unset),
			edit: func(c *Config) {
				c.StateDir = stateDirectoryAbs
				c.Targets[0].Profile = filepath.Join(stateDirectoryAbs, "profiles", "app")
			},
		},
		{
			name: "a relative state dir is made absolute",
			env:  with("FLAKESHIP_STATE_DIR", "flakeship-state/"),
			edit: func(c *Config) {
				c.StateDir = stateDirectoryAbs
				c.Targets[0].Profile = filepath.Join(stateDirectoryAbs, "profiles", "app")
			},
		},
		{
			name: "a nixos target builds this host's system into the system profile",
			env:  with("FLAKESHIP_TARGET_APP_ACTIVATE", "nixos"),
			edit: func(c *Config) {
				t := &c.Targets[0]
				t.Activate = ActivateNixOS
				t.NixOSAction = NixOSSwitch
				t.Attr = "nixosConfigurations.web1.config.system.build.toplevel"
				t.Unit = ""
				t.Profile = "/nix/var/nix/profiles/system"
			},
		},
		{
			name: "a nixos target may only make the new system the boot default",
			env:  with("FLAKESHIP_TARGET_APP_ACTIVATE", "nixos", "FLAKESHIP_TARGET_APP_NIXOS_ACTION", "Boot"),
			edit: func(c *Config) {
				t := &c.Targets[0]
				t.Activate = ActivateNixOS
				t.NixOSAction = NixOSBoot
				t.Attr = "nixosConfigurations.web1.config.system.build.toplevel"
				t.Unit = ""
				t.Profile = "/nix/var/nix/profiles/system"
			},
		},
		{
			name: "a nixos target may activate without making it the boot default, and check a unit",
			env: with(
				"FLAKESHIP_TARGET_APP_ACTIVATE", "nixos",
				"FLAKESHIP_TARGET_APP_NIXOS_ACTION", "test",
				"FLAKESHIP_TARGET_APP_UNIT", "app.service",
			),
			edit: func(c *Config) {
				t := &c.Targets[0]
				t.Activate = ActivateNixOS
				t.NixOSAction = NixOSTest
				t.Attr = "nixosConfigurations.web1.config.system.build.toplevel"
				t.Profile = "/nix/var/nix/profiles/system"
			},
		},
		{
			name: "a nixos action is kept outside nixos mode, like a unit",
			env:  with("FLAKESHIP_TARGET_APP_NIXOS_ACTION", "switch"),
			edit: func(c *Config) { c.Targets[0].NixOSAction = NixOSSwitch },
		},
		{
			name: "a build-only target has no unit",
			env:  with("FLAKESHIP_TARGET_APP_ACTIVATE", "none"),
			edit: func(c *Config) {
				c.Targets[0].Activate = ActivateNone
				c.Targets[0].Unit = ""
			},
		},
		{
			name: "a GitHub Enterprise target clones from the API's host",
			env:  with("FLAKESHIP_TARGET_APP_FORGE_URL", "https://ghe.example.com/api/v3/"),
			edit: func(c *Config) {
				c.Targets[0].ForgeURL = "https://ghe.example.com/api/v3/"
				c.Targets[0].CloneURL = "https://ghe.example.com/owner/app.git"
			},
		},
		{
			name: "api.github.com given without the slash is still github.com",
			env:  with("FLAKESHIP_TARGET_APP_FORGE_URL", "https://API.github.com"),
			edit: func(c *Config) {
				c.Targets[0].ForgeURL = "https://API.github.com/"
			},
		},
		{
			name: "a Forgejo target clones from its base URL",
			env: with(
				"FLAKESHIP_TARGET_APP_FORGE", "forgejo",
				"FLAKESHIP_TARGET_APP_FORGE_URL", "https://codeberg.org",
			),
			edit: func(c *Config) {
				c.Targets[0].Forge = "forgejo"
				c.Targets[0].ForgeURL = "https://codeberg.org/"
				c.Targets[0].CloneURL = "https://codeberg.org/owner/app.git"
			},
		},
		{
			name: "a gitea target is a Forgejo target whose API path is dropped from the clone URL",
			env: with(
				"FLAKESHIP_TARGET_APP_FORGE", "gitea",
				"FLAKESHIP_TARGET_APP_FORGE_URL", "http://git.example.com:3000/forge/api/v1//",
			),
			edit: func(c *Config) {
				c.Targets[0].Forge = "forgejo"
				c.Targets[0].ForgeURL = "http://git.example.com:3000/forge/api/v1/"
				c.Targets[0].CloneURL = "http://git.example.com:3000/forge/owner/app.git"
			},
		},
		{
			name: "an absolute path is a clone URL",
			env:  with("FLAKESHIP_TARGET_APP_CLONE_URL", "/srv/git/app.git"),
			edit: func(c *Config) {
				c.Targets[0].CloneURL = "/srv/git/app.git"
			},
		},
		{
			name: "targets keep their listed order and names with '-' use '_'",
			env: with(
				"FLAKESHIP_TARGETS", " web-site , app",
				"FLAKESHIP_TARGET_WEB_SITE_FORGE", "forgejo",
				"FLAKESHIP_TARGET_WEB_SITE_FORGE_URL", "https://codeberg.org/api/v1/",
				"FLAKESHIP_TARGET_WEB_SITE_REPO", "owner/site",
				"FLAKESHIP_TARGET_WEB_SITE_WEBHOOK_SECRET", testSecret,
			),
			edit: func(c *Config) {
				site := Target{
					Name:          "web-site",
					Forge:         "forgejo",
					Repo:          "owner/site",
					ForgeURL:      "https://codeberg.org/api/v1/",
					CloneURL:      "https://codeberg.org/owner/site.git",
					Branch:        "main",
					Attr:          "packages.x86_64-linux.default",
					Activate:      ActivateService,
					Unit:          "web-site.service",
					SystemdScope:  ScopeSystem,
					Profile:       "/srv/flakeship/profiles/web-site",
					HealthTimeout: 30 * time.Second,
					BuildTimeout:  30 * time.Minute,
					WebhookSecret: testSecret,
					StatusContext: "flakeship/web-site",
				}
				c.Targets = []Target{site, appTarget()}
			},
		},
		{
			name: "target prefixes that nest are told apart",
			env: with(
				"FLAKESHIP_TARGETS", "app,app_build",
				"FLAKESHIP_TARGET_APP_BUILD_FORGE", "github",
				"FLAKESHIP_TARGET_APP_BUILD_REPO", "owner/app",
				"FLAKESHIP_TARGET_APP_BUILD_ACTIVATE", "none",
				"FLAKESHIP_TARGET_APP_BUILD_WEBHOOK_SECRET", testSecret,
			),
			edit: func(c *Config) {
				b := appTarget()
				b.Name = "app_build"
				b.Activate = ActivateNone
				b.Unit = ""
				b.Profile = "/srv/flakeship/profiles/app_build"
				b.StatusContext = "flakeship/app_build"
				c.Targets = append(c.Targets, b)
			},
		},
		{
			name: "log level warn",
			env:  with("FLAKESHIP_LOG_LEVEL", "warn"),
			edit: func(c *Config) { c.LogLevel = slog.LevelWarn },
		},
		{
			name: "log level error",
			env:  with("FLAKESHIP_LOG_LEVEL", "Error"),
			edit: func(c *Config) { c.LogLevel = slog.LevelError },
		},
		{
			name: "the test suite's own variables are not settings",
			env:  with("FLAKESHIP_TEST_REQUIRE", "git,nix"),
			edit: func(c *Config) {},
		},
		{
			name: "the command line's server URL may share the environment",
			env:  with("FLAKESHIP_URL", "http://127.0.0.1:8080"),
			edit: func(c *Config) {},
		},
		{
			name: "other programs' variables are none of our business",
			env:  with("PATH", "/bin", "HOME", "/root", "FLAKESHIPX", "1"),
			edit: func(c *Config) {},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := testLoader().load(tc.env)
			if err != nil {
				t.Fatalf("load: %v", err)
			}
			want := minimalConfig()
			tc.edit(want)
			if d := diffConfig(got, want); d != "" || !reflect.DeepEqual(got, want) {
				t.Errorf("config differs:%s", d)
			}
		})
	}
}

// TestLoadAcceptsTheEndsOfEveryRange loads each documented bound of a
// numeric or length setting: "from 1 to N" includes both, and an operator
// who sets exactly the largest value the README gives must not be refused.
// TestLoadRejectsEveryBadSetting has the values just outside.
func TestLoadAcceptsTheEndsOfEveryRange(t *testing.T) {
	longContext := strings.Repeat("✓", 255) // 255 characters, 765 bytes
	tests := []struct {
		name string
		env  map[string]string
		edit func(c *Config)
	}{
		{"listen on port 0", with("FLAKESHIP_LISTEN", "127.0.0.1:0"),
			func(c *Config) { c.Listen, c.PublicURL = "127.0.0.1:0", "http://127.0.0.1:0" }},
		{"listen on port 65535", with("FLAKESHIP_LISTEN", "127.0.0.1:65535"),
			func(c *Config) { c.Listen, c.PublicURL = "127.0.0.1:65535", "http://127.0.0.1:65535" }},
		{"max parallel 64", with("FLAKESHIP_MAX_PARALLEL", "64"), func(c *Config) { c.MaxParallel = 64 }},
		{"body limit of 1 byte", with("FLAKESHIP_BODY_LIMIT", "1"), func(c *Config) { c.BodyLimit = 1 }},
		{"body limit of 1 GiB", with("FLAKESHIP_BODY_LIMIT", "1073741824"), func(c *Config) { c.BodyLimit = 1 << 30 }},
		{"keep a million deploys", with("FLAKESHIP_KEEP_DEPLOYS", "1000000"), func(c *Config) { c.KeepDeploys = 1_000_000 }},
		{"keep for exactly 30 days", with("FLAKESHIP_KEEP_FOR", "30d"), func(c *Config) { c.KeepFor = 30 * 24 * time.Hour }},
		{"keep for exactly 36500 days", with("FLAKESHIP_KEEP_FOR", "36500d"),
			func(c *Config) { c.KeepFor = 36500 * 24 * time.Hour }},
		{"keep for 876000h, the same century as a duration", with("FLAKESHIP_KEEP_FOR", "876000h"),
			func(c *Config) { c.KeepFor = 36500 * 24 * time.Hour }},
		{"deploy log limit of 1 byte", with("FLAKESHIP_DEPLOY_LOG_LIMIT", "1"), func(c *Config) { c.DeployLogLimit = 1 }},
		{"deploy log limit of 1 TiB", with("FLAKESHIP_DEPLOY_LOG_LIMIT", "1099511627776"),
			func(c *Config) { c.DeployLogLimit = 1 << 40 }},
		{"status context of 255 characters", with("FLAKESHIP_TARGET_APP_STATUS_CONTEXT", longContext),
			func(c *Config) { c.Targets[0].StatusContext = longContext }},
		{"health timeout of 1ns", with("FLAKESHIP_TARGET_APP_HEALTH_TIMEOUT", "1ns"),
			func(c *Config) { c.Targets[0].HealthTimeout = time.Nanosecond }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := testLoader().load(tc.env)
			if err != nil {
				t.Fatalf("load: %v", err)
			}
			want := minimalConfig()
			tc.edit(want)
			if d := diffConfig(got, want); d != "" || !reflect.DeepEqual(got, want) {
				t.Errorf("config differs:%s", d)
			}
		})
	}
}

// TestLoadIsSafeForConcurrentUse loads at once from several goroutines:
// env adds its own parsers to the map of parsers it is given, so a map
// shared between loads would be a data race (go test -race).
func TestLoadIsSafeForConcurrentUse(t *testing.T) {
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := testLoader().load(with("FLAKESHIP_TARGET_APP_FORGE", "Gitea", "FLAKESHIP_TARGET_APP_FORGE_URL", "https://codeberg.org/"))
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
}

func TestConfigTargetFindsByName(t *testing.T) {
	c, err := testLoader().load(with())
	if err != nil {
		t.Fatal(err)
	}
	if got, ok := c.Target("app"); !ok || !reflect.DeepEqual(got, appTarget()) {
		t.Errorf("Target(app) = %+v, %v; want %+v, true", got, ok, appTarget())
	}
	if got, ok := c.Target("ap"); ok {
		t.Errorf("Target(ap) = %+v, true; want none", got)
	}
}

func TestLoadUsesThisMachine(t *testing.T) {
	system, err := nixSystem(runtime.GOOS, runtime.GOARCH)
	if err != nil {
		t.Skipf("no nix system here: %v", err)
	}
	c, err := Load(with())
	if err != nil {
		t.Fatal(err)
	}
	if want := "packages." + system + ".default"; c.Targets[0].Attr != want {
		t.Errorf("Attr = %q, want %q", c.Targets[0].Attr, want)
	}
}

func TestLoadNilEnvironmentReadsNothing(t *testing.T) {
	// env would fall back to the process environment; Load must not.
	_, err := Load(nil)
	if want := "FLAKESHIP_TARGETS: required: a comma-separated list of target names"; err == nil || err.Error() != want {
		t.Errorf("Load(nil) = %v, want %s", err, want)
	}
}

func TestLoadRejectsEveryBadSetting(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing")
	long := strings.Repeat("x", 256)
	tests := []struct {
		name   string
		env    map[string]string
		loader func(l *loader) // changes testLoader(), if set
		want   string
	}{
		// Globals.
		{name: "listen without port", env: with("FLAKESHIP_LISTEN", "8080"),
			want: `FLAKESHIP_LISTEN: want host:port, got "8080"`},
		{name: "listen port too big", env: with("FLAKESHIP_LISTEN", "127.0.0.1:65536"),
			want: `FLAKESHIP_LISTEN: want host:port with a port from 0 to 65535, got "127.0.0.1:65536"`},
		{name: "listen port by name", env: with("FLAKESHIP_LISTEN", "127.0.0.1:http"),
			want: `FLAKESHIP_LISTEN: want host:port with a port from 0 to 65535, got "127.0.0.1:http"`},
		{name: "public URL not http", env: with("FLAKESHIP_PUBLIC_URL", "ftp://example.org/"),
			want: `FLAKESHIP_PUBLIC_URL: want an absolute http(s) URL, got "ftp://example.org/"`},
		{name: "public URL without scheme", env: with("FLAKESHIP_PUBLIC_URL", "example.org"),
			want: `FLAKESHIP_PUBLIC_URL: want an absolute http(s) URL, got "example.org"`},
		{name: "public URL without host", env: with("FLAKESHIP_PUBLIC_URL", "http://:8080"),
			want: `FLAKESHIP_PUBLIC_URL: want an absolute http(s) URL, got "http://:8080"`},
		{name: "public URL unparsable", env: with("FLAKESHIP_PUBLIC_URL", "http://[::1"),
			want: `FLAKESHIP_PUBLIC_URL: want an absolute http(s) URL: missing ']' in host`},
		{name: "public URL with credentials", env: with("FLAKESHIP_PUBLIC_URL", "https://admin:pw@example.org"),
			want: `FLAKESHIP_PUBLIC_URL: want a URL without credentials (user:password@)`},
		{name: "public URL with query", env: with("FLAKESHIP_PUBLIC_URL", "https://example.org/?a=b"),
			want: `FLAKESHIP_PUBLIC_URL: want a base URL without query or fragment, got "https://example.org/?a=b"`},
		{name: "state dir with a newline", env: with("FLAKESHIP_STATE_DIR", "/srv/a\nb"),
			want: `FLAKESHIP_STATE_DIR: want a directory path, got "/srv/a\nb"`},
		{name: "systemd state dir with a newline", env: with("FLAKESHIP_STATE_DIR", unset, "STATE_DIRECTORY", "/srv/a\nb"),
			want: `STATE_DIRECTORY: want a directory path, got "/srv/a\nb"`},
		{name: "admin token and its file", env: with("FLAKESHIP_ADMIN_TOKEN", testAdmin, "FLAKESHIP_ADMIN_TOKEN_FILE", missing),
			want: `FLAKESHIP_ADMIN_TOKEN: set either FLAKESHIP_ADMIN_TOKEN or FLAKESHIP_ADMIN_TOKEN_FILE, not both`},
		{name: "admin token file missing", env: with("FLAKESHIP_ADMIN_TOKEN_FILE", missing),
			want: `FLAKESHIP_ADMIN_TOKEN_FILE: open ` + missing + `: no such file or directory`},
		{name: "admin token with a newline", env: with("FLAKESHIP_ADMIN_TOKEN", testAdmin+"\nX"),
			want: `FLAKESHIP_ADMIN_TOKEN: the token contains a control character (not shown)`},
		{name: "read token and its file", env: with("FLAKESHIP_READ_TOKEN", testRead, "FLAKESHIP_READ_TOKEN_FILE", missing),
			want: `FLAKESHIP_READ_TOKEN: set either FLAKESHIP_READ_TOKEN or FLAKESHIP_READ_TOKEN_FILE, not both`},
		{name: "read token file missing", env: with("FLAKESHIP_READ_TOKEN_FILE", missing),
			want: `FLAKESHIP_READ_TOKEN_FILE: open ` + missing + `: no such file or directory`},
		{name: "read token with a tab", env: with("FLAKESHIP_READ_TOKEN", testRead+"\t"),
			want: `FLAKESHIP_READ_TOKEN: the token contains a control character (not shown)`},
		// A control character first: one in the first byte counts too (a
		// header "Authorization: Bearer \r\n..." splits a request as well).
		{name: "read token that starts with a carriage return", env: with("FLAKESHIP_READ_TOKEN", "\r\nX-Injected: 1"),
			want: `FLAKESHIP_READ_TOKEN: the token contains a control character (not shown)`},
		{name: "state dir that starts with a newline", env: with("FLAKESHIP_STATE_DIR", "\n/srv"),
			want: `FLAKESHIP_STATE_DIR: want a directory path, got "\n/srv"`},
		{name: "max parallel zero", env: with("FLAKESHIP_MAX_PARALLEL", "0"),
			want: `FLAKESHIP_MAX_PARALLEL: want a whole number from 1 to 64, got "0"`},
		{name: "max parallel too many", env: with("FLAKESHIP_MAX_PARALLEL", "65"),
			want: `FLAKESHIP_MAX_PARALLEL: want a whole number from 1 to 64, got "65"`},
		{name: "max parallel not a number", env: with("FLAKESHIP_MAX_PARALLEL", "two"),
			want: `FLAKESHIP_MAX_PARALLEL: want a whole number from 1 to 64, got "two"`},
		{name: "nix like an option", env: with("FLAKESHIP_NIX", "--version"),
			want: `FLAKESHIP_NIX: want a program name on PATH or an absolute path, got "--version"`},
		{name: "nix relative path", env: with("FLAKESHIP_NIX", "bin/nix"),
			want: `FLAKESHIP_NIX: want a program name on PATH or an absolute path, got "bin/nix"`},
		{name: "nix flags with an open single quote", env: with("FLAKESHIP_NIX_FLAGS", "--option substituters 'x"),
			want: `FLAKESHIP_NIX_FLAGS: unterminated single quote`},
		{name: "nix flags with an open double quote", env: with("FLAKESHIP_NIX_FLAGS", `--option substituters "x`),
			want: `FLAKESHIP_NIX_FLAGS: unterminated double quote`},
		{name: "nix flags that end in a backslash inside double quotes", env: with("FLAKESHIP_NIX_FLAGS", `--option substituters "x\`),
			want: `FLAKESHIP_NIX_FLAGS: unterminated double quote`},
		{name: "nix flags ending in a backslash", env: with("FLAKESHIP_NIX_FLAGS", `--quiet \`),
			want: `FLAKESHIP_NIX_FLAGS: ends with a lone backslash`},
		{name: "nix flags with access tokens but no value", env: with("FLAKESHIP_NIX_FLAGS", "--quiet --option access-tokens"),
			want: `FLAKESHIP_NIX_FLAGS: --option access-tokens needs a value`},
		{name: "nix flags with extra access tokens but no value", env: with("FLAKESHIP_NIX_FLAGS", "--extra-access-tokens"),
			want: `FLAKESHIP_NIX_FLAGS: --extra-access-tokens needs a value`},
		{name: "nix flags with empty access tokens", env: with("FLAKESHIP_NIX_FLAGS", "--access-tokens ' '"),
			want: `FLAKESHIP_NIX_FLAGS: access-tokens: want space-separated host=token pairs, got nothing`},
		{name: "nix flags with a newline in the access tokens", env: with("FLAKESHIP_NIX_FLAGS", "--access-tokens 'a=b\nsandbox = false'"),
			want: `FLAKESHIP_NIX_FLAGS: access-tokens: the value has a control character (not shown)`},
		{name: "nix flags with a '#' in the access tokens", env: with("FLAKESHIP_NIX_FLAGS", "--option access-tokens a=b#c"),
			want: `FLAKESHIP_NIX_FLAGS: access-tokens: the value has a '#', which nix.conf reads as the start of a comment (not shown)`},
		{name: "nix access tokens and their file", env: with("FLAKESHIP_NIX_ACCESS_TOKENS", "a=b", "FLAKESHIP_NIX_ACCESS_TOKENS_FILE", missing),
			want: `FLAKESHIP_NIX_ACCESS_TOKENS: set either FLAKESHIP_NIX_ACCESS_TOKENS or FLAKESHIP_NIX_ACCESS_TOKENS_FILE, not both`},
		{name: "nix access tokens file missing", env: with("FLAKESHIP_NIX_ACCESS_TOKENS_FILE", missing),
			want: `FLAKESHIP_NIX_ACCESS_TOKENS_FILE: open ` + missing + `: no such file or directory`},
		{name: "nix access tokens in the variable and the flags", env: with("FLAKESHIP_NIX_ACCESS_TOKENS", "a=b", "FLAKESHIP_NIX_FLAGS", "--option access-tokens c=d"),
			want: `FLAKESHIP_NIX_ACCESS_TOKENS: FLAKESHIP_NIX_FLAGS sets access-tokens too; give the tokens in one place (--extra-access-tokens adds to them)`},
		{name: "nix access tokens with a newline", env: with("FLAKESHIP_NIX_ACCESS_TOKENS", "a=b\nc=d"),
			want: `FLAKESHIP_NIX_ACCESS_TOKENS: the value has a control character (not shown)`},
		{name: "log level unknown", env: with("FLAKESHIP_LOG_LEVEL", "verbose"),
			want: `FLAKESHIP_LOG_LEVEL: want debug, info, warn or error, got "verbose"`},
		{name: "log level with an offset", env: with("FLAKESHIP_LOG_LEVEL", "info+2"),
			want: `FLAKESHIP_LOG_LEVEL: want debug, info, warn or error, got "info+2"`},
		{name: "log format unknown", env: with("FLAKESHIP_LOG_FORMAT", "logfmt"),
			want: `FLAKESHIP_LOG_FORMAT: want text or json, got "logfmt"`},
		{name: "body limit zero", env: with("FLAKESHIP_BODY_LIMIT", "0"),
			want: `FLAKESHIP_BODY_LIMIT: want a number of bytes from 1 to 1073741824, got "0"`},
		{name: "body limit with a unit", env: with("FLAKESHIP_BODY_LIMIT", "25MiB"),
			want: `FLAKESHIP_BODY_LIMIT: want a number of bytes from 1 to 1073741824, got "25MiB"`},
		{name: "body limit too big", env: with("FLAKESHIP_BODY_LIMIT", "1073741825"),
			want: `FLAKESHIP_BODY_LIMIT: want a number of bytes from 1 to 1073741824, got "1073741825"`},
		{name: "trusted proxy by name", env: with("FLAKESHIP_TRUSTED_PROXIES", "proxy.example"),
			want: `FLAKESHIP_TRUSTED_PROXIES: want an IP address or a CIDR network like 10.0.0.0/8, got "proxy.example"`},
		{name: "trusted proxy network too wide", env: with("FLAKESHIP_TRUSTED_PROXIES", "127.0.0.1,10.0.0.0/33"),
			want: `FLAKESHIP_TRUSTED_PROXIES: want an IP address or a CIDR network like 10.0.0.0/8, got "10.0.0.0/33"`},
		{name: "trusted proxy with a zone", env: with("FLAKESHIP_TRUSTED_PROXIES", "fe80::1%eth0"),
			want: `FLAKESHIP_TRUSTED_PROXIES: want an IP address or a CIDR network like 10.0.0.0/8, got "fe80::1%eth0"`},
		{name: "trusted proxies with a trailing comma", env: with("FLAKESHIP_TRUSTED_PROXIES", "127.0.0.1,"),
			want: `FLAKESHIP_TRUSTED_PROXIES: empty entry in "127.0.0.1,": want IP addresses or CIDR networks separated by commas`},
		{name: "keep deploys negative", env: with("FLAKESHIP_KEEP_DEPLOYS", "-1"),
			want: `FLAKESHIP_KEEP_DEPLOYS: want a whole number of deploys from 0 to 1000000, got "-1"`},
		{name: "keep deploys not a number", env: with("FLAKESHIP_KEEP_DEPLOYS", "all"),
			want: `FLAKESHIP_KEEP_DEPLOYS: want a whole number of deploys from 0 to 1000000, got "all"`},
		{name: "keep for below the redelivery window", env: with("FLAKESHIP_KEEP_FOR", "7d"),
			want: `FLAKESHIP_KEEP_FOR: want days like 90d or a duration like 2160h, from 30d (delivery ids must outlive the forges' redelivery windows) to 36500d, got "7d"`},
		{name: "keep for a Go duration below the window", env: with("FLAKESHIP_KEEP_FOR", "719h59m"),
			want: `FLAKESHIP_KEEP_FOR: want days like 90d or a duration like 2160h, from 30d (delivery ids must outlive the forges' redelivery windows) to 36500d, got "719h59m"`},
		{name: "keep for in fractional days", env: with("FLAKESHIP_KEEP_FOR", "30.5d"),
			want: `FLAKESHIP_KEEP_FOR: want days like 90d or a duration like 2160h, from 30d (delivery ids must outlive the forges' redelivery windows) to 36500d, got "30.5d"`},
		{name: "keep for past a century", env: with("FLAKESHIP_KEEP_FOR", "36501d"),
			want: `FLAKESHIP_KEEP_FOR: want days like 90d or a duration like 2160h, from 30d (delivery ids must outlive the forges' redelivery windows) to 36500d, got "36501d"`},
		{name: "deploy log limit zero", env: with("FLAKESHIP_DEPLOY_LOG_LIMIT", "0"),
			want: `FLAKESHIP_DEPLOY_LOG_LIMIT: want a number of bytes from 1 to 1099511627776, got "0"`},
		{name: "deploy log limit with a unit", env: with("FLAKESHIP_DEPLOY_LOG_LIMIT", "16MiB"),
			want: `FLAKESHIP_DEPLOY_LOG_LIMIT: want a number of bytes from 1 to 1099511627776, got "16MiB"`},
		{name: "deploy log limit too big", env: with("FLAKESHIP_DEPLOY_LOG_LIMIT", "1099511627777"),
			want: `FLAKESHIP_DEPLOY_LOG_LIMIT: want a number of bytes from 1 to 1099511627776, got "1099511627777"`},
		{name: "targets missing", env: with("FLAKESHIP_TARGETS", unset),
			want: `FLAKESHIP_TARGETS: required: a comma-separated list of target names`},
		{name: "targets only blanks", env: with("FLAKESHIP_TARGETS", "  "),
			want: `FLAKESHIP_TARGETS: required: a comma-separated list of target names`},
		{name: "targets with an empty name", env: with("FLAKESHIP_TARGETS", "app,,web"),
			want: `FLAKESHIP_TARGETS: empty target name in "app,,web"`},
		{name: "targets with a trailing comma", env: with("FLAKESHIP_TARGETS", "app,"),
			want: `FLAKESHIP_TARGETS: empty target name in "app,"`},
		{name: "target name upper-case", env: with("FLAKESHIP_TARGETS", "App"),
			want: `FLAKESHIP_TARGETS: target name "App": want lower-case letters, digits, '-' or '_', starting with a letter or digit`},
		{name: "target listed twice", env: with("FLAKESHIP_TARGETS", "app, app"),
			want: `FLAKESHIP_TARGETS: target "app" is listed twice`},
		{name: "targets sharing a prefix", env: with("FLAKESHIP_TARGETS", "a-b,a_b"),
			want: `FLAKESHIP_TARGETS: targets "a-b" and "a_b" would both be configured by FLAKESHIP_TARGET_A_B_* variables`},

		// Names that are not settings.
		{name: "unknown global", env: with("FLAKESHIP_LISTN", "127.0.0.1:9000"),
			want: `FLAKESHIP_LISTN: unknown variable`},
		{name: "setting of an unlisted target", env: with("FLAKESHIP_TARGET_AP_REPO", "owner/app"),
			want: `FLAKESHIP_TARGET_AP_REPO: no target "ap" in FLAKESHIP_TARGETS`},
		{name: "unknown setting of a listed target", env: with("FLAKESHIP_TARGET_APP_BRANH", "main"),
			want: `FLAKESHIP_TARGET_APP_BRANH: target "app" has no setting "BRANH"`},
		{name: "unknown setting of a nested target", env: with(
			"FLAKESHIP_TARGETS", "app,app_build",
			"FLAKESHIP_TARGET_APP_BUILD_TOKN", "x"),
			want: `FLAKESHIP_TARGET_APP_BUILD_TOKN: target "app_build" has no setting "TOKN"`},
		{name: "target variable without a setting", env: with("FLAKESHIP_TARGET_WEB", "x"),
			want: `FLAKESHIP_TARGET_WEB: unknown variable; a target's settings are FLAKESHIP_TARGET_<NAME>_<SETTING>`},
		{name: "unknown names are reported in sorted order", env: with("FLAKESHIP_ZZZ", "", "FLAKESHIP_AAA", ""),
			want: `FLAKESHIP_AAA: unknown variable`},
		{name: "globals are checked before names", env: with("FLAKESHIP_AAA", "", "FLAKESHIP_MAX_PARALLEL", "0"),
			want: `FLAKESHIP_MAX_PARALLEL: want a whole number from 1 to 64, got "0"`},
		{name: "a misspelt setting is reported before the one it misses", env: with(
			"FLAKESHIP_TARGET_APP_REPO", unset, "FLAKESHIP_TARGET_APP_REPOS", "owner/app"),
			want: `FLAKESHIP_TARGET_APP_REPOS: target "app" has no setting "REPOS"`},

		// Targets.
		{name: "forge missing", env: with("FLAKESHIP_TARGET_APP_FORGE", unset),
			want: `FLAKESHIP_TARGET_APP_FORGE: required: github, forgejo or gitea`},
		{name: "forge unknown", env: with("FLAKESHIP_TARGET_APP_FORGE", "gitlab"),
			want: `FLAKESHIP_TARGET_APP_FORGE: want github, forgejo or gitea, got "gitlab"`},
		{name: "repo missing", env: with("FLAKESHIP_TARGET_APP_REPO", unset),
			want: `FLAKESHIP_TARGET_APP_REPO: required: owner/name of the repository`},
		{name: "repo without owner", env: with("FLAKESHIP_TARGET_APP_REPO", "app"),
			want: `FLAKESHIP_TARGET_APP_REPO: want owner/name, got "app"`},
		{name: "forge URL missing for forgejo", env: with("FLAKESHIP_TARGET_APP_FORGE", "forgejo"),
			want: `FLAKESHIP_TARGET_APP_FORGE_URL: required for forge forgejo: the server's base URL, like https://codeberg.org/`},
		{name: "forge URL not http", env: with("FLAKESHIP_TARGET_APP_FORGE_URL", "git.example.com"),
			want: `FLAKESHIP_TARGET_APP_FORGE_URL: want an absolute http(s) URL, got "git.example.com"`},
		{name: "forge URL with a token in it", env: with("FLAKESHIP_TARGET_APP_FORGE_URL", "https://"+testToken+"@ghe.example.com/api/v3/"),
			want: `FLAKESHIP_TARGET_APP_FORGE_URL: want a URL without credentials (user:password@)`},
		{name: "forge URL with a fragment", env: with("FLAKESHIP_TARGET_APP_FORGE_URL", "https://ghe.example.com/api/v3/#x"),
			want: `FLAKESHIP_TARGET_APP_FORGE_URL: want a base URL without query or fragment, got "https://ghe.example.com/api/v3/#x"`},
		{name: "clone URL over ssh", env: with("FLAKESHIP_TARGET_APP_CLONE_URL", "ssh://git@github.com/owner/app.git"),
			want: `FLAKESHIP_TARGET_APP_CLONE_URL: want an http(s):// or file:// URL or an absolute path, got a value with '@' (not shown: it may hold credentials)`},
		{name: "clone URL through git's ext transport", env: with("FLAKESHIP_TARGET_APP_CLONE_URL", "ext::sh -c touch% /tmp/pwned"),
			want: `FLAKESHIP_TARGET_APP_CLONE_URL: want an http(s):// or file:// URL or an absolute path, got "ext::sh -c touch% /tmp/pwned"`},
		{name: "clone URL like an option", env: with("FLAKESHIP_TARGET_APP_CLONE_URL", "--upload-pack=touch /tmp/pwned"),
			want: `FLAKESHIP_TARGET_APP_CLONE_URL: want an http(s):// or file:// URL or an absolute path, got "--upload-pack=touch /tmp/pwned"`},
		{name: "clone URL relative path", env: with("FLAKESHIP_TARGET_APP_CLONE_URL", "git/app.git"),
			want: `FLAKESHIP_TARGET_APP_CLONE_URL: want an http(s):// or file:// URL or an absolute path, got "git/app.git"`},
		{name: "clone URL scp-like", env: with("FLAKESHIP_TARGET_APP_CLONE_URL", "github.com:owner/app.git"),
			want: `FLAKESHIP_TARGET_APP_CLONE_URL: want an http(s):// or file:// URL or an absolute path, got "github.com:owner/app.git"`},
		{name: "clone URL path with a newline", env: with("FLAKESHIP_TARGET_APP_CLONE_URL", "/srv/app.git\n--upload-pack=x"),
			want: `FLAKESHIP_TARGET_APP_CLONE_URL: want an absolute path without control characters, got "/srv/app.git\n--upload-pack=x"`},
		{name: "clone URL file on another host", env: with("FLAKESHIP_TARGET_APP_CLONE_URL", "file://server/srv/app.git"),
			want: `FLAKESHIP_TARGET_APP_CLONE_URL: want file:///absolute/path, got "file://server/srv/app.git"`},
		{name: "clone URL with a password", env: with("FLAKESHIP_TARGET_APP_CLONE_URL", "https://user:"+testToken+"@github.com/owner/app.git"),
			want: `FLAKESHIP_TARGET_APP_CLONE_URL: want a URL without credentials (user:password@)`},
		{name: "branch like an option", env: with("FLAKESHIP_TARGET_APP_BRANCH", "-x"),
			want: `FLAKESHIP_TARGET_APP_BRANCH: branch name "-x" starts with '-'`},
		{name: "branch not a ref", env: with("FLAKESHIP_TARGET_APP_BRANCH", "a..b"),
			want: `FLAKESHIP_TARGET_APP_BRANCH: branch name "a..b" is not a valid git ref`},
		{name: "attr like an option", env: with("FLAKESHIP_TARGET_APP_ATTR", "--impure"),
			want: `FLAKESHIP_TARGET_APP_ATTR: want a flake attribute path like packages.x86_64-linux.default, got "--impure"`},
		{name: "attr with a flake reference", env: with("FLAKESHIP_TARGET_APP_ATTR", "github:evil/flake#x"),
			want: `FLAKESHIP_TARGET_APP_ATTR: want a flake attribute path like packages.x86_64-linux.default, got "github:evil/flake#x"`},
		{name: "attr checked before activate", env: with("FLAKESHIP_TARGET_APP_ATTR", "a b", "FLAKESHIP_TARGET_APP_ACTIVATE", "reboot"),
			want: `FLAKESHIP_TARGET_APP_ATTR: want a flake attribute path like packages.x86_64-linux.default, got "a b"`},
		{name: "no default attr without a hostname", env: with("FLAKESHIP_TARGET_APP_ACTIVATE", "nixos"),
			loader: func(l *loader) { l.hostname = func() (string, error) { return "", errors.New("uname broke") } },
			want:   `FLAKESHIP_TARGET_APP_ATTR: no default (hostname: uname broke); set it`},
		{name: "no default attr with an empty hostname", env: with("FLAKESHIP_TARGET_APP_ACTIVATE", "nixos"),
			loader: func(l *loader) { l.hostname = func() (string, error) { return ".local", nil } },
			want:   `FLAKESHIP_TARGET_APP_ATTR: no default (the hostname is empty); set it`},
		{name: "no default attr on a platform nix lacks", env: with(),
			loader: func(l *loader) { l.goos = "windows" },
			want:   `FLAKESHIP_TARGET_APP_ATTR: no default (nix has no system for windows/amd64); set it`},
		{name: "activate unknown", env: with("FLAKESHIP_TARGET_APP_ACTIVATE", "reboot"),
			want: `FLAKESHIP_TARGET_APP_ACTIVATE: want service, nixos or none, got "reboot"`},
		{name: "activate unknown with an attr", env: with("FLAKESHIP_TARGET_APP_ACTIVATE", "reboot", "FLAKESHIP_TARGET_APP_ATTR", "packages.x.y"),
			want: `FLAKESHIP_TARGET_APP_ACTIVATE: want service, nixos or none, got "reboot"`},
		{name: "nixos action unknown", env: with("FLAKESHIP_TARGET_APP_ACTIVATE", "nixos", "FLAKESHIP_TARGET_APP_NIXOS_ACTION", "dry-activate"),
			want: `FLAKESHIP_TARGET_APP_NIXOS_ACTION: want switch, test or boot, got "dry-activate"`},
		{name: "nixos action like nixos-rebuild's flag", env: with("FLAKESHIP_TARGET_APP_ACTIVATE", "nixos", "FLAKESHIP_TARGET_APP_NIXOS_ACTION", "--rollback"),
			want: `FLAKESHIP_TARGET_APP_NIXOS_ACTION: want switch, test or boot, got "--rollback"`},
		{name: "nixos action checked outside nixos mode", env: with("FLAKESHIP_TARGET_APP_NIXOS_ACTION", "reboot"),
			want: `FLAKESHIP_TARGET_APP_NIXOS_ACTION: want switch, test or boot, got "reboot"`},
		{name: "nixos action checked after activate", env: with("FLAKESHIP_TARGET_APP_ACTIVATE", "docker", "FLAKESHIP_TARGET_APP_NIXOS_ACTION", "reboot"),
			want: `FLAKESHIP_TARGET_APP_ACTIVATE: want service, nixos or none, got "docker"`},
		{name: "nixos action checked before unit", env: with("FLAKESHIP_TARGET_APP_NIXOS_ACTION", "reboot", "FLAKESHIP_TARGET_APP_UNIT", "app"),
			want: `FLAKESHIP_TARGET_APP_NIXOS_ACTION: want switch, test or boot, got "reboot"`},
		{name: "unit without a type", env: with("FLAKESHIP_TARGET_APP_UNIT", "app"),
			want: `FLAKESHIP_TARGET_APP_UNIT: want a systemd unit name like app.service, got "app"`},
		{name: "unit checked when given outside service mode", env: with("FLAKESHIP_TARGET_APP_ACTIVATE", "none", "FLAKESHIP_TARGET_APP_UNIT", "-x.service"),
			want: `FLAKESHIP_TARGET_APP_UNIT: want a systemd unit name like app.service, got "-x.service"`},
		{name: "scope unknown", env: with("FLAKESHIP_TARGET_APP_SYSTEMD_SCOPE", "global"),
			want: `FLAKESHIP_TARGET_APP_SYSTEMD_SCOPE: want system or user, got "global"`},
		{name: "profile relative", env: with("FLAKESHIP_TARGET_APP_PROFILE", "profiles/app"),
			want: `FLAKESHIP_TARGET_APP_PROFILE: want an absolute path, got "profiles/app"`},
		{name: "two targets in one profile", env: with(
			"FLAKESHIP_TARGETS", "app,web",
			"FLAKESHIP_TARGET_WEB_FORGE", "github",
			"FLAKESHIP_TARGET_WEB_REPO", "owner/web",
			"FLAKESHIP_TARGET_WEB_WEBHOOK_SECRET", testSecret,
			"FLAKESHIP_TARGET_WEB_PROFILE", "/srv/flakeship/profiles/app/"),
			want: `FLAKESHIP_TARGET_WEB_PROFILE: "/srv/flakeship/profiles/app" is also the profile of target "app"; each target needs its own`},
		{name: "two nixos targets", env: with(
			"FLAKESHIP_TARGETS", "app,web",
			"FLAKESHIP_TARGET_APP_ACTIVATE", "nixos",
			"FLAKESHIP_TARGET_WEB_FORGE", "github",
			"FLAKESHIP_TARGET_WEB_REPO", "owner/web",
			"FLAKESHIP_TARGET_WEB_WEBHOOK_SECRET", testSecret,
			"FLAKESHIP_TARGET_WEB_ACTIVATE", "nixos"),
			want: `FLAKESHIP_TARGET_WEB_PROFILE: "/nix/var/nix/profiles/system" is also the profile of target "app"; each target needs its own`},
		{name: "health URL without scheme", env: with("FLAKESHIP_TARGET_APP_HEALTH_URL", "localhost:3000/healthz"),
			want: `FLAKESHIP_TARGET_APP_HEALTH_URL: want an absolute http(s) URL, got "localhost:3000/healthz"`},
		{name: "health URL with a fragment", env: with("FLAKESHIP_TARGET_APP_HEALTH_URL", "http://localhost:3000/#x"),
			want: `FLAKESHIP_TARGET_APP_HEALTH_URL: want a URL without fragment, got "http://localhost:3000/#x"`},
		{name: "health timeout zero", env: with("FLAKESHIP_TARGET_APP_HEALTH_TIMEOUT", "0s"),
			want: `FLAKESHIP_TARGET_APP_HEALTH_TIMEOUT: want a positive duration like 30s, 5m or 1h30m, got "0s"`},
		{name: "health timeout without unit", env: with("FLAKESHIP_TARGET_APP_HEALTH_TIMEOUT", "30"),
			want: `FLAKESHIP_TARGET_APP_HEALTH_TIMEOUT: want a positive duration like 30s, 5m or 1h30m, got "30"`},
		{name: "build timeout negative", env: with("FLAKESHIP_TARGET_APP_BUILD_TIMEOUT", "-1m"),
			want: `FLAKESHIP_TARGET_APP_BUILD_TIMEOUT: want a positive duration like 30s, 5m or 1h30m, got "-1m"`},
		{name: "webhook secret missing", env: with("FLAKESHIP_TARGET_APP_WEBHOOK_SECRET", unset),
			want: `FLAKESHIP_TARGET_APP_WEBHOOK_SECRET: required: the webhook's HMAC secret (or set FLAKESHIP_TARGET_APP_WEBHOOK_SECRET_FILE)`},
		{name: "webhook secret and its file", env: with("FLAKESHIP_TARGET_APP_WEBHOOK_SECRET_FILE", missing),
			want: `FLAKESHIP_TARGET_APP_WEBHOOK_SECRET: set either FLAKESHIP_TARGET_APP_WEBHOOK_SECRET or FLAKESHIP_TARGET_APP_WEBHOOK_SECRET_FILE, not both`},
		{name: "webhook secret file missing", env: with("FLAKESHIP_TARGET_APP_WEBHOOK_SECRET", unset, "FLAKESHIP_TARGET_APP_WEBHOOK_SECRET_FILE", missing),
			want: `FLAKESHIP_TARGET_APP_WEBHOOK_SECRET_FILE: open ` + missing + `: no such file or directory`},
		{name: "token and its file", env: with("FLAKESHIP_TARGET_APP_TOKEN", testToken, "FLAKESHIP_TARGET_APP_TOKEN_FILE", missing),
			want: `FLAKESHIP_TARGET_APP_TOKEN: set either FLAKESHIP_TARGET_APP_TOKEN or FLAKESHIP_TARGET_APP_TOKEN_FILE, not both`},
		{name: "token with a carriage return", env: with("FLAKESHIP_TARGET_APP_TOKEN", testToken+"\r"),
			want: `FLAKESHIP_TARGET_APP_TOKEN: the token contains a control character (not shown)`},
		{name: "status context too long", env: with("FLAKESHIP_TARGET_APP_STATUS_CONTEXT", long),
			want: `FLAKESHIP_TARGET_APP_STATUS_CONTEXT: want 1 to 255 printable characters, got "` + clip(long) + `"`},
		{name: "status context with a control character", env: with("FLAKESHIP_TARGET_APP_STATUS_CONTEXT", "deploy\x1b[31m"),
			want: `FLAKESHIP_TARGET_APP_STATUS_CONTEXT: want 1 to 255 printable characters, got "deploy\x1b[31m"`},
		{name: "status context not UTF-8", env: with("FLAKESHIP_TARGET_APP_STATUS_CONTEXT", "deploy\xff"),
			want: `FLAKESHIP_TARGET_APP_STATUS_CONTEXT: want 1 to 255 printable characters, got "deploy\xff"`},

		// Order.
		{name: "a setting that needs another before a bad later one", env: with(
			"FLAKESHIP_TARGET_APP_FORGE", "forgejo",
			"FLAKESHIP_TARGET_APP_BRANCH", "-x",
			"FLAKESHIP_TARGET_APP_HEALTH_TIMEOUT", "0s"),
			want: `FLAKESHIP_TARGET_APP_FORGE_URL: required for forge forgejo: the server's base URL, like https://codeberg.org/`},
		{name: "a bad setting before a default that needs a later one", env: with(
			"FLAKESHIP_TARGET_APP_BRANCH", "-x",
			"FLAKESHIP_TARGET_APP_ACTIVATE", "nixos"),
			loader: func(l *loader) { l.hostname = func() (string, error) { return "", errors.New("uname broke") } },
			want:   `FLAKESHIP_TARGET_APP_BRANCH: branch name "-x" starts with '-'`},
		{name: "a secret's two variables before its file", env: with(
			"FLAKESHIP_TARGET_APP_TOKEN", testToken,
			"FLAKESHIP_TARGET_APP_TOKEN_FILE", missing,
			"FLAKESHIP_TARGET_APP_STATUS_CONTEXT", long),
			want: `FLAKESHIP_TARGET_APP_TOKEN: set either FLAKESHIP_TARGET_APP_TOKEN or FLAKESHIP_TARGET_APP_TOKEN_FILE, not both`},
		{name: "global conversions before a cross check of a later global", env: with(
			"FLAKESHIP_MAX_PARALLEL", "0",
			"FLAKESHIP_NIX_FLAGS", "--access-tokens a=b",
			"FLAKESHIP_NIX_ACCESS_TOKENS", "c=d"),
			want: `FLAKESHIP_MAX_PARALLEL: want a whole number from 1 to 64, got "0"`},
		{name: "a global cross check before a later conversion", env: with(
			"FLAKESHIP_NIX_FLAGS", "--access-tokens a=b",
			"FLAKESHIP_NIX_ACCESS_TOKENS", "c=d",
			"FLAKESHIP_LOG_LEVEL", "loud"),
			want: `FLAKESHIP_NIX_ACCESS_TOKENS: FLAKESHIP_NIX_FLAGS sets access-tokens too; give the tokens in one place (--extra-access-tokens adds to them)`},
		{name: "first setting of a target first", env: with("FLAKESHIP_TARGET_APP_FORGE", "gitlab", "FLAKESHIP_TARGET_APP_REPO", "x"),
			want: `FLAKESHIP_TARGET_APP_FORGE: want github, forgejo or gitea, got "gitlab"`},
		{name: "first listed target first", env: with(
			"FLAKESHIP_TARGETS", "web,app",
			"FLAKESHIP_TARGET_APP_REPO", "x",
			"FLAKESHIP_TARGET_WEB_FORGE", "github",
			"FLAKESHIP_TARGET_WEB_REPO", "owner/web"),
			want: `FLAKESHIP_TARGET_WEB_WEBHOOK_SECRET: required: the webhook's HMAC secret (or set FLAKESHIP_TARGET_WEB_WEBHOOK_SECRET_FILE)`},
		{name: "target names use '_' for '-'", env: with(
			"FLAKESHIP_TARGETS", "my-app",
			"FLAKESHIP_TARGET_APP_FORGE", unset,
			"FLAKESHIP_TARGET_APP_REPO", unset,
			"FLAKESHIP_TARGET_APP_WEBHOOK_SECRET", unset,
			"FLAKESHIP_TARGET_MY_APP_FORGE", "github",
			"FLAKESHIP_TARGET_MY_APP_REPO", "my-app"),
			want: `FLAKESHIP_TARGET_MY_APP_REPO: want owner/name, got "my-app"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l := testLoader()
			if tc.loader != nil {
				tc.loader(&l)
			}
			_, err := l.load(tc.env)
			if err == nil {
				t.Fatalf("load succeeded, want %s", tc.want)
			}
			if err.Error() != tc.want {
				t.Errorf("error\n got: %s\nwant: %s", err, tc.want)
			}
			var cerr *Error
			if !errors.As(err, &cerr) {
				t.Fatalf("error %T is not a *config.Error", err)
			}
			if v, _, _ := strings.Cut(tc.want, ": "); cerr.Var != v {
				t.Errorf("Var = %q, want %q", cerr.Var, v)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error is not one line: %q", err)
			}
		})
	}
}

func TestLoadReadsSecretFiles(t *testing.T) {
	dir := t.TempDir()
	file := func(name, content string) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	unreadable := filepath.Join(dir, "dir")
	if err := os.Mkdir(unreadable, 0o700); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		content string // written to the file named by the variable
		want    Secret
		wantErr string // with FILE for the file's path
	}{
		{name: "trailing newline trimmed", content: testSecret + "\n", want: testSecret},
		{name: "trailing CRLF trimmed", content: testSecret + "\r\n", want: testSecret},
		{name: "no trailing newline", content: testSecret, want: testSecret},
		{name: "only one newline trimmed", content: testSecret + "\n\n", want: testSecret + "\n"},
		{name: "a lone carriage return is content", content: testSecret + "\r", want: testSecret + "\r"},
		{name: "leading and inner blanks are content", content: " a b\n", want: " a b"},
		{name: "empty file", content: "", wantErr: `file "FILE" is empty`},
		{name: "file with only a newline", content: "\n", wantErr: `file "FILE" is empty`},
		{name: "file of exactly the limit", content: strings.Repeat("x", maxSecretFile), want: Secret(strings.Repeat("x", maxSecretFile))},
		{name: "file too big", content: strings.Repeat("x", maxSecretFile+1), wantErr: `file "FILE" is larger than 65536 bytes`},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := file(fmt.Sprintf("secret%d", i), tc.content)
			c, err := testLoader().load(with(
				"FLAKESHIP_TARGET_APP_WEBHOOK_SECRET", unset,
				"FLAKESHIP_TARGET_APP_WEBHOOK_SECRET_FILE", p,
			))
			if tc.wantErr != "" {
				want := "FLAKESHIP_TARGET_APP_WEBHOOK_SECRET_FILE: " + strings.ReplaceAll(tc.wantErr, "FILE", p)
				if err == nil || err.Error() != want {
					t.Errorf("load = %v, want %s", err, want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := c.Targets[0].WebhookSecret; got != tc.want {
				t.Errorf("WebhookSecret = %q, want %q", got.Reveal(), tc.want.Reveal())
			}
		})
	}

	t.Run("every secret can be a file", func(t *testing.T) {
		c, err := testLoader().load(with(
			"FLAKESHIP_ADMIN_TOKEN_FILE", file("admin", testAdmin+"\n"),
			"FLAKESHIP_READ_TOKEN_FILE", file("read", testRead+"\n"),
			"FLAKESHIP_TARGET_APP_WEBHOOK_SECRET", unset,
			"FLAKESHIP_TARGET_APP_WEBHOOK_SECRET_FILE", file("webhook", testSecret+"\n"),
			"FLAKESHIP_TARGET_APP_TOKEN_FILE", file("token", testToken+"\n"),
			"FLAKESHIP_NIX_ACCESS_TOKENS_FILE", file("nix-tokens", "github.com="+testToken+"\n"),
		))
		if err != nil {
			t.Fatal(err)
		}
		want := minimalConfig()
		want.AdminToken, want.ReadToken = testAdmin, testRead
		want.Targets[0].Token = testToken
		want.NixSecrets = []NixSetting{{Name: "access-tokens", Value: "github.com=" + testToken}}
		if !reflect.DeepEqual(c, want) {
			t.Errorf("config differs:%s", diffConfig(c, want))
		}
	})

	t.Run("a directory is unreadable", func(t *testing.T) {
		_, err := testLoader().load(with("FLAKESHIP_TARGET_APP_TOKEN_FILE", unreadable))
		want := "FLAKESHIP_TARGET_APP_TOKEN_FILE: read " + unreadable + ": is a directory"
		if err == nil || err.Error() != want {
			t.Errorf("load = %v, want %s", err, want)
		}
	})

	t.Run("a control character read from a file names the file", func(t *testing.T) {
		_, err := testLoader().load(with("FLAKESHIP_ADMIN_TOKEN_FILE", file("ctl", "a\nb\n")))
		want := "FLAKESHIP_ADMIN_TOKEN_FILE: the token contains a control character (not shown)"
		if err == nil || err.Error() != want {
			t.Errorf("load = %v, want %s", err, want)
		}
	})
}

func TestSecretsNeverShown(t *testing.T) {
	dir := t.TempDir()
	secrets := []string{testSecret, testToken, testAdmin, testRead}
	file := func(name, content string) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	all := func(kv ...string) map[string]string {
		return with(append([]string{
			"FLAKESHIP_ADMIN_TOKEN", testAdmin,
			"FLAKESHIP_READ_TOKEN_FILE", file("read", testRead+"\n"),
			"FLAKESHIP_TARGET_APP_TOKEN", testToken,
			"FLAKESHIP_NIX_FLAGS", "--option access-tokens github.com=" + testToken,
		}, kv...)...)
	}
	check := func(t *testing.T, what, s string) {
		t.Helper()
		for _, secret := range secrets {
			if strings.Contains(s, secret) {
				t.Errorf("%s shows a secret: %s", what, s)
			}
		}
	}

	failing := []map[string]string{
		all("FLAKESHIP_ADMIN_TOKEN_FILE", file("admin", testAdmin)),
		all("FLAKESHIP_ADMIN_TOKEN", testAdmin+"\x00"),
		all("FLAKESHIP_READ_TOKEN", testRead),
		all("FLAKESHIP_TARGET_APP_WEBHOOK_SECRET_FILE", file("webhook", testSecret)),
		all("FLAKESHIP_TARGET_APP_WEBHOOK_SECRET", unset, "FLAKESHIP_TARGET_APP_WEBHOOK_SECRET_FILE", file("empty", "\n")),
		all("FLAKESHIP_TARGET_APP_TOKEN", testToken+"\n"),
		all("FLAKESHIP_TARGET_APP_TOKEN", unset, "FLAKESHIP_TARGET_APP_TOKEN_FILE", file("ctl", testToken+"\x7f")),
		all("FLAKESHIP_NIX_FLAGS", "--option access-tokens 'github.com="+testToken),
		all("FLAKESHIP_NIX_FLAGS", "--option access-tokens 'github.com="+testToken+"\n'"),
		all("FLAKESHIP_NIX_FLAGS", "--access-tokens github.com="+testToken+"#"),
		all("FLAKESHIP_NIX_ACCESS_TOKENS", "github.com="+testToken+"\x00"),
		all("FLAKESHIP_NIX_ACCESS_TOKENS", "github.com="+testToken, "FLAKESHIP_NIX_ACCESS_TOKENS_FILE", file("nix", "x")),
		all("FLAKESHIP_PUBLIC_URL", "https://"+testAdmin+"@example.org/"),
		all("FLAKESHIP_PUBLIC_URL", "http://x:"+testAdmin+"@[::1"),
		all("FLAKESHIP_TARGET_APP_FORGE_URL", "https://"+testToken+"@ghe.example.com/"),
		all("FLAKESHIP_TARGET_APP_CLONE_URL", "https://x-access-token:"+testToken+"@github.com/owner/app.git"),
		all("FLAKESHIP_TARGET_APP_CLONE_URL", "ssh://"+testToken+"@github.com/owner/app.git"),
		all("FLAKESHIP_TARGET_APP_CLONE_URL", testToken+"@github.com:owner/app.git"),
		all("FLAKESHIP_TARGET_APP_HEALTH_URL", "http://u:"+testToken+"@localhost/"),
		all("FLAKESHIP_TARGET_AP_TOKEN", testToken),
		all("FLAKESHIP_TARGET_APP_TOKN", testToken),
		all("FLAKESHIP_TOKEN", testToken),
	}
	for i, environ := range failing {
		_, err := testLoader().load(environ)
		if err == nil {
			t.Errorf("case %d: load succeeded", i)
			continue
		}
		check(t, fmt.Sprintf("case %d: error", i), err.Error())
		check(t, fmt.Sprintf("case %d: error %%+v", i), fmt.Sprintf("%+v %#v", err, err))
	}

	c, err := testLoader().load(all())
	if err != nil {
		t.Fatal(err)
	}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s"} {
		check(t, "config "+verb, fmt.Sprintf(verb, c))
		check(t, "config "+verb, fmt.Sprintf(verb, *c))
		check(t, "target "+verb, fmt.Sprintf(verb, c.Targets[0]))
	}
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	check(t, "config JSON", string(b))
	var logs bytes.Buffer
	for _, format := range []string{"text", "json"} {
		c.LogFormat = format
		c.Logger(&logs).Info("config loaded", "config", c, "target", c.Targets[0], "token", c.Targets[0].Token)
	}
	check(t, "log", logs.String())
	if !strings.Contains(logs.String(), redacted) {
		t.Errorf("log shows no %s: %s", redacted, logs.String())
	}
}

func TestLoggerFollowsLevelAndFormat(t *testing.T) {
	tests := []struct {
		name   string
		level  slog.Level
		format string
		want   string // the log of one debug and one warn record, times removed
	}{
		{name: "text at info", level: slog.LevelInfo, format: "text", want: "level=WARN msg=shown n=2\n"},
		{name: "text at debug", level: slog.LevelDebug, format: "text", want: "level=DEBUG msg=hidden n=1\nlevel=WARN msg=shown n=2\n"},
		{name: "json at info", level: slog.LevelInfo, format: "json", want: `{"level":"WARN","msg":"shown","n":2}` + "\n"},
		{name: "nothing below error", level: slog.LevelError, format: "json", want: ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			c := &Config{LogLevel: tc.level, LogFormat: tc.format}
			log := c.Logger(&b)
			log.Debug("hidden", "n", 1)
			log.Warn("shown", "n", 2)
			if got := stripTime(b.String()); got != tc.want {
				t.Errorf("log =\n%s\nwant\n%s", got, tc.want)
			}
		})
	}
}

// stripTime removes the time attribute slog puts first on every line.
func stripTime(s string) string {
	var out []string
	for _, line := range strings.SplitAfter(s, "\n") {
		if line == "" {
			continue
		}
		if rest, ok := strings.CutPrefix(line, "time="); ok {
			_, line, _ = strings.Cut(rest, " ")
		} else if strings.HasPrefix(line, `{"time":`) {
			_, rest, _ := strings.Cut(line, ",")
			line = "{" + rest
		}
		out = append(out, line)
	}
	return strings.Join(out, "")
}

func TestEnvironSplitsAtTheFirstEquals(t *testing.T) {
	got := Environ([]string{
		"FLAKESHIP_NIX_FLAGS=--option a=b",
		"EMPTY=",
		"NOEQUALS",
		"=hidden",
		"DUP=first",
		"DUP=second",
	})
	want := map[string]string{
		"FLAKESHIP_NIX_FLAGS": "--option a=b",
		"EMPTY":               "",
		"DUP":                 "first",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Environ = %#v, want %#v", got, want)
	}
	if got := Environ(nil); got == nil || len(got) != 0 {
		t.Errorf("Environ(nil) = %#v, want an empty map", got)
	}
}

func TestSplitWords(t *testing.T) {
	tests := []struct {
		in      string
		want    []string
		wantErr string
	}{
		{in: "", want: nil},
		{in: " \t\n ", want: nil},
		{in: "--quiet", want: []string{"--quiet"}},
		{in: "  --option   sandbox\tfalse\n", want: []string{"--option", "sandbox", "false"}},
		{in: `--option substituters ''`, want: []string{"--option", "substituters", ""}},
		{in: `""`, want: []string{""}},
		{in: `'a b'"c d"e\ f`, want: []string{"a bc de f"}},
		{in: `'it''s'`, want: []string{"its"}},
		{in: `'a\b "c"'`, want: []string{`a\b "c"`}},
		{in: `"a\"b\\c\$d\` + "`" + `e\f"`, want: []string{"a\"b\\c$d`e\\f"}},
		{in: `"a'b"`, want: []string{"a'b"}},
		{in: "a\\\nb", want: []string{"ab"}},
		{in: "\"a\\\nb\"", want: []string{"ab"}},
		{in: `\'\"\\`, want: []string{`'"\`}},
		{in: `$HOME ~ * #x`, want: []string{"$HOME", "~", "*", "#x"}},
		{in: `--extra-experimental-features "nix-command flakes"`, want: []string{"--extra-experimental-features", "nix-command flakes"}},
		{in: "'a", wantErr: "unterminated single quote"},
		{in: `"a`, wantErr: "unterminated double quote"},
		{in: `"a\"`, wantErr: "unterminated double quote"},
		{in: `"a\`, wantErr: "unterminated double quote"}, // the backslash is the last byte: nothing follows it to read
		{in: `a'b"c`, wantErr: "unterminated single quote"},
		{in: `a\`, wantErr: "ends with a lone backslash"},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := splitWords(tc.in)
			if tc.wantErr != "" {
				if err == nil || err.Error() != tc.wantErr {
					t.Errorf("splitWords(%q) = %q, %v; want error %q", tc.in, got, err, tc.wantErr)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tc.want) {
				t.Errorf("splitWords(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
			}
		})
	}
}

// FuzzSplitWords checks that words quoted back the way a shell would are
// split into the same words, and that errors never quote the input.
func FuzzSplitWords(f *testing.F) {
	for _, s := range []string{"", "a b", `'a b' "c\"d" e\ f`, "a\\\nb", `"'`, `--option access-tokens "github.com=x"`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		words, err := splitWords(s)
		if err != nil {
			if s != "" && strings.Contains(err.Error(), s) {
				t.Fatalf("error %q quotes the input", err)
			}
			return
		}
		quoted := make([]string, len(words))
		for i, w := range words {
			quoted[i] = "'" + strings.ReplaceAll(w, "'", `'\''`) + "'"
		}
		again, err := splitWords(strings.Join(quoted, " "))
		if err != nil || !slices.Equal(again, words) {
			t.Fatalf("splitWords(%q) = %q, but its quoted form splits into %q, %v", s, words, again, err)
		}
	})
}

func TestNixSystem(t *testing.T) {
	tests := []struct {
		goos, goarch string
		want         string // "" for an error
	}{
		{"linux", "amd64", "x86_64-linux"},
		{"linux", "arm64", "aarch64-linux"},
		{"linux", "386", "i686-linux"},
		{"linux", "riscv64", "riscv64-linux"},
		{"darwin", "amd64", "x86_64-darwin"},
		{"darwin", "arm64", "aarch64-darwin"},
		{"darwin", "386", ""},
		{"linux", "mips", ""},
		{"windows", "amd64", ""},
		{"freebsd", "amd64", ""},
	}
	for _, tc := range tests {
		t.Run(tc.goos+"/"+tc.goarch, func(t *testing.T) {
			got, err := nixSystem(tc.goos, tc.goarch)
			if tc.want == "" {
				want := "nix has no system for " + tc.goos + "/" + tc.goarch
				if err == nil || err.Error() != want {
					t.Errorf("nixSystem = %q, %v; want error %q", got, err, want)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("nixSystem = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func TestTargetSettingNamesAreUnambiguous(t *testing.T) {
	// FLAKESHIP_TARGET_A_<S1> must never also read as target "a_<x>" and
	// setting S2, which would need S1 to end in "_"+S2.
	suffixes, err := tagNames(&targetEnv{})
	if err != nil {
		t.Fatal(err)
	}
	for _, s1 := range suffixes {
		for _, s2 := range suffixes {
			if strings.HasSuffix(s1, "_"+s2) {
				t.Errorf("setting %s ends in _%s: target names would be ambiguous", s1, s2)
			}
		}
	}
}

func TestEveryVariableIsNamedOnce(t *testing.T) {
	for _, s := range []any{&globalEnv{}, &targetEnv{}} {
		names, err := tagNames(s)
		if err != nil {
			t.Fatal(err)
		}
		if len(names) != reflect.TypeOf(s).Elem().NumField() {
			t.Errorf("%T: %d names for %d fields", s, len(names), reflect.TypeOf(s).Elem().NumField())
		}
		sorted := slices.Clone(names)
		slices.Sort(sorted)
		if len(slices.Compact(sorted)) != len(names) {
			t.Errorf("%T names a variable twice: %v", s, names)
		}
	}
}

func TestNixConfHoldsTheSecretSettings(t *testing.T) {
	c := &Config{NixSecrets: []NixSetting{
		{Name: "access-tokens", Value: "github.com=ghp_a gitlab.com=PAT:b"},
		{Name: "extra-access-tokens", Value: " example.org=c  bare "},
	}}
	want := "access-tokens = github.com=ghp_a gitlab.com=PAT:b\nextra-access-tokens =  example.org=c  bare \n"
	if got := c.NixConf().Reveal(); got != want {
		t.Errorf("NixConf =\n%q\nwant\n%q", got, want)
	}
	if got := (&Config{}).NixConf(); got.IsSet() {
		t.Errorf("NixConf of no settings = %q, want nothing", got.Reveal())
	}
	var tokens []string
	for _, s := range c.NixSecrets {
		tokens = append(tokens, s.Tokens()...)
	}
	if want := []string{"ghp_a", "PAT:b", "c", "bare"}; !slices.Equal(tokens, want) {
		t.Errorf("Tokens = %q, want %q", tokens, want)
	}
}
