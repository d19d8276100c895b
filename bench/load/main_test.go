package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"
	"time"

	"github.com/flakeship/flakeship/metrics"
)

// TestReadIntakeFromFlakeshipsMetrics serves flakeship's real metrics over
// HTTP on 127.0.0.1 after two group commits, and reads them back as load
// does: two commits of four submissions that held the queue 3 ms.
func TestReadIntakeFromFlakeshipsMetrics(t *testing.T) {
	m := metrics.New([]string{"app"}, metrics.Options{})
	srv := httptest.NewServer(m.Handler())
	t.Cleanup(srv.Close)
	client := srv.Client()

	before, err := readIntake(context.Background(), client, srv.URL)
	if err != nil {
		t.Fatalf("read before any commit: %v", err)
	}
	if before != (intake{}) {
		t.Errorf("before any commit: %+v, want zeros", before)
	}
	m.IntakeCommit(3, 2*time.Millisecond)
	m.IntakeCommit(1, time.Millisecond)
	got, err := readIntake(context.Background(), client, srv.URL)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	t.Logf("read %+v", got)
	if got.commits != 2 || got.submissions != 4 || got.seconds < 0.0029 || got.seconds > 0.0031 {
		t.Errorf("read %+v, want 2 commits, 4 submissions, 0.003 s", got)
	}

	empty := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("# no metrics\n"))
	}))
	t.Cleanup(empty.Close)
	if _, err := readIntake(context.Background(), empty.Client(), empty.URL); err == nil {
		t.Error("read a page without the intake histograms without an error")
	}
}

// TestParseStatCPU reads utime and stime after a command name that holds
// spaces and parentheses, and reads this process's own /proc/PID/stat.
func TestParseStatCPU(t *testing.T) {
	// Fields from a real stat line, with utime 150 and stime 50 ticks.
	line := "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 1020 0 0 0 150 50 0 0 20 0 9 0 1234 1000000 500 18446744073709551615\n"
	got, err := parseStatCPU(line)
	if err != nil || got != 2*time.Second {
		t.Errorf("parseStatCPU = %v, %v; want 2s", got, err)
	}
	if _, err := parseStatCPU("4242 (name) S 1 2"); err == nil {
		t.Error("parseStatCPU took a short line")
	}
	if _, err := cpuTime(os.Getpid()); err != nil {
		t.Errorf("cpuTime of this process: %v", err)
	}
}
