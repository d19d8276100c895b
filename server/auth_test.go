package server

import (
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"testing"

	"github.com/flakeship/flakeship/config"
)

var (
	// trustedLoopback trusts the proxy the tests play: their connections
	// come from 127.0.0.1 unless they say otherwise.
	trustedLoopback = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
)

// Two clients behind the proxy, as its X-Forwarded-For names them.
const (
	clientA = "203.0.113.10"
	clientB = "198.51.100.20"
)

func TestWrongTokensCountPerClientBehindATrustedProxy(t *testing.T) {
	t.Parallel()
	r := newAPIRig(t, rigOptions{admin: testAdminToken, trusted: append([]netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, trustedLoopback...)})
	cancel := func(forwardedFor string, tok config.Secret) int {
		return r.do(apiRequest{method: http.MethodPost, path: "/api/deploys/4242/cancel", token: tok, forwardedFor: forwardedFor}).status
	}
	for i := 0; i < maxAuthFailures; i++ {
		if got := cancel(clientA, "guess"); got != http.StatusUnauthorized {
			t.Fatalf("wrong token %d from client A: %d, want 401", i, got)
		}
	}
	tests := []struct {
		name         string
		forwardedFor string
		token        config.Secret
		want         int
	}{
		{"client B's right token", clientB, testAdminToken, http.StatusNotFound},
		{"client B's wrong token, its first", clientB, "guess", http.StatusUnauthorized},
		{"client A's right token", clientA, testAdminToken, http.StatusTooManyRequests},
		{"client A posing as B in front of its own address", clientB + ", " + clientA, testAdminToken, http.StatusTooManyRequests},
		{"client A through a second trusted proxy", clientA + ", 10.0.0.7", testAdminToken, http.StatusTooManyRequests},
		{"client B through a second trusted proxy", clientB + ", 10.0.0.7", testAdminToken, http.StatusNotFound},
		{"client A's address with a port", clientA + ":51234", testAdminToken, http.StatusTooManyRequests},
		{"client A's address as IPv6-mapped IPv4", "::ffff:" + clientA, testAdminToken, http.StatusTooManyRequests},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := cancel(tc.forwardedFor, tc.token)
			t.Logf("X-Forwarded-For %q after %d wrong tokens from client A: %d", tc.forwardedFor, maxAuthFailures, got)
			if got != tc.want {
				t.Errorf("%d, want %d", got, tc.want)
			}
		})
	}
	if !strings.Contains(r.logs.String(), "client="+clientA) {
		t.Errorf("the log does not name client A as the client of the wrong tokens:\n%s", r.logs.String())
	}
}

func TestXForwardedForIsIgnoredUnlessThePeerIsATrustedProxy(t *testing.T) {
	tests := []struct {
		name    string
		trusted []netip.Prefix
		from    string // the peer's address
	}{
		{"no proxy is trusted", nil, "127.0.0.2"},
		{"the peer is not the trusted proxy", trustedLoopback, "127.0.0.2"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newAPIRig(t, rigOptions{admin: testAdminToken, trusted: tc.trusted})
			cancel := func(from, forwardedFor string, tok config.Secret) int {
				return r.do(apiRequest{method: http.MethodPost, path: "/api/deploys/4242/cancel", token: tok,
					from: from, forwardedFor: forwardedFor}).status
			}
			const warning = "requests carry X-Forwarded-For, but no proxy is trusted"
			// A request without the header gives no cause for the warning.
			if got := cancel("127.0.0.4", "", testAdminToken); got != http.StatusNotFound {
				t.Fatalf("a right token without X-Forwarded-For: %d, want 404", got)
			}
			if n := strings.Count(r.logs.String(), warning); n != 0 {
				t.Errorf("the warning about an untrusted X-Forwarded-For was logged %d times before any request carried one", n)
			}
			// Each guess claims another client: the header is not believed,
			// so they all count against the peer.
			for i := 0; i < maxAuthFailures; i++ {
				if got := cancel(tc.from, fmt.Sprintf("192.0.2.%d", i+1), "guess"); got != http.StatusUnauthorized {
					t.Fatalf("wrong token %d: %d, want 401", i, got)
				}
			}
			blocked := cancel(tc.from, "192.0.2.200", testAdminToken)
			other := cancel("127.0.0.3", "", testAdminToken)
			t.Logf("after %d wrong tokens from %s, each with another X-Forwarded-For: its right token %d, another peer's %d",
				maxAuthFailures, tc.from, blocked, other)
			if blocked != http.StatusTooManyRequests {
				t.Errorf("the peer's right token with a fresh X-Forwarded-For: %d, want 429", blocked)
			}
			if other != http.StatusNotFound {
				t.Errorf("another peer's right token: %d, want 404", other)
			}
			warned := strings.Count(r.logs.String(), warning)
			if want := map[bool]int{true: 1, false: 0}[tc.trusted == nil]; warned != want {
				t.Errorf("the warning about an untrusted X-Forwarded-For was logged %d times, want %d", warned, want)
			}
		})
	}
}

func TestRealClientReadsXForwardedForFromTheRight(t *testing.T) {
	nets := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("2001:db8:ffff::/48"), netip.MustParsePrefix("127.0.0.1/32")}
	trusted := func(a netip.Addr) bool {
		for _, p := range nets {
			if p.Contains(a) {
				return true
			}
		}
		return false
	}
	tests := []struct {
		name      string
		peer      string
		forwarded []string
		want      string
	}{
		{"an untrusted peer's header is not read", "192.0.2.1", []string{"203.0.113.1"}, "192.0.2.1"},
		{"a trusted peer without the header is the client", "10.0.0.1", nil, "10.0.0.1"},
		{"the address the proxy appended", "10.0.0.1", []string{"203.0.113.1"}, "203.0.113.1"},
		{"what the client wrote left of it does not count", "10.0.0.1", []string{"198.51.100.9, 203.0.113.1"}, "203.0.113.1"},
		{"past a chain of trusted proxies", "10.0.0.1", []string{"198.51.100.9, 203.0.113.1, 10.0.0.2, 10.1.2.3"}, "203.0.113.1"},
		{"headers in order, read from the last", "10.0.0.1", []string{"198.51.100.9", "203.0.113.1, 10.0.0.2"}, "203.0.113.1"},
		{"every address trusted: the leftmost", "10.0.0.1", []string{"10.0.0.3, 10.0.0.2"}, "10.0.0.3"},
		{"an entry that is no address stops at the last address read", "10.0.0.1", []string{"203.0.113.1, unknown, 10.0.0.2"}, "10.0.0.2"},
		{"an unreadable last entry leaves the peer", "10.0.0.1", []string{"203.0.113.1, _hidden"}, "10.0.0.1"},
		{"an address with a port", "10.0.0.1", []string{"203.0.113.1:4711"}, "203.0.113.1"},
		{"IPv6 with a port", "10.0.0.1", []string{"[2001:db8::1]:4711"}, "2001:db8::1"},
		{"IPv6 past a trusted IPv6 proxy", "2001:db8:ffff::1", []string{"2001:db8:1::5, 2001:db8:ffff::2"}, "2001:db8:1::5"},
		{"IPv4-mapped IPv6 is IPv4", "10.0.0.1", []string{"::ffff:203.0.113.1"}, "203.0.113.1"},
		{"a mapped trusted address is trusted", "10.0.0.1", []string{"203.0.113.1, ::ffff:10.0.0.2"}, "203.0.113.1"},
		{"empty entries are not addresses", "10.0.0.1", []string{""}, "10.0.0.1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := realClient(netip.MustParseAddr(tc.peer), tc.forwarded, trusted)
			if got.String() != tc.want {
				t.Errorf("realClient(%s, %q) = %s, want %s", tc.peer, tc.forwarded, got, tc.want)
			}
		})
	}
}
