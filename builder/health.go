package builder

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"
)

// healthTryTimeout bounds one health request.
const healthTryTimeout = 2 * time.Second

// newHealthClient is the HTTP client of health checks. Every check opens a
// fresh connection, because a kept-alive one may lead to the process that
// was just restarted away, and goes straight to the app, never through an
// HTTP proxy from the environment.
func newHealthClient() *http.Client {
	return &http.Client{
		Timeout: healthTryTimeout,
		Transport: &http.Transport{
			Proxy:             nil,
			DisableKeepAlives: true,
		},
	}
}

// parseHealthURL checks that u is an absolute http or https URL and returns
// the form of it to show, without a password.
func parseHealthURL(u string) (display string, err error) {
	parsed, err := url.Parse(u)
	if err != nil {
		return "", errors.New("health url: not a URL") // url's error would quote a password
	}
	if (parsed.Scheme != "http" && parsed.Scheme != "https") || parsed.Host == "" {
		return "", fmt.Errorf("health url %q: want http:// or https:// and a host", parsed.Redacted())
	}
	return parsed.Redacted(), nil
}

// checkHealth GETs u once. It returns the status code when the app
// answered, and an error unless that was 2xx: what it answered, or why it
// could not. Errors show u as display.
func checkHealth(ctx context.Context, client *http.Client, u, display string) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, healthTryTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return 0, fmt.Errorf("health %s: new request", display)
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, fmt.Errorf("health: %w", err) // *url.Error names the URL without its password
	}
	defer resp.Body.Close()
	// Drain a little so the server sees a whole exchange; the body is unused.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return resp.StatusCode, fmt.Errorf("health %s answered %s", display, resp.Status)
	}
	return resp.StatusCode, nil
}
