package main

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestNoSecretReachesLogsPagesOrAnswers runs a deploy with every kind of
// secret configured (webhook secret, forge token, admin token, read token),
// exercises the webhooks, the API, the pages and the metrics with and
// without the right credentials, and then looks for each secret in
// everything flakeship said: its own log, each deploy's log, and every
// answer. None may hold one.
func TestNoSecretReachesLogsPagesOrAnswers(t *testing.T) {
	a := newApp(t, "github")
	admin, read := "admin-token-5ecr3t-91f2", "read-token-5ecr3t-c07a"
	a.extraEnv = append(a.extraEnv, "FLAKESHIP_ADMIN_TOKEN="+admin, "FLAKESHIP_READ_TOKEN="+read)
	f := a.start()
	secrets := map[string]string{"webhook secret": a.secret, "forge token": a.token, "admin token": admin, "read token": read}

	var answers bytes.Buffer
	record := func(what string, resp *http.Response, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		defer resp.Body.Close()
		fmt.Fprintf(&answers, "== %s: %d\n", what, resp.StatusCode)
		for k, vs := range resp.Header {
			fmt.Fprintf(&answers, "%s: %s\n", k, strings.Join(vs, ", "))
		}
		b, _ := io.ReadAll(resp.Body)
		answers.Write(b)
		answers.WriteByte('\n')
	}
	do := func(what, method, path string, header http.Header, body io.Reader) {
		t.Helper()
		req, err := http.NewRequest(method, f.base+path, body)
		if err != nil {
			t.Fatal(err)
		}
		for k, vs := range header {
			req.Header[k] = vs
		}
		resp, err := http.DefaultClient.Do(req)
		record(what, resp, err)
	}
	bearer := func(tok string) http.Header { return http.Header{"Authorization": {"Bearer " + tok}} }

	// Webhooks: a good push, the same with a wrong signature.
	sha, d := a.push(healthy)
	code, body := d.send(t, f.base)
	fmt.Fprintf(&answers, "== webhook: %d\n%s\n", code, body)
	bad := d
	bad.header = d.header.Clone()
	bad.header.Set("X-Hub-Signature-256", "sha256="+strings.Repeat("0", 64))
	code, body = bad.send(t, f.base)
	fmt.Fprintf(&answers, "== webhook with a wrong signature: %d\n%s\n", code, body)
	var id int64 = 1
	// Reads need the read token; the deploy finishes.
	waitFor(t, time.Minute, func() bool {
		req, _ := http.NewRequest(http.MethodGet, fmt.Sprintf("%s/api/deploys/%d", f.base, id), nil)
		req.Header = bearer(read)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return bytes.Contains(b, []byte(`"state":"succeeded"`))
	}, func() string { return "the deploy did not succeed" })
	a.waitStatus(sha, "success")

	// The API, with no token, wrong tokens and the right ones.
	for _, p := range []string{"/api/targets", "/api/deploys", "/api/deploys/1", "/api/deploys/1/log", "/metrics"} {
		do("GET "+p+" without a token", http.MethodGet, p, nil, nil)
		do("GET "+p+" with a wrong token", http.MethodGet, p, bearer(read+"x"), nil)
		do("GET "+p+" with the read token", http.MethodGet, p, bearer(read), nil)
	}
	do("GET log in the URL", http.MethodGet, "/api/deploys/1/log?token="+url.QueryEscape(read), nil, nil)
	do("deploy with the read token", http.MethodPost, "/api/targets/app/deploy", bearer(read), strings.NewReader("{}"))
	do("deploy with a wrong token", http.MethodPost, "/api/targets/app/deploy", bearer(admin[:10]), strings.NewReader("{}"))
	do("deploy with a bad sha", http.MethodPost, "/api/targets/app/deploy", bearer(admin), strings.NewReader(`{"sha":"not-a-sha"}`))
	do("cancel of a finished deploy", http.MethodPost, "/api/deploys/1/cancel", bearer(admin), nil)

	// The pages, before and after logging in.
	jar, _ := cookiejar.New(nil)
	browser := &http.Client{Jar: jar}
	for _, p := range []string{"/", "/deploys/1", "/login"} {
		resp, err := browser.Get(f.base + p)
		record("page "+p+" without a session", resp, err)
	}
	resp, err := browser.PostForm(f.base+"/login", url.Values{"token": {admin + "-wrong"}})
	record("login with a wrong token", resp, err)
	resp, err = browser.PostForm(f.base+"/login", url.Values{"token": {admin}})
	record("login with the admin token", resp, err)
	for _, p := range []string{"/", "/deploys/1", "/deploys/1/events"} {
		resp, err := browser.Get(f.base + p)
		record("page "+p, resp, err)
	}
	for _, ck := range jar.Cookies(mustURL(t, f.base)) {
		fmt.Fprintf(&answers, "== cookie %s=%s\n", ck.Name, ck.Value)
	}
	f.stop(syscall.SIGTERM)

	// The look went where the secrets are used: authorised reads, the
	// logged-in pages, and refusals.
	for _, want := range []string{`"state":"succeeded"`, "Deploy #1", "Redeploy", "== GET /metrics with the read token: 200", "== deploy with a wrong token: 401"} {
		if !strings.Contains(answers.String(), want) {
			t.Errorf("the answers lack %q: the test did not exercise what it claims", want)
		}
	}

	// Everything flakeship said.
	said := map[string]string{"flakeship's log": f.logs.String(), "HTTP answers": answers.String()}
	logs, _ := filepath.Glob(filepath.Join(a.stateDir, "logs", "*.log"))
	if len(logs) == 0 {
		t.Fatal("no deploy log written")
	}
	for _, p := range logs {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		said["deploy log "+filepath.Base(p)] = string(b)
	}
	for where, text := range said {
		for name, secret := range secrets {
			if strings.Contains(text, secret) {
				t.Errorf("the %s appears in %s", name, where)
			}
		}
	}
	t.Logf("looked for %d secrets in %d bytes of logs and answers", len(secrets), len(f.logs.String())+answers.Len())
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}
