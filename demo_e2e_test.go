package main

import (
	"bytes"
	"errors"
	"os"
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
	stdout, stderr, code := runDemo(t, buildDemo(t), flakeship, service, "")
	if code != 0 {
		t.Fatalf("the demo exited %d, want 0:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	for _, want := range []string{
		"deploy 1: succeeded", "the service now answers: 200 version=1",
		"deploy 2: rolled_back",
		"deploy 3: succeeded", "the service now answers: 200 version=3",
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("the demo did not say %q:\n%s", want, stdout)
		}
	}
}

// TestDemoFailsWhenItsStoryDoesNot: when a deploy does not end as the demo
// says it will, or a step before the deploys fails, the demo exits non-zero
// and says why on stderr, while still printing what it did on stdout.
func TestDemoFailsWhenItsStoryDoesNot(t *testing.T) {
	testenv.Require(t, "git", "nix", "systemd")
	flakeship, healthsrv := binaries(t)
	demo := buildDemo(t)
	realNix, err := exec.LookPath("nix")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name       string
		nix        string // a stand-in for nix, first on PATH for the demo and flakeship; "" for the real one
		service    string // a stand-in for the demo's service; "" for the real one
		wantStdout []string
		wantStderr []string
	}{
		{
			name: "a nix that cannot even evaluate stops the demo before its deploys",
			nix:  "#!/bin/sh\necho \"error: this nix is broken (the test's stand-in)\" >&2\nexit 1\n",
			wantStderr: []string{
				"flakeship demo: ask nix for the current system: nix ",
				"error: this nix is broken (the test's stand-in)",
			},
		},
		{
			name: "a nix that cannot build fails every deploy, and the demo says so with nix's own words",
			nix: "#!/bin/sh\n" +
				"for a in \"$@\"; do\n" +
				"\tif [ \"$a\" = build ]; then echo \"error: group 'nixbld' does not exist (the test's stand-in)\" >&2; exit 1; fi\n" +
				"done\n" +
				"exec '" + realNix + "' \"$@\"\n",
			wantStdout: []string{
				"deploy 1: failed", "deploy 2: failed", "deploy 3: failed",
				"error: build: nix build: exit status 1",
			},
			wantStderr: []string{
				"flakeship demo: deploy 1 ended failed, expected succeeded: build: nix build: exit status 1\n" +
					"flakeship demo:   the last lines of its log:\n",
				"flakeship demo:   | error: group 'nixbld' does not exist (the test's stand-in)\n",
				"flakeship demo: after deploy 1 the service answers nothing (",
				"flakeship demo: deploy 2 ended failed, expected rolled_back: build: nix build: exit status 1\n",
				"flakeship demo: deploy 3 ended failed, expected succeeded: build: nix build: exit status 1\n",
				"), expected 200 version=3\n",
			},
		},
		{
			name:    "a service that always answers version 7 makes every deploy succeed, which the demo does not expect",
			service: "#!/bin/sh\nexec '" + healthsrv + "' \"$@\" -profile \"$(dirname \"$0\")/version7\"\n",
			wantStdout: []string{
				"deploy 1: succeeded", "deploy 2: succeeded", "deploy 3: succeeded",
			},
			wantStderr: []string{
				"flakeship demo: after deploy 1 the service answers 200 version=7, expected 200 version=1\n" +
					"flakeship demo: deploy 2 ended succeeded, expected rolled_back\n" +
					"flakeship demo:   the last lines of its log:\n",
				"flakeship demo: after deploy 2 the service answers 200 version=7, expected 200 version=1\n" +
					"flakeship demo: after deploy 3 the service answers 200 version=7, expected 200 version=3\n",
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := ""
			if tc.nix != "" {
				writeExecutable(t, filepath.Join(dir, "nix"), tc.nix)
				path = dir
			}
			service := healthsrv
			if tc.service != "" {
				service = filepath.Join(dir, "service")
				writeExecutable(t, service, tc.service)
				if err := os.WriteFile(filepath.Join(dir, "version7"), []byte("version=7\nhealthy=yes\n"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			stdout, stderr, code := runDemo(t, demo, flakeship, service, path)
			if code == 0 {
				t.Fatalf("the demo exited 0, want non-zero:\n%s\nstderr:\n%s", stdout, stderr)
			}
			for _, want := range tc.wantStdout {
				if !strings.Contains(stdout, want) {
					t.Errorf("the demo's stdout does not say %q:\n%s", want, stdout)
				}
			}
			for _, want := range tc.wantStderr {
				if !strings.Contains(stderr, want) {
					t.Errorf("the demo's stderr does not say %q:\n%s", want, stderr)
				}
			}
			t.Logf("stderr:\n%s", stderr)
		})
	}
}

// buildDemo builds internal/demo, which scripts/demo runs.
func buildDemo(t *testing.T) string {
	t.Helper()
	demo := filepath.Join(t.TempDir(), "demo")
	if out, err := exec.Command("go", "build", "-o", demo, "./internal/demo").CombinedOutput(); err != nil {
		t.Fatalf("go build ./internal/demo: %v\n%s", err, out)
	}
	return demo
}

// runDemo runs the demo with dir, if not "", first on its PATH (and so on
// flakeship's), and returns what it printed and its exit code.
func runDemo(t *testing.T, demo, flakeship, service, dir string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), demo, "-flakeship", flakeship, "-service", service)
	if dir != "" {
		cmd.Env = append(os.Environ(), "PATH="+dir+string(filepath.ListSeparator)+os.Getenv("PATH"))
	}
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		code = exit.ExitCode()
	case err != nil:
		t.Fatalf("run the demo: %v", err)
	}
	return out.String(), errOut.String(), code
}

func writeExecutable(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o755); err != nil {
		t.Fatal(err)
	}
}
