package builder

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/flakeship/flakeship/internal/testenv"
)

// TestNixCacheIsPerTargetAndResetRepairsIt shows what a nix killed in the
// middle of fetching leaves behind: a clone under the target's nix cache
// that is no git repository. Every later build fails until ResetCache.
func TestNixCacheIsPerTargetAndResetRepairsIt(t *testing.T) {
	testenv.Require(t, "git", "nix")
	repo := newFlakeRepo(t)
	spec := repo.spec()
	spec.NixCache = filepath.Join(t.TempDir(), "nix-cache", "app")
	version := fmt.Sprintf("2.%d", time.Now().UnixNano())
	var log bytes.Buffer
	if _, err := testNix().Build(context.Background(), spec, repo.commit("ok", map[string]string{"version": version + ".1"}), &log); err != nil {
		t.Fatalf("Build: %v\n%s", err, log.String())
	}
	clones, err := filepath.Glob(filepath.Join(spec.NixCache, "nix", "gitv3", "*"))
	if err != nil || len(clones) == 0 {
		t.Fatalf("nix kept no clone under the target's cache %s (%v)", spec.NixCache, err)
	}
	// Leave each clone as a killed `git init` would: a directory, no repository.
	for _, c := range clones {
		if err := os.RemoveAll(c); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Join(c, "refs"), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	next := repo.commit("ok", map[string]string{"version": version + ".2"})
	log.Reset()
	if _, err := testNix().Build(context.Background(), spec, next, &log); err == nil {
		t.Fatalf("a build on a broken nix cache succeeded; the test no longer shows the breakage:\n%s", log.String())
	}
	if err := testNix().ResetCache(spec); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(spec.NixCache); !os.IsNotExist(err) {
		t.Fatalf("ResetCache left %s (%v)", spec.NixCache, err)
	}
	log.Reset()
	if _, err := testNix().Build(context.Background(), spec, next, &log); err != nil {
		t.Fatalf("build after ResetCache: %v\n%s", err, log.String())
	}
}

func TestResetCacheRefusesARelativePathAndIgnoresNone(t *testing.T) {
	if err := testNix().ResetCache(Spec{}); err != nil {
		t.Errorf("no cache: %v", err)
	}
	if err := testNix().ResetCache(Spec{NixCache: "nix-cache"}); err == nil {
		t.Error("a relative cache path was accepted")
	}
}
