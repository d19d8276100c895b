package config

import (
	"strings"
	"testing"
)

// FuzzValidateBranch checks that an accepted branch name can never be read
// as an option or step out of a URL query or a ref path.
func FuzzValidateBranch(f *testing.F) {
	for _, s := range []string{"main", "release/1.x", "--upload-pack=x", "a..b", "a b", "refs/heads/x", "x.lock", "", "@", "a/.b", "a?b", "a&b", "a#b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b string) {
		if ValidateBranch(b) != nil {
			return
		}
		if strings.HasPrefix(b, "-") || strings.Contains(b, "..") || strings.ContainsAny(b, " \t\n\x00?&#%:\\~^*[") ||
			strings.HasPrefix(b, "/") || strings.HasSuffix(b, "/") || strings.HasPrefix(b, "refs/") {
			t.Fatalf("ValidateBranch accepted %q", b)
		}
	})
}

// FuzzValidateSHA checks that only full lower-case hex ids other than the
// all-zero one pass.
func FuzzValidateSHA(f *testing.F) {
	for _, s := range []string{strings.Repeat("a", 40), strings.Repeat("0", 40), strings.Repeat("A", 40), "abc", "--x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if ValidateSHA(s) != nil {
			return
		}
		if len(s) != 40 || strings.Trim(s, "0123456789abcdef") != "" || s == strings.Repeat("0", 40) {
			t.Fatalf("ValidateSHA accepted %q", s)
		}
	})
}

// FuzzValidateNames checks target, repository, unit and attribute names:
// nothing accepted starts like an option, holds white space, a path step up
// or a shell or URL metacharacter.
func FuzzValidateNames(f *testing.F) {
	for _, s := range []string{"app", "owner/repo", "app.service", "packages.x86_64-linux.default", "-x", "../x", "a b", "a;b", "a$b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		for name, validate := range map[string]func(string) error{
			"target": ValidateTargetName, "repo": ValidateRepo, "unit": ValidateUnit, "attr": ValidateAttr,
		} {
			if validate(s) != nil {
				continue
			}
			if strings.HasPrefix(s, "-") || strings.ContainsAny(s, " \t\n\x00;$`|&<>(){}") || strings.Contains(s, "..") && name != "attr" {
				t.Fatalf("%s validation accepted %q", name, s)
			}
		}
	})
}
