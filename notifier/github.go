package notifier

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
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
	Log        *slog.Logger  // nil: no logging; a debug line per request
}

// GitHub posts commit statuses through GitHub's REST API
// (POST /repos/{owner}/{repo}/statuses/{sha}). It is safe for concurrent use.
type GitHub struct {
	base  *url.URL
	token config.Secret
	hc    *http.Client
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

	g := &GitHub{base: base, token: opts.Token, hc: hc}
	g.poster = poster{forge: "github", token: opts.Token, log: log, send: g.send}
	return g, nil
}

// client builds a go-github client for one attempt (cheap: no I/O). A client
// per attempt keeps go-github's memory of rate limits out of the way: after a
// refusal it would answer later calls itself, with its own idea of how long
// to wait (for a secondary limit, until the primary limit's reset, up to an
// hour, where GitHub's docs say a minute), so the forge's answer, read by
// gitHubError, is what the caller's retry policy goes by.
//
// The base URL is set as is rather than through WithEnterpriseURLs, which
// appends "api/v3/" to any host not named api.*: a configured root (or a
// test server's) must be taken at its word.
func (g *GitHub) client() *github.Client {
	client := github.NewClient(g.hc).WithAuthToken(g.token.Reveal())
	base := *g.base
	client.BaseURL = &base
	client.UserAgent = userAgent
	return client
}

// SetStatus posts s as a commit status in one attempt; Temporary reads
// its error.
func (g *GitHub) SetStatus(ctx context.Context, s forge.Status) error {
	return g.post(ctx, s)
}

// String describes g without its token (fmt would print the unexported
// fields, token included, as they are).
func (g *GitHub) String() string { return "github notifier for " + g.base.String() }

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
	_, resp, err := g.client().Repositories.CreateStatus(ctx, owner, name, s.SHA, status)
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
	apiErr := &APIError{StatusCode: code}

	// go-github sorts refusals by status code and headers; what GitHub
	// means is read from the answer itself below.
	var message, docs string
	var rateErr *github.RateLimitError
	var abuseErr *github.AbuseRateLimitError
	var respErr *github.ErrorResponse
	switch {
	case errors.As(err, &rateErr):
		message = rateErr.Message
	case errors.As(err, &abuseErr):
		message = abuseErr.Message
		docs = secondaryDocs
	case errors.As(err, &respErr):
		message = gitHubMessage(respErr)
		docs = respErr.DocumentationURL
	}
	apiErr.Message = clip(message, maxMessage)
	apiErr.rateLimited, apiErr.RetryAfter = gitHubWait(code, resp.Header, message, docs, now)
	// GitHub's answer for a commit that is not in the repository
	// (kubernetes/test-infra#21987, rust-lang/homu#141).
	apiErr.unknownCommit = code == http.StatusUnprocessableEntity && strings.HasPrefix(message, "No commit found for SHA")
	return apiErr
}

// secondaryDocs is the end of the documentation_url of GitHub's
// secondary-limit refusals, which go-github also goes by.
const secondaryDocs = "#about-secondary-rate-limits"

// gitHubWait reads a refusal as GitHub's rate-limit docs describe it
// (docs.github.com/rest/using-the-rest-api/rate-limits-for-the-rest-api,
// "Exceeding the rate limit"), and says whether it is a rate limit and how
// long to wait before the next request:
//
//   - primary limit: 403 or 429 with x-ratelimit-remaining 0; wait until
//     x-ratelimit-reset (UTC epoch seconds);
//   - secondary limit: 403 or 429 whose message says so; wait retry-after
//     seconds if given, else until x-ratelimit-reset if remaining is 0, else
//     at least one minute.
//
// Any other answer waits its Retry-After, if any (a 503 may send one).
func gitHubWait(code int, h http.Header, message, docs string, now time.Time) (limited bool, wait time.Duration) {
	if code != http.StatusForbidden && code != http.StatusTooManyRequests {
		return false, retryAfter(h, now)
	}
	exhausted := h.Get("X-Ratelimit-Remaining") == "0"
	secondary := strings.Contains(strings.ToLower(message), "secondary rate limit") ||
		strings.HasSuffix(docs, "secondary-rate-limits") || strings.HasSuffix(docs, "#abuse-rate-limits")
	if !exhausted && !secondary {
		return code == http.StatusTooManyRequests, retryAfter(h, now)
	}
	if secondary {
		if d := retryAfter(h, now); d > 0 {
			return true, d
		}
	}
	if reset, err := strconv.ParseInt(h.Get("X-Ratelimit-Reset"), 10, 64); exhausted && err == nil {
		return true, untilCapped(time.Unix(reset, 0), now)
	}
	return true, time.Minute
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
