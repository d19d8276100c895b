package config

import (
	"strings"
	"testing"
)

func TestValidators(t *testing.T) {
	tests := []struct {
		name     string
		validate func(string) error
		in       string
		wantErr  string // "" when in is valid
	}{
		{"sha", ValidateSHA, "0123456789abcdef0123456789abcdef01234567", ""},
		{"sha upper-case", ValidateSHA, "0123456789ABCDEF0123456789ABCDEF01234567", `want a 40-character lower-case hex commit id, got "0123456789ABCDEF0123456789ABCDEF01234567"`},
		{"sha short", ValidateSHA, "abc1234", `want a 40-character lower-case hex commit id, got "abc1234"`},
		// Errors quote up to 80 bytes of a value whole, and mark a cut with "...".
		{"sha of 80 bytes quoted whole", ValidateSHA, strings.Repeat("z", 80), `want a 40-character lower-case hex commit id, got "` + strings.Repeat("z", 80) + `"`},
		{"sha of 81 bytes quoted cut", ValidateSHA, strings.Repeat("z", 81), `want a 40-character lower-case hex commit id, got "` + strings.Repeat("z", 80) + `..."`},
		{"sha all zero", ValidateSHA, strings.Repeat("0", 40), "the all-zero commit id names no commit"},

		{"branch", ValidateBranch, "main", ""},
		{"branch with slashes", ValidateBranch, "release/v1.2", ""},
		{"branch empty", ValidateBranch, "", "branch name is empty"},
		{"branch too long", ValidateBranch, strings.Repeat("b", 256), "branch name is longer than 255 bytes"},
		{"branch option", ValidateBranch, "--upload-pack=x", `branch name "--upload-pack=x" starts with '-'`},
		{"branch full ref", ValidateBranch, "refs/heads/main", `branch name "refs/heads/main" must not start with refs/`},
		{"branch dot dot", ValidateBranch, "a..b", `branch name "a..b" is not a valid git ref`},
		{"branch reflog", ValidateBranch, "a@{1}", `branch name "a@{1}" is not a valid git ref`},
		{"branch lock", ValidateBranch, "main.lock", `branch name "main.lock" is not a valid git ref`},
		{"branch lock component", ValidateBranch, "a.lock/b", `branch name "a.lock/b" is not a valid git ref`},
		{"branch dot component", ValidateBranch, "a/.b", `branch name "a/.b" is not a valid git ref`},
		{"branch trailing slash", ValidateBranch, "a/", `branch name "a/" is not a valid git ref`},
		{"branch at", ValidateBranch, "@", `branch name "@" is not a valid git ref`},
		{"branch space", ValidateBranch, "a b", `branch name "a b" contains ' '`},
		{"branch query", ValidateBranch, "a&rev=b", `branch name "a&rev=b" contains '&'`},
		{"branch newline", ValidateBranch, "a\nb", `branch name "a\nb" contains '\n'`},

		{"repo", ValidateRepo, "owner/app.js", ""},
		{"repo without owner", ValidateRepo, "app", `want owner/name, got "app"`},
		{"repo nested", ValidateRepo, "group/sub/app", `want owner/name, got "group/sub/app"`},
		{"repo dot dot", ValidateRepo, "owner/..", `want owner/name, got "owner/.."`},
		{"repo dot", ValidateRepo, "owner/.", `want owner/name, got "owner/."`},
		{"repo dot owner", ValidateRepo, "./app", `want owner/name, got "./app"`},
		{"repo owner like an option", ValidateRepo, "-/0", `want owner/name, got "-/0"`},
		{"repo name like an option", ValidateRepo, "owner/--upload-pack", `want owner/name, got "owner/--upload-pack"`},
		{"repo URL", ValidateRepo, "https://github.com/owner/app", `want owner/name, got "https://github.com/owner/app"`},

		{"target name", ValidateTargetName, "web-1_a", ""},
		{"target name upper-case", ValidateTargetName, "Web", `target name "Web": want lower-case letters, digits, '-' or '_', starting with a letter or digit`},
		{"target name leading dash", ValidateTargetName, "-web", `target name "-web": want lower-case letters, digits, '-' or '_', starting with a letter or digit`},
		{"target name too long", ValidateTargetName, strings.Repeat("a", 64), `target name "` + strings.Repeat("a", 64) + `": want lower-case letters, digits, '-' or '_', starting with a letter or digit`},

		{"unit", ValidateUnit, "app.service", ""},
		{"unit instance", ValidateUnit, `app@blue\x2d1.service`, ""},
		{"unit longest", ValidateUnit, strings.Repeat("u", 247) + ".service", ""},
		{"unit too long", ValidateUnit, strings.Repeat("u", 248) + ".service", `want a systemd unit name like app.service, got "` + clip(strings.Repeat("u", 248)+".service") + `"`},
		{"unit template", ValidateUnit, "app@.service", `want a systemd unit name like app.service, got "app@.service"`},
		{"unit without type", ValidateUnit, "app", `want a systemd unit name like app.service, got "app"`},
		{"unit option", ValidateUnit, "-app.service", `want a systemd unit name like app.service, got "-app.service"`},
		{"unit of dots", ValidateUnit, "..service", `want a systemd unit name like app.service, got "..service"`},
		{"unit with a path step", ValidateUnit, "a..b.service", `want a systemd unit name like app.service, got "a..b.service"`},
		{"unit with a space", ValidateUnit, "a b.service", `want a systemd unit name like app.service, got "a b.service"`},

		{"attr", ValidateAttr, "packages.x86_64-linux.default", ""},
		{"attr quoted", ValidateAttr, `nixosConfigurations."web.example".config.system.build.toplevel`, ""},
		{"attr option", ValidateAttr, "--impure", `want a flake attribute path like packages.x86_64-linux.default, got "--impure"`},
		{"attr leading dot", ValidateAttr, ".default", `want a flake attribute path like packages.x86_64-linux.default, got ".default"`},
		{"attr flake ref", ValidateAttr, "nixpkgs#hello", `want a flake attribute path like packages.x86_64-linux.default, got "nixpkgs#hello"`},
		{"attr empty", ValidateAttr, "", `want a flake attribute path like packages.x86_64-linux.default, got ""`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.validate(tc.in)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("%q: unexpected error %v", tc.in, err)
			case tc.wantErr != "" && (err == nil || err.Error() != tc.wantErr):
				t.Errorf("%q: error %v, want %s", tc.in, err, tc.wantErr)
			}
		})
	}
}
