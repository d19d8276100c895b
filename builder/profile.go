package builder

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// profile is a nix profile of generations, like comin's
// internal/profile/profile.go: P is a symlink to P-N-link, which points at
// generation N's store path. nix-env writes it; we read the links directly,
// which is what `nix-env --list-generations` does too, without parsing its
// table.
//
// Each generation is a garbage collector root wherever the profile lives:
// for a profile outside /nix/var/nix/profiles, nix-env registers its
// generation links as indirect roots (in /nix/var/nix/gcroots/auto, or
// through the daemon), so `nix-collect-garbage` keeps every build a
// generation points at. TestProfileGenerationsAreGCRoots checks this.
type profile struct {
	path   string // P
	nixEnv string // the nix-env binary
}

// newProfile checks that path can name a profile.
func newProfile(path, nixEnv string) (profile, error) {
	if !filepath.IsAbs(path) {
		return profile{}, fmt.Errorf("profile %q is not an absolute path", path)
	}
	return profile{path: filepath.Clean(path), nixEnv: nixEnv}, nil
}

// set makes outPath the profile's current generation: nothing changes when
// the current generation points at it already (a build set it there);
// otherwise a new generation, unless the newest one points at outPath
// (nix-env reuses it then).
func (p profile) set(ctx context.Context, outPath string, log io.Writer) (Generation, error) {
	if !filepath.IsAbs(outPath) {
		return Generation{}, fmt.Errorf("set profile %s: store path %q is not absolute", p.path, outPath)
	}
	// A build into the profile (Nix.Build) has set it already.
	if g, err := p.current(); err == nil && g.OutPath == filepath.Clean(outPath) {
		return g, nil
	}
	if err := os.MkdirAll(filepath.Dir(p.path), 0o755); err != nil {
		return Generation{}, fmt.Errorf("set profile %s: %w", p.path, err)
	}
	if err := runCommand(ctx, log, p.nixEnv, "--profile", p.path, "--set", filepath.Clean(outPath)); err != nil {
		return Generation{}, fmt.Errorf("set profile %s: nix-env --set: %w", p.path, err)
	}
	g, err := p.current()
	if err != nil {
		return Generation{}, fmt.Errorf("set profile %s: %w", p.path, err)
	}
	if g.OutPath != filepath.Clean(outPath) {
		return Generation{}, fmt.Errorf("set profile %s: generation %d points at %s, not %s", p.path, g.Number, g.OutPath, outPath)
	}
	return g, nil
}

// switchTo makes generation to current again. If to.OutPath is set, the
// generation must still point at it. The zero Generation (what Current
// gives before the first switch) is ErrNoGeneration: there is nothing to
// go back to.
func (p profile) switchTo(ctx context.Context, to Generation, log io.Writer) error {
	if to.Number < 1 {
		return fmt.Errorf("switch profile %s to generation %d: %w", p.path, to.Number, ErrNoGeneration)
	}
	g, err := p.generation(to.Number)
	if err != nil {
		return fmt.Errorf("switch profile %s to generation %d: %w", p.path, to.Number, err)
	}
	if to.OutPath != "" && g.OutPath != to.OutPath {
		return fmt.Errorf("switch profile %s: generation %d points at %s, not %s", p.path, to.Number, g.OutPath, to.OutPath)
	}
	err = runCommand(ctx, log, p.nixEnv, "--profile", p.path, "--switch-generation", strconv.Itoa(to.Number))
	if err != nil {
		return fmt.Errorf("switch profile %s to generation %d: nix-env: %w", p.path, to.Number, err)
	}
	return nil
}

// current is the generation the profile points at, or ErrNoGeneration.
func (p profile) current() (Generation, error) {
	link, err := os.Readlink(p.path)
	if errors.Is(err, fs.ErrNotExist) {
		return Generation{}, ErrNoGeneration
	}
	if err != nil {
		return Generation{}, fmt.Errorf("read profile: %w", err)
	}
	n, ok := p.linkNumber(filepath.Base(link))
	inDir := filepath.Dir(link) == "." || filepath.Dir(link) == filepath.Dir(p.path)
	if !ok || !inDir {
		return Generation{}, fmt.Errorf("profile %s points at %s, not at one of its generations", p.path, link)
	}
	return p.generation(n)
}

// generations lists the profile's generations, oldest first.
func (p profile) generations() ([]Generation, error) {
	entries, err := os.ReadDir(filepath.Dir(p.path))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list generations of %s: %w", p.path, err)
	}
	var gens []Generation
	for _, e := range entries {
		n, ok := p.linkNumber(e.Name())
		if !ok {
			continue
		}
		g, err := p.generation(n)
		if err != nil {
			return nil, fmt.Errorf("list generations: %w", err)
		}
		gens = append(gens, g)
	}
	sort.Slice(gens, func(i, j int) bool { return gens[i].Number < gens[j].Number })
	return gens, nil
}

// generation reads generation n's link.
func (p profile) generation(n int) (Generation, error) {
	target, err := os.Readlink(p.linkPath(n))
	if errors.Is(err, fs.ErrNotExist) {
		return Generation{}, fmt.Errorf("generation %d of %s does not exist", n, p.path)
	}
	if err != nil {
		return Generation{}, fmt.Errorf("read generation %d: %w", n, err)
	}
	return Generation{Number: n, OutPath: target}, nil
}

// linkPath is generation n's link, P-N-link.
func (p profile) linkPath(n int) string {
	return p.path + "-" + strconv.Itoa(n) + "-link"
}

// linkNumber parses N out of a link name "<base of P>-N-link".
func (p profile) linkNumber(name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, filepath.Base(p.path)+"-")
	if !ok {
		return 0, false
	}
	digits, ok := strings.CutSuffix(rest, "-link")
	if !ok || digits == "" || strings.TrimLeft(digits, "0123456789") != "" || len(digits) > 9 {
		return 0, false
	}
	n, err := strconv.Atoi(digits)
	return n, err == nil && n > 0
}

// restore puts the profile back at generation before after a build that
// may have moved it and then failed (ErrNoGeneration's zero Generation: the
// profile had none, and its link goes). It does nothing when the profile did
// not move. It must work when the build's context has ended, so it has a
// deadline of its own.
func (p profile) restore(before Generation, log io.Writer) error {
	now, err := p.current()
	switch {
	case errors.Is(err, ErrNoGeneration) && before.Number == 0:
		return nil
	case err != nil:
		return fmt.Errorf("restore profile %s: %w", p.path, err)
	case now.Number == before.Number:
		return nil
	}
	fmt.Fprintf(log, "the failed build moved profile %s to generation %d; moving it back\n", p.path, now.Number)
	if before.Number == 0 {
		if err := os.Remove(p.path); err != nil {
			return fmt.Errorf("restore profile %s: %w", p.path, err)
		}
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), restoreTimeout)
	defer cancel()
	return p.switchTo(ctx, before, log)
}

// restoreTimeout bounds restore's nix-env.
const restoreTimeout = 30 * time.Second
