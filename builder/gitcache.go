package builder

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/go-git/go-git/v5"
	gitconfig "github.com/go-git/go-git/v5/config"
	"github.com/go-git/go-git/v5/plumbing"
)

// The bare git cache of a target: its lock, opening or making it, and
// moving a broken one aside.

// lock waits until no other fetch uses dir, or ctx ends.
func (f *Fetcher) lock(ctx context.Context, dir string) (unlock func(), err error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	key := filepath.Clean(dir)
	f.mu.Lock()
	sem, ok := f.locks[key]
	if !ok {
		sem = make(chan struct{}, 1)
		f.locks[key] = sem
	}
	f.mu.Unlock()
	select {
	case sem <- struct{}{}:
		return func() { <-sem }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// openCache opens the bare cache at dir, creating it if it does not exist
// and replacing it if it is broken. fresh reports a new, empty cache.
func (f *Fetcher) openCache(dir, branch string, log io.Writer) (repo *git.Repository, fresh bool, err error) {
	empty, err := emptyOrMissing(dir)
	if err != nil {
		return nil, false, fmt.Errorf("git cache: %w", err)
	}
	if !empty {
		repo, err := git.PlainOpen(dir)
		if err != nil {
			err = fmt.Errorf("open: %w", err)
		} else {
			err = checkCache(repo, branch)
		}
		if err == nil {
			return repo, false, nil
		}
		if err := f.moveAside(dir, err, log); err != nil {
			return nil, false, err
		}
	}
	repo, err = f.initCache(dir, branch)
	return repo, true, err
}

// emptyOrMissing reports whether dir does not exist or is an empty directory.
func emptyOrMissing(dir string) (bool, error) {
	d, err := os.Open(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	defer d.Close()
	fi, err := d.Stat()
	if err != nil || !fi.IsDir() {
		return false, err
	}
	names, err := d.Readdirnames(1)
	if errors.Is(err, io.EOF) {
		return true, nil
	}
	return len(names) == 0, err
}

// checkCache finds what would make a cache unusable for go-git or for the git
// that nix runs on it: an unreadable config, a HEAD that is not a branch
// (git then no longer sees a repository), or a branch head whose commit cannot
// be read. Objects beyond the branch head are checked as Fetch reads them.
func checkCache(repo *git.Repository, branch string) error {
	cfg, err := repo.Config()
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	if !cfg.Core.IsBare {
		return errors.New("not a bare repository")
	}
	head, err := repo.Storer.Reference(plumbing.HEAD)
	if err != nil {
		return fmt.Errorf("HEAD: %w", err)
	}
	if head.Type() != plumbing.SymbolicReference || !head.Target().IsBranch() {
		return errors.New("HEAD does not name a branch")
	}
	ref, err := repo.Storer.Reference(plumbing.NewBranchReferenceName(branch))
	if errors.Is(err, plumbing.ErrReferenceNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("branch %s: %w", branch, err)
	}
	if _, err := repo.CommitObject(ref.Hash()); err != nil {
		return fmt.Errorf("branch %s head %s: %w", branch, abbrevSHA(ref.Hash().String()), err)
	}
	return nil
}

// initCache creates an empty bare repository at dir (and its parents, 0700)
// with HEAD on branch.
func (f *Fetcher) initCache(dir, branch string) (*git.Repository, error) {
	if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
		return nil, fmt.Errorf("create git cache: %w", err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("create git cache: %w", err)
	}
	repo, err := git.PlainInit(dir, true)
	if err != nil {
		return nil, fmt.Errorf("create git cache %s: %w", dir, err)
	}
	if err := setHead(repo, branch); err != nil {
		return nil, err
	}
	return repo, nil
}

// moveAside renames a broken cache to <dir>.broken-<unix time> (plus -N if
// that exists), keeping it for a post-mortem, and says so in log.
func (f *Fetcher) moveAside(dir string, why error, log io.Writer) error {
	base := fmt.Sprintf("%s.broken-%d", filepath.Clean(dir), f.now().Unix())
	dst := base
	for i := 1; ; i++ {
		if _, err := os.Lstat(dst); errors.Is(err, fs.ErrNotExist) {
			break
		} else if err != nil {
			return fmt.Errorf("move broken git cache aside: %w", err)
		}
		dst = fmt.Sprintf("%s-%d", base, i)
	}
	if err := os.Rename(dir, dst); err != nil {
		return fmt.Errorf("move broken git cache aside: %w", err)
	}
	f.log.Warn("git cache broken, moved aside", "dir", dir, "moved_to", dst, "err", why)
	if _, err := fmt.Fprintf(log, "git cache is broken (%v); moved it to %s, fetching afresh\n", why, dst); err != nil {
		return fmt.Errorf("write log: %w", err)
	}
	return nil
}

// setHead points the cache's HEAD at branch, so git (and nix) tools looking at
// the cache see the deployed branch.
func setHead(repo *git.Repository, branch string) error {
	ref := plumbing.NewSymbolicReference(plumbing.HEAD, plumbing.NewBranchReferenceName(branch))
	if err := repo.Storer.SetReference(ref); err != nil {
		return fmt.Errorf("git cache: set HEAD: %w", err)
	}
	return nil
}

// branchRefSpec maps the remote's branch onto the same local branch, forced
// because branches can be force-pushed.
func branchRefSpec(branch string) gitconfig.RefSpec {
	ref := plumbing.NewBranchReferenceName(branch)
	return gitconfig.RefSpec("+" + ref.String() + ":" + ref.String())
}

// ensureRemote keeps the cache's origin remote in step with the spec, so the
// cache explains itself to a person running git in it. The URL stored has no
// credentials; the fetch itself uses the spec's URL.
func ensureRemote(repo *git.Repository, s Spec, log io.Writer) error {
	cfg, err := repo.Config()
	if err != nil {
		return fmt.Errorf("git cache config: %w", err)
	}
	want := &gitconfig.RemoteConfig{
		Name:  remoteName,
		URLs:  []string{displayURL(s.CloneURL)},
		Fetch: []gitconfig.RefSpec{branchRefSpec(s.Branch)},
	}
	if cur, ok := cfg.Remotes[remoteName]; ok {
		if len(cur.URLs) == 1 && cur.URLs[0] == want.URLs[0] &&
			len(cur.Fetch) == 1 && cur.Fetch[0] == want.Fetch[0] {
			return nil
		}
		if len(cur.URLs) > 0 && cur.URLs[0] != want.URLs[0] {
			if _, err := fmt.Fprintf(log, "clone URL changed from %s to %s\n", cur.URLs[0], want.URLs[0]); err != nil {
				return fmt.Errorf("write log: %w", err)
			}
		}
	}
	if err := want.Validate(); err != nil {
		return fmt.Errorf("remote %s: %w", displayURL(s.CloneURL), err)
	}
	cfg.Remotes[remoteName] = want
	if err := repo.SetConfig(cfg); err != nil {
		return fmt.Errorf("git cache config: %w", err)
	}
	return nil
}
