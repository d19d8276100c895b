package testenv

import (
	"os/exec"
	"strings"
	"testing"
	"time"
)

func TestRequiredReadsWholeEntriesAndAll(t *testing.T) {
	tests := []struct {
		env  string
		want bool
	}{
		{"systemd", true},
		{"all", true},
		{"git,systemd", true},
		{"git, systemd ,nix", true},
		{"systemd-x", false},
		{"x-systemd,git", false},
		{"git,nix", false},
		{"", false},
	}
	for _, tc := range tests {
		t.Setenv("FLAKESHIP_TEST_REQUIRE", tc.env)
		if got := Required("systemd"); got != tc.want {
			t.Errorf("FLAKESHIP_TEST_REQUIRE=%q: Required(systemd) = %v, want %v", tc.env, got, tc.want)
		}
	}
}

func TestBufferWaitWakesOnWrites(t *testing.T) {
	var b Buffer
	done := make(chan bool, 1)
	go func() {
		done <- b.Wait(time.Minute, func(s string) bool { return strings.Contains(s, "ready") })
	}()
	b.Write([]byte("starting\n"))
	b.Write([]byte("ready\n"))
	if !<-done {
		t.Fatal("Wait did not see what was written")
	}
	if b.Wait(10*time.Millisecond, func(s string) bool { return strings.Contains(s, "never") }) {
		t.Fatal("Wait held for something never written")
	}
}

func TestGateProgramWaitsUntilTheGateOpens(t *testing.T) {
	g := NewGate(t)
	out := &Buffer{}
	cmd := exec.Command(g.Program(t))
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ended := make(chan error, 1)
	go func() { ended <- cmd.Wait() }()
	if !out.Wait(time.Minute, func(s string) bool { return strings.Contains(s, "waiting at the gate") }) {
		t.Fatalf("the program never reached the gate: %q", out.String())
	}
	select {
	case err := <-ended:
		t.Fatalf("the program went through a closed gate: %v, %q", err, out.String())
	default:
	}
	if err := g.Open(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-ended:
		if err != nil || !strings.Contains(out.String(), "through the gate") {
			t.Fatalf("program through the gate: %v, %q; want exit 0 and through the gate", err, out.String())
		}
	case <-time.After(time.Minute):
		cmd.Process.Kill()
		t.Fatal("the program did not go through the open gate")
	}
	// Once open, the gate lets later ones through at once.
	if out, err := exec.Command(g.Program(t)).CombinedOutput(); err != nil || !strings.Contains(string(out), "through the gate") {
		t.Fatalf("program at an open gate: %v, %q", err, out)
	}
}
