// Package rig holds what flakeship's benchmark programs share: git run with
// a clean configuration, a smart-HTTP git server (`git http-backend` behind
// net/http/cgi, as the tests serve repositories), signed GitHub push
// deliveries, and server processes started until they log where they
// listen.
package rig

import (
	"bufio"
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cgi"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// gitEnv keeps the machine's and the user's git configuration out of every
// git command, and names the author of the commits.
var gitEnv = []string{
	"GIT_CONFIG_NOSYSTEM=1",
	"GIT_CONFIG_GLOBAL=" + os.DevNull,
	"GIT_AUTHOR_NAME=flakeship bench", "GIT_AUTHOR_EMAIL=bench@flakeship.invalid",
	"GIT_COMMITTER_NAME=flakeship bench", "GIT_COMMITTER_EMAIL=bench@flakeship.invalid",
	"GIT_TERMINAL_PROMPT=0",
}

// GitCommand is git with args in dir, with gitEnv and stdin.
func GitCommand(ctx context.Context, dir string, stdin io.Reader, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "git", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), gitEnv...)
	cmd.Stdin = stdin
	return cmd
}

// Git runs git with args in dir and returns its output, trimmed. The error
// holds what git wrote to stderr.
func Git(ctx context.Context, dir string, args ...string) (string, error) {
	return Output(GitCommand(ctx, dir, nil, args...))
}

// Output runs cmd and returns its standard output, trimmed; the error holds
// what it wrote to stderr.
func Output(cmd *exec.Cmd) (string, error) {
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%s: %w: %s", strings.Join(cmd.Args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(string(out)), nil
}

// GitServer serves the bare repositories <name>.git under a directory over
// git's smart HTTP protocol on 127.0.0.1.
type GitServer struct {
	addr   string
	srv    *http.Server
	served chan error
}

// ServeGit serves the repositories under root until Close. git
// http-backend's complaints go to stderr.
func ServeGit(ctx context.Context, root string, stderr io.Writer) (*GitServer, error) {
	execPath, err := Git(ctx, root, "--exec-path")
	if err != nil {
		return nil, err
	}
	backend := &cgi.Handler{
		Path: filepath.Join(execPath, "git-http-backend"),
		Env: append([]string{
			"GIT_PROJECT_ROOT=" + root,
			"GIT_HTTP_EXPORT_ALL=1",
		}, gitEnv...),
		InheritEnv: []string{"PATH", "HOME"},
		Stderr:     stderr,
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	g := &GitServer{
		addr:   ln.Addr().String(),
		srv:    &http.Server{Handler: backend, ReadHeaderTimeout: 10 * time.Second},
		served: make(chan error, 1),
	}
	go func() { g.served <- g.srv.Serve(ln) }()
	return g, nil
}

// URL is the clone URL of the repository name.git.
func (g *GitServer) URL(name string) string { return "http://" + g.addr + "/" + name + ".git" }

// Close stops the server.
func (g *GitServer) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := g.srv.Shutdown(ctx)
	if serr := <-g.served; !errors.Is(serr, http.ErrServerClosed) {
		err = errors.Join(err, serr)
	}
	return err
}

// Sign is the hex HMAC-SHA256 of body under secret, as forges sign
// deliveries.
func Sign(secret string, body []byte) string {
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write(body)
	return hex.EncodeToString(mac.Sum(nil))
}

// Push is one push delivery.
type Push struct {
	Repo, Branch, Before, After, Message string
}

// GitHubPush returns the body and headers of the push delivery GitHub sends
// for p, signed with secret, with delivery id.
func GitHubPush(p Push, secret, deliveryID string) ([]byte, http.Header, error) {
	if p.Before == "" {
		p.Before = strings.Repeat("0", 40)
	}
	body, err := json.Marshal(map[string]any{
		"ref": "refs/heads/" + p.Branch, "before": p.Before, "after": p.After,
		"created": p.Before == strings.Repeat("0", 40), "deleted": false, "forced": false,
		"repository":  map[string]any{"full_name": p.Repo, "default_branch": p.Branch},
		"pusher":      map[string]any{"name": "bench"},
		"head_commit": map[string]any{"id": p.After, "message": p.Message, "author": map[string]any{"name": "bench"}},
	})
	if err != nil {
		return nil, nil, err
	}
	h := http.Header{}
	h.Set("Content-Type", "application/json")
	h.Set("X-GitHub-Event", "push")
	h.Set("X-GitHub-Delivery", deliveryID)
	h.Set("X-Hub-Signature-256", "sha256="+Sign(secret, body))
	return body, h, nil
}

// Process is a server process started by Start.
type Process struct {
	cmd    *exec.Cmd
	exited chan error
	// Addr is the address it logged it listens on.
	Addr string
	// Startup is the time from its start to the line saying it listens.
	Startup time.Duration
}

// listeningRE finds the address in a "... listening" log line of
// flakeship or the floor (slog's text format).
var listeningRE = regexp.MustCompile(`msg="[a-z]+ listening" addr=(\S+)`)

// Start starts bin with args and env (nothing of this process's environment
// is passed), its standard error appended to logPath, and waits until the
// process logs where it listens, it exits, or ctx ends. The process gets
// SIGTERM when ctx ends; call Stop when done with it.
func Start(ctx context.Context, bin string, args, env []string, logPath string) (*Process, error) {
	logFile, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	pr, pw := io.Pipe()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 30 * time.Second
	cmd.Env = env
	cmd.Stderr = io.MultiWriter(logFile, pw)
	p := &Process{cmd: cmd, exited: make(chan error, 1)}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start %s: %w", filepath.Base(bin), err)
	}
	go func() {
		err := cmd.Wait()
		pw.Close()
		logFile.Close()
		p.exited <- err
	}()
	found := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		sent := false
		for sc.Scan() {
			if m := listeningRE.FindStringSubmatch(sc.Text()); m != nil && !sent {
				found <- m[1]
				sent = true
			}
		}
		// Keep draining: the process must never block on its log.
		io.Copy(io.Discard, pr)
		if !sent {
			close(found)
		}
	}()
	select {
	case addr, ok := <-found:
		if !ok {
			return nil, fmt.Errorf("%s exited before it listened (see %s)", filepath.Base(bin), logPath)
		}
		p.Addr, p.Startup = addr, time.Since(start)
		return p, nil
	case <-ctx.Done():
		p.Stop()
		return nil, ctx.Err()
	}
}

// PID is the process id.
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Stop sends SIGTERM and waits up to 30 s for the process to exit, then
// kills it.
func (p *Process) Stop() error {
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	select {
	case err := <-p.exited:
		return err
	case <-time.After(30 * time.Second):
		p.cmd.Process.Kill()
		<-p.exited
		return errors.New("did not stop within 30s of SIGTERM: killed")
	}
}

// RSSKiB returns the resident memory of process pid in KiB.
func RSSKiB(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		}
	}
	return 0, errors.New("no VmRSS in /proc status")
}

// Median returns the median of ds (the lower middle one of an even count).
func Median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[(len(s)-1)/2]
}

// Ms is d in milliseconds, to a microsecond.
func Ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
