package notifier

import (
	"math/big"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

// FuzzRetryAfter holds retryAfter to RFC 9110 section 10.2.3: Retry-After is
// delay-seconds (1*DIGIT) or an HTTP-date (IMF-fixdate, or the obsolete RFC
// 850 and asctime forms a recipient must also accept, section 5.6.7). The
// wait is never negative and never above maxForgeWait; anything else is
// ignored (0).
func FuzzRetryAfter(f *testing.F) {
	now := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	for _, v := range []string{
		"", "0", "7", "007", "3600", "3601", "99999999999", "123456789012345678901234567890",
		"-3", "+3", "1.5", " 7", "7 ", "1e3", "0x10", "soon", "\x00",
		now.Add(90 * time.Second).Format(http.TimeFormat),
		now.Add(-time.Minute).Format(http.TimeFormat),
		now.Add(48 * time.Hour).Format(http.TimeFormat),
		"Wednesday, 01-May-24 12:01:30 GMT",
		"Wednesday, 01-May-24 12:01:30 UTC", // RFC 850 names GMT only
		"Wednesday, 01-May-24 12:01:30 PST",
		now.Add(90 * time.Second).Format(time.ANSIC),
		"Wed, 01 May 2024 12:01:30 UTC", // a zone other than GMT: not an HTTP-date
		"Wed, 01 May 2024 12:01:30",
	} {
		f.Add(v, int64(0))
	}
	f.Fuzz(func(t *testing.T, value string, shift int64) {
		at := now.Add(time.Duration(shift % int64(100*365*24*time.Hour)))
		h := http.Header{}
		h["Retry-After"] = []string{value}
		got := retryAfter(h, at)

		if got < 0 || got > maxForgeWait {
			t.Fatalf("retryAfter(%q) = %v, want between 0 and %v", value, got, maxForgeWait)
		}
		if want, ok := delaySeconds(value); ok {
			if got != want {
				t.Fatalf("retryAfter(%q) = %v, want delay-seconds %v", value, got, want)
			}
			return
		}
		if date, ok := httpDate(value); ok {
			want := date.Sub(at)
			want = max(0, min(want, maxForgeWait))
			if got != want {
				t.Fatalf("retryAfter(%q) at %s = %v, want %v", value, at, got, want)
			}
			return
		}
		if got != 0 {
			t.Fatalf("retryAfter(%q) = %v: neither delay-seconds nor an HTTP-date, want it ignored", value, got)
		}
	})
}

// delaySeconds is the oracle for delay-seconds: 1*DIGIT, read without a
// size limit, capped at maxForgeWait.
func delaySeconds(v string) (time.Duration, bool) {
	if v == "" {
		return 0, false
	}
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, false
		}
	}
	n, _ := new(big.Int).SetString(v, 10)
	if n.Cmp(big.NewInt(int64(maxForgeWait/time.Second))) > 0 {
		return maxForgeWait, true
	}
	return time.Duration(n.Int64()) * time.Second, true
}

// httpDate is the oracle for HTTP-date: the three formats of RFC 9110
// section 5.6.7, tried on their own; the first two name GMT and no other
// zone.
func httpDate(v string) (time.Time, bool) {
	for _, layout := range []string{"Mon, 02 Jan 2006 15:04:05 GMT", "Monday, 02-Jan-06 15:04:05 GMT", "Mon Jan _2 15:04:05 2006"} {
		if t, err := time.Parse(layout, v); err == nil {
			return t, true
		}
	}
	return time.Time{}, false
}

// FuzzParseBaseURL holds parseBaseURL to its doc: an accepted URL is
// absolute http or https with a host, no credentials, query or fragment,
// and a path ending in "/"; what it returns parses again to itself; and a
// refusal never shows a password given in the URL.
func FuzzParseBaseURL(f *testing.F) {
	for _, s := range []string{
		"https://api.github.com/", "https://github.example/api/v3", "http://127.0.0.1:8080",
		"https://codeberg.org/api/v1/", "http://[::1]:3000/forgejo", "HTTPS://Example.COM/a%2Fb",
		"ftp://github.example/", "codeberg.org", "//codeberg.org/", "https:///x", "http:opaque",
		"https://bot:hunter2-secret@codeberg.org/", "https://bot@codeberg.org/",
		"https://github.example/?x=1", "https://github.example/?", "https://github.example/#frag",
		"https://github.example/#", "http://[::1", "https://a b/", "https://h/%zz", "https://h/a%20b/",
		"https://h/a;b", "https://h:99999/", "https://h/\x7f",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		u, err := parseBaseURL(raw)
		if err != nil {
			if p, ok := password(raw); ok && len(p) >= 6 && strings.Contains(err.Error(), p) && !strings.Contains(withoutUserinfo(raw), p) {
				t.Fatalf("parseBaseURL(%q) error %q shows the password", raw, err)
			}
			return
		}
		switch {
		case u.Scheme != "http" && u.Scheme != "https":
			t.Fatalf("parseBaseURL(%q) took scheme %q", raw, u.Scheme)
		case u.Host == "":
			t.Fatalf("parseBaseURL(%q) took a URL without a host", raw)
		case u.User != nil:
			t.Fatalf("parseBaseURL(%q) took credentials", raw)
		case u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || u.RawFragment != "":
			t.Fatalf("parseBaseURL(%q) took a query or fragment: %#v", raw, u)
		case u.Opaque != "":
			t.Fatalf("parseBaseURL(%q) took an opaque URL", raw)
		case !strings.HasSuffix(u.Path, "/") || !strings.HasSuffix(u.String(), "/"):
			t.Fatalf("parseBaseURL(%q) = %q, want a path ending in /", raw, u)
		}
		again, err := parseBaseURL(u.String())
		if err != nil {
			t.Fatalf("parseBaseURL(%q) = %q, which it then refuses: %v", raw, u, err)
		}
		if again.String() != u.String() {
			t.Fatalf("parseBaseURL(%q) = %q, which parses again to %q", raw, u, again)
		}
	})
}

// password returns the password of raw's userinfo, if url.Parse finds one.
func password(raw string) (string, bool) {
	u, err := url.Parse(raw)
	if err != nil || u.User == nil {
		return "", false
	}
	return u.User.Password()
}

// withoutUserinfo is raw with everything between "://" and the last "@" of
// the authority cut out.
func withoutUserinfo(raw string) string {
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok {
		return raw
	}
	authority, path, _ := strings.Cut(rest, "/")
	if i := strings.LastIndex(authority, "@"); i >= 0 {
		authority = authority[i+1:]
	}
	return scheme + "://" + authority + "/" + path
}
