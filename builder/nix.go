package builder

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/flakeship/flakeship/config"
)

// Nix runs the nix command. Binary and Flags, when set, take the place of
// the Spec's Nix and NixFlags; the zero Nix uses the Spec's, and "nix" from
// PATH when neither names a binary.
type Nix struct {
	Binary string   // nix binary: a name looked up in PATH, or a path
	Flags  []string // flags for every nix call, before the subcommand
	// Conf is flakeship's own nix.conf (see WriteNixConf), holding the
	// access tokens: nix build reads it first among the user configuration
	// files, before the user's own. "" for none.
	Conf string
}

// Build builds the flake output s.Attr of the commit c with
// `nix build --json --no-link --print-build-logs`, streaming the build log
// to log, and returns the store path of its "out" output. The build runs in
// a process group of its own that is stopped when ctx ends; the error then
// wraps ctx.Err(). Other errors are one line ("nix build: exit status 1"):
// the details are in log.
//
// For a service or build-only target, nix sets the build into s.Profile as
// a new generation itself (`--profile`), which saves Switch a second nix
// process; a build that fails or is stopped after nix moved the profile
// moves it back. A NixOS build goes into no profile here: its switcher
// checks it is a system, and a test activation adds no generation, before
// the system profile may change.
func (n *Nix) Build(ctx context.Context, s Spec, c Checkout, log io.Writer) (outPath string, err error) {
	ref, err := installable(c, s.Attr)
	if err != nil {
		return "", fmt.Errorf("nix build: %w", err)
	}
	var into *profile
	// --no-link always: without it nix also leaves a "result" link (a
	// garbage collector root) in the working directory, --profile or not.
	args := append(n.flags(s), "build", "--json", "--no-link", "--print-build-logs")
	if s.Profile != "" && (s.Activate == config.ActivateService || s.Activate == config.ActivateNone) {
		p, err := newProfile(s.Profile, n.tool(s, "nix-env"))
		if err != nil {
			return "", fmt.Errorf("nix build: %w", err)
		}
		if err := os.MkdirAll(filepath.Dir(p.path), 0o755); err != nil {
			return "", fmt.Errorf("nix build: create profile dir: %w", err)
		}
		into = &p
		args = append(args, "--profile", p.path)
	}
	args = append(args, ref)
	env, err := n.env(s)
	if err != nil {
		return "", fmt.Errorf("nix build: %w", err)
	}
	var before Generation
	if into != nil {
		if before, err = into.current(); err != nil && !errors.Is(err, ErrNoGeneration) {
			return "", fmt.Errorf("nix build: %w", err)
		}
	}
	fmt.Fprintf(log, "building %s\n", ref)
	start := time.Now()
	stdout, err := outputCommandEnv(ctx, log, env, n.binary(s), args...)
	if err == nil {
		outPath, err = parseBuildJSON(stdout)
	}
	if err != nil {
		if into != nil {
			err = errors.Join(err, into.restore(before, log))
		}
		return "", fmt.Errorf("nix build: %w", err)
	}
	fmt.Fprintf(log, "built %s in %s\n", outPath, time.Since(start).Round(time.Millisecond))
	return outPath, nil
}

// env is what nix build gets in its environment beside childEnv's.
func (n *Nix) env(s Spec) ([]string, error) {
	var env []string
	if s.NixCache != "" {
		// nix keeps its own clone of the repository and its evaluation
		// cache under XDG_CACHE_HOME: one per target, in the state dir,
		// so they are writable for a service user without a home and can
		// be reset when a killed nix leaves them half written.
		if err := os.MkdirAll(s.NixCache, 0o700); err != nil {
			return nil, fmt.Errorf("create nix cache dir: %w", err)
		}
		env = append(env, "XDG_CACHE_HOME="+s.NixCache)
	}
	if n != nil && n.Conf != "" {
		// The variable replaces nix's list of user configuration files:
		// the list names them again after flakeship's.
		env = append(env, "NIX_USER_CONF_FILES="+userConfFiles(n.Conf, childEnv(os.Environ())))
	}
	return env, nil
}

// ResetCache removes the target's nix cache (its clone of the repository
// and its evaluation cache). A nix stopped in the middle of a fetch can leave
// that clone unusable ("not a git repository") for every later build; the
// next build fetches it again from the local bare cache, which is quick.
func (n *Nix) ResetCache(s Spec) error {
	if s.NixCache == "" {
		return nil
	}
	if !filepath.IsAbs(s.NixCache) {
		return fmt.Errorf("reset nix cache: %q is not absolute", s.NixCache)
	}
	if err := os.RemoveAll(s.NixCache); err != nil {
		return fmt.Errorf("reset nix cache: %w", err)
	}
	return nil
}

// installable is the exact-commit flake reference of attr in c:
// git+file://<dir>?ref=<branch>&rev=<sha>#<attr>. The ref beside the rev is
// for nix 2.8, which otherwise looks for refs/heads/master. Each part is
// validated first, so nothing in it can be read as an option or escape the URL.
func installable(c Checkout, attr string) (string, error) {
	if err := config.ValidateSHA(c.SHA); err != nil {
		return "", err
	}
	if err := config.ValidateBranch(c.Branch); err != nil {
		return "", err
	}
	if err := config.ValidateAttr(attr); err != nil {
		return "", err
	}
	if !filepath.IsAbs(c.Dir) {
		return "", fmt.Errorf("repository dir %q is not absolute", c.Dir)
	}
	dir := (&url.URL{Path: filepath.Clean(c.Dir)}).EscapedPath()
	return "git+file://" + dir + "?ref=" + url.QueryEscape(c.Branch) + "&rev=" + c.SHA + "#" + attr, nil
}

// parseBuildJSON takes the "out" output of the one installable out of
// `nix build --json`: [{"drvPath":"...","outputs":{"out":"/nix/store/..."}}].
func parseBuildJSON(b []byte) (string, error) {
	var results []struct {
		DrvPath string            `json:"drvPath"`
		Outputs map[string]string `json:"outputs"`
	}
	if err := json.Unmarshal(b, &results); err != nil {
		return "", fmt.Errorf("read its --json output: %w", err)
	}
	if len(results) != 1 {
		return "", fmt.Errorf("want 1 result in its --json output, got %d", len(results))
	}
	out := results[0].Outputs["out"]
	if out == "" {
		return "", fmt.Errorf("%s has no out output", results[0].DrvPath)
	}
	if !filepath.IsAbs(out) {
		return "", fmt.Errorf("out output %q is not an absolute path", out)
	}
	return out, nil
}

// binary is the nix binary to run for s.
func (n *Nix) binary(s Spec) string {
	switch {
	case n != nil && n.Binary != "":
		return n.Binary
	case s.Nix != "":
		return s.Nix
	}
	return "nix"
}

// flags are the flags to put before the subcommand for s, in a new slice.
func (n *Nix) flags(s Spec) []string {
	if n != nil && n.Flags != nil {
		return append([]string(nil), n.Flags...)
	}
	return append([]string(nil), s.NixFlags...)
}

// tool is the nix tool name (nix-env, nix-store) that belongs with the nix
// binary of s: beside it when it is given as a path, else from PATH.
func (n *Nix) tool(s Spec, name string) string {
	bin := n.binary(s)
	if !strings.ContainsRune(bin, filepath.Separator) {
		return name
	}
	return filepath.Join(filepath.Dir(bin), name)
}
