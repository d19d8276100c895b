package builder

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// killGrace is how long a cancelled command's process group has between
// SIGTERM and SIGKILL. nix needs the SIGTERM: it runs each builder in a
// session of its own, out of reach of a signal to nix's process group, and
// only kills it itself when it is asked to stop rather than killed.
const killGrace = 5 * time.Second

// maxLine is the longest line held back before it is written in pieces.
const maxLine = 64 << 10

// runCommand runs name with args (never through a shell) in a process group
// of its own and streams its stdout and stderr to log, line by line. When ctx
// ends, the whole group is stopped (see execute) and the error wraps
// ctx.Err().
func runCommand(ctx context.Context, log io.Writer, name string, args ...string) error {
	var mu sync.Mutex
	return execute(ctx, killGrace, nil, &lineWriter{mu: &mu, w: log}, &lineWriter{mu: &mu, w: log}, name, args...)
}

// outputCommand is runCommand that returns stdout instead of streaming it;
// stderr still goes to log line by line. The output read so far is returned
// with any error.
func outputCommand(ctx context.Context, log io.Writer, name string, args ...string) ([]byte, error) {
	return outputCommandEnv(ctx, log, nil, name, args...)
}

// outputCommandEnv is outputCommand with env ("KEY=value") added to the
// command's environment (see childEnv).
func outputCommandEnv(ctx context.Context, log io.Writer, env []string, name string, args ...string) ([]byte, error) {
	var stdout bytes.Buffer
	err := execute(ctx, killGrace, env, &stdout, &lineWriter{mu: new(sync.Mutex), w: log}, name, args...)
	return stdout.Bytes(), err
}

// execute runs one command in its own process group, in the shape of
// woodpecker's pipeline/backend/local/cmd_unix.go. When ctx ends it sends
// SIGTERM to the group; after grace the leader is killed, its pipes are
// closed (cmd.WaitDelay), and whatever is left of the group gets SIGKILL.
// The error is the command's own (exec.ExitError: "exit status 1"), or
// "killed: " wrapping ctx.Err() when ctx ended it.
//
// The command's environment is never flakeship's own: it is childEnv of it,
// the variables a command needs and no secret, with env ("KEY=value") set.
func execute(ctx context.Context, grace time.Duration, env []string, stdout, stderr io.Writer, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = childEnv(os.Environ(), env...)
	cmd.Stdout = stdout
	cmd.Stderr = stderr
	cmd.SysProcAttr = groupAttr()
	var cancelled atomic.Bool
	cmd.Cancel = func() error {
		cancelled.Store(true)
		return signalGroup(cmd, syscall.SIGTERM)
	}
	cmd.WaitDelay = grace
	err := cmd.Run()
	for _, w := range []io.Writer{stdout, stderr} {
		if lw, ok := w.(*lineWriter); ok {
			if ferr := lw.flush(); ferr != nil && err == nil {
				err = ferr
			}
		}
	}
	if cancelled.Load() {
		// The leader is gone and reaped, but a member of its group may
		// have ignored the SIGTERM. The group id stays reserved while
		// any member lives, so this reaches only what we started.
		if kerr := signalGroup(cmd, syscall.SIGKILL); kerr != nil && !errors.Is(kerr, syscall.ESRCH) {
			return fmt.Errorf("killed: %w (and kill process group: %v)", ctx.Err(), kerr)
		}
		return fmt.Errorf("killed: %w", ctx.Err())
	}
	return err
}

// signalGroup sends sig to cmd's whole process group.
func signalGroup(cmd *exec.Cmd, sig syscall.Signal) error {
	return syscall.Kill(-cmd.Process.Pid, sig)
}

// lineWriter passes only whole lines to w, so the stdout and stderr of one
// command, copied by two goroutines into one log, interleave by line and
// never mid-line. Writers sharing mu never write to w at the same time.
type lineWriter struct {
	mu  *sync.Mutex
	w   io.Writer
	buf []byte
}

// Write implements io.Writer.
func (l *lineWriter) Write(p []byte) (int, error) {
	l.buf = append(l.buf, p...)
	i := bytes.LastIndexByte(l.buf, '\n')
	if i < 0 && len(l.buf) <= maxLine {
		return len(p), nil
	}
	n := i + 1
	if i < 0 {
		n = len(l.buf) // one overlong line, written in pieces
	}
	if err := l.write(l.buf[:n]); err != nil {
		return 0, err
	}
	l.buf = append(l.buf[:0], l.buf[n:]...)
	return len(p), nil
}

// flush writes a last line that has no newline, adding one.
func (l *lineWriter) flush() error {
	if len(l.buf) == 0 {
		return nil
	}
	err := l.write(append(l.buf, '\n'))
	l.buf = l.buf[:0]
	return err
}

func (l *lineWriter) write(b []byte) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, err := l.w.Write(b)
	return err
}
