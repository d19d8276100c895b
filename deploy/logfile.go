package deploy

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
)

// logFile is a deploy's log: every step's output, line by line, with each
// configured secret replaced by "[redacted]" before it reaches the disk.
// Whole lines are redacted, so a secret split across two writes is still
// caught; a partial last line is written on Close.
type logFile struct {
	mu      sync.Mutex
	f       *os.File
	secrets [][]byte
	partial []byte
	err     error
	changed chan struct{} // closed and replaced after each write to the file
}

// logPath is where deploy id's log lives.
func logPath(stateDir string, id int64) string {
	return filepath.Join(stateDir, "logs", strconv.FormatInt(id, 10)+".log")
}

func openLog(path string, secrets []string) (*logFile, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("create log dir: %w", err)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return nil, fmt.Errorf("open deploy log: %w", err)
	}
	l := &logFile{f: f, changed: make(chan struct{})}
	for _, s := range secrets {
		if s != "" {
			l.secrets = append(l.secrets, []byte(s))
		}
	}
	return l, nil
}

// Write implements io.Writer. It never fails the caller's step: a write error
// is kept and returned by Close.
func (l *logFile) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.partial = append(l.partial, p...)
	if i := bytes.LastIndexByte(l.partial, '\n'); i >= 0 {
		l.writeLocked(l.partial[:i+1])
		l.partial = append(l.partial[:0], l.partial[i+1:]...)
	}
	// A single line longer than 64 KiB is written in pieces.
	if len(l.partial) > 64<<10 {
		l.writeLocked(l.partial)
		l.partial = l.partial[:0]
	}
	return len(p), nil
}

// Printf writes one formatted line.
func (l *logFile) Printf(format string, args ...any) {
	fmt.Fprintf(l, format+"\n", args...)
}

func (l *logFile) writeLocked(b []byte) {
	for _, s := range l.secrets {
		b = bytes.ReplaceAll(b, s, []byte("[redacted]"))
	}
	if _, err := l.f.Write(b); err != nil && l.err == nil {
		l.err = err
	}
	close(l.changed)
	l.changed = make(chan struct{})
}

// grew returns a channel that is closed when the log next grows.
func (l *logFile) grew() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.changed
}

// Close writes what is left and closes the file.
func (l *logFile) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.partial) > 0 {
		l.writeLocked(append(l.partial, '\n'))
		l.partial = nil
	}
	if err := l.f.Close(); err != nil && l.err == nil {
		l.err = err
	}
	return l.err
}
