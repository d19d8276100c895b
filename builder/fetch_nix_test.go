package builder

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/flakeship/flakeship/internal/testenv"
)

// TestFetchCacheBuildsWithNix checks the contract between Fetch and nix: the
// bare cache Fetch leaves is enough for
// `nix build git+file://<cache>?ref=<branch>&rev=<sha>#<attr>` to build the
// exact commit, the branch head as well as an older commit of the branch,
// with nix's own git cache cold or warm.
func TestFetchCacheBuildsWithNix(t *testing.T) {
	testenv.Require(t, "git", "nix")
	e := newFetchEnv(t)
	system := testenv.System(t)
	flake := func(version string) map[string]string {
		return map[string]string{"flake.nix": fmt.Sprintf(`{
  outputs = { self }: {
    packages.%[1]s.default = derivation {
      name = "fetch-nix-test";
      system = "%[1]s";
      builder = "/bin/sh";
      args = [ "-c" "echo %[2]s > $out" ];
    };
  };
}
`, system, version)}
	}
	attr := "packages." + system + ".default"

	// A---B  main
	a := e.repo.Commit(t, "A", flake("v1"))
	b := e.repo.Commit(t, "B", flake("v2"))
	e.repo.Push(t, "main")

	warm := t.TempDir() // nix's git cache, kept from build to build
	build := func(t *testing.T, sha, nixCache, want string) {
		t.Helper()
		e.mustFetch(t, sha)
		ref := fmt.Sprintf("git+file://%s?ref=%s&rev=%s#%s", e.spec.CacheDir, e.spec.Branch, sha, attr)
		args := append(testenv.NixFlags(), "build", "--json", "--no-link", ref)
		cmd := exec.CommandContext(t.Context(), "nix", args...)
		cmd.Env = append(os.Environ(), "XDG_CACHE_HOME="+nixCache)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("nix build %s: %v\n%s", ref, err, stderr.String())
		}
		var results []struct {
			Outputs map[string]string `json:"outputs"`
		}
		if err := json.Unmarshal(out, &results); err != nil || len(results) != 1 {
			t.Fatalf("nix build --json printed %q (%v)", out, err)
		}
		got, err := os.ReadFile(results[0].Outputs["out"])
		if err != nil {
			t.Fatal(err)
		}
		if strings.TrimSpace(string(got)) != want {
			t.Fatalf("built %q from %s, want %q", got, sha[:7], want)
		}
	}

	t.Run("the branch head", func(t *testing.T) { build(t, b, warm, "v2") })
	t.Run("an older commit, nix cache warm", func(t *testing.T) { build(t, a, warm, "v1") })
	t.Run("an older commit, nix cache cold", func(t *testing.T) { build(t, a, t.TempDir(), "v1") })

	// A---B---C  main
	c := e.repo.Commit(t, "C", flake("v3"))
	e.repo.Push(t, "main")
	t.Run("a new head, nix cache warm", func(t *testing.T) { build(t, c, warm, "v3") })
}
