package config_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/flakeship/flakeship/internal/testenv"
)

// moduleEvaluation is what testdata/module-standin.nix returns: the module's
// options that have no default, and its failed assertions' messages.
type moduleEvaluation struct {
	WithoutDefault struct {
		Global []string `json:"global"`
		Target []string `json:"target"`
	} `json:"withoutDefault"`
	Assertions []string `json:"assertions"`
}

// evalModule evaluates nix/module.nix itself (not only environment.nix) on
// settings, with the builtins-only stand-in for nixpkgs' lib.
func evalModule(t *testing.T, settings string) moduleEvaluation {
	t.Helper()
	var m moduleEvaluation
	evalNixJSON(t, `import ./testdata/module-standin.nix { settings = `+settings+`; }`, &m)
	return m
}

// TestNixModuleNamesMissingRequiredOptions checks that a target left
// without a required setting meets the module's own assertion, which names
// the option and what to set, and not NixOS's generic "used but not
// defined" error, which fires first for any option without a default.
func TestNixModuleNamesMissingRequiredOptions(t *testing.T) {
	testenv.Require(t, "nix")

	m := evalModule(t, `{ enable = true; targets.web = { }; }`)
	if len(m.WithoutDefault.Global) > 0 || len(m.WithoutDefault.Target) > 0 {
		t.Errorf("options without a default (NixOS would report them as used but not defined): services.flakeship.%v, services.flakeship.targets.<name>.%v",
			m.WithoutDefault.Global, m.WithoutDefault.Target)
	}
	for _, want := range []string{
		"services.flakeship.targets.web.forge: required",
		"services.flakeship.targets.web.repo: required",
		"services.flakeship.targets.web.webhookSecretFile: required",
	} {
		if !slices.ContainsFunc(m.Assertions, func(a string) bool { return strings.HasPrefix(a, want) }) {
			t.Errorf("no assertion says %q; the module's assertions: %q", want, m.Assertions)
		}
	}

	// The control: a target with all three set asserts nothing, and a
	// module that is not enabled asserts nothing either.
	if m := evalModule(t, `{ enable = true; targets.web = { forge = "github"; repo = "acme/web"; webhookSecretFile = "/run/keys/web"; }; }`); len(m.Assertions) > 0 {
		t.Errorf("a complete target: the module asserts %q", m.Assertions)
	}
	if m := evalModule(t, `{ targets.web = { }; }`); len(m.Assertions) > 0 {
		t.Errorf("a module that is not enabled asserts %q", m.Assertions)
	}
}
