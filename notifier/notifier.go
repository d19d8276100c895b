// Package notifier posts commit statuses to the forges: pending while a
// deploy waits and runs, then its outcome, each linking to the deploy's page.
// GitHub and Forgejo (Gitea is an alias) sit behind one interface; Nop stands
// in for targets without a token. A post is one attempt: its error says
// whether and when to try again (see Temporary), and the caller (deploy's
// status sender) keeps the one retry policy. Tokens never reach an error or
// a log line.
package notifier

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/flakeship/flakeship/config"
	"github.com/flakeship/flakeship/forge"
)

// Notifier posts commit statuses.
type Notifier interface {
	// SetStatus posts s to the forge in one attempt; Temporary reads its
	// error. It is safe for concurrent use.
	SetStatus(ctx context.Context, s forge.Status) error
}

// Nop is the Notifier of a target without a forge token: it posts nothing.
type Nop struct{}

// SetStatus does nothing and returns nil.
func (Nop) SetStatus(context.Context, forge.Status) error { return nil }

var (
	_ Notifier = Nop{}
	_ Notifier = (*GitHub)(nil)
	_ Notifier = (*Forgejo)(nil)
)

const (
	// maxDescription is GitHub's limit on a status description, in
	// characters; Forgejo takes longer ones, but one limit keeps both alike.
	maxDescription = 140
	// maxMessage bounds how much of a forge's error message an error quotes.
	maxMessage = 200
	// attemptTimeout bounds one request when the caller gives no HTTP client.
	attemptTimeout = 30 * time.Second
)

// ErrUnknownCommit matches (errors.Is) the error of a status the forge
// refused because the commit is not in its repository: a commit never pushed
// there, or a target configured with another repository than the one pushed
// to. Posting again cannot help, so it is not retried.
var ErrUnknownCommit = errors.New("the commit is not on the forge")

// APIError is a forge's refusal of a status: an HTTP answer outside 2xx.
type APIError struct {
	StatusCode int
	Message    string        // the forge's own message, one line, "" if none
	RetryAfter time.Duration // how long the forge asked us to wait, 0 if it did not say
	// rateLimited marks GitHub's rate-limit answers, which may come as 403.
	rateLimited bool
	// unknownCommit marks a refusal because the commit is not on the forge
	// (GitHub's 422, Forgejo's 500; see ErrUnknownCommit).
	unknownCommit bool
}

// Error gives the code and reason, like "401 Unauthorized: Bad credentials",
// led by what it means when the commit is not on the forge.
func (e *APIError) Error() string {
	msg := fmt.Sprint(e.StatusCode)
	if text := http.StatusText(e.StatusCode); text != "" {
		msg += " " + text
	}
	if e.Message != "" && e.Message != http.StatusText(e.StatusCode) {
		msg += ": " + e.Message
	}
	if e.unknownCommit {
		return ErrUnknownCommit.Error() + " (" + msg + ")"
	}
	return msg
}

// Is reports whether e is an unknown commit's refusal, for
// errors.Is(err, ErrUnknownCommit).
func (e *APIError) Is(target error) bool {
	return target == ErrUnknownCommit && e.unknownCommit
}

// Temporary reports whether trying again later may succeed: 429, a 5xx
// (unless it says the commit is not on the forge), or one of GitHub's
// rate-limit 403s.
func (e *APIError) Temporary() bool {
	if e.unknownCommit {
		return false
	}
	return e.StatusCode == http.StatusTooManyRequests || e.StatusCode >= 500 || e.rateLimited
}

// poster is what GitHub and Forgejo share: validation, scrubbing and the
// log line around an attempt. send makes the attempt.
type poster struct {
	forge string // "github" or "forgejo": the first word of every error
	token config.Secret
	log   *slog.Logger
	send  func(ctx context.Context, s forge.Status) error
}

// post validates s, clips what the forges would refuse, and sends it once.
func (p *poster) post(ctx context.Context, s forge.Status) error {
	if err := config.ValidateRepo(s.Repo); err != nil {
		return &invalidError{fmt.Errorf("%s status: repo: %w", p.forge, err)}
	}
	op := fmt.Sprintf("%s status for %s", p.forge, s.Repo)
	if err := config.ValidateSHA(s.SHA); err != nil {
		return &invalidError{fmt.Errorf("%s: sha: %w", op, err)}
	}
	op += "@" + forge.ShortSHA(s.SHA)
	switch s.State {
	case forge.Pending, forge.Success, forge.Failure, forge.Error:
	default:
		return &invalidError{fmt.Errorf("%s: unknown state %q", op, clip(string(s.State), 20))}
	}
	s.Description = clipDescription(s.Description)
	if !isHTTPURL(s.TargetURL) {
		s.TargetURL = ""
	}

	start := time.Now()
	err := p.scrub(p.send(ctx, s))
	p.log.Debug("commit status request", "forge", p.forge, "repo", s.Repo, "sha", forge.ShortSHA(s.SHA),
		"state", string(s.State), "duration", time.Since(start), "err", err)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	return nil
}

// invalidError is a status refused before any request: a malformed repo,
// sha or state. Posting it again cannot help.
type invalidError struct{ err error }

func (e *invalidError) Error() string { return e.err.Error() }
func (e *invalidError) Unwrap() error { return e.err }

// scrub makes sure no error text carries the token. The SDKs never put it in
// one (it rides in a header), so this is a second line of defence: an error
// that would show it is replaced by one that does not.
func (p *poster) scrub(err error) error {
	if err == nil || !p.token.IsSet() || !strings.Contains(err.Error(), p.token.Reveal()) {
		return err
	}
	var apiErr *APIError
	if errors.As(err, &apiErr) {
		clean := *apiErr
		clean.Message = strings.ReplaceAll(clean.Message, p.token.Reveal(), "[redacted]")
		return &clean
	}
	return &scrubbedError{msg: strings.ReplaceAll(err.Error(), p.token.Reveal(), "[redacted]")}
}

// scrubbedError stands for an error whose text showed the token. It keeps no
// chain: the wrapped errors would show the token again.
type scrubbedError struct{ msg string }

func (e *scrubbedError) Error() string { return e.msg }

// clipDescription makes d one line of at most maxDescription characters,
// ending in "…" when something was cut.
func clipDescription(d string) string {
	d = strings.Join(strings.Fields(d), " ")
	if utf8.RuneCountInString(d) <= maxDescription {
		return d
	}
	r := []rune(d)
	return strings.TrimSpace(string(r[:maxDescription-1])) + "…"
}

// clip makes a forge's message or an untrusted value one line of at most max
// characters.
func clip(s string, max int) string {
	s = strings.Join(strings.Fields(s), " ")
	if utf8.RuneCountInString(s) <= max {
		return s
	}
	return strings.TrimSpace(string([]rune(s)[:max])) + "..."
}

// isHTTPURL reports whether u is an absolute http(s) URL, the only kind of
// link a status should carry.
func isHTTPURL(u string) bool {
	p, err := url.Parse(u)
	return err == nil && (p.Scheme == "http" || p.Scheme == "https") && p.Host != ""
}

// parseBaseURL checks a configured API base URL: http(s), a host, no
// credentials, query or fragment. The returned URL's path ends in "/".
func parseBaseURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("base URL is not a URL")
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, fmt.Errorf("base URL %q: want http or https", u.Redacted())
	case u.Host == "":
		return nil, fmt.Errorf("base URL %q: no host", u.Redacted())
	case u.User != nil:
		return nil, fmt.Errorf("base URL %q: must not carry credentials (set the token instead)", u.Redacted())
	case u.RawQuery != "" || u.Fragment != "" || u.ForceQuery:
		return nil, fmt.Errorf("base URL %q: must not have a query or fragment", u.Redacted())
	}
	if !strings.HasSuffix(u.Path, "/") {
		u.Path += "/"
	}
	u.RawPath = ""
	return u, nil
}

// defaults fills in an HTTP client and a logger the caller left out.
func defaults(hc *http.Client, log *slog.Logger) (*http.Client, *slog.Logger) {
	if hc == nil {
		hc = &http.Client{Timeout: attemptTimeout}
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return hc, log
}
