package config

import (
	"fmt"
	"regexp"
	"strings"
)

var (
	shaRE = regexp.MustCompile(`^[0-9a-f]{40}$`)
	// The owner starts with a letter or digit (as GitHub and Forgejo user
	// names do); the name may not start with '-', so neither part can be
	// read as an option.
	repoRE       = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}/[A-Za-z0-9_.][A-Za-z0-9_.-]{0,99}$`)
	targetNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)
	unitRE       = regexp.MustCompile(`^[A-Za-z0-9:_.@\\-]{1,255}\.(service|target|socket|timer|path|mount)$`)
	attrRE       = regexp.MustCompile(`^[A-Za-z0-9_.'"+-]{1,512}$`)
)

// ValidateSHA checks that sha is a full, lower-case 40-hex commit id that is
// not the all-zero id forges use for "no commit".
func ValidateSHA(sha string) error {
	if !shaRE.MatchString(sha) {
		return fmt.Errorf("want a 40-character lower-case hex commit id, got %q", clip(sha))
	}
	if sha == strings.Repeat("0", 40) {
		return fmt.Errorf("the all-zero commit id names no commit")
	}
	return nil
}

// ValidateBranch checks a branch name (without "refs/heads/") against git's
// ref rules (git check-ref-format) and refuses names that could be read as an
// option or escape a URL query.
func ValidateBranch(b string) error {
	switch {
	case b == "":
		return fmt.Errorf("branch name is empty")
	case len(b) > 255:
		return fmt.Errorf("branch name is longer than 255 bytes")
	case strings.HasPrefix(b, "-"):
		return fmt.Errorf("branch name %q starts with '-'", clip(b))
	case strings.HasPrefix(b, "refs/"):
		return fmt.Errorf("branch name %q must not start with refs/", clip(b))
	case strings.Contains(b, ".."), strings.Contains(b, "//"), strings.Contains(b, "@{"),
		strings.HasPrefix(b, "/"), strings.HasSuffix(b, "/"), strings.HasSuffix(b, "."),
		strings.HasSuffix(b, ".lock"), b == "@":
		return fmt.Errorf("branch name %q is not a valid git ref", clip(b))
	}
	for _, part := range strings.Split(b, "/") {
		// git check-ref-format: no component starts with '.' or ends in ".lock".
		if strings.HasPrefix(part, ".") || strings.HasSuffix(part, ".lock") {
			return fmt.Errorf("branch name %q is not a valid git ref", clip(b))
		}
	}
	for _, r := range b {
		if r < 0x20 || r == 0x7f || strings.ContainsRune(" ~^:?*[\\&#%", r) {
			return fmt.Errorf("branch name %q contains %q", clip(b), r)
		}
	}
	return nil
}

// ValidateRepo checks an "owner/name" repository name.
func ValidateRepo(repo string) error {
	owner, name, _ := strings.Cut(repo, "/")
	if !repoRE.MatchString(repo) || strings.Contains(repo, "..") || owner == "." || name == "." {
		return fmt.Errorf("want owner/name, got %q", clip(repo))
	}
	return nil
}

// ValidateTargetName checks a target name: lower-case letters, digits, '-'
// and '_', starting with a letter or digit, at most 63 characters.
func ValidateTargetName(name string) error {
	if !targetNameRE.MatchString(name) {
		return fmt.Errorf("target name %q: want lower-case letters, digits, '-' or '_', starting with a letter or digit", clip(name))
	}
	return nil
}

// ValidateUnit checks a systemd unit name.
func ValidateUnit(unit string) error {
	// systemd's limit is 255 bytes for the whole name, suffix included; a
	// template ("app@.service") cannot be started without an instance.
	base := unit[:max(strings.LastIndexByte(unit, '.'), 0)]
	// A name starts with a letter, digit, '_' or ':' and has no "..": it
	// can then never be read as an option, a hidden file or a path step.
	if !unitRE.MatchString(unit) || len(unit) > 255 || strings.HasPrefix(unit, "-") || strings.HasPrefix(unit, ".") ||
		strings.Contains(unit, "..") || strings.HasSuffix(base, "@") {
		return fmt.Errorf("want a systemd unit name like app.service, got %q", clip(unit))
	}
	return nil
}

// ValidateAttr checks a flake output attribute path.
func ValidateAttr(attr string) error {
	if !attrRE.MatchString(attr) || strings.HasPrefix(attr, "-") || strings.HasPrefix(attr, ".") {
		return fmt.Errorf("want a flake attribute path like packages.x86_64-linux.default, got %q", clip(attr))
	}
	return nil
}

// clip shortens untrusted input before it is quoted in an error.
func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}
