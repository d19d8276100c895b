package builder

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/format/idxfile"
	"github.com/go-git/go-git/v5/plumbing/transport"

	"github.com/flakeship/flakeship/config"
	"github.com/flakeship/flakeship/internal/gittest"
	"github.com/flakeship/flakeship/internal/testenv"
)

// fetchEnv is one target whose repository a gittest server serves.
type fetchEnv struct {
	srv     *gittest.Server
	repo    *gittest.Repo
	fetcher *Fetcher
	spec    Spec
	slog    *testenv.Buffer // what the Fetcher logged through slog
}

func newFetchEnv(t testing.TB, opts ...gittest.Option) *fetchEnv {
	t.Helper()
	testenv.Require(t, "git")
	srv := gittest.NewServer(t, opts...)
	logs := &testenv.Buffer{}
	return &fetchEnv{
		srv:     srv,
		repo:    srv.NewRepo(t, "app"),
		fetcher: NewFetcher(slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))),
		spec: Spec{
			Name:     "app",
			CloneURL: srv.URL("app"),
			Branch:   "main",
			CacheDir: filepath.Join(t.TempDir(), "state", "git", "app"),
		},
		slog: logs,
	}
}

// fetch runs Fetch and returns what it wrote to the deploy log.
func (e *fetchEnv) fetch(t testing.TB, sha string) (Checkout, string, error) {
	t.Helper()
	var log bytes.Buffer
	c, err := e.fetcher.Fetch(t.Context(), e.spec, sha, &log)
	return c, log.String(), err
}

// mustFetch fetches sha and fails t unless it succeeds.
func (e *fetchEnv) mustFetch(t testing.TB, sha string) string {
	t.Helper()
	c, log, err := e.fetch(t, sha)
	if err != nil {
		t.Fatalf("Fetch(%s): %v\nlog:\n%s", sha[:7], err, log)
	}
	if _, bench := t.(*testing.B); !bench {
		t.Logf("Fetch(%s) log:\n%s", sha[:7], log)
	}
	// Head is the branch head the fetch brought into the cache.
	head := strings.TrimSpace(e.repo.Git(t, "--git-dir", e.spec.CacheDir, "rev-parse", "refs/heads/"+e.spec.Branch))
	want := Checkout{Dir: e.spec.CacheDir, SHA: sha, Branch: e.spec.Branch, Head: head}
	if c != want {
		t.Fatalf("Fetch(%s) = %+v, want %+v", sha[:7], c, want)
	}
	return log
}

// hookWriter calls hook with each write, as Fetch writes its log.
type hookWriter struct {
	buf  testenv.Buffer
	hook func(p string)
}

func (w *hookWriter) Write(p []byte) (int, error) {
	w.hook(string(p))
	return w.buf.Write(p)
}

func TestFetchFollowsTheBranch(t *testing.T) {
	e := newFetchEnv(t)

	// A---B---C  main
	a := e.repo.Commit(t, "A", map[string]string{"a": "1"})
	b := e.repo.Commit(t, "B", map[string]string{"b": "2"})
	c := e.repo.Commit(t, "C", map[string]string{"a": "3"})
	e.repo.Push(t, "main")

	t.Run("the first fetch creates the cache and takes the whole history", func(t *testing.T) {
		log := e.mustFetch(t, c)
		want := fmt.Sprintf("fetched main at %s from %s in ", c[:7], e.spec.CloneURL)
		if !strings.Contains(log, want) || !strings.Contains(log, ", 9 objects\n") {
			t.Fatalf("log lacks %q ... 9 objects:\n%s", want, log)
		}
		if !strings.Contains(log, "remote: ") {
			t.Errorf("log has no server progress:\n%s", log)
		}
		for _, dir := range []string{filepath.Dir(e.spec.CacheDir), e.spec.CacheDir} {
			fi, err := os.Stat(dir)
			if err != nil {
				t.Fatal(err)
			}
			if perm := fi.Mode().Perm(); perm != 0o700 {
				t.Errorf("%s has mode %o, want 700", filepath.Base(dir), perm)
			}
		}
		head, err := os.ReadFile(filepath.Join(e.spec.CacheDir, "HEAD"))
		if err != nil || string(head) != "ref: refs/heads/main\n" {
			t.Errorf("cache HEAD = %q (%v), want ref: refs/heads/main", head, err)
		}
	})

	marker := filepath.Join(e.spec.CacheDir, "test-marker")
	if err := os.WriteFile(marker, nil, 0o600); err != nil {
		t.Fatal(err)
	}

	// A---B---C---D  main
	d := e.repo.Commit(t, "D", map[string]string{"d": "4"})
	e.repo.Push(t, "main")

	t.Run("a new commit is fetched incrementally into the same cache", func(t *testing.T) {
		log := e.mustFetch(t, d)
		if !strings.Contains(log, fmt.Sprintf("fetched main at %s", d[:7])) || !strings.Contains(log, ", 3 objects\n") {
			t.Fatalf("log lacks the incremental summary (3 objects):\n%s", log)
		}
		if _, err := os.Stat(marker); err != nil {
			t.Fatalf("the cache was not reused: %v", err)
		}
		assertNoBrokenCaches(t, e.spec.CacheDir)
	})

	t.Run("an older commit of the branch is accepted", func(t *testing.T) {
		log := e.mustFetch(t, b)
		if !strings.Contains(log, ", 0 objects\n") {
			t.Errorf("an up-to-date fetch brought objects:\n%s", log)
		}
		if want := fmt.Sprintf("commit %s is an ancestor of main at %s", b[:7], d[:7]); !strings.Contains(log, want) {
			t.Errorf("log lacks %q:\n%s", want, log)
		}
		e.mustFetch(t, a)
	})

	// A---B---C---D  main
	//              \
	//               E  feature
	e.repo.Checkout(t, "feature")
	feature := e.repo.Commit(t, "E", map[string]string{"e": "5"})
	e.repo.Push(t, "feature")
	e.repo.Checkout(t, "main")

	t.Run("a commit only on another branch is not on the branch", func(t *testing.T) {
		_, log, err := e.fetch(t, feature)
		if !errors.Is(err, ErrNotOnBranch) {
			t.Fatalf("Fetch(E) = %v, want ErrNotOnBranch\nlog:\n%s", err, log)
		}
		want := fmt.Sprintf("fetch app: commit %s is not on branch main (it is the head of feature)", feature[:7])
		if err.Error() != want {
			t.Fatalf("error = %q, want %q", err, want)
		}
	})

	// A---B---C  main (force-pushed: D is gone)
	//          \
	//           D---E  feature
	e.repo.Reset(t, c)
	e.repo.Push(t, "main")

	t.Run("a commit a force push dropped is no longer on the branch", func(t *testing.T) {
		_, log, err := e.fetch(t, d)
		if !errors.Is(err, ErrNotOnBranch) {
			t.Fatalf("Fetch(D) = %v, want ErrNotOnBranch\nlog:\n%s", err, log)
		}
		if want := fmt.Sprintf("fetch app: commit %s is not on branch main", d[:7]); err.Error() != want {
			t.Fatalf("error = %q, want %q", err, want)
		}
		e.mustFetch(t, c)
	})

	t.Run("a tree is not a commit", func(t *testing.T) {
		tree := strings.TrimSpace(e.repo.Git(t, "rev-parse", c+"^{tree}"))
		_, log, err := e.fetch(t, tree)
		if !errors.Is(err, ErrCommitNotFound) {
			t.Fatalf("Fetch(tree) = %v, want ErrCommitNotFound\nlog:\n%s", err, log)
		}
		assertNoBrokenCaches(t, e.spec.CacheDir)
	})

	t.Run("an unknown commit is not found", func(t *testing.T) {
		unknown := strings.Repeat("ab", 20)
		_, log, err := e.fetch(t, unknown)
		if !errors.Is(err, ErrCommitNotFound) || errors.Is(err, ErrNotOnBranch) {
			t.Fatalf("Fetch(unknown) = %v, want ErrCommitNotFound only\nlog:\n%s", err, log)
		}
		want := fmt.Sprintf("fetch app: commit %s not found in %s (branch main)", unknown[:7], e.spec.CloneURL)
		if err.Error() != want {
			t.Fatalf("error = %q, want %q", err, want)
		}
	})
}

func TestFetchCheckoutDirIsAbsolute(t *testing.T) {
	e := newFetchEnv(t)

	// A  main
	sha := e.repo.Commit(t, "A", nil)
	e.repo.Push(t, "main")

	// A relative state directory still gives nix a usable git+file URL.
	work := t.TempDir()
	t.Chdir(work)
	e.spec.CacheDir = filepath.Join("state", "git", "app")
	c, log, err := e.fetch(t, sha)
	if err != nil {
		t.Fatalf("Fetch: %v\nlog:\n%s", err, log)
	}
	if want := filepath.Join(work, "state", "git", "app"); c.Dir != want {
		t.Fatalf("Checkout.Dir = %q, want %q", c.Dir, want)
	}
}

func assertNoBrokenCaches(t *testing.T, cacheDir string) {
	t.Helper()
	moved, err := filepath.Glob(cacheDir + ".broken-*")
	if err != nil {
		t.Fatal(err)
	}
	if len(moved) != 0 {
		t.Fatalf("caches were moved aside: %v", moved)
	}
}

func TestFetchFollowsAMovedCloneURL(t *testing.T) {
	e := newFetchEnv(t)

	// A  main, served at the old URL
	a := e.repo.Commit(t, "A", map[string]string{"a": "1"})
	e.repo.Push(t, "main")
	e.mustFetch(t, a)

	// A---B  main, served at a new URL
	moved := gittest.NewServer(t)
	repo := moved.NewRepo(t, "moved")
	repo.Git(t, "pull", "--quiet", e.repo.Bare, "main")
	b := repo.Commit(t, "B", map[string]string{"b": "2"})
	repo.Push(t, "main")
	e.spec.CloneURL = moved.URL("moved")

	log := e.mustFetch(t, b)
	if want := "clone URL changed from " + e.srv.URL("app") + " to " + moved.URL("moved"); !strings.Contains(log, want) {
		t.Fatalf("log lacks %q:\n%s", want, log)
	}
	if !strings.Contains(log, ", 3 objects\n") {
		t.Errorf("the moved remote's fetch was not incremental:\n%s", log)
	}
}

func TestFetchMissingBranch(t *testing.T) {
	e := newFetchEnv(t)
	sha := strings.Repeat("1", 40)

	t.Run("an empty repository has no branch", func(t *testing.T) {
		_, log, err := e.fetch(t, sha)
		if !errors.Is(err, ErrBranchNotFound) {
			t.Fatalf("Fetch = %v, want ErrBranchNotFound\nlog:\n%s", err, log)
		}
	})

	// A  main
	e.repo.Commit(t, "A", nil)
	e.repo.Push(t, "main")
	e.spec.Branch = "release"

	t.Run("a repository without the branch", func(t *testing.T) {
		_, log, err := e.fetch(t, sha)
		if !errors.Is(err, ErrBranchNotFound) {
			t.Fatalf("Fetch = %v, want ErrBranchNotFound\nlog:\n%s", err, log)
		}
		if want := "fetch app: branch release not found in " + e.spec.CloneURL; err.Error() != want {
			t.Fatalf("error = %q, want %q", err, want)
		}
	})
}

func TestFetchWithToken(t *testing.T) {
	const token = "tok-5up3r-s3cret-value"
	e := newFetchEnv(t, gittest.WithBasicAuth("x-access-token", token))

	// A  main
	sha := e.repo.Commit(t, "A", nil)
	e.repo.Push(t, "main")
	withPassword := strings.Replace(e.srv.URL("app"), "http://", "http://someone:url-p4ssword@", 1)

	tests := []struct {
		name     string
		token    config.Secret
		cloneURL string
		wantErr  error  // nil for success
		wantMsg  string // in the error
	}{
		{name: "the right token fetches", token: token},
		{name: "credentials in the clone URL fetch", cloneURL: strings.Replace(e.srv.URL("app"), "http://", "http://x-access-token:"+token+"@", 1)},
		{name: "a wrong token is refused", token: "wrong-t0ken-value", wantErr: transport.ErrAuthenticationRequired,
			wantMsg: "authentication failed (HTTP 401): the token was not accepted"},
		{name: "no token is refused", wantErr: transport.ErrAuthenticationRequired,
			wantMsg: "authentication required (HTTP 401): the repository needs a token"},
		{name: "a password in the clone URL stays out of the error", cloneURL: withPassword,
			wantErr: transport.ErrAuthenticationRequired, wantMsg: "from " + e.srv.URL("app") + ": authentication"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := e.spec
			s.Token = tc.token
			s.CacheDir = filepath.Join(t.TempDir(), "cache")
			if tc.cloneURL != "" {
				s.CloneURL = tc.cloneURL
			}
			before := e.srv.Requests()
			var log bytes.Buffer
			_, err := e.fetcher.Fetch(t.Context(), s, sha, &log)
			requests := e.srv.Requests() - before

			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("Fetch: %v\nlog:\n%s", err, log.String())
				}
				// The cache keeps the remote's URL for people, not the token.
				cfg, err := os.ReadFile(filepath.Join(s.CacheDir, "config"))
				if err != nil {
					t.Fatal(err)
				}
				if want := "url = " + e.srv.URL("app") + "\n"; !strings.Contains(string(cfg), want) || strings.Contains(string(cfg), token) {
					t.Errorf("cache config lacks %q or holds the token:\n%s", want, cfg)
				}
				if strings.Contains(log.String(), token) || strings.Contains(e.slog.String(), token) {
					t.Errorf("the logs reveal the token")
				}
				return
			}
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Fetch = %v, want %v", err, tc.wantErr)
			}
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("error %q lacks %q", err, tc.wantMsg)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error %q is more than one line", err)
			}
			if requests != 1 {
				t.Errorf("%d requests, want 1: authentication failures are not retried", requests)
			}
			for what, text := range map[string]string{"error": err.Error(), "deploy log": log.String(), "slog": e.slog.String()} {
				for _, secret := range []string{token, "wrong-t0ken-value", "url-p4ssword"} {
					if strings.Contains(text, secret) {
						t.Errorf("%s reveals a secret: %q", what, text)
					}
				}
			}
		})
	}
}

func TestFetchRetriesServerErrors(t *testing.T) {
	e := newFetchEnv(t)

	// A  main
	sha := e.repo.Commit(t, "A", nil)
	e.repo.Push(t, "main")

	tests := []struct {
		name         string
		status       int
		recover      bool  // the server heals on the first retry
		wantRequests int   // -1: more than one, however many a fetch takes
		wantErr      error // nil for success, else matched with errors.Is
		wantMsg      string
	}{
		{name: "500 is retried three times, then fails", status: http.StatusInternalServerError, wantRequests: 4,
			wantMsg: "fetch main from " + e.spec.CloneURL + ": server answered HTTP 500 (gave up after 4 attempts)"},
		{name: "a 503 that passes is survived", status: http.StatusServiceUnavailable, recover: true, wantRequests: -1},
		{name: "404 is not retried", status: http.StatusNotFound, wantRequests: 1, wantErr: transport.ErrRepositoryNotFound,
			wantMsg: ": repository not found"},
		{name: "403 is not retried", status: http.StatusForbidden, wantRequests: 1, wantErr: transport.ErrAuthorizationFailed,
			wantMsg: ": access denied (HTTP 403)"},
		{name: "400 is not retried", status: http.StatusBadRequest, wantRequests: 1, wantMsg: ": server answered HTTP 400"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := e.spec
			s.CacheDir = filepath.Join(t.TempDir(), "cache")
			e.srv.SetFailing(tc.status)
			t.Cleanup(func() { e.srv.SetFailing(0) })
			log := &hookWriter{hook: func(p string) {
				if tc.recover && strings.Contains(p, "retrying in 100ms") {
					e.srv.SetFailing(0)
				}
			}}
			before := e.srv.Requests()
			_, err := e.fetcher.Fetch(t.Context(), s, sha, log)
			requests := e.srv.Requests() - before

			switch {
			case tc.wantRequests == -1 && requests < 2:
				t.Errorf("%d requests, want a failed one and a fetch", requests)
			case tc.wantRequests != -1 && requests != tc.wantRequests:
				t.Errorf("%d requests, want %d", requests, tc.wantRequests)
			}
			if tc.recover {
				if err != nil {
					t.Fatalf("Fetch: %v\nlog:\n%s", err, log.buf.String())
				}
				return
			}
			if err == nil {
				t.Fatal("Fetch succeeded against a failing server")
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Errorf("Fetch = %v, want %v", err, tc.wantErr)
			}
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("error %q lacks %q", err, tc.wantMsg)
			}
		})
	}
}

func TestFetchRejectsBadInputBeforeAnyRequest(t *testing.T) {
	e := newFetchEnv(t)

	tests := []struct {
		name string
		sha  string
		edit func(s *Spec)
	}{
		{name: "short sha", sha: "abc1234"},
		{name: "upper-case sha", sha: strings.Repeat("A", 40)},
		{name: "all-zero sha", sha: strings.Repeat("0", 40)},
		{name: "sha like an option", sha: "--upload-pack=touch"},
		{name: "empty branch", edit: func(s *Spec) { s.Branch = "" }},
		{name: "branch like an option", edit: func(s *Spec) { s.Branch = "-main" }},
		{name: "branch with ..", edit: func(s *Spec) { s.Branch = "a..b" }},
		{name: "full ref as branch", edit: func(s *Spec) { s.Branch = "refs/heads/main" }},
		{name: "branch with a space", edit: func(s *Spec) { s.Branch = "ma in" }},
		{name: "clone URL like an option", edit: func(s *Spec) { s.CloneURL = "--upload-pack=touch" }},
		{name: "no clone URL", edit: func(s *Spec) { s.CloneURL = "" }},
		{name: "no cache directory", edit: func(s *Spec) { s.CacheDir = "" }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cacheDir := filepath.Join(t.TempDir(), "cache")
			s := e.spec
			s.CacheDir = cacheDir
			sha := strings.Repeat("a", 40)
			if tc.sha != "" {
				sha = tc.sha
			}
			if tc.edit != nil {
				tc.edit(&s)
			}
			before := e.srv.Requests()
			_, err := e.fetcher.Fetch(t.Context(), s, sha, io.Discard)
			if err == nil {
				t.Fatal("Fetch accepted bad input")
			}
			if !strings.HasPrefix(err.Error(), "fetch app: ") {
				t.Errorf("error %q does not name the target", err)
			}
			if n := e.srv.Requests() - before; n != 0 {
				t.Errorf("%d requests before the input was checked", n)
			}
			if _, err := os.Stat(cacheDir); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("cache directory created for bad input (%v)", err)
			}
		})
	}
}

func TestFetchRecoversBrokenCache(t *testing.T) {
	e := newFetchEnv(t)
	clock := time.Unix(1700000000, 0)
	e.fetcher.now = func() time.Time { return clock }

	// A---B  main
	a := e.repo.Commit(t, "A", map[string]string{"a": "1"})
	b := e.repo.Commit(t, "B", map[string]string{"b": "2"})
	e.repo.Push(t, "main")

	junkEveryFile := func(t *testing.T, dir string) {
		t.Helper()
		err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			if err := os.Chmod(path, 0o600); err != nil {
				return err
			}
			return os.WriteFile(path, []byte("junk\x00junk"), 0o600)
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name      string
		break_    func(t *testing.T, cache string)
		wantMoved bool
	}{
		{name: "junk HEAD", wantMoved: true, break_: func(t *testing.T, cache string) {
			writeFile(t, filepath.Join(cache, "HEAD"), "junk\n")
		}},
		{name: "HEAD naming no branch", wantMoved: true, break_: func(t *testing.T, cache string) {
			writeFile(t, filepath.Join(cache, "HEAD"), a+"\n")
		}},
		{name: "junk config", wantMoved: true, break_: func(t *testing.T, cache string) {
			writeFile(t, filepath.Join(cache, "config"), "[core\n\x00junk")
		}},
		{name: "junk objects", wantMoved: true, break_: func(t *testing.T, cache string) {
			junkEveryFile(t, filepath.Join(cache, "objects"))
		}},
		{name: "branch ref to a missing commit", wantMoved: true, break_: func(t *testing.T, cache string) {
			writeFile(t, filepath.Join(cache, "refs", "heads", "main"), strings.Repeat("e", 40)+"\n")
		}},
		{name: "a file where the cache should be", wantMoved: true, break_: func(t *testing.T, cache string) {
			if err := os.RemoveAll(cache); err != nil {
				t.Fatal(err)
			}
			writeFile(t, cache, "not a repository")
		}},
		{name: "a directory of something else", wantMoved: true, break_: func(t *testing.T, cache string) {
			if err := os.RemoveAll(cache); err != nil {
				t.Fatal(err)
			}
			writeFile(t, filepath.Join(cache, "notes.txt"), "mine")
		}},
		{name: "an empty directory is used in place", wantMoved: false, break_: func(t *testing.T, cache string) {
			if err := os.RemoveAll(cache); err != nil {
				t.Fatal(err)
			}
			if err := os.Mkdir(cache, 0o700); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e.spec.CacheDir = filepath.Join(t.TempDir(), "cache")
			e.mustFetch(t, a)
			tc.break_(t, e.spec.CacheDir)

			log := e.mustFetch(t, b)
			moved := e.spec.CacheDir + ".broken-1700000000"
			_, statErr := os.Stat(moved)
			if !tc.wantMoved {
				if statErr == nil || strings.Contains(log, "broken") {
					t.Fatalf("a usable cache was moved aside:\n%s", log)
				}
				return
			}
			if statErr != nil {
				t.Fatalf("broken cache not kept at %s: %v\nlog:\n%s", moved, statErr, log)
			}
			if !strings.Contains(log, "git cache is broken (") || !strings.Contains(log, "moved it to "+moved+", fetching afresh") {
				t.Errorf("log does not say the cache was replaced:\n%s", log)
			}
			if !strings.Contains(log, ", 6 objects\n") {
				t.Errorf("the fresh cache did not fetch the whole history:\n%s", log)
			}
			// The fresh cache is whole: the older commit is there and usable.
			e.mustFetch(t, a)
		})
	}

	t.Run("a commit that cannot be read is fetched afresh", func(t *testing.T) {
		e.spec.CacheDir = filepath.Join(t.TempDir(), "cache")
		e.mustFetch(t, b)
		// Junk over A's commit in the pack: only reading A finds it.
		corruptPackedObject(t, e.spec.CacheDir, a)
		e.mustFetch(t, b)
		assertNoBrokenCaches(t, e.spec.CacheDir)

		log := e.mustFetch(t, a)
		if !strings.Contains(log, "git cache is broken (commit "+a[:7]+": ") {
			t.Fatalf("log does not say the cache was replaced:\n%s", log)
		}
		if _, err := os.Stat(e.spec.CacheDir + ".broken-1700000000"); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("a second breakage in the same second gets its own name", func(t *testing.T) {
		e.spec.CacheDir = filepath.Join(t.TempDir(), "cache")
		for i, want := range []string{".broken-1700000000", ".broken-1700000000-1"} {
			e.mustFetch(t, b)
			writeFile(t, filepath.Join(e.spec.CacheDir, "HEAD"), "junk\n")
			e.mustFetch(t, b)
			if _, err := os.Stat(e.spec.CacheDir + want); err != nil {
				t.Fatalf("breakage %d not kept at %s: %v", i+1, want, err)
			}
		}
	})
}

// corruptPackedObject overwrites the compressed data of one object in the
// cache's packs, leaving the index and every other object intact.
func corruptPackedObject(t *testing.T, cache, sha string) {
	t.Helper()
	idxs, err := filepath.Glob(filepath.Join(cache, "objects", "pack", "pack-*.idx"))
	if err != nil {
		t.Fatal(err)
	}
	for _, idxPath := range idxs {
		raw, err := os.ReadFile(idxPath)
		if err != nil {
			t.Fatal(err)
		}
		idx := idxfile.NewMemoryIndex()
		if err := idxfile.NewDecoder(bytes.NewReader(raw)).Decode(idx); err != nil {
			t.Fatal(err)
		}
		offset, err := idx.FindOffset(plumbing.NewHash(sha))
		if errors.Is(err, plumbing.ErrObjectNotFound) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		f, err := os.OpenFile(strings.TrimSuffix(idxPath, ".idx")+".pack", os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		// Past the one- or two-byte type and size header, into the zlib stream.
		_, err = f.WriteAt(bytes.Repeat([]byte{0xff}, 8), offset+2)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Fatalf("object %s is in no pack of the cache", sha)
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestFetchStopsWhenCancelled(t *testing.T) {
	e := newFetchEnv(t)

	// A  main
	sha := e.repo.Commit(t, "A", nil)
	e.repo.Push(t, "main")

	t.Run("a cancelled context fetches nothing", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		before := e.srv.Requests()
		_, err := e.fetcher.Fetch(ctx, e.spec, sha, io.Discard)
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Fetch = %v, want context.Canceled", err)
		}
		if n := e.srv.Requests() - before; n != 0 {
			t.Errorf("%d requests after cancellation", n)
		}
	})

	t.Run("cancelling during a retry's backoff stops it", func(t *testing.T) {
		e.srv.SetFailing(http.StatusBadGateway)
		t.Cleanup(func() { e.srv.SetFailing(0) })
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		log := &hookWriter{hook: func(p string) {
			if strings.Contains(p, "retrying") {
				cancel()
			}
		}}
		before := e.srv.Requests()
		_, err := e.fetcher.Fetch(ctx, e.spec, sha, log)
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Fetch = %v, want context.Canceled", err)
		}
		if n := e.srv.Requests() - before; n != 1 {
			t.Errorf("%d requests, want 1: no retry after cancellation", n)
		}
	})

	t.Run("cancelling a request the server never answers stops it", func(t *testing.T) {
		// A listener that accepts connections and never answers: the fetch
		// hangs in its first request until the context ends.
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		accepted := make(chan net.Conn, 8)
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				conn, err := ln.Accept()
				if err != nil {
					return
				}
				accepted <- conn
			}
		}()
		t.Cleanup(func() {
			ln.Close()
			wg.Wait()
			close(accepted)
			for conn := range accepted {
				conn.Close()
			}
		})

		s := e.spec
		s.CloneURL = "http://" + ln.Addr().String() + "/app.git"
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		done := make(chan error, 1)
		go func() {
			_, err := e.fetcher.Fetch(ctx, s, sha, io.Discard)
			done <- err
		}()
		select {
		case conn := <-accepted:
			accepted <- conn // keep it for the cleanup
		case err := <-done:
			t.Fatalf("Fetch returned before connecting: %v", err)
		case <-time.After(10 * time.Second):
			t.Fatal("Fetch never connected")
		}
		cancel()
		select {
		case err := <-done:
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("Fetch = %v, want context.Canceled", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Fetch did not return after cancellation")
		}
	})
}

func TestFetchTargetsInParallel(t *testing.T) {
	e := newFetchEnv(t)

	// A---B  main
	e.repo.Commit(t, "A", nil)
	sha := e.repo.Commit(t, "B", map[string]string{"b": "b"})
	e.repo.Push(t, "main")

	// Two targets, each fetched by two callers at once: the callers of one
	// cache take turns, the two caches do not wait for each other.
	caches := []string{filepath.Join(t.TempDir(), "one"), filepath.Join(t.TempDir(), "two")}
	errs := make(chan error, 4)
	var wg sync.WaitGroup
	for i := range 4 {
		s := e.spec
		s.CacheDir = caches[i%2]
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := e.fetcher.Fetch(t.Context(), s, sha, io.Discard)
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	for _, c := range caches {
		assertNoBrokenCaches(t, c)
	}
}

func TestResolveBranch(t *testing.T) {
	const token = "resolve-t0ken"
	e := newFetchEnv(t, gittest.WithBasicAuth("x-access-token", token))
	e.spec.Token = token

	// A---B  main
	//  \
	//   C  feature
	e.repo.Commit(t, "A", nil)
	b := e.repo.Commit(t, "B", nil)
	e.repo.Push(t, "main")
	e.repo.Reset(t, "HEAD~1")
	e.repo.Checkout(t, "feature")
	c := e.repo.Commit(t, "C", nil)
	e.repo.Push(t, "feature")

	tests := []struct {
		name         string
		branch       string
		token        config.Secret
		want         string
		wantErr      error
		wantRequests int
	}{
		{name: "main", branch: "main", token: token, want: b, wantRequests: 1},
		{name: "another branch", branch: "feature", token: token, want: c, wantRequests: 1},
		{name: "a missing branch", branch: "release", token: token, wantErr: ErrBranchNotFound, wantRequests: 1},
		{name: "a prefix of a branch is not the branch", branch: "feat", token: token, wantErr: ErrBranchNotFound, wantRequests: 1},
		{name: "a bad branch name", branch: "a..b", token: token, wantRequests: 0},
		{name: "a wrong token", branch: "main", token: "nope", wantErr: transport.ErrAuthenticationRequired, wantRequests: 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := e.spec
			s.Token = tc.token
			before := e.srv.Requests()
			got, err := e.fetcher.ResolveBranch(t.Context(), s, tc.branch)
			if n := e.srv.Requests() - before; n != tc.wantRequests {
				t.Errorf("%d requests, want %d", n, tc.wantRequests)
			}
			if tc.want != "" {
				if err != nil || got != tc.want {
					t.Fatalf("ResolveBranch(%s) = %s, %v; want %s", tc.branch, got, err, tc.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("ResolveBranch(%s) = %s, want an error", tc.branch, got)
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Fatalf("ResolveBranch(%s) = %v, want %v", tc.branch, err, tc.wantErr)
			}
			if !strings.HasPrefix(err.Error(), "resolve app branch "+tc.branch+": ") || strings.Contains(err.Error(), token) {
				t.Errorf("error %q", err)
			}
		})
	}
}

func TestFetchProgressKeepsFinalLines(t *testing.T) {
	tests := []struct {
		name   string
		writes []string
		want   string
	}{
		{name: "redrawn line", writes: []string{"Counting: 50%\rCounting: 100%\rCounting: 100%, done.\n"},
			want: "remote: Counting: 100%, done.\n"},
		{name: "split across writes", writes: []string{"Comp", "ressing: 1\r", "Compressing: 2, done.", "\nTotal 3\n"},
			want: "remote: Compressing: 2, done.\nremote: Total 3\n"},
		{name: "CRLF ends a line", writes: []string{"one\r\ntwo\r\n"}, want: "remote: one\nremote: two\n"},
		{name: "unterminated last line is flushed", writes: []string{"Total 3"}, want: "remote: Total 3\n"},
		{name: "empty lines are dropped", writes: []string{"\n\r\n\n"}, want: ""},
		{name: "an endless line is cut", writes: []string{strings.Repeat("x", maxProgressLine+1)},
			want: "remote: " + strings.Repeat("x", maxProgressLine) + "\nremote: x\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			p := &progressWriter{w: &out}
			for _, w := range tc.writes {
				if n, err := p.Write([]byte(w)); n != len(w) || err != nil {
					t.Fatalf("Write = %d, %v", n, err)
				}
			}
			if err := p.Flush(); err != nil {
				t.Fatal(err)
			}
			if out.String() != tc.want {
				t.Fatalf("got %q, want %q", out.String(), tc.want)
			}
		})
	}
}

func TestFetchDisplayURLHidesCredentials(t *testing.T) {
	tests := []struct{ in, want string }{
		{"https://github.com/owner/app.git", "https://github.com/owner/app.git"},
		{"https://x-access-token:s3cret@github.com/owner/app.git", "https://github.com/owner/app.git"},
		{"http://user@127.0.0.1:3000/owner/app.git", "http://127.0.0.1:3000/owner/app.git"},
		{"file:///srv/git/app.git", "file:///srv/git/app.git"},
		{"/srv/git/app.git", "/srv/git/app.git"},
		{"git@example.com:owner/app.git", "example.com:owner/app.git"},
		{"https://us%er:pa ss@host/x", "https://host/x"},
	}
	for _, tc := range tests {
		if got := displayURL(tc.in); got != tc.want {
			t.Errorf("displayURL(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// BenchmarkFetchIncremental measures fetching one new commit into a cache
// that holds the rest of the history.
func BenchmarkFetchIncremental(b *testing.B) {
	e := newFetchEnv(b)
	files := make(map[string]string)
	for i := range 50 {
		files[fmt.Sprintf("src/file%02d.txt", i)] = strings.Repeat(fmt.Sprintf("line %d\n", i), 100)
	}
	for i := range 20 {
		files["src/changed.txt"] = fmt.Sprint(i)
		e.repo.Commit(b, fmt.Sprintf("history %d", i), files)
	}
	e.repo.Push(b, "main")
	e.mustFetch(b, e.repo.Head(b))

	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		sha := e.repo.Commit(b, fmt.Sprintf("new %d", i), map[string]string{"src/changed.txt": fmt.Sprintf("new %d", i)})
		e.repo.Push(b, "main")
		b.StartTimer()
		if _, err := e.fetcher.Fetch(b.Context(), e.spec, sha, io.Discard); err != nil {
			b.Fatal(err)
		}
	}
}
