package main

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flakeship/flakeship/internal/testenv"
)

// TestDemoDeploysThreePushes runs the README's first command's program:
// the demo must show a deploy, a rollback and another deploy, so the
// quick start never rots.
func TestDemoDeploysThreePushes(t *testing.T) {
	testenv.Require(t, "git", "nix", "systemd")
	flakeship, service := binaries(t)
	demo := filepath.Join(t.TempDir(), "demo")
	if out, err := exec.Command("go", "build", "-o", demo, "./internal/demo").CombinedOutput(); err != nil {
		t.Fatalf("go build ./internal/demo: %v\n%s", err, out)
	}
	out, err := exec.Command(demo, "-flakeship", flakeship, "-service", service).CombinedOutput()
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, out)
	}
	for _, want := range []string{
		"deploy 1: succeeded", "the service now answers: 200 version=1",
		"deploy 2: rolled_back",
		"deploy 3: succeeded", "the service now answers: 200 version=3",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the demo did not say %q:\n%s", want, out)
		}
	}
}
