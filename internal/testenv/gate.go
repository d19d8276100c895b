package testenv

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
)

// Gate holds a test build until the test lets it through: the build waits
// reading a named pipe, so a deploy stays in its build for as long as the
// test needs, with no timer. Nix's sandbox would hide the pipe from the
// builder: a build that waits at a gate runs with NoSandbox among its nix
// flags (and fails at once, saying so, if it cannot see the pipe).
type Gate struct {
	dir, path string
	mu        sync.Mutex
	opened    bool
}

// NoSandbox are the nix flags that let a build see a Gate.
var NoSandbox = []string{"--option", "sandbox", "false"}

// NewGate makes a closed gate; it is opened when t ends, so that no build
// waits at it for good.
func NewGate(t testing.TB) *Gate {
	t.Helper()
	// Not t.TempDir: nix runs the builder as a build user, who must reach
	// the pipe.
	dir, err := os.MkdirTemp("", "flakeship-gate-")
	if err != nil {
		t.Fatal(err)
	}
	g := &Gate{dir: dir, path: filepath.Join(dir, "gate")}
	t.Cleanup(func() {
		if err := g.Open(); err != nil {
			t.Errorf("open the gate: %v", err)
		}
		os.RemoveAll(dir)
	})
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(g.path, 0o666); err != nil {
		t.Fatalf("make the gate's pipe: %v", err)
	}
	if err := os.Chmod(g.path, 0o666); err != nil {
		t.Fatal(err)
	}
	return g
}

// Script is shell for a build that prints "waiting at the gate" and then
// waits until the gate opens.
func (g *Gate) Script() string {
	return fmt.Sprintf(`[ -p %[1]s ] || [ -f %[1]s ] || { echo "the gate %[1]s is out of sight: build without the sandbox" >&2; exit 1; }; `+
		`echo "waiting at the gate"; read _ < %[1]s; echo "through the gate"`, g.path)
}

// Path is the gate's named pipe, for a test program that waits at the
// gate itself: it reads the pipe to its end, which comes when the gate
// opens (and at once once it is open).
func (g *Gate) Path() string { return g.path }

// Program writes Script to an executable file beside the pipe and returns
// its path: a command that waits at the gate, for a place that takes a
// program rather than shell, such as a systemd unit's ExecStartPre (no
// quoting, and it exits 0 once through).
func (g *Gate) Program(t testing.TB) string {
	t.Helper()
	path := filepath.Join(g.dir, "wait-at-the-gate")
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"+g.Script()+"\n"), 0o755); err != nil {
		t.Fatalf("write the gate's program: %v", err)
	}
	return path
}

// Open lets every build waiting at the gate through, and those that come to
// it later. It may be called more than once.
func (g *Gate) Open() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.opened {
		return nil
	}
	// A writer on the pipe lets the readers waiting to open it go on to
	// read; a regular file put in its place lets later ones through at
	// once; closing the last writer ends every read.
	w, err := os.OpenFile(g.path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("open gate: %w", err)
	}
	defer w.Close()
	open := g.path + ".open"
	if err := os.WriteFile(open, nil, 0o644); err != nil {
		return fmt.Errorf("open gate: %w", err)
	}
	if err := os.Rename(open, g.path); err != nil {
		return fmt.Errorf("open gate: %w", err)
	}
	g.opened = true
	return nil
}
