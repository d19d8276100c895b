package notifier

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/google/go-github/v60/github"

	"github.com/flakeship/flakeship/config"
	"github.com/flakeship/flakeship/forge"
)

// gitHubAPI is the REST API root of github.com.
const gitHubAPI = "https://api.github.com/"

// userAgent names flakeship to the forges (GitHub refuses requests without one).
const userAgent = "flakeship"

// GitHubOptions configure a GitHub notifier.
type GitHubOptions struct {
	// BaseURL is the REST API root, used as is: "https://api.github.com/"
	// (the default when empty) or a GitHub Enterprise Server's
	// "https://HOST/api/v3/".
	BaseURL    string
	Token      config.Secret // sent as "Authorization: Bearer <token>"; required
	HTTPClient *http.Client  // nil: a client with a 30s timeout per request
	Log        *slog.Logger  // nil: no logging
	Retry      RetryPolicy
}

// GitHub posts commit statuses through GitHub's REST API
// (POST /repos/{owner}/{repo}/statuses/{sha}). It is safe for concurrent use.
type GitHub struct {
	client *github.Client
	poster
}

// NewGitHub returns a GitHub notifier. A target without a token gets Nop.
func NewGitHub(opts GitHubOptions) (*GitHub, error) {
	if !opts.Token.IsSet() {
		return nil, fmt.Errorf("github notifier: token is empty (statuses need one)")
	}
	raw := opts.BaseURL
	if raw == "" {
		raw = gitHubAPI
	}
	base, err := parseBaseURL(raw)
	if err != nil {
		return nil, fmt.Errorf("github notifier: %w", err)
	}
	hc, log := defaults(opts.HTTPClient, opts.Log)

	// The base URL is set as is rather than through WithEnterpriseURLs, which
	// appends "api/v3/" to any host not named api.*: a configured root (or a
	// test server's) must be taken at its word.
	client := github.NewClient(hc).WithAuthToken(opts.Token.Reveal())
	client.BaseURL = base
	client.UserAgent = userAgent

	g := &GitHub{client: client}
	g.poster = poster{forge: "github", token: opts.Token, log: log, retry: opts.Retry, send: g.send}
	return g, nil
}

// SetStatus posts s as a commit status, retrying transient failures.
func (g *GitHub) SetStatus(ctx context.Context, s forge.Status) error {
	return g.post(ctx, s)
}

// String describes g without its token (fmt would print the unexported
// fields, token included, as they are).
func (g *GitHub) String() string { return "github notifier for " + g.client.BaseURL.String() }

// GoString is String, for %#v.
func (g *GitHub) GoString() string { return g.String() }

// send makes one attempt; s is validated.
func (g *GitHub) send(ctx context.Context, s forge.Status) error {
	owner, name, _ := strings.Cut(s.Repo, "/")
	status := &github.RepoStatus{State: github.String(string(s.State))}
	if s.TargetURL != "" {
		status.TargetURL = github.String(s.TargetURL)
	}
	if s.Description != "" {
		status.Description = github.String(s.Description)
	}
	if s.Context != "" {
		status.Context = github.String(s.Context)
	}
	_, resp, err := g.client.Repositories.CreateStatus(ctx, owner, name, s.SHA, status)
	return gitHubError(resp, err, time.Now())
}

// gitHubError turns what go-github returned into nil, an *APIError, or the
// network error it was.
func gitHubError(resp *github.Response, err error, now time.Time) error {
	var answer *http.Response
	if resp != nil {
		answer = resp.Response
	}
	code, err := unsettled(answer, err)
	if code == 0 {
		return err
	}
	apiErr := &APIError{StatusCode: code, RetryAfter: retryAfter(resp.Header, now)}

	var rateErr *github.RateLimitError
	var abuseErr *github.AbuseRateLimitError
	var respErr *github.ErrorResponse
	switch {
	case errors.As(err, &rateErr):
		apiErr.rateLimited = true
		apiErr.Message = clip(rateErr.Message, maxMessage)
		if reset := rateErr.Rate.Reset.Time; reset.After(now) {
			apiErr.RetryAfter = max(apiErr.RetryAfter, reset.Sub(now))
		}
	case errors.As(err, &abuseErr):
		apiErr.rateLimited = true
		apiErr.Message = clip(abuseErr.Message, maxMessage)
		if abuseErr.RetryAfter != nil {
			apiErr.RetryAfter = max(apiErr.RetryAfter, *abuseErr.RetryAfter)
		}
	case errors.As(err, &respErr):
		apiErr.Message = clip(gitHubMessage(respErr), maxMessage)
	}
	return apiErr
}

// gitHubMessage joins an error answer's message and field errors.
func gitHubMessage(e *github.ErrorResponse) string {
	parts := []string{e.Message}
	for _, fe := range e.Errors {
		switch {
		case fe.Message != "":
			parts = append(parts, fe.Message)
		case fe.Field != "":
			parts = append(parts, fe.Field+" "+fe.Code)
		}
	}
	return strings.Join(parts, "; ")
}
