package notifier

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"code.gitea.io/sdk/gitea"
	"github.com/google/go-github/v60/github"

	"github.com/flakeship/flakeship/forge"
)

func TestRetryAfterHeader(t *testing.T) {
	now := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name, value string
		want        time.Duration
	}{
		{name: "absent", value: "", want: 0},
		{name: "seconds", value: "7", want: 7 * time.Second},
		{name: "negative seconds", value: "-3", want: 0},
		{name: "zero", value: "0", want: 0},
		{name: "leading zeros", value: "007", want: 7 * time.Second},
		{name: "absurd seconds are capped at an hour", value: "99999999999", want: time.Hour},
		{name: "seconds past uint64 are capped, not ignored", value: "123456789012345678901234567890", want: time.Hour},
		{name: "a plus sign is not delay-seconds", value: "+3", want: 0},
		{name: "a fraction is not delay-seconds", value: "1.5", want: 0},
		{name: "a date ahead", value: now.Add(90 * time.Second).Format(http.TimeFormat), want: 90 * time.Second},
		{name: "an RFC 850 date ahead", value: "Wednesday, 01-May-24 12:01:30 GMT", want: 90 * time.Second},
		{name: "an RFC 850 date in another zone than GMT", value: "Wednesday, 01-May-24 12:01:30 PST", want: 0},
		{name: "an asctime date ahead", value: now.Add(90 * time.Second).Format(time.ANSIC), want: 90 * time.Second},
		{name: "a date two days ahead is capped", value: now.Add(48 * time.Hour).Format(http.TimeFormat), want: time.Hour},
		{name: "a date gone by", value: now.Add(-time.Minute).Format(http.TimeFormat), want: 0},
		{name: "garbage", value: "soon", want: 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{}
			if tc.value != "" {
				h.Set("Retry-After", tc.value)
			}
			if got := retryAfter(h, now); got != tc.want {
				t.Errorf("retryAfter(%q) = %v, want %v", tc.value, got, tc.want)
			}
		})
	}
}

func TestTemporarySortsErrors(t *testing.T) {
	// What a notifier refuses before any request: a status that will
	// never be valid.
	invalid := (&GitHub{poster: poster{forge: "github"}}).post(context.Background(), forge.Status{Repo: "app"})
	tests := []struct {
		name string
		err  error
		want bool
		wait time.Duration
	}{
		{name: "500", err: &APIError{StatusCode: 500}, want: true},
		{name: "502", err: &APIError{StatusCode: 502}, want: true},
		{name: "503", err: &APIError{StatusCode: 503}, want: true},
		{name: "429", err: &APIError{StatusCode: 429}, want: true},
		{name: "GitHub's rate-limit 403", err: &APIError{StatusCode: 403, rateLimited: true}, want: true},
		{name: "400", err: &APIError{StatusCode: 400}, want: false},
		{name: "401", err: &APIError{StatusCode: 401}, want: false},
		{name: "403", err: &APIError{StatusCode: 403}, want: false},
		{name: "404", err: &APIError{StatusCode: 404}, want: false},
		{name: "422", err: &APIError{StatusCode: 422}, want: false},
		{name: "a wrapped 502", err: fmt.Errorf("post: %w", &APIError{StatusCode: 502}), want: true},
		{name: "connection refused", err: &url.Error{Op: "Post", URL: "http://x", Err: &net.OpError{Op: "dial", Err: errors.New("connection refused")}}, want: true},
		{name: "connection dropped", err: &url.Error{Op: "Post", URL: "http://x", Err: io.EOF}, want: true},
		{name: "an untrusted certificate", err: &url.Error{Op: "Post", URL: "https://x", Err: &tls.CertificateVerificationError{Err: x509.UnknownAuthorityError{}}}, want: false},
		{name: "a status refused before any request", err: invalid, want: false},
		{name: "a 429 with a wait", err: &APIError{StatusCode: 429, RetryAfter: 7 * time.Second}, want: true, wait: 7 * time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got, wait := Temporary(tc.err); got != tc.want || wait != tc.wait {
				t.Errorf("Temporary(%v) = %v, %v; want %v, %v", tc.err, got, wait, tc.want, tc.wait)
			}
		})
	}
}

func TestGitHubErrorReadsRateLimits(t *testing.T) {
	now := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	reset := fmt.Sprint(now.Add(10 * time.Minute).Unix())
	// answer is GitHub's answer: code, headers (every GitHub answer has
	// the x-ratelimit-* ones) and JSON body, read by go-github as the
	// notifier reads it.
	answer := func(code int, remaining string, extra http.Header, body string) (*github.Response, error) {
		h := http.Header{
			"X-Ratelimit-Limit": {"5000"}, "X-Ratelimit-Remaining": {remaining},
			"X-Ratelimit-Reset": {reset}, "X-Ratelimit-Resource": {"core"},
		}
		for k, v := range extra {
			h[k] = v
		}
		r := &http.Response{StatusCode: code, Status: fmt.Sprint(code), Header: h,
			Body: io.NopCloser(strings.NewReader(body)), Request: &http.Request{Method: "POST", URL: &url.URL{Path: "/repos/o/r/statuses/x"}}}
		return &github.Response{Response: r}, github.CheckResponse(r)
	}
	const (
		primary   = `{"message":"API rate limit exceeded for user ID 1.","documentation_url":"https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"}`
		secondary = `{"message":"You have exceeded a secondary rate limit. Please wait a few minutes before you try again.","documentation_url":"https://docs.github.com/free-pro-team@latest/rest/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits"}`
	)
	tests := []struct {
		name          string
		code          int
		remaining     string
		extra         http.Header
		body          string
		wantTemporary bool
		wantAfter     time.Duration
		wantMessage   string
	}{
		{name: "a primary limit (403) waits until its reset", code: 403, remaining: "0", body: primary,
			wantTemporary: true, wantAfter: 10 * time.Minute, wantMessage: "API rate limit exceeded for user ID 1."},
		{name: "a primary limit (429) waits until its reset", code: 429, remaining: "0", body: primary,
			wantTemporary: true, wantAfter: 10 * time.Minute, wantMessage: "API rate limit exceeded for user ID 1."},
		{name: "a secondary limit (403) waits its retry-after", code: 403, remaining: "4990", extra: http.Header{"Retry-After": {"120"}}, body: secondary,
			wantTemporary: true, wantAfter: 2 * time.Minute, wantMessage: "You have exceeded a secondary rate limit. Please wait a few minutes before you try again."},
		{name: "a secondary limit (429) waits its retry-after", code: 429, remaining: "4990", extra: http.Header{"Retry-After": {"30"}}, body: secondary,
			wantTemporary: true, wantAfter: 30 * time.Second, wantMessage: "You have exceeded a secondary rate limit. Please wait a few minutes before you try again."},
		{name: "a secondary limit with remaining 0 waits until the reset", code: 403, remaining: "0", body: secondary,
			wantTemporary: true, wantAfter: 10 * time.Minute, wantMessage: "You have exceeded a secondary rate limit. Please wait a few minutes before you try again."},
		{name: "a secondary limit without a hint waits a minute, not until the hour's reset", code: 403, remaining: "4990", body: secondary,
			wantTemporary: true, wantAfter: time.Minute, wantMessage: "You have exceeded a secondary rate limit. Please wait a few minutes before you try again."},
		{name: "a 503 waits its Retry-After", code: 503, remaining: "4990", extra: http.Header{"Retry-After": {"5"}}, body: `{"message":"Service Unavailable"}`,
			wantTemporary: true, wantAfter: 5 * time.Second, wantMessage: "Service Unavailable"},
		{name: "a validation error names its fields", code: 422, remaining: "4990",
			body:        `{"message":"Validation Failed","errors":[{"resource":"Status","field":"description","code":"custom","message":"description is too long (maximum is 140 characters)"},{"resource":"Status","field":"state","code":"invalid"}]}`,
			wantMessage: "Validation Failed; description is too long (maximum is 140 characters); state invalid"},
		{name: "a plain 403 is final", code: 403, remaining: "4990", body: `{"message":"Resource not accessible by integration"}`,
			wantMessage: "Resource not accessible by integration"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, gerr := answer(tc.code, tc.remaining, tc.extra, tc.body)
			err := gitHubError(resp, gerr, now)
			var apiErr *APIError
			if !errors.As(err, &apiErr) {
				t.Fatalf("err = %#v, want *APIError", err)
			}
			if apiErr.StatusCode != tc.code || apiErr.Temporary() != tc.wantTemporary || apiErr.RetryAfter != tc.wantAfter || apiErr.Message != tc.wantMessage {
				t.Errorf("got %+v (temporary %v), want code %d, temporary %v, retry after %v, message %q",
					apiErr, apiErr.Temporary(), tc.code, tc.wantTemporary, tc.wantAfter, tc.wantMessage)
			}
		})
	}

	netErr := &url.Error{Op: "Post", URL: "https://api.github.com/", Err: io.EOF}
	if err := gitHubError(nil, netErr, now); err != netErr {
		t.Errorf("without an answer: err = %v, want the network error as is", err)
	}
	created := &github.Response{Response: &http.Response{StatusCode: 201, Header: http.Header{}}}
	if err := gitHubError(created, errors.New("unexpected EOF"), now); err != nil {
		t.Errorf("a 201 with an unreadable body: err = %v, want nil (the status is stored)", err)
	}
}

func TestForgejoErrorKeepsOnlyAMessageWorthReading(t *testing.T) {
	now := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	answer := func(code int, h http.Header) *gitea.Response {
		if h == nil {
			h = http.Header{}
		}
		return &gitea.Response{Response: &http.Response{StatusCode: code, Status: fmt.Sprintf("%d %s", code, http.StatusText(code)), Header: h}}
	}
	tests := []struct {
		name string
		resp *gitea.Response
		err  error
		want string
	}{
		{name: "the forge's message is kept", resp: answer(403, nil), err: errors.New("user should have specific permission"),
			want: "403 Forbidden: user should have specific permission"},
		{name: "a dump of a non-JSON answer is dropped", resp: answer(502, nil),
			err: errors.New("unknown API error: 502\nRequest: '/api/v1/repos/o/r/statuses/x' with 'POST' method and '<html>bad gateway</html>' body"), want: "502 Bad Gateway"},
		{name: "a JSON answer without a message is dropped", resp: answer(500, nil), err: errors.New(`500 Internal Server Error: {"error":"x"}`),
			want: "500 Internal Server Error"},
		{name: "a long message is clipped to one line", resp: answer(422, nil), err: errors.New(strings.Repeat("bad\n", 100)),
			want: "422 Unprocessable Entity: " + strings.TrimSpace(strings.Repeat("bad ", 50)) + "..."},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := forgejoError(tc.resp, tc.err, now)
			if err == nil || err.Error() != tc.want {
				t.Errorf("err = %q, want %q", err, tc.want)
			}
		})
	}

	if err := forgejoError(answer(429, http.Header{"Retry-After": {"4"}}), errors.New("rate limited"), now); err.(*APIError).RetryAfter != 4*time.Second {
		t.Errorf("429 with Retry-After 4: %+v, want a 4s wait", err)
	}
	netErr := &url.Error{Op: "Post", URL: "https://codeberg.org/api/v1/", Err: io.EOF}
	if err := forgejoError(nil, netErr, now); err != netErr {
		t.Errorf("without an answer: err = %v, want the network error as is", err)
	}
	if err := forgejoError(answer(201, nil), errors.New("invalid character"), now); err != nil {
		t.Errorf("a 201 with an unreadable body: err = %v, want nil (the status is stored)", err)
	}
}
