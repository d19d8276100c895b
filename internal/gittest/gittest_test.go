package gittest_test

import (
	"context"
	"errors"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flakeship/flakeship/internal/gittest"
	"github.com/flakeship/flakeship/internal/testenv"
)

// gitOutput runs the real git CLI as a client of the server would, isolated
// from the machine's configuration.
func gitOutput(t *testing.T, dir string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), "git", args...)
	cmd.Dir = dir
	cmd.Env = []string{
		"PATH=" + lookPathDir(t),
		"HOME=" + t.TempDir(),
		"GIT_CONFIG_NOSYSTEM=1",
		"GIT_TERMINAL_PROMPT=0",
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func lookPathDir(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("git")
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Dir(p)
}

func TestGitServerServesPushedCommits(t *testing.T) {
	testenv.Require(t, "git")
	srv := gittest.NewServer(t)
	repo := srv.NewRepo(t, "app")

	// A---B  main
	a := repo.Commit(t, "A", map[string]string{"README": "a\n"})
	b := repo.Commit(t, "B", map[string]string{"dir/file.txt": "b\n"})
	repo.Push(t, "main")
	if a == b || len(b) != 40 {
		t.Fatalf("commits: A=%s B=%s, want two different full hashes", a, b)
	}
	if got := repo.Head(t); got != b {
		t.Fatalf("Head = %s, want %s", got, b)
	}

	out, err := gitOutput(t, "", "ls-remote", srv.URL("app"), "refs/heads/main")
	if err != nil {
		t.Fatalf("git ls-remote: %v\n%s", err, out)
	}
	if want := b + "\trefs/heads/main\n"; out != want {
		t.Fatalf("ls-remote = %q, want %q", out, want)
	}

	clone := filepath.Join(t.TempDir(), "clone")
	if out, err := gitOutput(t, "", "-c", "protocol.version=2", "clone", "--quiet", srv.URL("app"), clone); err != nil {
		t.Fatalf("git clone: %v\n%s", err, out)
	}
	out, err = gitOutput(t, clone, "log", "--format=%H %an <%ae> %s")
	if err != nil {
		t.Fatalf("git log: %v\n%s", err, out)
	}
	want := b + " flakeship test <test@flakeship.invalid> B\n" + a + " flakeship test <test@flakeship.invalid> A\n"
	if out != want {
		t.Fatalf("log of the clone:\n%s\nwant:\n%s", out, want)
	}
	if srv.Requests() == 0 {
		t.Fatal("Requests() = 0 after a clone")
	}
}

func TestGitRepoBranchesAndRewrites(t *testing.T) {
	testenv.Require(t, "git")
	srv := gittest.NewServer(t)
	repo := srv.NewRepo(t, "app")

	// A---B  main
	//      \
	//       C  feature
	a := repo.Commit(t, "A", nil)
	b := repo.Commit(t, "B", nil)
	repo.Push(t, "main")
	repo.Checkout(t, "feature")
	c := repo.Commit(t, "C", map[string]string{"f": "c"})
	repo.Push(t, "feature")
	repo.Checkout(t, "main")
	if got := repo.Head(t); got != b {
		t.Fatalf("after checking out main, Head = %s, want B %s", got, b)
	}

	// A  main (force-pushed; B is gone)
	//  \
	//   B---C  feature
	repo.Reset(t, a)
	repo.Push(t, "main")

	for branch, want := range map[string]string{"main": a, "feature": c} {
		out, err := gitOutput(t, "", "--git-dir", repo.Bare, "rev-parse", "refs/heads/"+branch)
		if err != nil {
			t.Fatalf("rev-parse %s: %v\n%s", branch, err, out)
		}
		if got := strings.TrimSpace(out); got != want {
			t.Errorf("bare %s = %s, want %s", branch, got, want)
		}
	}
}

func TestGitServerBasicAuth(t *testing.T) {
	testenv.Require(t, "git")
	srv := gittest.NewServer(t, gittest.WithBasicAuth("user", "s3cret"))
	repo := srv.NewRepo(t, "private")
	repo.Commit(t, "A", nil)
	repo.Push(t, "main")
	infoRefs := srv.URL("private") + "/info/refs?service=git-upload-pack"

	tests := []struct {
		name       string
		user, pass string
		auth       bool
		want       int
	}{
		{name: "right credentials are served", user: "user", pass: "s3cret", auth: true, want: http.StatusOK},
		{name: "a wrong password is refused", user: "user", pass: "wrong", auth: true, want: http.StatusUnauthorized},
		{name: "a wrong user is refused", user: "other", pass: "s3cret", auth: true, want: http.StatusUnauthorized},
		{name: "no credentials are refused", want: http.StatusUnauthorized},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, infoRefs, nil)
			if err != nil {
				t.Fatal(err)
			}
			if tc.auth {
				req.SetBasicAuth(tc.user, tc.pass)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Fatalf("status = %d, want %d", resp.StatusCode, tc.want)
			}
			if tc.want == http.StatusUnauthorized && resp.Header.Get("WWW-Authenticate") == "" {
				t.Fatal("401 without WWW-Authenticate")
			}
		})
	}

	t.Run("git clones with the credentials in the URL", func(t *testing.T) {
		u := strings.Replace(srv.URL("private"), "http://", "http://user:s3cret@", 1)
		if out, err := gitOutput(t, "", "clone", "--quiet", u, filepath.Join(t.TempDir(), "c")); err != nil {
			t.Fatalf("git clone: %v\n%s", err, out)
		}
	})
}

func TestGitServerFailsOnDemand(t *testing.T) {
	testenv.Require(t, "git")
	srv := gittest.NewServer(t)
	repo := srv.NewRepo(t, "app")
	repo.Commit(t, "A", nil)
	repo.Push(t, "main")
	infoRefs := srv.URL("app") + "/info/refs?service=git-upload-pack"

	get := func(t *testing.T) int {
		t.Helper()
		resp, err := http.Get(infoRefs)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	srv.SetFailing(http.StatusInternalServerError)
	if got := get(t); got != http.StatusInternalServerError {
		t.Fatalf("failing server answered %d, want 500", got)
	}
	srv.SetFailing(0)
	if got := get(t); got != http.StatusOK {
		t.Fatalf("restored server answered %d, want 200", got)
	}
	if got := srv.Requests(); got != 2 {
		t.Fatalf("Requests() = %d, want 2", got)
	}
}

func TestGitServerDelaysOnDemand(t *testing.T) {
	testenv.Require(t, "git")
	srv := gittest.NewServer(t)
	repo := srv.NewRepo(t, "app")
	repo.Commit(t, "A", nil)
	repo.Push(t, "main")
	infoRefs := srv.URL("app") + "/info/refs?service=git-upload-pack"

	get := func(ctx context.Context) (int, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, infoRefs, nil)
		if err != nil {
			return 0, err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}

	// A delayed answer comes no sooner than the delay: a lower bound,
	// which a loaded machine cannot break (an upper one it could).
	const delay = time.Second
	srv.SetDelay(delay)
	start := time.Now()
	if code, err := get(t.Context()); err != nil || code != http.StatusOK {
		t.Fatalf("delayed server answered %d, %v, want 200", code, err)
	}
	if took := time.Since(start); took < delay {
		t.Fatalf("delayed server answered after %s, before its delay of %s", took, delay)
	}

	// A client that gives up, once its request has reached the server,
	// gets no answer; the server stops waiting when it goes away (else
	// closing the server at the test's end would wait for the hour).
	srv.SetDelay(time.Hour)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	gaveUp := make(chan error, 1)
	go func() {
		_, err := get(ctx)
		gaveUp <- err
	}()
	for deadline := time.Now().Add(time.Minute); srv.Requests() < 2; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the request never reached the server")
		}
	}
	cancel()
	select {
	case err := <-gaveUp:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("the client that gave up got %v, want no answer", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("the client could not give up on the delayed server")
	}

	srv.SetDelay(0)
	if code, err := get(t.Context()); err != nil || code != http.StatusOK {
		t.Fatalf("prompt server answered %d, %v, want 200", code, err)
	}
	if got := srv.Requests(); got != 3 {
		t.Fatalf("Requests() = %d, want 3", got)
	}
}

func TestGitServerHoldsRequestsUntilReleased(t *testing.T) {
	testenv.Require(t, "git")
	srv := gittest.NewServer(t)
	repo := srv.NewRepo(t, "app")
	repo.Commit(t, "A", nil)
	repo.Push(t, "main")
	infoRefs := srv.URL("app") + "/info/refs?service=git-upload-pack"

	// A request waits at the hold, unanswered, for as long as it is held;
	// released, it is answered.
	hold := srv.Hold(t)
	answered := make(chan int, 1)
	go func() {
		resp, err := http.Get(infoRefs)
		if err != nil {
			answered <- 0
			return
		}
		resp.Body.Close()
		answered <- resp.StatusCode
	}()
	select {
	case <-hold.Reached():
	case <-time.After(60 * time.Second):
		t.Fatal("no request reached the hold")
	}
	select {
	case code := <-answered:
		t.Fatalf("a held request was answered %d", code)
	default:
	}
	hold.Release()
	select {
	case code := <-answered:
		if code != http.StatusOK {
			t.Fatalf("released request answered %d, want 200", code)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the released request was never answered")
	}
	// Later requests are answered at once.
	resp, err := http.Get(infoRefs)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("request after the release: %v %v, want 200", resp, err)
	}
	resp.Body.Close()
}
