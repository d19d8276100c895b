package config

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// The types of the fields of globalEnv and targetEnv that check their own
// values: env calls UnmarshalText with the variable's value (or default),
// and the error is the problem Load reports for the variable, so it says
// what is wrong and what is allowed, and never quotes a secret. Load fills
// defaults that depend on other settings through the same method (vars.fill).

// listenAddr is FLAKESHIP_LISTEN: host:port with a numeric port.
type listenAddr string

func (a *listenAddr) UnmarshalText(b []byte) error {
	s := string(b)
	_, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("want host:port, got %q", clip(s))
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || strconv.FormatUint(n, 10) != port {
		return fmt.Errorf("want host:port with a port from 0 to 65535, got %q", clip(s))
	}
	*a = listenAddr(s)
	return nil
}

// baseURL is an http(s) URL without query or fragment, kept without its
// trailing slashes (FLAKESHIP_PUBLIC_URL, a FORGE_URL).
type baseURL string

func (u *baseURL) UnmarshalText(b []byte) error {
	s := string(b)
	parsed, err := parseHTTPURL(s)
	if err != nil {
		return err
	}
	if parsed.RawQuery != "" || parsed.ForceQuery || parsed.Fragment != "" {
		return fmt.Errorf("want a base URL without query or fragment, got %s", quoteURL(s))
	}
	*u = baseURL(strings.TrimRight(s, "/"))
	return nil
}

// healthURL is a HEALTH_URL: an http(s) URL without fragment.
type healthURL string

func (u *healthURL) UnmarshalText(b []byte) error {
	s := string(b)
	parsed, err := parseHTTPURL(s)
	if err != nil {
		return err
	}
	if parsed.Fragment != "" {
		return fmt.Errorf("want a URL without fragment, got %s", quoteURL(s))
	}
	*u = healthURL(s)
	return nil
}

// cloneURL is a CLONE_URL, what go-git should fetch from: http(s) and file
// URLs and absolute paths. Anything else (ssh, git's "ext::" transport, a
// string that could be read as an option) is refused.
type cloneURL string

func (c *cloneURL) UnmarshalText(b []byte) error {
	raw := string(b)
	if strings.HasPrefix(raw, "/") {
		if hasControl(raw) {
			return fmt.Errorf("want an absolute path without control characters, got %q", clip(raw))
		}
		*c = cloneURL(raw)
		return nil
	}
	scheme, _, _ := strings.Cut(raw, "://")
	switch strings.ToLower(scheme) {
	case "http", "https":
		if _, err := parseHTTPURL(raw); err != nil {
			return err
		}
	case "file":
		u, err := url.Parse(raw)
		if err != nil || u.User != nil || (u.Host != "" && u.Host != "localhost") ||
			!strings.HasPrefix(u.Path, "/") || u.RawQuery != "" || u.Fragment != "" {
			return fmt.Errorf("want file:///absolute/path, got %s", quoteURL(raw))
		}
	default:
		return fmt.Errorf("want an http(s):// or file:// URL or an absolute path, got %s", quoteURL(raw))
	}
	*c = cloneURL(raw)
	return nil
}

// parseHTTPURL parses an absolute http(s) URL without credentials (put them
// in a TOKEN, which is a secret). Its errors never quote a credential.
func parseHTTPURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // without the URL
		}
		return nil, fmt.Errorf("want an absolute http(s) URL: %v", err)
	}
	if u.User != nil {
		return nil, errors.New("want a URL without credentials (user:password@)")
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Opaque != "" || u.Hostname() == "" {
		return nil, fmt.Errorf("want an absolute http(s) URL, got %s", quoteURL(raw))
	}
	return u, nil
}

// quoteURL quotes a URL for an error message unless it may hold
// credentials (anything with an '@').
func quoteURL(raw string) string {
	if strings.Contains(raw, "@") {
		return "a value with '@' (not shown: it may hold credentials)"
	}
	return strconv.Quote(clip(raw))
}

// program is FLAKESHIP_NIX: a program name on PATH or an absolute path.
type program string

func (p *program) UnmarshalText(b []byte) error {
	s := string(b)
	if strings.HasPrefix(s, "-") || hasControl(s) || (strings.Contains(s, "/") && !filepath.IsAbs(s)) {
		return fmt.Errorf("want a program name on PATH or an absolute path, got %q", clip(s))
	}
	*p = program(s)
	return nil
}

// shellWords is FLAKESHIP_NIX_FLAGS split as a shell would (splitWords).
// The flags may carry credentials, so its errors never quote them.
type shellWords []string

func (w *shellWords) UnmarshalText(b []byte) error {
	words, err := splitWords(string(b))
	*w = words
	return err
}

// logLevel is FLAKESHIP_LOG_LEVEL: debug, info, warn or error, in any case
// (not slog.Level's own UnmarshalText, which takes offsets like "info+2").
type logLevel slog.Level

func (l *logLevel) UnmarshalText(b []byte) error {
	levels := map[string]slog.Level{"debug": slog.LevelDebug, "info": slog.LevelInfo, "warn": slog.LevelWarn, "error": slog.LevelError}
	level, ok := levels[strings.ToLower(string(b))]
	if !ok {
		return errInvalid
	}
	*l = logLevel(level)
	return nil
}

// logFormat is FLAKESHIP_LOG_FORMAT: "text" or "json", in any case.
type logFormat string

func (f *logFormat) UnmarshalText(b []byte) error {
	switch s := strings.ToLower(string(b)); s {
	case "text", "json":
		*f = logFormat(s)
		return nil
	}
	return errInvalid
}

// networks is FLAKESHIP_TRUSTED_PROXIES: a comma-separated list of IP
// addresses and CIDR networks. An address is the network of that address
// alone, and an IPv4 address written as IPv6 (::ffff:a.b.c.d) is taken as
// IPv4, as the server sees its peers. A blank list is nil.
type networks []netip.Prefix

func (n *networks) UnmarshalText(b []byte) error {
	list := string(b)
	*n = nil
	if strings.TrimSpace(list) == "" {
		return nil
	}
	for _, item := range strings.Split(list, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			return fmt.Errorf("empty entry in %q: want IP addresses or CIDR networks separated by commas", clip(list))
		}
		p, err := netip.ParsePrefix(item)
		if !strings.Contains(item, "/") {
			var a netip.Addr
			if a, err = netip.ParseAddr(item); err == nil && a.Zone() != "" {
				err = errInvalid
			}
			p = netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen())
		}
		if err != nil {
			return fmt.Errorf("want an IP address or a CIDR network like 10.0.0.0/8, got %q", clip(item))
		}
		*n = append(*n, p.Masked())
	}
	return nil
}

// days is FLAKESHIP_KEEP_FOR: whole days ("90d") or a Go duration
// ("2160h"); its field's tags bound it.
type days time.Duration

func (d *days) UnmarshalText(b []byte) error {
	s := string(b)
	if n, ok := strings.CutSuffix(s, "d"); ok {
		// A million days is far past any bound and far from overflow.
		count, err := strconv.Atoi(n)
		if err != nil || count < 0 || count > 1_000_000 {
			return errInvalid
		}
		*d = days(time.Duration(count) * 24 * time.Hour)
		return nil
	}
	parsed, err := time.ParseDuration(s)
	if err != nil {
		return errInvalid
	}
	*d = days(parsed)
	return nil
}

// targetList is FLAKESHIP_TARGETS: valid target names, each once, no two
// configured by the same variables.
type targetList []string

func (l *targetList) UnmarshalText(b []byte) error {
	list := string(b)
	if strings.TrimSpace(list) == "" {
		return errRequired
	}
	var names []string
	prefixes := map[string]string{} // variable prefix -> target name
	for _, name := range strings.Split(list, ",") {
		name = strings.TrimSpace(name)
		if name == "" {
			return fmt.Errorf("empty target name in %q", clip(list))
		}
		if err := ValidateTargetName(name); err != nil {
			return err
		}
		if slices.Contains(names, name) {
			return fmt.Errorf("target %q is listed twice", name)
		}
		p := targetVarPrefix(name)
		if other, ok := prefixes[p]; ok {
			return fmt.Errorf("targets %q and %q would both be configured by %s* variables", other, name, p)
		}
		prefixes[p] = name
		names = append(names, name)
	}
	*l = names
	return nil
}

// The types of values validate.go checks.
type (
	repoName string // REPO (ValidateRepo)
	branch   string // BRANCH (ValidateBranch)
	attrPath string // ATTR (ValidateAttr)
	unitName string // UNIT (ValidateUnit)
)

func (r *repoName) UnmarshalText(b []byte) error { return setChecked(r, b, ValidateRepo) }
func (r *branch) UnmarshalText(b []byte) error   { return setChecked(r, b, ValidateBranch) }
func (a *attrPath) UnmarshalText(b []byte) error { return setChecked(a, b, ValidateAttr) }
func (u *unitName) UnmarshalText(b []byte) error { return setChecked(u, b, ValidateUnit) }

func setChecked[T ~string](p *T, b []byte, check func(string) error) error {
	if err := check(string(b)); err != nil {
		return err
	}
	*p = T(b)
	return nil
}

// absPath is a PROFILE: an absolute path, kept clean.
type absPath string

func (p *absPath) UnmarshalText(b []byte) error {
	s := string(b)
	if !filepath.IsAbs(s) || hasControl(s) {
		return fmt.Errorf("want an absolute path, got %q", clip(s))
	}
	*p = absPath(filepath.Clean(s))
	return nil
}

// statusContext is a STATUS_CONTEXT: 1 to 255 printable characters.
type statusContext string

func (c *statusContext) UnmarshalText(b []byte) error {
	s := string(b)
	if utf8.RuneCountInString(s) > 255 || !utf8.ValidString(s) ||
		strings.IndexFunc(s, func(r rune) bool { return !unicode.IsPrint(r) }) >= 0 {
		return fmt.Errorf("want 1 to 255 printable characters, got %q", clip(s))
	}
	*c = statusContext(s)
	return nil
}

// maxSecretFile bounds what a *_FILE secret may hold, so a wrong path (a
// device, a huge file) fails fast instead of filling memory.
const maxSecretFile = 64 << 10

// secretFile is the secret read from the file a *_FILE variable names
// (trimmed of one trailing newline, which editors add). Errors name the
// file, never its content.
type secretFile Secret

func (s *secretFile) UnmarshalText(b []byte) error {
	path := string(b)
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	content, err := io.ReadAll(io.LimitReader(f, maxSecretFile+1))
	if err != nil {
		return err
	}
	if len(content) > maxSecretFile {
		return fmt.Errorf("file %q is larger than %d bytes", clip(path), maxSecretFile)
	}
	value := string(content)
	if rest, ok := strings.CutSuffix(value, "\n"); ok { // one \n or \r\n
		value = strings.TrimSuffix(rest, "\r")
	}
	if value == "" {
		return fmt.Errorf("file %q is empty", clip(path))
	}
	*s = secretFile(value)
	return nil
}

func hasControl(s string) bool {
	return strings.IndexFunc(s, unicode.IsControl) >= 0
}
