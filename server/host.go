package server

import (
	"net"
	"net/netip"
	"net/url"
	"strings"

	"github.com/gofiber/fiber/v2"

	"github.com/flakeship/flakeship/config"
)

// The pages and the API answer only to this server's own host names: a
// DNS-rebinding page (evil.example, which resolves to this server once the
// browser has loaded it) runs in the browser of an operator who can reach
// flakeship, and would otherwise read an open API, or act with the
// operator's session, as if it were the same site. The browser sends the
// name it resolved in Host, so a request is answered only when its Host
// names:
//
//   - the host of the public URL;
//   - the host of the listen address; when that is a wildcard (0.0.0.0,
//     [::] or none), any IP address, since this server cannot know all of
//     its own, and an address cannot be rebound;
//   - loopback: localhost, 127.0.0.0/8, ::1.
//
// Host names are compared without case and without a trailing dot; ports
// are not compared: a rebinding page can choose the port but not the name,
// and the same name on another port (a proxy's upstream, a direct check on
// the listen port) is this server still. A request from a trusted proxy
// (FLAKESHIP_TRUSTED_PROXIES) is judged by its X-Forwarded-For's sibling
// X-Forwarded-Host when it has one: the proxy's own Host is often its
// upstream's name.
//
// Webhooks (/hooks/...), /healthz and /metrics answer to any host: forges
// and scrapers call them by whatever name they were given, a webhook is
// authenticated by its signature, health tells nothing, and metrics, which
// hold counters and target names but no logs or tokens, need the read token
// when one is configured like every other read.

// hostPolicy is the set of host names the pages and the API answer to.
type hostPolicy struct {
	names map[string]bool // normalised (see normalHost)
	anyIP bool            // the listen address is a wildcard
}

// newHostPolicy returns the host names of cfg's public URL and listen
// address, and localhost.
func newHostPolicy(cfg *config.Config) hostPolicy {
	p := hostPolicy{names: map[string]bool{"localhost": true}}
	if u, err := url.Parse(cfg.PublicURL); err == nil {
		p.add(u.Hostname())
	}
	if host, _, err := net.SplitHostPort(cfg.Listen); err == nil {
		if a, err := netip.ParseAddr(host); host == "" || (err == nil && a.IsUnspecified()) {
			p.anyIP = true
		} else {
			p.add(host)
		}
	}
	return p
}

func (p hostPolicy) add(host string) {
	if h := normalHost(host); h != "" {
		p.names[h] = true
	}
}

// allows reports whether a request for host (a Host header's value: a name
// or an IP address, with or without a port) may be answered.
func (p hostPolicy) allows(host string) bool {
	h := normalHost(stripPort(host))
	if h == "" {
		return false
	}
	if a, err := netip.ParseAddr(h); err == nil && (a.IsLoopback() || p.anyIP) {
		return true
	}
	return p.names[h]
}

// normalHost is the form host names are compared in: lower case, without a
// trailing dot, an IP address in its canonical form without brackets or
// zone (an IPv4 address written as IPv6 as IPv4). Brackets around anything
// but an IPv6 address make no host: "".
func normalHost(host string) string {
	if inner, ok := strings.CutPrefix(host, "["); ok {
		inner, ok = strings.CutSuffix(inner, "]")
		a, err := netip.ParseAddr(inner)
		if !ok || err != nil || !a.Is6() {
			return ""
		}
		return a.Unmap().WithZone("").String()
	}
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	if a, err := netip.ParseAddr(host); err == nil {
		return a.Unmap().WithZone("").String()
	}
	return host
}

// stripPort returns the host of a Host header's value: "[::1]:8080" is
// "[::1]", "example.org:8080" "example.org", and a bare IPv6 address stays
// whole.
func stripPort(host string) string {
	if strings.HasPrefix(host, "[") {
		if end := strings.IndexByte(host, ']'); end > 0 {
			return host[:end+1]
		}
		return host
	}
	if strings.Count(host, ":") == 1 {
		host, _, _ = strings.Cut(host, ":")
	}
	return host
}

// anyHost reports whether the route at path answers to any host, matched
// as fiber routes (any case, optional trailing slash).
func anyHost(path string) bool {
	p := strings.TrimSuffix(strings.ToLower(path), "/")
	return strings.HasPrefix(p, "/hooks/") || p == "/healthz" || p == "/metrics"
}

// checkHost answers 421 Misdirected Request to a request for the pages or
// the API that names a host this server does not answer to.
func (s *Server) checkHost(c *fiber.Ctx) error {
	if anyHost(c.Path()) {
		return c.Next()
	}
	host := string(c.Request().Host())
	if fwd := s.forwardedHost(c); fwd != "" {
		host = fwd
	}
	if s.hosts.allows(host) {
		return c.Next()
	}
	s.log.Info("request for another host refused", "host", clip(host), "method", c.Method(),
		"path", clip(c.Path()), "client", s.clientIP(c))
	return s.writeError(c, s.log, misdirected("this flakeship does not answer to that host name: "+
		"use the host of its public URL, its listen address, or localhost"))
}

// forwardedHost returns the host a trusted proxy says the client asked
// for: the last X-Forwarded-Host entry, which that proxy wrote; "" when the
// peer is not a trusted proxy or sent none.
func (s *Server) forwardedHost(c *fiber.Ctx) string {
	if !s.trusted(peerAddr(c)) {
		return ""
	}
	values := c.Request().Header.PeekAll(fiber.HeaderXForwardedHost)
	if len(values) == 0 {
		return ""
	}
	last := string(values[len(values)-1])
	if i := strings.LastIndexByte(last, ','); i >= 0 {
		last = last[i+1:]
	}
	return strings.TrimSpace(last)
}
