package builder

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flakeship/flakeship/config"
	"github.com/flakeship/flakeship/internal/testenv"
)

func TestProfileGenerations(t *testing.T) {
	testenv.Require(t, "nix")
	ctx := context.Background()
	one, two := addToStore(t, "one"), addToStore(t, "two")
	p := newTestProfile(t)
	var log bytes.Buffer

	if _, err := p.current(); !errors.Is(err, ErrNoGeneration) {
		t.Fatalf("current of a new profile: %v, want ErrNoGeneration", err)
	}
	if gens, err := p.generations(); err != nil || len(gens) != 0 {
		t.Fatalf("generations of a new profile = %v, %v; want none", gens, err)
	}

	// set one, then two: generations 1 and 2, 2 current.
	g1, err := p.set(ctx, one, &log)
	if err != nil {
		t.Fatalf("set: %v\n%s", err, log.String())
	}
	g2, err := p.set(ctx, two, &log)
	if err != nil {
		t.Fatalf("set: %v\n%s", err, log.String())
	}
	if want := (Generation{Number: 1, OutPath: one}); g1 != want {
		t.Errorf("first set = %+v, want %+v", g1, want)
	}
	if want := (Generation{Number: 2, OutPath: two}); g2 != want {
		t.Errorf("second set = %+v, want %+v", g2, want)
	}
	wantGenerations(t, p, g1, g2)
	wantCurrent(t, p, g2)

	// back to 1; 2 is kept.
	if err := p.switchTo(ctx, g1, &log); err != nil {
		t.Fatalf("switchTo: %v\n%s", err, log.String())
	}
	wantCurrent(t, p, g1)
	wantGenerations(t, p, g1, g2)

	// two again is generation 2 again (nix-env reuses the newest
	// generation when it points at the same path); one again is a new one.
	if g, err := p.set(ctx, two, &log); err != nil || g != g2 {
		t.Errorf("set of the newest generation's path = %+v, %v; want %+v", g, err, g2)
	}
	g3, err := p.set(ctx, one, &log)
	if err != nil {
		t.Fatalf("set: %v\n%s", err, log.String())
	}
	if want := (Generation{Number: 3, OutPath: one}); g3 != want {
		t.Errorf("third set = %+v, want %+v", g3, want)
	}
	wantCurrent(t, p, g3)
	wantGenerations(t, p, g1, g2, g3)
}

func TestProfileSwitchRefusesWhatIsNotThere(t *testing.T) {
	testenv.Require(t, "nix")
	ctx := context.Background()
	one := addToStore(t, "one")
	p := newTestProfile(t)
	var log bytes.Buffer
	g1, err := p.set(ctx, one, &log)
	if err != nil {
		t.Fatalf("set: %v\n%s", err, log.String())
	}
	tests := []struct {
		name string
		to   Generation
		want string
	}{
		{name: "the zero generation, from before the first switch", to: Generation{}, want: ErrNoGeneration.Error()},
		{name: "a generation that never was", to: Generation{Number: 7}, want: "generation 7 of " + p.path + " does not exist"},
		{name: "a generation that points elsewhere", to: Generation{Number: 1, OutPath: "/nix/store/elsewhere"}, want: "generation 1 points at " + one},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := p.switchTo(ctx, tc.to, &log)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("switchTo = %v, want an error containing %q", err, tc.want)
			}
			wantCurrent(t, p, g1)
		})
	}
	if _, err := p.set(ctx, "relative/path", &log); err == nil {
		t.Error("set of a relative path succeeded")
	}
}

func TestProfileGenerationsAreGCRoots(t *testing.T) {
	testenv.Require(t, "nix")
	ctx := context.Background()
	kept, replaced, loose := addToStore(t, "kept"), addToStore(t, "replaced"), addToStore(t, "loose")
	p := newTestProfile(t)
	var log bytes.Buffer
	for _, path := range []string{replaced, kept} {
		if _, err := p.set(ctx, path, &log); err != nil {
			t.Fatalf("set: %v\n%s", err, log.String())
		}
	}
	// --print-dead only lists what a collection would delete; it deletes
	// nothing.
	out, err := exec.Command("nix-store", "--gc", "--print-dead").Output()
	if err != nil {
		t.Fatalf("nix-store --gc --print-dead: %v", err)
	}
	dead := map[string]bool{}
	for _, line := range strings.Fields(string(out)) {
		dead[line] = true
	}
	if !dead[loose] {
		t.Fatalf("the path in no profile, %s, is not dead: the check proves nothing", loose)
	}
	for _, path := range []string{kept, replaced} {
		if dead[path] {
			t.Errorf("%s, a generation of the profile, would be garbage collected", path)
		}
	}
}

func TestProfileLinkNumber(t *testing.T) {
	p := profile{path: "/state/profiles/app"}
	tests := []struct {
		name string
		want int
		ok   bool
	}{
		{"app-1-link", 1, true},
		{"app-42-link", 42, true},
		{"app", 0, false},
		{"app-link", 0, false},
		{"app--link", 0, false},
		{"app-x-link", 0, false},
		{"app-+1-link", 0, false},
		{"app-0-link", 0, false},
		{"app-2-3-link", 0, false}, // generation 3 of the profile app-2
		{"other-1-link", 0, false},
		{"app-1-link.tmp", 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n, ok := p.linkNumber(tc.name)
			if n != tc.want || ok != tc.ok {
				t.Errorf("linkNumber(%q) = %d, %v; want %d, %v", tc.name, n, ok, tc.want, tc.ok)
			}
		})
	}
}

func TestNoneSwitcherOnlySetsTheProfile(t *testing.T) {
	testenv.Require(t, "nix")
	ctx := context.Background()
	one, two := addToStore(t, "one"), addToStore(t, "two")
	s := Spec{Name: "app", Activate: config.ActivateNone, Profile: filepath.Join(t.TempDir(), "profiles", "app")}
	sw, err := NewSwitcher(s, testNix(), nil)
	if err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	if _, err := sw.Current(ctx); !errors.Is(err, ErrNoGeneration) {
		t.Fatalf("Current = %v, want ErrNoGeneration", err)
	}
	g1, err := sw.Switch(ctx, one, &log)
	if err != nil {
		t.Fatalf("Switch: %v\n%s", err, log.String())
	}
	if err := sw.Verify(ctx, &log); err != nil {
		t.Errorf("Verify = %v", err)
	}
	if _, err := sw.Switch(ctx, two, &log); err != nil {
		t.Fatalf("Switch: %v\n%s", err, log.String())
	}
	if err := sw.Rollback(ctx, g1, &log); err != nil {
		t.Fatalf("Rollback: %v\n%s", err, log.String())
	}
	if g, err := sw.Current(ctx); err != nil || g != g1 {
		t.Errorf("Current after rollback = %+v, %v; want %+v", g, err, g1)
	}
}

// newTestProfile is a profile in a directory that does not exist yet.
func newTestProfile(t testing.TB) profile {
	t.Helper()
	p, err := newProfile(filepath.Join(t.TempDir(), "profiles", "app"), "nix-env")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// addToStore adds a file with name and content unique to this run to the
// nix store, and returns its store path: a path no profile points at yet.
func addToStore(t testing.TB, name string) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), name)
	content := fmt.Sprintf("%s %s %d\n", t.Name(), name, time.Now().UnixNano())
	if err := os.WriteFile(file, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("nix-store", "--add", file).Output()
	if err != nil {
		t.Fatalf("nix-store --add: %v", err)
	}
	return strings.TrimSpace(string(out))
}

func wantCurrent(t testing.TB, p profile, want Generation) {
	t.Helper()
	if got, err := p.current(); err != nil || got != want {
		t.Errorf("current = %+v, %v; want %+v", got, err, want)
	}
}

func wantGenerations(t testing.TB, p profile, want ...Generation) {
	t.Helper()
	got, err := p.generations()
	if err != nil || fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("generations = %+v, %v; want %+v", got, err, want)
	}
}
