package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestPackagesImportOnlyDownstream enforces the direction of data flow:
// server -> deploy -> builder -> notifier, with the store recording through
// an interface deploy defines. Each package may import only the packages of
// flakeship listed for it (tests are not counted).
func TestPackagesImportOnlyDownstream(t *testing.T) {
	const mod = "github.com/flakeship/flakeship/"
	allowed := map[string][]string{
		"config":   {"forge"},
		"forge":    {},
		"builder":  {"config"},
		"notifier": {"forge", "config"},
		"deploy":   {"config", "forge", "builder", "notifier"},
		"store":    {"deploy", "forge"},
		"server":   {"config", "forge", "deploy"},
		"cli":      {"config", "deploy", "forge"},
		"metrics":  {"deploy", "forge"},
	}
	out, err := exec.Command("go", "list", "-f", `{{.ImportPath}} {{join .Imports " "}}`, "./...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	seen := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		fields := strings.Fields(line)
		pkg := strings.TrimPrefix(fields[0], mod)
		ok, listed := allowed[pkg]
		if !listed {
			continue // main, internal test helpers
		}
		seen[pkg] = true
		for _, dep := range fields[1:] {
			if !strings.HasPrefix(dep, mod) {
				continue
			}
			dep = strings.TrimPrefix(dep, mod)
			if !contains(ok, dep) {
				t.Errorf("%s imports %s; it may import only %v", pkg, dep, ok)
			}
		}
	}
	for pkg := range allowed {
		if !seen[pkg] {
			t.Errorf("package %s was not found by go list", pkg)
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
