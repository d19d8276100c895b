package server

import (
	"net/url"
	"regexp"
	"strings"
	"testing"
)

// redirectBase is where a login page that redirects to next lives.
var redirectBase = &url.URL{Scheme: "https", Host: "deploy.example.test", Path: "/login"}

// plainLocalPath is a path this flakeship's pages link to, with a query: a
// next that is one of these must be kept as it is.
var plainLocalPath = regexp.MustCompile(`^/([A-Za-z0-9._~-]+(/[A-Za-z0-9._~-]*)*)?(\?[A-Za-z0-9._~=&+-]*)?$`)

// browserView is what a browser makes of a Location before it resolves it
// (WHATWG URL): C0 controls and spaces trimmed from both ends, ASCII tabs
// and newlines dropped anywhere, and, in an http(s) URL, a backslash read
// as a slash.
func browserView(loc string) string {
	loc = strings.TrimFunc(loc, func(r rune) bool { return r <= ' ' })
	return strings.Map(func(r rune) rune {
		switch r {
		case '\t', '\n', '\r':
			return -1
		case '\\':
			return '/'
		}
		return r
	}, loc)
}

// FuzzSafeNext holds the open-redirect guard of the login page to its
// claim: whatever next comes in, the redirect goes to a path of this
// site, as net/url and as a browser read it; a plain local path is kept.
func FuzzSafeNext(f *testing.F) {
	for _, s := range []string{
		// What the pages send: the path a reader was sent away from.
		"/", "/deploys/12", "/deploys/12/events?offset=40", "/targets/app", "/?x=1#top",
		// What an attacker sends instead.
		"//evil.example/x", "/\\evil.example", "\\\\evil.example", "/\t/evil.example", "/\n/evil.example",
		" //evil.example", "https://evil.example/", "javascript:alert(1)", "/%2F%2Fevil.example",
		"/x\r\nSet-Cookie: a=b", "\x00/x", "/x\x7f", "", "deploys/1", "/.//evil", "///evil.example",
		"/\\/evil.example", "http:/evil.example", "/@evil.example",
		"/#\r\nSet-Cookie: a=b", "/?x#\x1c",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, next string) {
		got := safeNext(next)
		if got != next && got != "/" {
			t.Fatalf("safeNext(%q) = %q: want next itself or /", next, got)
		}
		if !strings.HasPrefix(got, "/") || strings.HasPrefix(got, "//") || strings.HasPrefix(got, "/\\") {
			t.Fatalf("safeNext(%q) = %q: not a path that starts with a single slash", next, got)
		}
		for i := 0; i < len(got); i++ {
			if c := got[i]; c < ' ' || c == 0x7f {
				t.Fatalf("safeNext(%q) = %q: has the control character %#x", next, got, c)
			}
		}
		u, err := url.Parse(got)
		if err != nil || u.Scheme != "" || u.Host != "" || u.User != nil || u.Opaque != "" {
			t.Fatalf("safeNext(%q) = %q: net/url reads it as %#v, %v; want a path alone", next, got, u, err)
		}
		// The browser's reading: the same path, on this site.
		view := browserView(got)
		if !strings.HasPrefix(view, "/") || strings.HasPrefix(view, "//") {
			t.Fatalf("safeNext(%q) = %q: a browser reads it as %q, which leaves the site", next, got, view)
		}
		if to, err := redirectBase.Parse(view); err != nil || to.Scheme != redirectBase.Scheme || to.Host != redirectBase.Host {
			t.Fatalf("safeNext(%q) = %q: a browser goes to %v (%v)", next, got, to, err)
		}
		if safeNext(got) != got {
			t.Fatalf("safeNext(%q) = %q, but safeNext of that is %q", next, got, safeNext(got))
		}
		if plainLocalPath.MatchString(next) && !strings.HasPrefix(next, "//") && got != next {
			t.Fatalf("safeNext(%q) = %q: the local path was not kept", next, got)
		}
	})
}
