package server

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/flakeship/flakeship/config"
	"github.com/flakeship/flakeship/deploy"
)

// hostAnswer sends a request with the given Host (and more headers) from
// the loopback address from ("" for 127.0.0.1) and returns the status and
// body.
func (r *pageRig) hostAnswer(method, path, host, from string, h http.Header, body []byte) (int, string) {
	r.t.Helper()
	req, err := http.NewRequest(method, r.url+path, bytes.NewReader(body))
	if err != nil {
		r.t.Fatal(err)
	}
	if h != nil {
		req.Header = h.Clone()
	}
	req.Host = host
	client := clientFrom(from)
	client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err := client.Do(req)
	if err != nil {
		r.t.Fatalf("%s %s (Host %s): %v", method, path, host, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		r.t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

func TestPagesAndAPIAnswerOnlyToTheirOwnHostNames(t *testing.T) {
	t.Parallel()
	metrics := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "flakeship_up 1\n") })
	r := newPageRig(t, pageRigOptions{admin: pageAdminToken, trusted: trustedLoopback, metrics: metrics})
	_, port, err := net.SplitHostPort(strings.TrimPrefix(r.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}

	// A push delivered with any Host deploys: webhooks answer to any name.
	sha := r.commit(quick)
	body := readFile(t, "github/push-new-branch.json")
	body = edit(t, body, "Codertocat/Hello-World", "acme/app")
	body = edit(t, body, `"ref": "refs/heads/master"`, `"ref": "refs/heads/main"`)
	body = edit(t, body, helloSHA, sha)
	status, answer := r.hostAnswer(http.MethodPost, "/hooks/github", "evil.example", "",
		githubRequestHeader("push", body, config.Secret("hook-secret")), body)
	t.Logf("POST /hooks/github with Host evil.example: %d %s", status, strings.TrimSpace(answer))
	if status != http.StatusAccepted {
		t.Fatalf("a signed push with Host evil.example: %d %s, want 202", status, answer)
	}
	var queued struct {
		DeployID int64 `json:"deploy_id"`
	}
	if err := json.Unmarshal([]byte(answer), &queued); err != nil {
		t.Fatal(err)
	}
	if d := r.waitEnd(queued.DeployID); d.State != deploy.Succeeded {
		t.Fatalf("the pushed deploy: %s", d.State)
	}
	deployPath := fmt.Sprintf("/deploys/%d", queued.DeployID)

	refused := []struct {
		method, path, host string
	}{
		{http.MethodGet, "/api/targets", "evil.example"},
		{http.MethodGet, "/api/deploys", "evil.example"},
		{http.MethodGet, "/api" + deployPath + "/log", "evil.example"},
		{http.MethodPost, "/api/targets/app/deploy", "evil.example"},
		{http.MethodGet, "/", "evil.example"},
		{http.MethodGet, deployPath, "evil.example"},
		{http.MethodGet, deployPath + "/events", "evil.example"},
		{http.MethodGet, "/login", "evil.example:" + port},
		{http.MethodPost, "/login", "evil.example"},
		{http.MethodGet, "/static/style.css", "evil.example"},
		{http.MethodGet, "/api/targets", "deploy.example.test.evil.example"},
		{http.MethodGet, "/api/targets", "evil-deploy.example.test"},
		{http.MethodGet, "/api/targets", "localhost.evil.example"},
		{http.MethodGet, "/api/targets", "127.0.0.1.nip.io"},
		{http.MethodGet, "/api/targets", "192.0.2.1"},
	}
	for _, tc := range refused {
		t.Run(fmt.Sprintf("%s %s for %s is refused", tc.method, tc.path, tc.host), func(t *testing.T) {
			status, body := r.hostAnswer(tc.method, tc.path, tc.host, "", nil, nil)
			t.Logf("%d %s", status, strings.TrimSpace(body))
			if status != http.StatusMisdirectedRequest {
				t.Fatalf("%d %s, want 421", status, body)
			}
			var e map[string]string
			if err := json.Unmarshal([]byte(body), &e); err != nil || !strings.Contains(e["error"], "does not answer to that host") {
				t.Errorf("body %q, want a JSON error saying why", body)
			}
		})
	}

	answered := []struct {
		path, host string
		want       int
	}{
		{"/api/targets", "deploy.example.test", 200},
		{"/api/targets", "DEPLOY.Example.TEST.", 200},
		{"/api/targets", "deploy.example.test:8443", 200},
		{"/api/targets", "127.0.0.1:" + port, 200},
		{"/api/targets", "127.0.0.2", 200},
		{"/api/targets", "localhost:" + port, 200},
		{"/api/targets", "LOCALHOST", 200},
		{"/api/targets", "[::1]:" + port, 200},
		{"/", "deploy.example.test", 200},
		{deployPath, "127.0.0.1:" + port, 200},
		{"/healthz", "evil.example", 200},
		{"/metrics", "evil.example", 200},
		{"/HEALTHZ/", "evil.example", 200},
	}
	for _, tc := range answered {
		t.Run(fmt.Sprintf("GET %s for %s is answered", tc.path, tc.host), func(t *testing.T) {
			if status, body := r.hostAnswer(http.MethodGet, tc.path, tc.host, "", nil, nil); status != tc.want {
				t.Errorf("%d %s, want %d", status, body, tc.want)
			}
		})
	}

	// A trusted proxy's X-Forwarded-Host is the host judged; anyone
	// else's is not read.
	forwarded := []struct {
		name, host, forwardedHost, from string
		want                            int
	}{
		{"a trusted proxy forwarding a request for evil.example", "127.0.0.1:" + port, "evil.example", "", 421},
		{"a trusted proxy forwarding a request for the public host, to its upstream's name", "flakeship-upstream", "deploy.example.test", "", 200},
		{"a trusted proxy's last X-Forwarded-Host is the one it wrote", "flakeship-upstream", "deploy.example.test, evil.example", "", 421},
		{"an untrusted peer claiming the public host", "evil.example", "deploy.example.test", "127.0.0.2", 421},
		{"an untrusted peer's X-Forwarded-Host is not read", "127.0.0.2:" + port, "evil.example", "127.0.0.2", 200},
	}
	for _, tc := range forwarded {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{"X-Forwarded-Host": {tc.forwardedHost}}
			if status, body := r.hostAnswer(http.MethodGet, "/api/targets", tc.host, tc.from, h, nil); status != tc.want {
				t.Errorf("%d %s, want %d", status, body, tc.want)
			}
		})
	}
}

func TestHostPolicy(t *testing.T) {
	tests := []struct {
		name      string
		listen    string
		publicURL string
		allowed   []string
		refused   []string
	}{
		{
			name: "behind a proxy on loopback", listen: "127.0.0.1:8080", publicURL: "https://deploy.example.com",
			allowed: []string{"deploy.example.com", "deploy.example.com:443", "Deploy.Example.Com.", "127.0.0.1:8080",
				"127.9.9.9", "localhost", "localhost:8080", "[::1]:8080", "::1", "[::ffff:127.0.0.1]"},
			refused: []string{"evil.example", "", ":8080", "10.0.0.5:8080", "[2001:db8::1]:8080", "deploy.example.com.evil.example",
				"xdeploy.example.com", "deploy.example.com:443:1", "[deploy.example.com]"},
		},
		{
			name: "listening everywhere", listen: ":8080", publicURL: "http://localhost:8080",
			allowed: []string{"10.0.0.5:8080", "[2001:db8::1]:8080", "192.0.2.7", "localhost"},
			refused: []string{"evil.example", "host.internal", "10.0.0.5.nip.io"},
		},
		{
			name: "listening on every IPv6 address", listen: "[::]:8080", publicURL: "https://deploy.example.com",
			allowed: []string{"10.0.0.5", "[fe80::1%25eth0]", "deploy.example.com"},
			refused: []string{"evil.example"},
		},
		{
			name: "listening on one address by name", listen: "ci-runner.lan:9000", publicURL: "https://10.1.2.3:8443/flakeship",
			allowed: []string{"ci-runner.lan:9000", "CI-RUNNER.LAN", "10.1.2.3", "10.1.2.3:8443"},
			refused: []string{"10.1.2.4", "runner.lan", "evil.example"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := newHostPolicy(&config.Config{Listen: tc.listen, PublicURL: tc.publicURL})
			for _, h := range tc.allowed {
				if !p.allows(h) {
					t.Errorf("Host %q refused, want it answered", h)
				}
			}
			for _, h := range tc.refused {
				if p.allows(h) {
					t.Errorf("Host %q answered, want it refused", h)
				}
			}
		})
	}
}
