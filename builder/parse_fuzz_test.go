package builder

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzParseBuildJSON holds parseBuildJSON to encoding/json's own reading of
// the same bytes: it accepts exactly one result whose outputs hold an
// absolute "out" path, returns that path, and refuses everything else with
// an error, never a panic. The seeds in testdata/fuzz/FuzzParseBuildJSON
// are what nix 2.8's `nix build --json --no-link` printed here for one
// installable, for a derivation with outputs out and dev (2.8 lists only
// out), for one without an out output, and for two installables. An
// absolute path that is not under /nix/store is accepted, as the function
// documents: a store may live elsewhere.
func FuzzParseBuildJSON(f *testing.F) {
	for _, seed := range []string{
		// The shape newer nix prints (2.19 and later add build times).
		`[{"drvPath":"/nix/store/cixawsrb0qn31xgqv03n5yahhzg172mn-fuzz-seed.drv","outputs":{"out":"/nix/store/jak92nlja6439j56fvmflmsax5ar7p0l-fuzz-seed"},"startTime":1700000000,"stopTime":1700000001}]`,
		`[]`, `null`, `{}`, `[null]`, `[{}]`, `[{"outputs":null}]`, `[{"outputs":{"out":""}}]`,
		`[{"outputs":{"out":"nix/store/x"}}]`, `[{"outputs":{"out":42}}]`, `[{"outputs":{"out":"/nix/store/x"}}] trailing`,
		`[{"OUTPUTS":{"out":"/nix/store/x"}}]`, `[{"outputs":{"out":"/nix/store/a"},"outputs":{"dev":"/nix/store/b"}}]`,
		`[{"outputs":{"OUT":"/nix/store/x"}}]`, "\xff", ``,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		out, err := parseBuildJSON(b)
		want, accept := decodeBuildJSON(b)
		switch {
		case err != nil && accept:
			t.Errorf("parseBuildJSON(%q) refused one result with out %q: %v", b, want, err)
		case err != nil && out != "":
			t.Errorf("parseBuildJSON(%q) = %q with error %v, want no path with an error", b, out, err)
		case err == nil && !accept:
			t.Errorf("parseBuildJSON(%q) = %q, but encoding/json reads no one result with an absolute out in it", b, out)
		case err == nil && out != want:
			t.Errorf("parseBuildJSON(%q) = %q, encoding/json reads out %q", b, out, want)
		}
	})
}

// decodeBuildJSON reads b with encoding/json's generic decoding, token by
// token, and says what a decoding into parseBuildJSON's result type gives:
// accept when b is a JSON array of exactly one object whose outputs hold an
// absolute "out", and that out. It follows the documented rules of
// decoding into a struct: a key matches a field in any case; each
// repetition of "outputs" is decoded into the same map (null clears it, an
// entry's null is ""); a value of the wrong type fails the whole decoding.
func decodeBuildJSON(b []byte) (out string, accept bool) {
	var results []json.RawMessage
	if err := json.Unmarshal(b, &results); err != nil || len(results) != 1 {
		return "", false
	}
	dec := json.NewDecoder(bytes.NewReader(results[0]))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return "", false // null, or not an object: no out
	}
	var outputs map[string]string
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return "", false
		}
		key, _ := tok.(string)
		var value any
		if err := dec.Decode(&value); err != nil {
			return "", false
		}
		switch {
		case strings.EqualFold(key, "drvPath"):
			if _, isString := value.(string); value != nil && !isString {
				return "", false
			}
		case strings.EqualFold(key, "outputs"):
			if value == nil {
				outputs = nil
				continue
			}
			m, isObject := value.(map[string]any)
			if !isObject {
				return "", false
			}
			if outputs == nil {
				outputs = map[string]string{}
			}
			for k, v := range m {
				s, isString := v.(string)
				if v != nil && !isString {
					return "", false
				}
				outputs[k] = s
			}
		}
	}
	out = outputs["out"]
	return out, out != "" && filepath.IsAbs(out)
}

// FuzzParseHealthURL holds parseHealthURL to net/url: it accepts exactly
// the URLs net/url parses with scheme http or https and a host, never
// panics, and never shows a password. The display form of an accepted URL
// parses back to the same scheme, host and path with the password masked,
// and can be requested as checkHealth does; an error never quotes a
// password. Seeds are in testdata/fuzz/FuzzParseHealthURL and below.
func FuzzParseHealthURL(f *testing.F) {
	for _, seed := range []string{
		"http://127.0.0.1:8080/healthz", "https://app.example:8443/health?deep=1",
		"http://user:hunter2@127.0.0.1:8080/healthz", "https://user@app.example/", "http://[::1]:80/",
		"HTTP://APP.EXAMPLE/x", "ftp://app.example/", "http:///healthz", "/healthz", "127.0.0.1:8080",
		"http://user:hunter2@", "ftp://user:hunter2@app.example/", "http://a b/", "http://app.example:port/",
		"http://%zz/", "", "http://app.example/\x00", "mailto:user:hunter2@app.example",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, u string) {
		display, err := parseHealthURL(u)
		parsed, parseErr := url.Parse(u)
		want := parseErr == nil && (parsed.Scheme == "http" || parsed.Scheme == "https") && parsed.Host != ""
		if (err == nil) != want {
			t.Fatalf("parseHealthURL(%q) error = %v; net/url says acceptable = %v (%v)", u, err, want, parseErr)
		}
		var password string
		var hadPassword bool
		if parseErr == nil {
			password, hadPassword = parsed.User.Password()
		}
		// A password that is also part of the rest of the URL cannot be
		// told apart from it in what is shown. Whether it is shown is
		// asked with a marker in its place: a short password ("a") may
		// well be a letter of the message or of the mask itself. The
		// marker goes where the password stands only if its one
		// occurrence, overlaps counted, is the literal password after the
		// user's colon: in "//000000:0:0@" the password "0:0" also starts
		// inside the user name, and a percent-encoded password may match
		// elsewhere.
		secret := password != "" && strings.Index(u, password) == strings.LastIndex(u, password) &&
			strings.Contains(u, ":"+password+"@")
		const marker = "Zq7pW9xK3mMarker"
		var markedDisplay string
		var markedErr error
		if secret {
			markedDisplay, markedErr = parseHealthURL(strings.Replace(u, password, marker, 1))
		}
		if err != nil {
			if display != "" {
				t.Errorf("parseHealthURL(%q) = %q with error %v, want no display with an error", u, display, err)
			}
			if secret && markedErr != nil && strings.Contains(markedErr.Error(), marker) {
				t.Errorf("parseHealthURL(%q): error %q shows the password", u, markedErr)
			}
			return
		}
		if secret && strings.Contains(markedDisplay, marker) {
			t.Errorf("parseHealthURL(%q) = %q, which shows the password", u, markedDisplay)
		}
		shown, err := url.Parse(display)
		if err != nil {
			t.Fatalf("parseHealthURL(%q) = %q, which does not parse: %v", u, display, err)
		}
		if shown.Scheme != parsed.Scheme || shown.Host != parsed.Host || shown.Path != parsed.Path {
			t.Errorf("parseHealthURL(%q) = %q: scheme, host or path differ from %q", u, display, parsed)
		}
		if masked, hasPassword := shown.User.Password(); hasPassword != hadPassword || (hadPassword && masked != "xxxxx") {
			t.Errorf("parseHealthURL(%q) = %q: want the password masked as xxxxx, or none when the URL has none", u, display)
		}
		if _, err := http.NewRequest(http.MethodGet, u, nil); err != nil {
			t.Errorf("parseHealthURL accepted %q, which checkHealth cannot request: %v", u, err)
		}
	})
}
