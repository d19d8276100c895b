package builder

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/go-git/go-git/v5"
	gitconfig "github.com/go-git/go-git/v5/config"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/go-git/go-git/v5/plumbing/storer"
	"github.com/go-git/go-git/v5/plumbing/transport"
	"github.com/go-git/go-git/v5/storage/memory"

	"github.com/flakeship/flakeship/config"
)

// ErrCommitNotFound is returned by Fetch when the commit is not in the
// history of the branch it fetched, nor the head of any other ref of the
// remote: an unknown or since rewritten commit.
var ErrCommitNotFound = errors.New("commit not found")

// ErrBranchNotFound is returned by Fetch and ResolveBranch when the remote
// has no such branch.
var ErrBranchNotFound = errors.New("branch not found")

// remoteName is the only remote a cache has.
const remoteName = "origin"

// tokenUser is the basic-auth user name sent with a token. GitHub wants it
// for installation and fine-grained tokens; Forgejo and Gitea take any user
// name with a token as the password.
const tokenUser = "x-access-token"

// defaultBackoff is how long Fetcher waits before each retry of a fetch that
// failed for a reason that may pass (network, HTTP 5xx).
var defaultBackoff = []time.Duration{100 * time.Millisecond, 400 * time.Millisecond, 1600 * time.Millisecond}

// Fetcher fetches commits into per-target bare git caches with go-git. It is
// safe for concurrent use: fetches into one cache wait for each other, fetches
// into different caches run in parallel.
type Fetcher struct {
	log     *slog.Logger
	now     func() time.Time
	backoff []time.Duration // delays before the retries of a transient failure

	mu    sync.Mutex
	locks map[string]chan struct{} // per cache directory, a one-slot semaphore
}

// NewFetcher returns a Fetcher that logs handled problems (retries, broken
// caches) to log.
func NewFetcher(log *slog.Logger) *Fetcher {
	return &Fetcher{
		log:     log,
		now:     time.Now,
		backoff: defaultBackoff,
		locks:   make(map[string]chan struct{}),
	}
}

// Fetch brings commit sha of s.Branch into the bare cache s.CacheDir and
// checks that it is on the branch. It always fetches the branch from
// s.CloneURL (incrementally, into refs/heads/<branch>, forced: branches can be
// force-pushed), so a commit that a force push has since dropped is refused
// with ErrNotOnBranch even when the cache still holds it. A commit the
// branch's history does not have is ErrCommitNotFound, or ErrNotOnBranch when
// it is the head of another ref of the remote. A missing branch is
// ErrBranchNotFound.
//
// The cache is created on first use and reused after; one that cannot be
// opened or read is moved aside to <CacheDir>.broken-<unix time> and fetched
// afresh. Transient failures (network, HTTP 5xx) are retried three times.
// Progress and a summary go to log.
//
// On success the cache is what the returned Checkout promises nix: its
// absolute Dir holds the whole history (never shallow) with refs/heads/<Branch>
// reaching SHA, and HEAD on the branch.
func (f *Fetcher) Fetch(ctx context.Context, s Spec, sha string, log io.Writer) (Checkout, error) {
	if log == nil {
		log = io.Discard
	}
	c, err := f.fetch(ctx, s, sha, log)
	if err != nil {
		return Checkout{}, fmt.Errorf("fetch %s: %w", s.Name, err)
	}
	return c, nil
}

// ResolveBranch asks the remote (like git ls-remote) for the commit at the
// head of branch, for deploys that name a branch rather than a commit.
func (f *Fetcher) ResolveBranch(ctx context.Context, s Spec, branch string) (sha string, err error) {
	defer func() {
		if err != nil {
			err = fmt.Errorf("resolve %s branch %s: %w", s.Name, branch, err)
		}
	}()
	if err := config.ValidateBranch(branch); err != nil {
		return "", err
	}
	if err := checkCloneURL(s.CloneURL); err != nil {
		return "", err
	}
	refs, err := f.listRemote(ctx, s, io.Discard)
	if err != nil {
		return "", err
	}
	want := plumbing.NewBranchReferenceName(branch)
	for _, ref := range refs {
		if ref.Name() == want && ref.Type() == plumbing.HashReference {
			sha := ref.Hash().String()
			if err := config.ValidateSHA(sha); err != nil {
				return "", fmt.Errorf("remote answered a bad commit id: %w", err)
			}
			return sha, nil
		}
	}
	return "", &branchNotFoundError{branch: branch, url: displayURL(s.CloneURL)}
}

func (f *Fetcher) fetch(ctx context.Context, s Spec, sha string, log io.Writer) (Checkout, error) {
	if err := config.ValidateSHA(sha); err != nil {
		return Checkout{}, err
	}
	if err := config.ValidateBranch(s.Branch); err != nil {
		return Checkout{}, err
	}
	if err := checkCloneURL(s.CloneURL); err != nil {
		return Checkout{}, err
	}
	if s.CacheDir == "" {
		return Checkout{}, errors.New("no cache directory")
	}
	dir, err := filepath.Abs(s.CacheDir)
	if err != nil {
		return Checkout{}, fmt.Errorf("cache directory: %w", err)
	}
	s.CacheDir = dir
	unlock, err := f.lock(ctx, s.CacheDir)
	if err != nil {
		return Checkout{}, err
	}
	defer unlock()

	start := f.now()
	repo, fresh, err := f.openCache(s.CacheDir, s.Branch, log)
	if err != nil {
		return Checkout{}, err
	}
	objects, err := f.fetchBranch(ctx, repo, s, log)
	if err != nil {
		return Checkout{}, err
	}
	head, err := f.verify(ctx, repo, s, sha, log)
	var broken *brokenCacheError
	if errors.As(err, &broken) && !fresh {
		// The cache opened fine but its objects cannot be read: start over.
		if err := f.moveAside(s.CacheDir, broken.err, log); err != nil {
			return Checkout{}, err
		}
		if repo, err = f.initCache(s.CacheDir, s.Branch); err != nil {
			return Checkout{}, err
		}
		if objects, err = f.fetchBranch(ctx, repo, s, log); err != nil {
			return Checkout{}, err
		}
		head, err = f.verify(ctx, repo, s, sha, log)
	}
	if err != nil {
		return Checkout{}, err
	}
	if err := setHead(repo, s.Branch); err != nil {
		return Checkout{}, err
	}
	elapsed := f.now().Sub(start).Round(time.Millisecond)
	if _, err := fmt.Fprintf(log, "fetched %s at %s from %s in %s, %d objects\n",
		s.Branch, abbrevSHA(head.String()), displayURL(s.CloneURL), elapsed, objects); err != nil {
		return Checkout{}, fmt.Errorf("write log: %w", err)
	}
	if head.String() != sha {
		if _, err := fmt.Fprintf(log, "commit %s is an ancestor of %s at %s\n",
			abbrevSHA(sha), s.Branch, abbrevSHA(head.String())); err != nil {
			return Checkout{}, fmt.Errorf("write log: %w", err)
		}
	}
	return Checkout{Dir: s.CacheDir, SHA: sha, Branch: s.Branch, Head: head.String()}, nil
}

// IsAncestor reports whether commit ancestor is in the history of commit
// descendant (a commit is its own ancestor), in the cache of a checkout. A
// commit missing from the cache is in no history there: false, no error.
func (f *Fetcher) IsAncestor(ctx context.Context, c Checkout, ancestor, descendant string) (bool, error) {
	for _, sha := range []string{ancestor, descendant} {
		if err := config.ValidateSHA(sha); err != nil {
			return false, fmt.Errorf("is ancestor: %w", err)
		}
	}
	unlock, err := f.lock(ctx, c.Dir)
	if err != nil {
		return false, err
	}
	defer unlock()
	repo, err := git.PlainOpen(c.Dir)
	if err != nil {
		return false, fmt.Errorf("is ancestor: open cache: %w", err)
	}
	tip, err := repo.CommitObject(plumbing.NewHash(descendant))
	if errors.Is(err, plumbing.ErrObjectNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("is ancestor: commit %s: %w", abbrevSHA(descendant), err)
	}
	found, err := isAncestor(ctx, tip, plumbing.NewHash(ancestor))
	if err != nil {
		return false, fmt.Errorf("is ancestor: history of %s: %w", abbrevSHA(descendant), err)
	}
	return found, nil
}

// checkCloneURL refuses an empty clone URL and one that a git program could
// read as an option (go-git runs git-upload-pack for file URLs and paths).
func checkCloneURL(raw string) error {
	switch {
	case raw == "":
		return errors.New("no clone URL")
	case strings.HasPrefix(raw, "-"):
		return fmt.Errorf("clone URL %q starts with '-'", displayURL(raw))
	}
	return nil
}

// fetchBranch fetches s.Branch into refs/heads/<branch> of the cache and
// returns how many objects came.
func (f *Fetcher) fetchBranch(ctx context.Context, repo *git.Repository, s Spec, log io.Writer) (objects int64, err error) {
	if err := ensureRemote(repo, s, log); err != nil {
		return 0, err
	}
	before, err := packs(repo)
	if err != nil {
		return 0, err
	}
	progress := &progressWriter{w: log}
	opts := &git.FetchOptions{
		RemoteName: remoteName,
		RemoteURL:  s.CloneURL,
		RefSpecs:   []gitconfig.RefSpec{branchRefSpec(s.Branch)},
		// Depth 0 is the whole history, and it must be: a shallow cache
		// cannot tell whether a commit is an ancestor of the branch head,
		// go-git cannot deepen or negotiate an incremental fetch from one,
		// and nix refuses to build from a shallow repository.
		Depth:    0,
		Auth:     fetchAuth(s),
		Progress: progress,
		Tags:     git.NoTags,
		Force:    true,
	}
	err = f.retry(ctx, s, "fetch "+s.Branch, log, func() error {
		err := repo.FetchContext(ctx, opts)
		if errors.Is(err, git.NoErrAlreadyUpToDate) {
			err = nil
		}
		if ferr := progress.Flush(); err == nil {
			err = ferr
		}
		return err
	})
	if errors.Is(err, git.NoMatchingRefSpecError{}) || errors.Is(err, transport.ErrEmptyRemoteRepository) {
		return 0, &branchNotFoundError{branch: s.Branch, url: displayURL(s.CloneURL), err: err}
	}
	if err != nil {
		return 0, err
	}
	return newObjects(repo, before)
}

// verify checks that commit sha is the head of the fetched branch or one of
// its ancestors, and returns the head.
func (f *Fetcher) verify(ctx context.Context, repo *git.Repository, s Spec, sha string, log io.Writer) (head plumbing.Hash, err error) {
	ref, err := repo.Storer.Reference(plumbing.NewBranchReferenceName(s.Branch))
	if errors.Is(err, plumbing.ErrReferenceNotFound) {
		return plumbing.ZeroHash, &branchNotFoundError{branch: s.Branch, url: displayURL(s.CloneURL), err: err}
	}
	if err != nil {
		return plumbing.ZeroHash, &brokenCacheError{err: err}
	}
	head = ref.Hash()
	want := plumbing.NewHash(sha)
	if _, err := repo.CommitObject(want); errors.Is(err, plumbing.ErrObjectNotFound) {
		return head, f.notFound(ctx, s, sha, log)
	} else if err != nil {
		return head, &brokenCacheError{err: fmt.Errorf("commit %s: %w", abbrevSHA(sha), err)}
	}
	if head == want {
		return head, nil
	}
	tip, err := repo.CommitObject(head)
	if err != nil {
		return head, &brokenCacheError{err: fmt.Errorf("branch %s head %s: %w", s.Branch, abbrevSHA(head.String()), err)}
	}
	found, err := isAncestor(ctx, tip, want)
	if ctx.Err() != nil {
		return head, ctx.Err()
	}
	if err != nil {
		return head, &brokenCacheError{err: fmt.Errorf("history of %s: %w", s.Branch, err)}
	}
	if !found {
		return head, &notOnBranchError{sha: sha, branch: s.Branch}
	}
	return head, nil
}

// notFound explains a commit the branch's history lacks: if it heads another
// ref of the remote it is on another branch (ErrNotOnBranch), else it is
// unknown (ErrCommitNotFound). Only this failure path pays for the extra
// listing, and the cache never fetches the other refs.
func (f *Fetcher) notFound(ctx context.Context, s Spec, sha string, log io.Writer) error {
	refs, err := f.listRemote(ctx, s, log)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err != nil {
		// The branch's history settles it; the listing only sharpens the
		// message, so say why it is missing and answer without it.
		if _, werr := fmt.Fprintf(log, "cannot tell whether %s is on another branch: %v\n", abbrevSHA(sha), err); werr != nil {
			return fmt.Errorf("write log: %w", werr)
		}
		return &commitNotFoundError{sha: sha, branch: s.Branch, url: displayURL(s.CloneURL)}
	}
	for _, ref := range refs {
		if ref.Type() == plumbing.HashReference && ref.Hash().String() == sha {
			return &notOnBranchError{sha: sha, branch: s.Branch, other: ref.Name().Short()}
		}
	}
	return &commitNotFoundError{sha: sha, branch: s.Branch, url: displayURL(s.CloneURL)}
}

// listRemote lists the remote's refs, with retries.
func (f *Fetcher) listRemote(ctx context.Context, s Spec, log io.Writer) ([]*plumbing.Reference, error) {
	remote := git.NewRemote(memory.NewStorage(), &gitconfig.RemoteConfig{
		Name: remoteName,
		URLs: []string{s.CloneURL},
	})
	var refs []*plumbing.Reference
	err := f.retry(ctx, s, "list refs", log, func() error {
		var err error
		refs, err = remote.ListContext(ctx, &git.ListOptions{Auth: fetchAuth(s)})
		return err
	})
	return refs, err
}

// isAncestor walks the history of tip looking for want, checking ctx as it
// goes: a long history must not outlive a cancelled deploy.
func isAncestor(ctx context.Context, tip *object.Commit, want plumbing.Hash) (bool, error) {
	found := false
	walked := 0
	err := object.NewCommitPreorderIter(tip, nil, nil).ForEach(func(c *object.Commit) error {
		if c.Hash == want {
			found = true
			return storer.ErrStop
		}
		if walked++; walked%1024 == 0 {
			return ctx.Err()
		}
		return nil
	})
	return found, err
}
