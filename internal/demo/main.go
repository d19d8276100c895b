// Command demo shows flakeship's main job on its embedded defaults: it makes
// a local git repository holding a flake, starts flakeship (SQLite in a fresh
// state dir) with a target that deploys that repository to a systemd user
// service, then pushes three commits — a good one, one that comes up
// unhealthy, and another good one — sends the signed webhook GitHub would
// send for each, and prints each deploy as it moves through its states.
//
// It exits 1, saying why on stderr, when a step fails or a deploy does not
// end as it says it will: deploy 1 succeeded, deploy 2 rolled back, deploy 3
// succeeded, the service answering version 1, 1 and 3 after them.
//
// Run it through scripts/demo, which builds flakeship and provides a private
// systemd user manager.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"
)

func main() {
	flakeship := flag.String("flakeship", "", "the flakeship binary")
	service := flag.String("service", "", "the demo service binary (it serves /health with the deployed version)")
	keep := flag.Bool("keep", false, "keep the demo's state dir")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *flakeship, *service, *keep); err != nil {
		report(os.Stderr, err)
		os.Exit(1)
	}
}

// report prints err to w, each of the problems it joins on a line of its
// own, a deploy's wrong end followed by the last lines of its log.
func report(w io.Writer, err error) {
	errs := []error{err}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	}
	for _, e := range errs {
		fmt.Fprintln(w, "flakeship demo:", e)
		var u *unexpectedEndError
		if errors.As(e, &u) && len(u.log) > 0 {
			fmt.Fprintf(w, "flakeship demo:   the last lines of its log:\n")
			for _, l := range u.log {
				fmt.Fprintln(w, "flakeship demo:   |", l)
			}
		}
	}
}

// unexpectedEndError is a deploy that ended in another state than the demo
// says it will.
type unexpectedEndError struct {
	id        int64
	got, want string
	reason    string   // the deploy's error, if it has one
	log       []string // the last lines of its log: nix's, git's or systemd's own words
}

func (e *unexpectedEndError) Error() string {
	msg := fmt.Sprintf("deploy %d ended %s, expected %s", e.id, e.got, e.want)
	if e.reason != "" {
		msg += ": " + e.reason
	}
	return msg
}

type demo struct {
	dir       string
	repo      string
	system    string
	secret    string
	base      string
	healthURL string
	unit      string
	version   int
	head      string
}

func run(ctx context.Context, flakeship, service string, keep bool) error {
	if flakeship == "" || service == "" {
		return errors.New("-flakeship and -service are required (use scripts/demo)")
	}
	runtime := os.Getenv("XDG_RUNTIME_DIR")
	if runtime == "" {
		return errors.New("no systemd user manager: XDG_RUNTIME_DIR is not set (use scripts/demo)")
	}
	dir, err := os.MkdirTemp("", "flakeship-demo-")
	if err != nil {
		return err
	}
	if !keep {
		defer os.RemoveAll(dir)
	}
	d := &demo{dir: dir, repo: filepath.Join(dir, "web"), secret: randomHex(16), unit: "flakeship-demo-web.service"}
	if d.system, err = output(ctx, "", "nix", "--extra-experimental-features", "nix-command flakes",
		"eval", "--impure", "--raw", "--expr", "builtins.currentSystem"); err != nil {
		return fmt.Errorf("ask nix for the current system: %w", err)
	}
	port, err := freePort()
	if err != nil {
		return err
	}
	d.healthURL = fmt.Sprintf("http://127.0.0.1:%d/health", port)
	state := filepath.Join(dir, "state")

	step("a git repository with a flake: %s", d.repo)
	if _, err := output(ctx, "", "git", "init", "--quiet", "--initial-branch=main", d.repo); err != nil {
		return err
	}

	step("a systemd user service that runs whatever the target's profile holds: %s", d.unit)
	unitDir := filepath.Join(runtime, "systemd", "user")
	if err := os.MkdirAll(unitDir, 0o755); err != nil {
		return err
	}
	unit := fmt.Sprintf("[Unit]\nDescription=flakeship demo web service\n\n[Service]\nExecStart=%s -profile %s -addr 127.0.0.1:%d\n",
		service, filepath.Join(state, "profiles", "web"), port)
	unitPath := filepath.Join(unitDir, d.unit)
	if err := os.WriteFile(unitPath, []byte(unit), 0o644); err != nil {
		return err
	}
	defer func() {
		exec.Command("systemctl", "--user", "stop", d.unit).Run()
		os.Remove(unitPath)
		exec.Command("systemctl", "--user", "daemon-reload").Run()
	}()
	if _, err := output(ctx, "", "systemctl", "--user", "daemon-reload"); err != nil {
		return err
	}

	step("flakeship, with its defaults: SQLite and git cache in %s", state)
	// The user's own FLAKESHIP_* settings (the quick start's, say) stay out:
	// the demo runs on the defaults and these alone.
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "FLAKESHIP_") {
			env = append(env, kv)
		}
	}
	env = append(env,
		"FLAKESHIP_LISTEN=127.0.0.1:0",
		"FLAKESHIP_STATE_DIR="+state,
		"FLAKESHIP_NIX_FLAGS=--extra-experimental-features 'nix-command flakes' --option substituters ''",
		"FLAKESHIP_TARGETS=web",
		"FLAKESHIP_TARGET_WEB_FORGE=github",
		"FLAKESHIP_TARGET_WEB_REPO=demo/web",
		"FLAKESHIP_TARGET_WEB_CLONE_URL="+d.repo,
		"FLAKESHIP_TARGET_WEB_UNIT="+d.unit,
		"FLAKESHIP_TARGET_WEB_SYSTEMD_SCOPE=user",
		"FLAKESHIP_TARGET_WEB_HEALTH_URL="+d.healthURL,
		"FLAKESHIP_TARGET_WEB_HEALTH_TIMEOUT=5s",
		"FLAKESHIP_TARGET_WEB_WEBHOOK_SECRET="+d.secret,
	)
	cmd := exec.Command(flakeship)
	cmd.Env = env
	logFile, err := os.Create(filepath.Join(dir, "flakeship.log"))
	if err != nil {
		return err
	}
	defer logFile.Close()
	pr, pw := io.Pipe()
	cmd.Stderr = io.MultiWriter(logFile, pw)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start flakeship: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait(); pw.Close() }()
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
		}
	}()
	addr, err := listening(pr)
	if err != nil {
		if keep { // else the log is removed with the state dir
			return fmt.Errorf("%w (see %s)", err, logFile.Name())
		}
		return err
	}
	go io.Copy(io.Discard, pr)
	d.base = "http://" + addr
	step("flakeship listens on %s", d.base)

	// What the demo says will happen, as the package comment and README do.
	var problems []error
	for _, c := range []struct{ kind, what, wantState, wantHealth string }{
		{"healthy", "a good commit", "succeeded", "200 version=1"},
		{"unhealthy", "a commit whose service answers 500", "rolled_back", "200 version=1"},
		{"healthy", "another good commit", "succeeded", "200 version=3"},
	} {
		end, err := d.pushAndWatch(ctx, c.kind, c.what)
		if err != nil {
			return errors.Join(append(problems, err)...)
		}
		if end.state != c.wantState {
			problems = append(problems, &unexpectedEndError{id: end.id, got: end.state, want: c.wantState,
				reason: end.err, log: logTail(filepath.Join(state, "logs", fmt.Sprintf("%d.log", end.id)), 10)})
		}
		if end.health != c.wantHealth {
			problems = append(problems, fmt.Errorf("after deploy %d the service answers %s, expected %s", end.id, end.health, c.wantHealth))
		}
	}
	fmt.Println()
	step("done: every deploy is in %s/api/deploys; logs in %s", d.base, filepath.Join(state, "logs"))
	if keep {
		step("kept %s", dir)
	}
	return errors.Join(problems...)
}

// ending is how a deploy ended and what the service answered then.
type ending struct {
	id     int64
	state  string
	err    string // the deploy's error
	health string // "200 version=1", or "nothing (...)"
}

// stepHeaderRE is the line a deploy log starts each step with ("== build").
var stepHeaderRE = regexp.MustCompile(`^== [a-z]+$`)

// logTail is what a deploy's log at path says from its last step's start,
// at most n lines of it, or nothing if the log cannot be read: it only adds
// to an error that is reported anyway.
func logTail(path string, n int) []string {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	from := max(0, len(lines)-n)
	for i := len(lines) - 1; i > from; i-- {
		if stepHeaderRE.MatchString(lines[i]) {
			from = i
			break
		}
	}
	return lines[from:]
}

// pushAndWatch commits a flake of the given kind, sends its signed push
// delivery and prints the deploy's states until it ends.
func (d *demo) pushAndWatch(ctx context.Context, kind, what string) (ending, error) {
	d.version++
	healthy := "yes"
	if kind == "unhealthy" {
		healthy = "no"
	}
	flake := fmt.Sprintf(`{
  description = "flakeship demo";
  outputs = { self }: {
    packages.%[1]s.default = derivation {
      name = "demo-web";
      system = "%[1]s";
      builder = "/bin/sh";
      args = [ "-c" "echo version=%[2]d > $out; echo healthy=%[3]s >> $out" ];
    };
  };
}
`, d.system, d.version, healthy)
	if err := os.WriteFile(filepath.Join(d.repo, "flake.nix"), []byte(flake), 0o644); err != nil {
		return ending{}, err
	}
	git := func(args ...string) (string, error) { return output(ctx, d.repo, "git", args...) }
	if _, err := git("add", "flake.nix"); err != nil {
		return ending{}, err
	}
	msg := fmt.Sprintf("version %d: %s", d.version, what)
	if _, err := git("-c", "user.name=Demo", "-c", "user.email=demo@flakeship.invalid", "commit", "--quiet", "-m", msg); err != nil {
		return ending{}, err
	}
	sha, err := git("rev-parse", "HEAD")
	if err != nil {
		return ending{}, err
	}
	before := d.head
	if before == "" {
		before = strings.Repeat("0", 40)
	}
	d.head = sha
	fmt.Println()
	step("git push: %s %s", sha[:7], msg)

	body, _ := json.Marshal(map[string]any{
		"ref": "refs/heads/main", "before": before, "after": sha, "created": before == strings.Repeat("0", 40),
		"deleted": false, "forced": false,
		"repository":  map[string]any{"full_name": "demo/web", "name": "web", "default_branch": "main"},
		"pusher":      map[string]any{"name": "demo"},
		"head_commit": map[string]any{"id": sha, "message": msg, "author": map[string]any{"name": "Demo"}},
	})
	mac := hmac.New(sha256.New, []byte(d.secret))
	mac.Write(body)
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, d.base+"/hooks/github", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-GitHub-Event", "push")
	req.Header.Set("X-GitHub-Delivery", randomHex(16))
	req.Header.Set("X-Hub-Signature-256", "sha256="+hex.EncodeToString(mac.Sum(nil)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return ending{}, fmt.Errorf("send webhook: %w", err)
	}
	answer, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	step("webhook answered %d %s", resp.StatusCode, strings.TrimSpace(string(answer)))
	var a struct {
		DeployID int64 `json:"deploy_id"`
	}
	if resp.StatusCode != http.StatusAccepted || json.Unmarshal(answer, &a) != nil {
		return ending{}, errors.New("the webhook was not accepted")
	}

	last := ""
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		var dep struct {
			State      string `json:"state"`
			Generation int    `json:"generation"`
			Error      string `json:"error"`
			Steps      []struct {
				Name       string     `json:"name"`
				StartedAt  time.Time  `json:"started_at"`
				FinishedAt *time.Time `json:"finished_at"`
			} `json:"steps"`
		}
		if err := getJSON(ctx, fmt.Sprintf("%s/api/deploys/%d", d.base, a.DeployID), &dep); err != nil {
			return ending{}, err
		}
		if dep.State != last {
			step("  deploy %d: %s", a.DeployID, dep.State)
			last = dep.State
		}
		switch dep.State {
		case "succeeded", "failed", "rolled_back", "superseded", "cancelled", "interrupted":
			var times []string
			for _, s := range dep.Steps {
				if s.FinishedAt != nil {
					times = append(times, fmt.Sprintf("%s %s", s.Name, s.FinishedAt.Sub(s.StartedAt).Round(time.Millisecond)))
				}
			}
			step("  steps: %s", strings.Join(times, ", "))
			if dep.Error != "" {
				step("  error: %s", dep.Error)
			}
			end := ending{id: a.DeployID, state: dep.State, err: dep.Error, health: d.health(ctx)}
			step("  the service now answers: %s", end.health)
			return end, nil
		}
		select {
		case <-ctx.Done():
			return ending{}, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return ending{}, fmt.Errorf("deploy %d did not end within 2 minutes", a.DeployID)
}

func (d *demo) health(ctx context.Context) string {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, d.healthURL, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "nothing (" + err.Error() + ")"
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return fmt.Sprintf("%d %s", resp.StatusCode, strings.TrimSpace(string(b)))
}

func getJSON(ctx context.Context, url string, v any) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

var listeningRE = regexp.MustCompile(`msg="flakeship listening" addr=(\S+)`)

// listening reads flakeship's log until it says where it listens.
func listening(r io.Reader) (string, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if m := listeningRE.FindStringSubmatch(sc.Text()); m != nil {
			return m[1], nil
		}
		if strings.Contains(sc.Text(), "flakeship:") {
			return "", errors.New(sc.Text())
		}
	}
	return "", errors.New("flakeship exited before listening")
}

func output(ctx context.Context, dir, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		err = fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
		if msg := strings.TrimSpace(stderr.String()); msg != "" {
			err = fmt.Errorf("%w: %s", err, msg)
		}
		return "", err
	}
	return strings.TrimSpace(string(out)), nil
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func step(format string, args ...any) {
	fmt.Printf("flakeship demo | "+format+"\n", args...)
}
