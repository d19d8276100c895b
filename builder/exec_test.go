package builder

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flakeship/flakeship/internal/testenv"
)

func TestExecStreamsOutputLineByLine(t *testing.T) {
	var log bytes.Buffer
	err := runCommand(context.Background(), &log, "sh", "-c", `echo one; echo two >&2; printf 'no newline'`)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(log.String(), "\n"), "\n")
	want := map[string]bool{"one": true, "two": true, "no newline": true}
	if len(lines) != len(want) {
		t.Fatalf("log = %q, want the lines one, two and no newline", log.String())
	}
	for _, l := range lines {
		if !want[l] {
			t.Errorf("unexpected log line %q in %q", l, log.String())
		}
	}
}

func TestExecOutputKeepsStdoutOutOfTheLog(t *testing.T) {
	var log bytes.Buffer
	out, err := outputCommand(context.Background(), &log, "sh", "-c", `echo '{"json":1}'; echo progress >&2`)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(out), "{\"json\":1}\n"; got != want {
		t.Errorf("stdout = %q, want %q", got, want)
	}
	if got, want := log.String(), "progress\n"; got != want {
		t.Errorf("log = %q, want %q", got, want)
	}
}

func TestExecErrors(t *testing.T) {
	tests := []struct {
		name string
		cmd  []string
		want string
	}{
		{name: "an exit status", cmd: []string{"sh", "-c", "exit 3"}, want: "exit status 3"},
		{name: "a missing program", cmd: []string{"flakeship-no-such-program"}, want: `exec: "flakeship-no-such-program": executable file not found in $PATH`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var log bytes.Buffer
			err := runCommand(context.Background(), &log, tc.cmd[0], tc.cmd[1:]...)
			if err == nil || err.Error() != tc.want {
				t.Errorf("error = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestExecCancelKillsTheWholeProcessGroup(t *testing.T) {
	marker := fmt.Sprintf("flakeship-exec-%d", time.Now().UnixNano())
	// The leader starts a child that ignores SIGTERM, keeps the output
	// pipes open and waits at a gate that opens only when the test ends;
	// only the group SIGKILL after the grace ends it.
	gate := testenv.NewGate(t)
	script := fmt.Sprintf(`sh -c 'trap "" TERM; echo started; %s # %s' & wait`, gate.Script(), marker)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := &signalBuffer{needle: "started", seen: make(chan struct{})}
	done := make(chan error, 1)
	go func() {
		done <- execute(ctx, 200*time.Millisecond, nil, log, log, "sh", "-c", script)
	}()
	select {
	case <-log.seen:
	case err := <-done:
		t.Fatalf("command ended before it was cancelled: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("the command never started its child")
	}
	if len(processesWith(t, marker)) == 0 {
		t.Fatal("found no process of the command before cancelling it")
	}
	cancel()
	var err error
	select {
	case err = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the command was not stopped")
	}
	if !errors.Is(err, context.Canceled) || !strings.HasPrefix(err.Error(), "killed: ") {
		t.Errorf("error = %v, want killed: context canceled", err)
	}
	if !pollUntil(time.Minute, func() bool { return len(processesWith(t, marker)) == 0 }) {
		t.Errorf("processes of the group survived: %v", processesWith(t, marker))
	}
}

func TestExecDeadlineSaysSo(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	var log bytes.Buffer
	err := runCommand(ctx, &log, "sleep", "30")
	if !errors.Is(err, context.DeadlineExceeded) || err.Error() != "killed: context deadline exceeded" {
		t.Errorf("error = %v, want killed: context deadline exceeded", err)
	}
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		t.Errorf("error %v carries the exit status of a killed process", err)
	}
}

func TestExecLineWriterPassesWholeLines(t *testing.T) {
	tests := []struct {
		name   string
		writes []string
		want   []string // what each write lets through, then the flush
	}{
		{name: "whole lines", writes: []string{"a\nb\n"}, want: []string{"a\nb\n", ""}},
		{name: "a line in pieces", writes: []string{"ab", "c\nd", "e\n"}, want: []string{"", "abc\n", "de\n", ""}},
		{name: "a last line without newline", writes: []string{"x\ny"}, want: []string{"x\n", "y\n"}},
		{name: "an overlong line", writes: []string{strings.Repeat("z", maxLine+1)}, want: []string{strings.Repeat("z", maxLine+1), ""}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			w := &lineWriter{mu: new(sync.Mutex), w: &out}
			var got []string
			for _, s := range tc.writes {
				n, err := w.Write([]byte(s))
				if err != nil || n != len(s) {
					t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(s))
				}
				got = append(got, out.String())
				out.Reset()
			}
			if err := w.flush(); err != nil {
				t.Fatal(err)
			}
			got = append(got, out.String())
			if strings.Join(got, "|") != strings.Join(tc.want, "|") {
				t.Errorf("passed %q, want %q", got, tc.want)
			}
		})
	}
}

// signalBuffer is a log writer that closes seen once needle was written.
type signalBuffer struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	needle string
	seen   chan struct{}
	closed bool
}

func (b *signalBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	n, err := b.buf.Write(p)
	if !b.closed && strings.Contains(b.buf.String(), b.needle) {
		close(b.seen)
		b.closed = true
	}
	return n, err
}
