package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// These tests push hostile flakes: a build that tries to read flakeship's
// secrets, one that holds nix running while the test looks at what every
// user of the machine could see of it, and one that floods its log.

// withEnv returns env with the variable name set to value, in place of any
// entry of that name (flakeship reads the first of a repeated name).
func withEnv(env []string, name, value string) []string {
	out := slices.DeleteFunc(slices.Clone(env), func(kv string) bool { return strings.HasPrefix(kv, name+"=") })
	return append(out, name+"="+value)
}

// envNames lists the names of env's entries that start with prefix.
func envNames(env []string, prefix string) []string {
	var names []string
	for _, kv := range env {
		if name, _, _ := strings.Cut(kv, "="); strings.HasPrefix(name, prefix) {
			names = append(names, name)
		}
	}
	return names
}

// commitFlake commits and pushes flake.nix to main and returns the
// delivery the forge would send for it.
func (a *app) commitFlake(msg, flake string) (string, delivery) {
	before := a.head
	if before == "" {
		before = strings.Repeat("0", 40)
	}
	sha := a.repo.Commit(a.t, msg, map[string]string{"flake.nix": flake})
	a.repo.Push(a.t, "main")
	a.head = sha
	return sha, a.delivery(before, sha)
}

// serviceFlake is a flake whose package is the test service's healthy
// version 1 (see app.flake), built after waiting on the store path of the
// derivation extra, defined in let-bindings, if given.
func (a *app) serviceFlake(lets, script string) string {
	return fmt.Sprintf(`{
  description = "flakeship end-to-end test: a hostile build";
  outputs = { self }: let
    system = "%[1]s";
%[2]s
  in {
    packages.${system}.default = derivation {
      name = "flakeship-e2e-web-%[3]s";
      inherit system;
      builder = "/bin/sh";
      args = [ "-c" %[4]q ];
    };
  };
}
`, a.system, lets, a.nonce, script)
}

// getAuthorized GETs path with a bearer token and returns the body of a
// 200 answer.
func getAuthorized(t *testing.T, base, path, token string) []byte {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, base+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %s", path, resp.StatusCode, b)
	}
	return b
}

// waitEndAuthorized is flakeship.waitEnd for a flakeship whose reads need
// a token.
func waitEndAuthorized(t *testing.T, f *flakeship, id int64, token string) deployRecord {
	t.Helper()
	var d deployRecord
	waitFor(t, 2*time.Minute, func() bool {
		if err := json.Unmarshal(getAuthorized(t, f.base, fmt.Sprintf("/api/deploys/%d", id), token), &d); err != nil {
			t.Fatal(err)
		}
		return terminal[d.State]
	}, func() string { return fmt.Sprintf("deploy %d still %s\n%s", id, d.State, f.logs.String()) })
	return d
}

// TestHostileFlakeReadsNoSecret pushes a flake whose fixed-output
// derivation names every secret-bearing variable flakeship has in
// impureEnvVars (nix passes those to such a build) and prints each with
// '_' after every character, which no redaction of the plain value
// catches, then its whole environment, and the file nix reads its access
// tokens from. The deploy log, read over the API, holds none of the
// secrets, plain or with the separators taken out. The build's own output
// proves it ran and could print: the one allow-listed variable it names,
// NIX_PATH, appears with its separators.
func TestHostileFlakeReadsNoSecret(t *testing.T) {
	a := newApp(t, "github")
	secrets := map[string]string{
		"admin token":            "admin-tok-h0stile-4a1f9c",
		"read token":             "read-tok-h0stile-77e0b3",
		"webhook secret":         a.secret,
		"forge token":            a.token,
		"nix access token":       "ghp_NixTok3nFromTheVariable9f2",
		"nix token in the flags": "glpat-NixTok3nFromTheFlags51c",
		"credentials directory":  "/run/credentials/flakeship-h0stile.service",
		"unrelated secret":       "wJalrXUtnFEMI-h0stile-K7MDENG",
	}
	canary := "flakeship-canary=/var/empty"
	env := a.env()
	env = withEnv(env, "FLAKESHIP_NIX_FLAGS", "--extra-experimental-features 'nix-command flakes' --option substituters '' "+
		"--option extra-access-tokens gitlab.com=PAT:"+secrets["nix token in the flags"])
	env = append(env,
		"FLAKESHIP_ADMIN_TOKEN="+secrets["admin token"],
		"FLAKESHIP_READ_TOKEN="+secrets["read token"],
		"FLAKESHIP_NIX_ACCESS_TOKENS=github.com="+secrets["nix access token"],
		"CREDENTIALS_DIRECTORY="+secrets["credentials directory"],
		"AWS_SECRET_ACCESS_KEY="+secrets["unrelated secret"],
		"NIX_PATH="+canary,
	)
	names := append(envNames(env, "FLAKESHIP_"), "CREDENTIALS_DIRECTORY", "AWS_SECRET_ACCESS_KEY", "NIX_PATH", "NIX_USER_CONF_FILES")

	// The build: each variable spelled out, the environment, and each
	// file of NIX_USER_CONF_FILES. busybox is the sandbox's /bin/sh.
	var script strings.Builder
	script.WriteString("echo hostile build starts\n")
	for _, name := range names {
		fmt.Fprintf(&script, "echo \"%s=[$(printf %%s \"$%s\" | sed 's/./&_/g')]\"\n", name, name)
	}
	script.WriteString("export -p\n")
	script.WriteString("for f in $(echo \"$NIX_USER_CONF_FILES\" | tr : ' '); do echo \"conf $f:\"; cat \"$f\" 2>&1 | sed 's/./&_/g'; done\n")
	script.WriteString("echo fixed > $out\n")
	sum := sha256.Sum256([]byte("fixed\n"))
	impure := make([]string, len(names))
	for i, n := range names {
		impure[i] = strconv.Quote(n)
	}
	lets := fmt.Sprintf(`    hostile = derivation {
      name = "flakeship-hostile-%s";
      inherit system;
      builder = "/bin/sh";
      args = [ "-c" %q ];
      impureEnvVars = [ %s ];
      outputHashMode = "flat";
      outputHashAlgo = "sha256";
      outputHash = "%s";
    };`, a.nonce, script.String(), strings.Join(impure, " "), hex.EncodeToString(sum[:]))
	flake := a.serviceFlake(lets, "read x < ${hostile}; echo version=1 > $out; echo healthy=yes >> $out")

	f := startFlakeship(t, env)
	_, d := a.commitFlake("a flake that reads secrets", flake)
	id := d.accepted(t, f.base)
	rec := waitEndAuthorized(t, f, id, secrets["read token"])
	log := string(getAuthorized(t, f.base, fmt.Sprintf("/api/deploys/%d/log", id), secrets["read token"]))
	if rec.State != "succeeded" {
		t.Fatalf("deploy ended %s (%s)\n%s", rec.State, rec.Error, log)
	}
	a.wantRunning(1)
	f.stop(syscall.SIGTERM)

	// The build ran and printed what it could read.
	for _, want := range []string{
		"hostile build starts",
		"NIX_PATH=[" + strings.Join(strings.Split(canary, ""), "_") + "_]",
		"FLAKESHIP_ADMIN_TOKEN=[]",
		"CREDENTIALS_DIRECTORY=[]",
		"export impureEnvVars=",
	} {
		if !strings.Contains(log, want) {
			t.Errorf("the build's log lacks %q: the hostile build did not run as the test means\n%s", want, log)
		}
	}
	// Nothing of a secret, plain or spelled out.
	said := map[string]string{"the deploy log": log, "flakeship's log": f.logs.String()}
	leaked := map[string]bool{}
	for where, text := range said {
		joined := strings.ReplaceAll(text, "_", "")
		for name, secret := range secrets {
			if strings.Contains(text, secret) || strings.Contains(joined, strings.ReplaceAll(secret, "_", "")) {
				t.Errorf("the %s appears in %s", name, where)
				leaked[name] = true
			}
		}
	}
	found := "none"
	if len(leaked) > 0 {
		found = fmt.Sprintf("%d of them", len(leaked))
	}
	t.Logf("secrets found in the hostile flake's build log: %s (checked %d secrets, %d variables named in impureEnvVars, %d bytes of log)",
		found, len(secrets), len(names), len(log))
}

// descendants returns the processes under pid (children, their children,
// ...), read from /proc.
func descendants(t *testing.T, pid int) []int {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	children := map[int][]int{}
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue // gone meanwhile
		}
		// pid (comm) state ppid ...; comm may hold spaces and parentheses.
		rest := stat[bytes.LastIndexByte(stat, ')')+1:]
		fields := strings.Fields(string(rest))
		if len(fields) < 2 {
			continue
		}
		ppid, _ := strconv.Atoi(fields[1])
		children[ppid] = append(children[ppid], p)
	}
	var out []int
	for queue := []int{pid}; len(queue) > 0; queue = queue[1:] {
		for _, c := range children[queue[0]] {
			out = append(out, c)
			queue = append(queue, c)
		}
	}
	return out
}

// TestNixGetsAccessTokensOutsideItsCommandLine holds a build on a FIFO the
// test opens, and meanwhile reads the command line of every process under
// flakeship, as any user of the machine can (ps): no access token is on
// one. nix has them all the same: run with the environment flakeship gave
// the nix build process, nix show-config lists them.
func TestNixGetsAccessTokensOutsideItsCommandLine(t *testing.T) {
	a := newApp(t, "github")
	// The two forms of FLAKESHIP_NIX_FLAGS that put tokens on nix's
	// command line before flakeship took them out.
	optionToken, flagToken := "ghp_TokenGivenAsAnOption7d01", "PAT:TokenGivenAsAFlag38ab"
	gate := filepath.Join(t.TempDir(), "gate")
	if err := syscall.Mkfifo(gate, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(gate, 0o666); err != nil { // the build runs as a build user
		t.Fatal(err)
	}
	env := withEnv(a.env(), "FLAKESHIP_NIX_FLAGS", "--extra-experimental-features 'nix-command flakes' --option substituters '' "+
		"--option access-tokens github.com="+optionToken+" --extra-access-tokens gitlab.example.com="+flagToken+
		" --option extra-sandbox-paths /flakeship-gate="+gate)
	flake := a.serviceFlake("", "echo waiting at the gate; read x < /flakeship-gate || exit 1; echo version=1 > $out; echo healthy=yes >> $out")

	f := startFlakeship(t, env)
	_, d := a.commitFlake("a build held at a gate", flake)
	id := d.accepted(t, f.base)

	// The build has reached the gate when the FIFO has a reader.
	var held *os.File
	waitFor(t, 2*time.Minute, func() bool {
		w, err := os.OpenFile(gate, os.O_WRONLY|syscall.O_NONBLOCK, 0)
		if err != nil {
			if !errors.Is(err, syscall.ENXIO) {
				t.Fatalf("open the gate: %v", err)
			}
			if rec := f.deploy(id); terminal[rec.State] {
				t.Fatalf("deploy ended %s before reaching the gate (%s)\n%s", rec.State, rec.Error, a.deployLog(id))
			}
			return false
		}
		held = w
		return true
	}, func() string { return "the build did not reach the gate\n" + a.deployLog(id) })

	procs := descendants(t, f.cmd.Process.Pid)
	var nixBuild []string // the nix build process's environment
	var seen []string     // the programs looked at
	exposed := 0          // command lines with a token
	for _, p := range procs {
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p))
		if err != nil {
			continue // ended meanwhile
		}
		args := strings.Split(strings.TrimSuffix(string(cmdline), "\x00"), "\x00")
		seen = append(seen, filepath.Base(args[0]))
		for _, tok := range []string{optionToken, flagToken} {
			if bytes.Contains(cmdline, []byte(tok)) {
				t.Errorf("process %d has an access token on its command line: %q", p, args)
				exposed++
			}
		}
		if filepath.Base(args[0]) == "nix" && slices.Contains(args, "build") {
			environ, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", p))
			if err != nil {
				t.Fatalf("read nix's environment: %v", err)
			}
			nixBuild = strings.Split(strings.TrimSuffix(string(environ), "\x00"), "\x00")
		}
	}
	if nixBuild == nil {
		t.Fatalf("no nix build process among the %d processes under flakeship while the build was held", len(procs))
	}
	for _, kv := range nixBuild {
		if strings.HasPrefix(kv, "FLAKESHIP_") || strings.Contains(kv, optionToken) || strings.Contains(kv, flagToken) {
			name, _, _ := strings.Cut(kv, "=")
			t.Errorf("nix build's environment has %s", name)
		}
	}

	// nix, with that environment, has both tokens.
	show := exec.Command("nix", "--extra-experimental-features", "nix-command", "show-config", "--json")
	show.Env = nixBuild
	out, err := show.Output()
	if err != nil {
		t.Fatalf("nix show-config with nix build's environment: %v", err)
	}
	var conf struct {
		AccessTokens struct {
			Value map[string]string `json:"value"`
		} `json:"access-tokens"`
	}
	if err := json.Unmarshal(out, &conf); err != nil {
		t.Fatal(err)
	}
	if got := conf.AccessTokens.Value; got["github.com"] != optionToken || got["gitlab.example.com"] != flagToken {
		t.Errorf("nix build's access tokens are for hosts %v, want github.com and gitlab.example.com with the configured tokens", slices.Sorted(maps.Keys(got)))
	}
	if fi, err := os.Stat(filepath.Join(a.stateDir, "nix.conf")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("flakeship's nix.conf: %v, %v; want mode 0600", fi, err)
	}

	if _, err := held.WriteString("go\n"); err != nil {
		t.Fatal(err)
	}
	held.Close()
	if rec := f.waitEnd(id); rec.State != "succeeded" {
		t.Fatalf("deploy ended %s (%s)\n%s", rec.State, rec.Error, a.deployLog(id))
	}
	a.wantRunning(1)
	f.stop(syscall.SIGTERM)
	for _, tok := range []string{optionToken, flagToken} {
		if strings.Contains(a.deployLog(id), tok) || strings.Contains(f.logs.String(), tok) {
			t.Error("an access token is in a log")
		}
	}
	t.Logf("command lines with an access token among the %d processes under flakeship during the build (%s): %d; nix build had tokens for %d hosts",
		len(procs), strings.Join(seen, ", "), exposed, len(conf.AccessTokens.Value))
}

// TestDeployLogStopsAtItsLimitAndTheBuildGoesOn has a build print 2 MB
// into a log limited to 64 KiB: the deploy succeeds, the log ends with the
// truncation line and the runner's own lines, and nothing the build
// printed after the limit is in it.
func TestDeployLogStopsAtItsLimitAndTheBuildGoesOn(t *testing.T) {
	const limit = 64 << 10
	a := newApp(t, "github")
	env := append(a.env(), fmt.Sprintf("FLAKESHIP_DEPLOY_LOG_LIMIT=%d", limit))
	const lines = 20000
	script := fmt.Sprintf(`i=0; while [ $i -lt %d ]; do echo "build output line $i %s"; i=$((i+1)); done; echo version=1 > $out; echo healthy=yes >> $out`,
		lines, strings.Repeat("x", 70))
	flake := a.serviceFlake("", script)

	f := startFlakeship(t, env)
	_, d := a.commitFlake("a build with a flood of output", flake)
	id := d.accepted(t, f.base)
	rec := f.waitEnd(id)
	log := a.deployLog(id)
	if rec.State != "succeeded" {
		t.Fatalf("deploy ended %s (%s)\n%s", rec.State, rec.Error, logTail(log))
	}
	a.wantRunning(1)
	f.stop(syscall.SIGTERM)

	marker := "== log truncated at 64 KiB (DEPLOY_LOG_LIMIT): the rest of the output is discarded\n"
	before, after, ok := strings.Cut(log, marker)
	if !ok {
		t.Fatalf("no truncation line in the log (%d bytes), ending:\n%s", len(log), logTail(log))
	}
	if len(before) > limit {
		t.Errorf("%d bytes before the truncation line, want at most %d", len(before), limit)
	}
	if strings.Contains(after, "build output line") || strings.Contains(log, fmt.Sprintf("line %d ", lines-1)) {
		t.Errorf("build output after the truncation line:\n%s", logTail(log))
	}
	if !strings.Contains(after, "== ") {
		t.Errorf("the runner's own lines do not follow the truncation line: %q", after)
	}
	produced := lines * len(fmt.Sprintf("build output line %d %s\n", lines/2, strings.Repeat("x", 70)))
	t.Logf("the build printed about %d bytes; the log holds %d (limit %d) and the deploy succeeded", produced, len(log), limit)
}

// logTail is the end of a log, for messages.
func logTail(s string) string { return s[max(0, len(s)-2000):] }
