package main

import (
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"syscall"
	"testing"
)

// TestSessionsHostsAndProxiesOfTheBinary runs the flakeship binary, which
// builds nothing here (the target is never deployed): a page session
// survives a restart over the same state directory and ends when flakeship
// starts with another admin token; a request for another host is refused
// while webhooks and health still answer; and behind the trusted proxy one
// client's wrong tokens do not lock out another.
func TestSessionsHostsAndProxiesOfTheBinary(t *testing.T) {
	state := t.TempDir()
	const admin, rotated = "admin-token-e2e-sessions-4b1d", "admin-token-e2e-rotated-77e0"
	env := func(token string) []string {
		return []string{
			"PATH=" + os.Getenv("PATH"),
			"HOME=" + state,
			"FLAKESHIP_LISTEN=127.0.0.1:0",
			"FLAKESHIP_PUBLIC_URL=https://deploy.example.test",
			"FLAKESHIP_STATE_DIR=" + state,
			"FLAKESHIP_ADMIN_TOKEN=" + token,
			"FLAKESHIP_TRUSTED_PROXIES=127.0.0.1",
			"FLAKESHIP_TARGETS=app",
			"FLAKESHIP_TARGET_APP_FORGE=github",
			"FLAKESHIP_TARGET_APP_REPO=acme/app",
			"FLAKESHIP_TARGET_APP_CLONE_URL=http://127.0.0.1:1/nowhere.git",
			"FLAKESHIP_TARGET_APP_ACTIVATE=none",
			"FLAKESHIP_TARGET_APP_WEBHOOK_SECRET=hook-secret-e2e-sessions",
		}
	}
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	send := func(f *flakeship, method, path string, h http.Header, form url.Values) (*http.Response, string) {
		t.Helper()
		var body io.Reader
		if form != nil {
			body = strings.NewReader(form.Encode())
		}
		req, err := http.NewRequest(method, f.base+path, body)
		if err != nil {
			t.Fatal(err)
		}
		for k, vs := range h {
			req.Header[k] = vs
		}
		if form != nil {
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		}
		if host := h.Get("Host"); host != "" {
			req.Host = host
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp, string(b)
	}
	withCookie := func(value string) http.Header {
		return http.Header{"Cookie": {"__Host-flakeship_session=" + value}}
	}
	operator := func(f *flakeship, cookie string) bool {
		resp, body := send(f, http.MethodGet, "/", withCookie(cookie), nil)
		return resp.StatusCode == http.StatusOK && strings.Contains(body, ">operator<")
	}

	f := startFlakeship(t, env(admin))
	resp, _ := send(f, http.MethodPost, "/login", nil, url.Values{"token": {admin}})
	var cookie string
	for _, c := range resp.Cookies() {
		if c.Name == "__Host-flakeship_session" {
			cookie = c.Value
		}
	}
	if resp.StatusCode != http.StatusSeeOther || cookie == "" || !operator(f, cookie) {
		t.Fatalf("login: %d, cookie %q; want 303 and an operator's session\n%s", resp.StatusCode, cookie, f.logs.String())
	}

	// Hosts.
	for _, tc := range []struct {
		method, path, host string
		want               int
	}{
		{http.MethodGet, "/api/targets", "evil.example", http.StatusMisdirectedRequest},
		{http.MethodGet, "/", "evil.example", http.StatusMisdirectedRequest},
		{http.MethodGet, "/deploys/1", "evil.example", http.StatusMisdirectedRequest},
		{http.MethodGet, "/api/targets", "deploy.example.test", http.StatusOK},
		{http.MethodGet, "/healthz", "evil.example", http.StatusOK},
		{http.MethodPost, "/hooks/github", "evil.example", http.StatusBadRequest}, // answered: the headers are missing
	} {
		resp, body := send(f, tc.method, tc.path, http.Header{"Host": {tc.host}}, nil)
		t.Logf("%s %s with Host %s: %d %s", tc.method, tc.path, tc.host, resp.StatusCode, strings.TrimSpace(body))
		if resp.StatusCode != tc.want {
			t.Errorf("%s %s with Host %s: %d, want %d", tc.method, tc.path, tc.host, resp.StatusCode, tc.want)
		}
	}

	// Wrong tokens behind the trusted proxy (this test's connections come
	// from 127.0.0.1).
	cancel := func(client, token string) int {
		resp, _ := send(f, http.MethodPost, "/api/deploys/4242/cancel",
			http.Header{"Authorization": {"Bearer " + token}, "X-Forwarded-For": {client}}, nil)
		return resp.StatusCode
	}
	for i := 0; i < 10; i++ {
		if got := cancel("203.0.113.10", fmt.Sprintf("guess-%d", i)); got != http.StatusUnauthorized {
			t.Fatalf("wrong token %d: %d, want 401", i, got)
		}
	}
	a, b := cancel("203.0.113.10", admin), cancel("198.51.100.20", admin)
	t.Logf("after 10 wrong tokens from client A behind the proxy: A's right token %d, B's right token %d", a, b)
	if a != http.StatusTooManyRequests || b != http.StatusNotFound {
		t.Errorf("A's right token %d, B's %d; want 429 and 404 (no such deploy)", a, b)
	}

	// Restarts.
	f.stop(syscall.SIGTERM)
	f = startFlakeship(t, env(admin))
	kept := operator(f, cookie)
	f.stop(syscall.SIGTERM)
	f = startFlakeship(t, env(rotated))
	afterRotation := operator(f, cookie)
	t.Logf("the session after a restart with the same admin token: operator %v; after a restart with another: operator %v", kept, afterRotation)
	if !kept {
		t.Errorf("the session did not survive a restart with the same admin token\n%s", f.logs.String())
	}
	if afterRotation {
		t.Error("the session survived a change of the admin token")
	}
	f.stop(syscall.SIGTERM)
	for _, secret := range []string{admin, rotated, cookie} {
		if strings.Contains(f.logs.String(), secret) {
			t.Errorf("the log holds a token or the session id")
		}
	}
}
