package builder

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/format/idxfile"
	"github.com/go-git/go-git/v5/plumbing/transport"
	githttp "github.com/go-git/go-git/v5/plumbing/transport/http"
	"github.com/go-git/go-git/v5/storage/filesystem"
)

// What a fetch says when it fails: retries of transient errors, the
// forge's and git's errors made readable (and free of tokens), and the
// progress of a fetch in the deploy log.

// retry runs op, and again after each backoff delay while it fails for a
// reason that may pass. The error it returns is one line, names the remote
// without credentials and never holds the token.
func (f *Fetcher) retry(ctx context.Context, s Spec, what string, log io.Writer, op func() error) error {
	where := displayURL(s.CloneURL)
	for attempt := 0; ; attempt++ {
		err := op()
		if err == nil {
			return nil
		}
		if ctxErr := ctx.Err(); ctxErr != nil {
			return fmt.Errorf("%s from %s: %w", what, where, ctxErr)
		}
		msg := describe(err, s)
		if !transient(err) {
			return &remoteError{msg: fmt.Sprintf("%s from %s: %s", what, where, msg), err: err}
		}
		if attempt == len(f.backoff) {
			return &remoteError{msg: fmt.Sprintf("%s from %s: %s (gave up after %d attempts)", what, where, msg, attempt+1), err: err}
		}
		delay := f.backoff[attempt]
		f.log.Warn("git remote failed, retrying", "target", s.Name, "remote", where, "attempt", attempt+1, "delay", delay, "err", msg)
		if _, err := fmt.Fprintf(log, "%s from %s: %s; retrying in %s\n", what, where, msg, delay); err != nil {
			return fmt.Errorf("write log: %w", err)
		}
		timer := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			timer.Stop()
			return fmt.Errorf("%s from %s: %w", what, where, ctx.Err())
		case <-timer.C:
		}
	}
}

// gitErrors returns err followed by the errors go-git's UnexpectedError and
// PermanentError hold, which they hide from errors.Is and errors.As.
func gitErrors(err error) []error {
	var out []error
	for err != nil && len(out) < 8 {
		out = append(out, err)
		var unexpected *plumbing.UnexpectedError
		var permanent *plumbing.PermanentError
		switch {
		case errors.As(err, &unexpected):
			err = unexpected.Err
		case errors.As(err, &permanent):
			err = permanent.Err
		default:
			err = nil
		}
	}
	return out
}

// httpStatus returns the status code of an HTTP failure go-git reports
// without a sentinel of its own.
func httpStatus(err error) (int, bool) {
	for _, e := range gitErrors(err) {
		var herr *githttp.Err
		if errors.As(e, &herr) && herr.Response != nil {
			return herr.StatusCode(), true
		}
	}
	return 0, false
}

// transient reports whether a remote failure may pass on its own: a network
// error, HTTP 5xx, 408 or 429. Authentication, authorization and a missing
// repository are for a person to fix.
func transient(err error) bool {
	for _, e := range gitErrors(err) {
		switch {
		case errors.Is(e, context.Canceled), errors.Is(e, context.DeadlineExceeded),
			errors.Is(e, transport.ErrAuthenticationRequired),
			errors.Is(e, transport.ErrAuthorizationFailed),
			errors.Is(e, transport.ErrRepositoryNotFound),
			errors.Is(e, transport.ErrEmptyRemoteRepository),
			errors.Is(e, transport.ErrInvalidAuthMethod):
			return false
		}
	}
	if code, ok := httpStatus(err); ok {
		return code >= 500 || code == 408 || code == 429
	}
	for _, e := range gitErrors(err) {
		var netErr net.Error
		switch {
		case errors.As(e, &netErr),
			errors.Is(e, io.ErrUnexpectedEOF),
			errors.Is(e, syscall.ECONNRESET),
			errors.Is(e, syscall.ECONNREFUSED),
			errors.Is(e, syscall.EPIPE):
			return true
		}
	}
	return false
}

// describe turns a remote failure into a short line for people. go-git's own
// messages carry the server's response body, possibly over several lines.
func describe(err error, s Spec) string {
	switch {
	case errors.Is(err, transport.ErrAuthenticationRequired) && s.Token.IsSet():
		return "authentication failed (HTTP 401): the token was not accepted"
	case errors.Is(err, transport.ErrAuthenticationRequired):
		return "authentication required (HTTP 401): the repository needs a token"
	case errors.Is(err, transport.ErrAuthorizationFailed):
		return "access denied (HTTP 403)"
	case errors.Is(err, transport.ErrRepositoryNotFound):
		return "repository not found"
	case errors.Is(err, transport.ErrEmptyRemoteRepository):
		return "remote repository is empty"
	}
	if code, ok := httpStatus(err); ok {
		return fmt.Sprintf("server answered HTTP %d", code)
	}
	msg := err.Error()
	if i := strings.IndexByte(msg, '\n'); i >= 0 {
		msg = msg[:i]
	}
	return redact(msg, s)
}

// redact removes the token and any password in the clone URL from msg.
func redact(msg string, s Spec) string {
	if s.Token.IsSet() {
		msg = strings.ReplaceAll(msg, s.Token.Reveal(), "[redacted]")
	}
	if u, err := url.Parse(s.CloneURL); err == nil && u.User != nil {
		if pass, ok := u.User.Password(); ok && pass != "" {
			msg = strings.ReplaceAll(msg, pass, "[redacted]")
			msg = strings.ReplaceAll(msg, url.QueryEscape(pass), "[redacted]")
		}
	}
	return msg
}

// fetchAuth returns the basic auth that carries s.Token over http(s), or nil.
func fetchAuth(s Spec) transport.AuthMethod {
	if !s.Token.IsSet() {
		return nil
	}
	u, err := url.Parse(s.CloneURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") {
		return nil
	}
	return &githttp.BasicAuth{Username: tokenUser, Password: s.Token.Reveal()}
}

// displayURL is a clone URL without its user information, fit for logs and
// errors.
func displayURL(raw string) string {
	u, err := url.Parse(raw)
	if err == nil {
		if u.User == nil {
			return raw
		}
		u.User = nil
		return u.String()
	}
	// Not a URL (an scp-like address, or garbage): drop anything before an
	// '@' in what would be the host part.
	rest := raw
	if i := strings.Index(rest, "://"); i >= 0 {
		rest = rest[i+3:]
	}
	host := rest
	if i := strings.IndexByte(host, '/'); i >= 0 {
		host = host[:i]
	}
	if i := strings.LastIndexByte(host, '@'); i >= 0 {
		return raw[:len(raw)-len(rest)] + rest[i+1:]
	}
	return raw
}

// abbrevSHA is the 7-character display form of a commit id.
func abbrevSHA(sha string) string {
	if len(sha) > 7 {
		return sha[:7]
	}
	return sha
}

// packs returns the packfiles in the cache.
func packs(repo *git.Repository) (map[plumbing.Hash]bool, error) {
	st, ok := repo.Storer.(*filesystem.Storage)
	if !ok {
		return nil, nil
	}
	hashes, err := st.ObjectPacks()
	if err != nil {
		return nil, fmt.Errorf("git cache: list packs: %w", err)
	}
	set := make(map[plumbing.Hash]bool, len(hashes))
	for _, h := range hashes {
		set[h] = true
	}
	return set, nil
}

// newObjects counts the objects in the packs a fetch added (go-git stores
// every fetched pack whole).
func newObjects(repo *git.Repository, before map[plumbing.Hash]bool) (int64, error) {
	st, ok := repo.Storer.(*filesystem.Storage)
	if !ok {
		return 0, nil
	}
	after, err := packs(repo)
	if err != nil {
		return 0, err
	}
	var total int64
	for h := range after {
		if before[h] {
			continue
		}
		n, err := packCount(st, h)
		if err != nil {
			return 0, err
		}
		total += n
	}
	return total, nil
}

// packCount reads the object count from a pack's index.
func packCount(st *filesystem.Storage, pack plumbing.Hash) (n int64, err error) {
	name := filepath.Join("objects", "pack", "pack-"+pack.String()+".idx")
	file, err := st.Filesystem().Open(name)
	if err != nil {
		return 0, fmt.Errorf("git cache: %w", err)
	}
	defer func() {
		if cerr := file.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("git cache: %w", cerr)
		}
	}()
	idx := idxfile.NewMemoryIndex()
	if err := idxfile.NewDecoder(file).Decode(idx); err != nil {
		return 0, fmt.Errorf("git cache: read %s: %w", name, err)
	}
	return idx.Count()
}

// progressWriter passes the server's progress on as plain lines, prefixed
// "remote: " as git prints them. Git redraws a progress line with '\r';
// only the last state of each line is kept, so a log shows
// "Counting objects: 100% (3/3), done." once rather than every percent.
type progressWriter struct {
	w    io.Writer
	line []byte
	cr   bool // the last byte was '\r'
}

// maxProgressLine bounds a line the server never ends.
const maxProgressLine = 4096

func (p *progressWriter) Write(b []byte) (int, error) {
	for _, c := range b {
		switch {
		case c == '\n':
			if err := p.emit(); err != nil {
				return 0, err
			}
		case c == '\r':
			p.cr = true
		default:
			if p.cr {
				p.line = p.line[:0]
				p.cr = false
			}
			p.line = append(p.line, c)
			if len(p.line) >= maxProgressLine {
				if err := p.emit(); err != nil {
					return 0, err
				}
			}
		}
	}
	return len(b), nil
}

// Flush writes a last line the server left unterminated.
func (p *progressWriter) Flush() error {
	if len(p.line) == 0 {
		return nil
	}
	return p.emit()
}

func (p *progressWriter) emit() error {
	line := p.line
	p.line, p.cr = p.line[:0], false
	if len(line) == 0 {
		return nil
	}
	_, err := fmt.Fprintf(p.w, "remote: %s\n", line)
	return err
}

// remoteError is a failure of the remote, with a one-line message fit for a
// deploy's error and log; Unwrap gives go-git's error.
type remoteError struct {
	msg string
	err error
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() error { return e.err }

// brokenCacheError is a cache whose objects or refs cannot be read.
type brokenCacheError struct{ err error }

func (e *brokenCacheError) Error() string { return "git cache is broken: " + e.err.Error() }
func (e *brokenCacheError) Unwrap() error { return e.err }

// notOnBranchError is ErrNotOnBranch with the commit and branch.
type notOnBranchError struct {
	sha, branch string
	other       string // a ref of the remote whose head the commit is, if known
}

func (e *notOnBranchError) Error() string {
	msg := fmt.Sprintf("commit %s is not on branch %s", abbrevSHA(e.sha), e.branch)
	if e.other != "" {
		msg += " (it is the head of " + e.other + ")"
	}
	return msg
}

func (e *notOnBranchError) Is(target error) bool { return target == ErrNotOnBranch }

// commitNotFoundError is ErrCommitNotFound with the commit and remote.
type commitNotFoundError struct{ sha, branch, url string }

func (e *commitNotFoundError) Error() string {
	return fmt.Sprintf("commit %s not found in %s (branch %s)", abbrevSHA(e.sha), e.url, e.branch)
}

func (e *commitNotFoundError) Is(target error) bool { return target == ErrCommitNotFound }

// branchNotFoundError is ErrBranchNotFound with the branch and remote.
type branchNotFoundError struct {
	branch, url string
	err         error // go-git's error, if any
}

func (e *branchNotFoundError) Error() string {
	return fmt.Sprintf("branch %s not found in %s", e.branch, e.url)
}

func (e *branchNotFoundError) Is(target error) bool { return target == ErrBranchNotFound }
func (e *branchNotFoundError) Unwrap() error        { return e.err }
