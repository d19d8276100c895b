package deploy

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
)

// maxPiece is the longest line held back before it is written in pieces.
const maxPiece = 64 << 10

// redacted replaces each secret in a deploy's log.
var redacted = []byte("[redacted]")

// logFile is a deploy's log: every step's output, line by line, with each
// configured secret replaced by "[redacted]" before it reaches the disk,
// and at most limit bytes of it.
//
// Redaction holds across writes: what arrives is written up to its last
// newline (a line longer than 64 KiB in pieces), but never through a
// secret, and the bytes at the end that could begin a secret are kept back
// until more arrive or the log is closed. So a secret split between two
// writes, or over the edge of a 64 KiB piece, is still caught whole.
//
// Past limit bytes, command output is discarded without slowing its writer
// (nix builds on): one line says so, and only flakeship's own lines
// (Printf) follow it, so the log still ends with how the deploy ended.
type logFile struct {
	mu        sync.Mutex
	f         *os.File
	secrets   [][]byte
	pending   []byte // received but not yet written, as received
	size      int64  // bytes in the file
	limit     int64  // 0 for no limit
	truncated bool   // the limit was reached: command output is discarded
	err       error
	changed   chan struct{} // closed and replaced after each write to the file
}

// logPath is where deploy id's log lives.
func logPath(stateDir string, id int64) string {
	return filepath.Join(stateDir, "logs", strconv.FormatInt(id, 10)+".log")
}

// openLog opens (or creates) the log at path, which redacts secrets and
// holds at most limit bytes of command output (0: no limit).
func openLog(path string, secrets []string, limit int64) (*logFile, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("create log dir: %w", err)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return nil, fmt.Errorf("open deploy log: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open deploy log: %w", err)
	}
	l := &logFile{f: f, size: fi.Size(), limit: limit, changed: make(chan struct{})}
	for _, s := range secrets {
		if s != "" {
			l.secrets = append(l.secrets, []byte(s))
		}
	}
	return l, nil
}

// Write implements io.Writer. It never fails the caller's step, nor blocks
// it past the limit: a write error is kept and returned by Close.
func (l *logFile) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.truncated {
		return len(p), nil
	}
	l.pending = append(l.pending, p...)
	l.flushLocked(false)
	return len(p), nil
}

// Printf writes one formatted line. After the limit is reached it is still
// written: these are flakeship's own few lines about the deploy.
func (l *logFile) Printf(format string, args ...any) {
	line := fmt.Appendf(nil, format+"\n", args...)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.truncated {
		l.writeLocked(l.redact(line))
		return
	}
	l.pending = append(l.pending, line...)
	l.flushLocked(false)
}

// flushLocked writes out what of pending is safe to write: up to its last
// newline (everything once a line passes maxPiece, or when closing), but
// never through a secret nor, unless closing, a possible secret's start.
func (l *logFile) flushLocked(closing bool) {
	cut := len(l.pending)
	if !closing {
		if cut = bytes.LastIndexByte(l.pending, '\n') + 1; cut == 0 && len(l.pending) > maxPiece {
			cut = len(l.pending) // one overlong line, written in pieces
		}
		if cut == 0 {
			return
		}
		// Bytes yet to come may complete a secret that starts here.
		cut = min(cut, len(l.pending)-l.heldBack(l.pending))
	}
	cut = l.outside(l.pending, cut)
	if cut <= 0 {
		return
	}
	out := l.redact(l.pending[:cut])
	if closing && !bytes.HasSuffix(out, []byte("\n")) {
		out = append(out, '\n')
	}
	l.pending = append(l.pending[:0], l.pending[cut:]...)
	l.emitLocked(out)
}

// heldBack is how many bytes at the end of b could be the start of a
// secret: the length of the longest suffix of b that is a proper prefix of
// one.
func (l *logFile) heldBack(b []byte) int {
	most := 0
	for _, s := range l.secrets {
		for k := min(len(s)-1, len(b)); k > most; k-- {
			if bytes.HasSuffix(b, s[:k]) {
				most = k
				break
			}
		}
	}
	return most
}

// outside moves cut back until no secret in b runs across it: cut then
// either ends b's redacted part or starts a secret, which is written whole
// (as "[redacted]") later.
func (l *logFile) outside(b []byte, cut int) int {
	for moved := true; moved && cut > 0; {
		moved = false
		for _, s := range l.secrets {
			// An occurrence within this window holds cut strictly inside.
			lo, hi := max(0, cut-len(s)+1), min(len(b), cut+len(s)-1)
			if lo >= hi {
				continue
			}
			if i := bytes.Index(b[lo:hi], s); i >= 0 {
				cut, moved = lo+i, true
			}
		}
	}
	return cut
}

// redact returns b, in a new slice, with every secret replaced.
func (l *logFile) redact(b []byte) []byte {
	out := bytes.Clone(b)
	for _, s := range l.secrets {
		out = bytes.ReplaceAll(out, s, redacted)
	}
	return out
}

// emitLocked writes redacted output, up to the limit: of what would pass
// it, the whole lines that fit are written, then a line saying the log was
// truncated, and everything after is discarded (see Write).
func (l *logFile) emitLocked(b []byte) {
	if l.limit <= 0 || l.size+int64(len(b)) <= l.limit {
		l.writeLocked(b)
		return
	}
	part := b[:max(0, l.limit-l.size)]
	part = part[:bytes.LastIndexByte(part, '\n')+1] // whole lines only
	msg := fmt.Sprintf("== log truncated at %s (DEPLOY_LOG_LIMIT): the rest of the output is discarded\n", sizeText(l.limit))
	l.writeLocked(append(part, msg...))
	l.truncated = true
	l.pending = nil
}

func (l *logFile) writeLocked(b []byte) {
	if len(b) == 0 {
		return
	}
	n, err := l.f.Write(b)
	l.size += int64(n)
	if err != nil && l.err == nil {
		l.err = err
	}
	close(l.changed)
	l.changed = make(chan struct{})
}

// sizeText writes a byte count in MiB or KiB when it is a whole number of
// them.
func sizeText(n int64) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return strconv.FormatInt(n>>20, 10) + " MiB"
	case n >= 1<<10 && n%(1<<10) == 0:
		return strconv.FormatInt(n>>10, 10) + " KiB"
	}
	return strconv.FormatInt(n, 10) + " bytes"
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
	if !l.truncated && len(l.pending) > 0 {
		l.flushLocked(true)
	}
	l.pending = nil
	if err := l.f.Close(); err != nil && l.err == nil {
		l.err = err
	}
	return l.err
}
