// Package testenv lets tests that need real programs (git, nix, a systemd
// user manager) say so: they skip with the reason on a machine without them,
// unless FLAKESHIP_TEST_REQUIRE lists them (as scripts/test does), and then a
// missing program fails the test with a hint instead of hiding behind a skip.
package testenv

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Require skips t unless every named part is available: "git", "nix",
// "systemd" (a user manager reachable through XDG_RUNTIME_DIR) or
// "chromium" (a headless browser for the page tests). If
// FLAKESHIP_TEST_REQUIRE lists a part (comma-separated, or "all"), its
// absence fails t instead.
func Require(t testing.TB, parts ...string) {
	t.Helper()
	for _, p := range parts {
		why := missing(p)
		if why == "" {
			continue
		}
		if Required(p) {
			t.Fatalf("%s is required (FLAKESHIP_TEST_REQUIRE) but %s; run the tests with scripts/test, which installs and starts it", p, why)
		}
		t.Skipf("skipping: %s (run scripts/test to run this test)", why)
	}
}

// Required says whether FLAKESHIP_TEST_REQUIRE lists part: one of its
// comma-separated entries is part exactly, or "all". A test that sets up
// what a part stands for itself (a mount under scripts/with-systemd, say)
// uses it to fail rather than skip when the part is required.
func Required(part string) bool {
	for _, r := range strings.Split(os.Getenv("FLAKESHIP_TEST_REQUIRE"), ",") {
		if r = strings.TrimSpace(r); r == part || r == "all" {
			return true
		}
	}
	return false
}

func missing(part string) string {
	switch part {
	case "git", "nix":
		if _, err := exec.LookPath(part); err != nil {
			return part + " is not on PATH"
		}
	case "chromium":
		if _, err := exec.LookPath("chromium"); err != nil {
			return "chromium is not on PATH (Debian's chromium package)"
		}
	case "systemd":
		dir := os.Getenv("XDG_RUNTIME_DIR")
		if dir == "" {
			return "no systemd user manager (XDG_RUNTIME_DIR is not set; see scripts/with-systemd)"
		}
		if _, err := os.Stat(filepath.Join(dir, "systemd", "private")); err != nil {
			return "no systemd user manager at " + dir + " (see scripts/with-systemd)"
		}
	default:
		return "unknown test requirement " + part
	}
	return ""
}

// NixFlags are the flags every test passes to nix: flakes on, no network
// substituters, so a test flake builds offline in a second.
func NixFlags() []string {
	return []string{
		"--extra-experimental-features", "nix-command flakes",
		"--option", "substituters", "",
	}
}

// System is the nix system string of this machine, e.g. "x86_64-linux".
func System(t testing.TB) string {
	t.Helper()
	args := append(NixFlags(), "eval", "--impure", "--raw", "--expr", "builtins.currentSystem")
	out, err := exec.Command("nix", args...).Output()
	if err != nil {
		t.Fatalf("nix eval builtins.currentSystem: %v", err)
	}
	return strings.TrimSpace(string(out))
}

// Buffer is a bytes.Buffer that goroutines may write while a test reads it:
// a log sink for code under test. A test can wait on what is written with
// Wait, woken by each write rather than by a timer. The zero Buffer is
// ready to use.
type Buffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	written chan struct{} // closed and replaced at each write; nil until a Wait
}

// Write implements io.Writer.
func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	n, err := b.buf.Write(p)
	if b.written != nil {
		close(b.written)
		b.written = nil
	}
	return n, err
}

// String returns everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Wait waits until cond holds for everything written so far, checking it
// once now and again after each write, and says whether it held before
// timeout passed. The timeout is a safety net for a test that would
// otherwise hang: give it generously.
func (b *Buffer) Wait(timeout time.Duration, cond func(written string) bool) bool {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		b.mu.Lock()
		text := b.buf.String()
		if b.written == nil {
			b.written = make(chan struct{})
		}
		written := b.written
		b.mu.Unlock()
		if cond(text) {
			return true
		}
		select {
		case <-written:
		case <-deadline.C:
			return cond(b.String())
		}
	}
}
