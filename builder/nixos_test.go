package builder

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flakeship/flakeship/config"
	"github.com/flakeship/flakeship/internal/testenv"
)

func TestNewSwitcherForNixOS(t *testing.T) {
	good := Spec{
		Name:         "host",
		Activate:     config.ActivateNixOS,
		SystemdScope: config.ScopeSystem,
		Profile:      "/nix/var/nix/profiles/system",
	}
	tests := []struct {
		name       string
		change     func(*Spec)
		wantAction config.NixOSAction
		wantProf   string // the profile's path; good's when ""
		wantErr    string
	}{
		{name: "switch by default", change: func(s *Spec) {}, wantAction: "switch"},
		{name: "switch", change: func(s *Spec) { s.NixOSAction = config.NixOSSwitch }, wantAction: "switch"},
		{name: "test", change: func(s *Spec) { s.NixOSAction = config.NixOSTest }, wantAction: "test"},
		{name: "boot", change: func(s *Spec) { s.NixOSAction = config.NixOSBoot }, wantAction: "boot"},
		{name: "with a unit and a health url", change: func(s *Spec) {
			s.Unit = "app.service"
			s.HealthURL = "http://127.0.0.1:8081/health"
		}, wantAction: "switch"},
		{name: "another profile", change: func(s *Spec) { s.Profile = "/srv/profiles/test-system/" }, wantAction: "switch", wantProf: "/srv/profiles/test-system"},
		{name: "the system profile by default", change: func(s *Spec) { s.Profile = "" }, wantAction: "switch", wantProf: "/nix/var/nix/profiles/system"},
		{name: "an unknown action", change: func(s *Spec) { s.NixOSAction = "dry-activate" }, wantErr: `target host: unknown nixos action "dry-activate"`},
		{name: "an action in capitals", change: func(s *Spec) { s.NixOSAction = "Switch" }, wantErr: `target host: unknown nixos action "Switch"`},
		{name: "a unit like an option", change: func(s *Spec) { s.Unit = "--now" }, wantErr: "target host: unit: want a systemd unit name"},
		{name: "an unknown scope", change: func(s *Spec) { s.SystemdScope = "global" }, wantErr: `target host: unknown systemd scope "global"`},
		{name: "a relative profile", change: func(s *Spec) { s.Profile = "profiles/system" }, wantErr: `target host: profile "profiles/system" is not an absolute path`},
		{name: "a health url without http", change: func(s *Spec) { s.HealthURL = "127.0.0.1:8081/health" }, wantErr: "target host: health url"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := good
			tc.change(&s)
			sw, err := NewSwitcher(s, &Nix{}, nil)
			if tc.wantErr != "" {
				if err == nil || !strings.HasPrefix(err.Error(), tc.wantErr) {
					t.Fatalf("NewSwitcher = %T, %v; want error %q", sw, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			n, ok := sw.(*nixosSwitcher)
			if !ok {
				t.Fatalf("NewSwitcher = %T, want *builder.nixosSwitcher", sw)
			}
			if n.action != tc.wantAction {
				t.Errorf("action = %q, want %q", n.action, tc.wantAction)
			}
			wantProf := tc.wantProf
			if wantProf == "" {
				wantProf = good.Profile
			}
			if n.profile.path != wantProf {
				t.Errorf("profile = %q, want %q", n.profile.path, wantProf)
			}
		})
	}
}

// TestNixOSSwitcher deploys test systems whose switch-to-configuration
// records each call as "v<version> <action>" (see testdata/flakes/nixos).
func TestNixOSSwitcher(t *testing.T) {
	testenv.Require(t, "git", "nix")
	// A boot loader is never installed, whatever flakeship's environment says.
	t.Setenv("NIXOS_INSTALL_BOOTLOADER", "1")
	ctx := context.Background()
	sys := newTestSystems(t)
	v1, v2, v3 := sys.build("1", 0), sys.build("2", 0), sys.build("3", 1)
	gen := func(n int, outPath string) Generation { return Generation{Number: n, OutPath: outPath} }

	t.Run("switch", func(t *testing.T) {
		sw, p := sys.switcher(t, config.NixOSSwitch)
		var log bytes.Buffer
		if _, err := sw.Current(ctx); !errors.Is(err, ErrNoGeneration) {
			t.Errorf("Current before the first switch = %v, want ErrNoGeneration", err)
		}

		sys.wantSwitch(t, sw, v1, gen(1, v1), "")
		sys.wantCalls(t, "v1 switch")
		sys.wantSwitch(t, sw, v2, gen(2, v2), "")
		sys.wantCalls(t, "v2 switch")
		wantGenerations(t, p, gen(1, v1), gen(2, v2))

		// The profile moved before the activation failed: the generation
		// comes back with the error, and a rollback restores version 2.
		sys.wantSwitch(t, sw, v3, gen(3, v3), "switch-to-configuration switch: exit status 1")
		sys.wantCalls(t, "v3 switch")
		wantCurrent(t, p, gen(3, v3))
		if err := sw.Rollback(ctx, gen(2, v2), &log); err != nil {
			t.Fatalf("Rollback: %v\n%s", err, log.String())
		}
		sys.wantCalls(t, "v2 switch")
		wantCurrent(t, p, gen(2, v2))
		wantGenerations(t, p, gen(1, v1), gen(2, v2), gen(3, v3))
		if cur, err := sw.Current(ctx); err != nil || cur != gen(2, v2) {
			t.Errorf("Current = %+v, %v; want %+v", cur, err, gen(2, v2))
		}

		// SwitchTo is the rollback without Verify; it refuses a generation
		// that points elsewhere before running anything.
		log.Reset()
		if err := sw.SwitchTo(ctx, gen(1, v1), &log); err != nil {
			t.Fatalf("SwitchTo: %v\n%s", err, log.String())
		}
		sys.wantCalls(t, "v1 switch")
		wantCurrent(t, p, gen(1, v1))
		err := sw.SwitchTo(ctx, gen(2, v1), &log)
		if want := fmt.Sprintf("generation 2 points at %s, not %s", v2, v1); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("SwitchTo a generation by the wrong path = %v, want an error with %q", err, want)
		}
		sys.wantCalls(t)
		wantCurrent(t, p, gen(1, v1))
		for _, want := range []string{
			"activating " + v1 + ": switch-to-configuration switch",
			"switch-to-configuration of version 1: switch",
			"switch-to-configuration switch done after ",
		} {
			if !strings.Contains(log.String(), want) {
				t.Errorf("log lacks %q:\n%s", want, log.String())
			}
		}
	})

	t.Run("a build that is not a NixOS system changes nothing", func(t *testing.T) {
		sw, p := sys.switcher(t, config.NixOSSwitch)
		sys.wantSwitch(t, sw, v1, gen(1, v1), "")
		sys.wantCalls(t, "v1 switch")
		file := addToStore(t, "not-a-system")
		sys.wantSwitch(t, sw, file, Generation{}, file+" is not a NixOS system: stat "+file+"/bin/switch-to-configuration: not a directory")
		sys.wantCalls(t)
		wantGenerations(t, p, gen(1, v1))
	})

	t.Run("boot", func(t *testing.T) {
		sw, p := sys.switcher(t, config.NixOSBoot)
		sys.wantSwitch(t, sw, v1, gen(1, v1), "")
		sys.wantCalls(t, "v1 boot")
		sys.wantSwitch(t, sw, v3, gen(2, v3), "switch-to-configuration boot: exit status 1")
		sys.wantCalls(t, "v3 boot")
		var log bytes.Buffer
		if err := sw.Rollback(ctx, gen(1, v1), &log); err != nil {
			t.Fatalf("Rollback: %v\n%s", err, log.String())
		}
		sys.wantCalls(t, "v1 boot")
		wantCurrent(t, p, gen(1, v1))
		wantGenerations(t, p, gen(1, v1), gen(2, v3))
	})

	t.Run("test leaves the profile alone", func(t *testing.T) {
		sw, p := sys.switcher(t, config.NixOSTest)
		// No generation yet: nothing to report and nothing to return to.
		sys.wantSwitch(t, sw, v1, gen(0, v1), "")
		sys.wantCalls(t, "v1 test")
		if _, err := p.current(); !errors.Is(err, ErrNoGeneration) {
			t.Errorf("profile after a test activation: %v, want ErrNoGeneration", err)
		}

		// With a generation (set by a switch), a test activation reports
		// that generation's number with its own build.
		booted, _ := sys.switcherOf(t, config.NixOSSwitch, p.path)
		sys.wantSwitch(t, booted, v1, gen(1, v1), "")
		sys.wantCalls(t, "v1 switch")
		log := sys.wantSwitch(t, sw, v2, gen(1, v2), "")
		sys.wantCalls(t, "v2 test")
		if want := "profile " + p.path + " stays at generation 1 (" + v1 + "): a test activation adds none"; !strings.Contains(log, want) {
			t.Errorf("log lacks %q:\n%s", want, log)
		}
		sys.wantSwitch(t, sw, v3, gen(1, v3), "switch-to-configuration test: exit status 1")
		sys.wantCalls(t, "v3 test")

		// What the deploy runner rolls back to is Current: the profile's
		// generation, activated with test again.
		prev, err := sw.Current(ctx)
		if err != nil || prev != gen(1, v1) {
			t.Fatalf("Current = %+v, %v; want %+v", prev, err, gen(1, v1))
		}
		var rlog bytes.Buffer
		if err := sw.Rollback(ctx, prev, &rlog); err != nil {
			t.Fatalf("Rollback: %v\n%s", err, rlog.String())
		}
		sys.wantCalls(t, "v1 test")
		// A generation given by number alone is activated with its build.
		if err := sw.SwitchTo(ctx, Generation{Number: 1}, &rlog); err != nil {
			t.Fatalf("SwitchTo: %v\n%s", err, rlog.String())
		}
		sys.wantCalls(t, "v1 test")
		wantGenerations(t, p, gen(1, v1))
	})
}

func TestNixOSSwitcherRefusesWhatIsNotASystem(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "profiles", "system")
	sw, err := NewSwitcher(Spec{Name: "host", Activate: config.ActivateNixOS, Profile: p},
		&Nix{Binary: filepath.Join(dir, "no-nix")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	missing := "/nix/store/00000000000000000000000000000000-nixos-system-none"
	tests := []struct {
		name    string
		outPath string
		wantErr string
	}{
		{name: "a relative path", outPath: "result", wantErr: `"result" is not a path in /nix/store`},
		{name: "a path outside the store", outPath: dir, wantErr: fmt.Sprintf("%q is not a path in /nix/store", dir)},
		{name: "the store itself", outPath: "/nix/store", wantErr: `"/nix/store" is not a path in /nix/store`},
		{name: "a path inside a store path", outPath: missing + "/sw", wantErr: fmt.Sprintf("%q is not a path in /nix/store", missing+"/sw")},
		{name: "a path that leaves the store", outPath: "/nix/store/../var/nix/profiles/system", wantErr: `"/nix/store/../var/nix/profiles/system" is not a path in /nix/store`},
		{name: "a path with a newline", outPath: "/nix/store/abc\n-x", wantErr: `"/nix/store/abc\n-x" is not a path in /nix/store`},
		{name: "a store path that is not there", outPath: missing,
			wantErr: missing + " is not a NixOS system: stat " + missing + "/bin/switch-to-configuration: no such file or directory"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var log bytes.Buffer
			g, err := sw.Switch(context.Background(), tc.outPath, &log)
			if err == nil || err.Error() != tc.wantErr {
				t.Errorf("Switch error = %v\nwant %s", err, tc.wantErr)
			}
			if g != (Generation{}) {
				t.Errorf("Switch = %+v, want no generation: nothing was switched", g)
			}
			if log.Len() != 0 {
				t.Errorf("log = %q, want nothing run", log.String())
			}
			if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("the profile exists (%v): it must not be touched", err)
			}
		})
	}
}

func TestNixOSSwitcherVerify(t *testing.T) {
	tests := []struct {
		name    string
		answers []int // the health server's answers in order, the last repeated; none for no health url
		timeout time.Duration
		wantErr string // with URL for the health url
		wantLog []string
	}{
		{
			name:    "a system that becomes healthy",
			answers: []int{500, 200},
			timeout: 5 * time.Second,
			wantLog: []string{"waiting for health URL to answer 2xx", "health URL answered 500 Internal Server Error", "health URL answered 200 after "},
		},
		{
			name:    "a system that stays unhealthy",
			answers: []int{500},
			timeout: 300 * time.Millisecond,
			wantErr: "the system not healthy after 300ms: health URL answered 500 Internal Server Error",
			wantLog: []string{"the system not healthy after 300ms"},
		},
		{
			name:    "a system without health url or unit",
			timeout: 5 * time.Second,
			wantLog: []string{"no unit and no health url to check the system with"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var healthURL string
			var asked atomic.Int32
			if tc.answers != nil {
				srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					n := int(asked.Add(1))
					w.WriteHeader(tc.answers[min(n, len(tc.answers))-1])
				}))
				t.Cleanup(srv.Close)
				healthURL = srv.URL + "/health"
			}
			sw, err := NewSwitcher(Spec{
				Name:          "host",
				Activate:      config.ActivateNixOS,
				Profile:       filepath.Join(t.TempDir(), "system"),
				HealthURL:     healthURL,
				HealthTimeout: tc.timeout,
			}, &Nix{}, nil)
			if err != nil {
				t.Fatal(err)
			}
			var log bytes.Buffer
			err = sw.Verify(context.Background(), &log)
			wantErr := strings.ReplaceAll(tc.wantErr, "URL", healthURL)
			if wantErr == "" && err != nil || wantErr != "" && (err == nil || err.Error() != wantErr) {
				t.Fatalf("Verify = %v, want error %q\n%s", err, wantErr, log.String())
			}
			for _, want := range tc.wantLog {
				if want = strings.ReplaceAll(want, "URL", healthURL); !strings.Contains(log.String(), want) {
					t.Errorf("log lacks %q:\n%s", want, log.String())
				}
			}
			if len(tc.answers) > 1 && int(asked.Load()) < len(tc.answers) {
				t.Errorf("the health url was asked %d times, want at least %d", asked.Load(), len(tc.answers))
			}
		})
	}
}

// testSystems builds NixOS-like systems from testdata/flakes/nixos. Their
// switch-to-configuration appends "v<version> <args>" to one record file.
type testSystems struct {
	t      testing.TB
	repo   *flakeRepo
	record string
	dir    string // for the profiles of the switchers
}

func newTestSystems(t testing.TB) *testSystems {
	t.Helper()
	dir := t.TempDir()
	return &testSystems{t: t, repo: newFlakeRepo(t), record: filepath.Join(dir, "calls"), dir: dir}
}

// nixosTestNix is testNix with the sandbox off, whatever nix.conf says: the
// test system's builder uses the host's mkdir, cp and chmod.
func nixosTestNix() *Nix {
	return &Nix{Binary: "nix", Flags: append(testenv.NixFlags(), "--option", "sandbox", "false")}
}

// build commits a system of version whose switch-to-configuration exits
// with exit, builds it and returns its out path.
func (s *testSystems) build(version string, exit int) string {
	s.t.Helper()
	c := s.repo.commit("nixos", map[string]string{"version": version, "exit": fmt.Sprint(exit), "record": s.record})
	spec := s.repo.spec()
	spec.Attr = "nixosConfigurations.test.config.system.build.toplevel"
	var log bytes.Buffer
	outPath, err := nixosTestNix().Build(context.Background(), spec, c, &log)
	if err != nil {
		s.t.Fatalf("build system %s: %v\n%s", version, err, log.String())
	}
	return outPath
}

// switcher is a nixos switcher with action on a new profile of its own.
func (s *testSystems) switcher(t testing.TB, action config.NixOSAction) (Switcher, profile) {
	t.Helper()
	dir, err := os.MkdirTemp(s.dir, "profiles")
	if err != nil {
		t.Fatal(err)
	}
	return s.switcherOf(t, action, filepath.Join(dir, "system"))
}

// switcherOf is a nixos switcher with action on the profile at path.
func (s *testSystems) switcherOf(t testing.TB, action config.NixOSAction, path string) (Switcher, profile) {
	t.Helper()
	spec := Spec{Name: "host", Activate: config.ActivateNixOS, NixOSAction: action, Profile: path}
	sw, err := NewSwitcher(spec, nixosTestNix(), nil)
	if err != nil {
		t.Fatal(err)
	}
	p, err := newProfile(path, "nix-env")
	if err != nil {
		t.Fatal(err)
	}
	return sw, p
}

// wantSwitch switches sw to outPath, checks the generation and error, and
// returns the log.
func (s *testSystems) wantSwitch(t testing.TB, sw Switcher, outPath string, want Generation, wantErr string) string {
	t.Helper()
	var log bytes.Buffer
	g, err := sw.Switch(context.Background(), outPath, &log)
	if wantErr == "" && err != nil || wantErr != "" && (err == nil || err.Error() != wantErr) {
		t.Fatalf("Switch = %v, want error %q\n%s", err, wantErr, log.String())
	}
	if g != want {
		t.Errorf("Switch = %+v, want %+v", g, want)
	}
	return log.String()
}

// wantCalls checks the switch-to-configuration calls since the last check.
func (s *testSystems) wantCalls(t testing.TB, want ...string) {
	t.Helper()
	b, err := os.ReadFile(s.record)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	if err := os.Remove(s.record); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var got []string
	if len(b) > 0 {
		got = strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	}
	if fmt.Sprintf("%q", got) != fmt.Sprintf("%q", want) {
		t.Errorf("switch-to-configuration calls = %q, want %q", got, want)
	}
}
