package notifier

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"code.gitea.io/sdk/gitea"

	"github.com/flakeship/flakeship/config"
	"github.com/flakeship/flakeship/forge"
)

// ForgejoOptions configure a Forgejo (or Gitea) notifier.
type ForgejoOptions struct {
	// BaseURL is the instance root ("https://codeberg.org/") or its API root
	// ("https://codeberg.org/api/v1/"); both mean the same. Required.
	BaseURL    string
	Token      config.Secret // sent as "Authorization: token <token>"; required
	HTTPClient *http.Client  // nil: a client with a 30s timeout per request
	Log        *slog.Logger  // nil: no logging; a debug line per request
}

// Forgejo posts commit statuses through the Gitea API that Forgejo and Gitea
// serve (POST /api/v1/repos/{owner}/{repo}/statuses/{sha}). It is safe for
// concurrent use.
type Forgejo struct {
	root  string // instance root, no trailing slash, as the SDK wants it
	token config.Secret
	hc    *http.Client
	poster
}

// NewForgejo returns a Forgejo notifier. A target without a token gets Nop.
func NewForgejo(opts ForgejoOptions) (*Forgejo, error) {
	if !opts.Token.IsSet() {
		return nil, fmt.Errorf("forgejo notifier: token is empty (statuses need one)")
	}
	if opts.BaseURL == "" {
		return nil, fmt.Errorf("forgejo notifier: base URL is required")
	}
	base, err := parseBaseURL(opts.BaseURL)
	if err != nil {
		return nil, fmt.Errorf("forgejo notifier: %w", err)
	}
	// The SDK appends /api/v1 to the root itself.
	base.Path = strings.TrimSuffix(strings.TrimSuffix(base.Path, "/"), "/api/v1")
	hc, log := defaults(opts.HTTPClient, opts.Log)

	f := &Forgejo{root: base.String(), token: opts.Token, hc: hc}
	f.poster = poster{forge: "forgejo", token: opts.Token, log: log, send: f.send}
	return f, nil
}

// SetStatus posts s as a commit status in one attempt; Temporary reads
// its error.
func (f *Forgejo) SetStatus(ctx context.Context, s forge.Status) error {
	return f.post(ctx, s)
}

// String describes f without its token (fmt would print the unexported
// fields, token included, as they are).
func (f *Forgejo) String() string { return "forgejo notifier for " + f.root + "/" }

// GoString is String, for %#v.
func (f *Forgejo) GoString() string { return f.String() }

// send makes one attempt; s is validated.
//
// The SDK takes its context at construction, so each attempt builds a client
// (cheap: no I/O). SetGiteaVersion("") tells it not to ask /api/v1/version
// first: the statuses API predates every Forgejo and every Gitea the SDK
// supports, so the answer could not change the request, and skipping it
// halves the round trips and the ways a post can fail.
func (f *Forgejo) send(ctx context.Context, s forge.Status) error {
	client, err := gitea.NewClient(f.root,
		gitea.SetToken(f.token.Reveal()),
		gitea.SetContext(ctx),
		gitea.SetHTTPClient(f.hc),
		gitea.SetGiteaVersion(""),
		gitea.SetUserAgent(userAgent),
	)
	if err != nil {
		return fmt.Errorf("new client: %w", err)
	}
	owner, name, _ := strings.Cut(s.Repo, "/")
	// The answer carries the state under "status"; gitea.Status decodes it
	// from there, but nothing here needs the answer beyond its code.
	_, resp, err := client.CreateStatus(owner, name, s.SHA, gitea.CreateStatusOption{
		State:       gitea.StatusState(s.State),
		TargetURL:   s.TargetURL,
		Description: s.Description,
		Context:     s.Context,
	})
	err = forgejoError(resp, err, time.Now())
	var apiErr *APIError
	if errors.As(err, &apiErr) && apiErr.StatusCode == http.StatusInternalServerError {
		// Forgejo answers a status for a commit it does not have with a
		// 500 whose message production hides (routers/api/v1/repo/status.go
		// NewCommitStatus answers every error of CreateCommitStatus, its
		// GetCommit included, with ctx.Error(500)). Asking for the commit
		// tells that apart from a forge in trouble: 404 means it is not
		// there (routers/api/v1/repo/commits.go getCommit), and posting
		// again cannot help.
		_, probe, _ := client.GetSingleCommit(owner, name, s.SHA)
		if probe != nil && probe.StatusCode == http.StatusNotFound {
			apiErr.unknownCommit = true
		}
	}
	return err
}

// forgejoError turns what the SDK returned into nil, an *APIError, or the
// network error it was.
func forgejoError(resp *gitea.Response, err error, now time.Time) error {
	var answer *http.Response
	if resp != nil {
		answer = resp.Response
	}
	code, err := unsettled(answer, err)
	if code == 0 {
		return err
	}
	// The SDK's error is the answer's "message" when it had one; otherwise
	// it is a dump of the request and body, which says no more than the code.
	msg := err.Error()
	if strings.HasPrefix(msg, "unknown API error") || strings.HasPrefix(msg, resp.Status) {
		msg = ""
	}
	return &APIError{StatusCode: code, Message: clip(msg, maxMessage), RetryAfter: retryAfter(resp.Header, now)}
}
