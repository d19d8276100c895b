package builder

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/go-git/go-git/v5"
	gitconfig "github.com/go-git/go-git/v5/config"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/format/idxfile"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/go-git/go-git/v5/plumbing/storer"
	"github.com/go-git/go-git/v5/plumbing/transport"
	githttp "github.com/go-git/go-git/v5/plumbing/transport/http"
	"github.com/go-git/go-git/v5/storage/filesystem"
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

// retry runs op, and again after each backoff delay while it fails for a
// reason that may pass. The error it returns is one line, names the remote
// without credentials and never holds the token.
func (f *Fetcher) retry(ctx context.Context, s Spec, what string, log io.Writer, op func() error) error {
	where := displayURL(s.CloneURL)
	for attempt := 0; ; attempt++ {
		err := op()
		if err == nil {
			return nil
		}
		if ctxErr := ctx.Err(); ctxErr != nil {
			return fmt.Errorf("%s from %s: %w", what, where, ctxErr)
		}
		msg := describe(err, s)
		if !transient(err) {
			return &remoteError{msg: fmt.Sprintf("%s from %s: %s", what, where, msg), err: err}
		}
		if attempt == len(f.backoff) {
			return &remoteError{msg: fmt.Sprintf("%s from %s: %s (gave up after %d attempts)", what, where, msg, attempt+1), err: err}
		}
		delay := f.backoff[attempt]
		f.log.Warn("git remote failed, retrying", "target", s.Name, "remote", where, "attempt", attempt+1, "delay", delay, "err", msg)
		if _, err := fmt.Fprintf(log, "%s from %s: %s; retrying in %s\n", what, where, msg, delay); err != nil {
			return fmt.Errorf("write log: %w", err)
		}
		timer := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			timer.Stop()
			return fmt.Errorf("%s from %s: %w", what, where, ctx.Err())
		case <-timer.C:
		}
	}
}

// gitErrors returns err followed by the errors go-git's UnexpectedError and
// PermanentError hold, which they hide from errors.Is and errors.As.
func gitErrors(err error) []error {
	var out []error
	for err != nil && len(out) < 8 {
		out = append(out, err)
		var unexpected *plumbing.UnexpectedError
		var permanent *plumbing.PermanentError
		switch {
		case errors.As(err, &unexpected):
			err = unexpected.Err
		case errors.As(err, &permanent):
			err = permanent.Err
		default:
			err = nil
		}
	}
	return out
}

// httpStatus returns the status code of an HTTP failure go-git reports
// without a sentinel of its own.
func httpStatus(err error) (int, bool) {
	for _, e := range gitErrors(err) {
		var herr *githttp.Err
		if errors.As(e, &herr) && herr.Response != nil {
			return herr.StatusCode(), true
		}
	}
	return 0, false
}

// transient reports whether a remote failure may pass on its own: a network
// error, HTTP 5xx, 408 or 429. Authentication, authorization and a missing
// repository are for a person to fix.
func transient(err error) bool {
	for _, e := range gitErrors(err) {
		switch {
		case errors.Is(e, context.Canceled), errors.Is(e, context.DeadlineExceeded),
			errors.Is(e, transport.ErrAuthenticationRequired),
			errors.Is(e, transport.ErrAuthorizationFailed),
			errors.Is(e, transport.ErrRepositoryNotFound),
			errors.Is(e, transport.ErrEmptyRemoteRepository),
			errors.Is(e, transport.ErrInvalidAuthMethod):
			return false
		}
	}
	if code, ok := httpStatus(err); ok {
		return code >= 500 || code == 408 || code == 429
	}
	for _, e := range gitErrors(err) {
		var netErr net.Error
		switch {
		case errors.As(e, &netErr),
			errors.Is(e, io.ErrUnexpectedEOF),
			errors.Is(e, syscall.ECONNRESET),
			errors.Is(e, syscall.ECONNREFUSED),
			errors.Is(e, syscall.EPIPE):
			return true
		}
	}
	return false
}

// describe turns a remote failure into a short line for people. go-git's own
// messages carry the server's response body, possibly over several lines.
func describe(err error, s Spec) string {
	switch {
	case errors.Is(err, transport.ErrAuthenticationRequired) && s.Token.IsSet():
		return "authentication failed (HTTP 401): the token was not accepted"
	case errors.Is(err, transport.ErrAuthenticationRequired):
		return "authentication required (HTTP 401): the repository needs a token"
	case errors.Is(err, transport.ErrAuthorizationFailed):
		return "access denied (HTTP 403)"
	case errors.Is(err, transport.ErrRepositoryNotFound):
		return "repository not found"
	case errors.Is(err, transport.ErrEmptyRemoteRepository):
		return "remote repository is empty"
	}
	if code, ok := httpStatus(err); ok {
		return fmt.Sprintf("server answered HTTP %d", code)
	}
	msg := err.Error()
	if i := strings.IndexByte(msg, '\n'); i >= 0 {
		msg = msg[:i]
	}
	return redact(msg, s)
}

// redact removes the token and any password in the clone URL from msg.
func redact(msg string, s Spec) string {
	if s.Token.IsSet() {
		msg = strings.ReplaceAll(msg, s.Token.Reveal(), "[redacted]")
	}
	if u, err := url.Parse(s.CloneURL); err == nil && u.User != nil {
		if pass, ok := u.User.Password(); ok && pass != "" {
			msg = strings.ReplaceAll(msg, pass, "[redacted]")
			msg = strings.ReplaceAll(msg, url.QueryEscape(pass), "[redacted]")
		}
	}
	return msg
}

// fetchAuth returns the basic auth that carries s.Token over http(s), or nil.
func fetchAuth(s Spec) transport.AuthMethod {
	if !s.Token.IsSet() {
		return nil
	}
	u, err := url.Parse(s.CloneURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") {
		return nil
	}
	return &githttp.BasicAuth{Username: tokenUser, Password: s.Token.Reveal()}
}

// displayURL is a clone URL without its user information, fit for logs and
// errors.
func displayURL(raw string) string {
	u, err := url.Parse(raw)
	if err == nil {
		if u.User == nil {
			return raw
		}
		u.User = nil
		return u.String()
	}
	// Not a URL (an scp-like address, or garbage): drop anything before an
	// '@' in what would be the host part.
	rest := raw
	if i := strings.Index(rest, "://"); i >= 0 {
		rest = rest[i+3:]
	}
	host := rest
	if i := strings.IndexByte(host, '/'); i >= 0 {
		host = host[:i]
	}
	if i := strings.LastIndexByte(host, '@'); i >= 0 {
		return raw[:len(raw)-len(rest)] + rest[i+1:]
	}
	return raw
}

// abbrevSHA is the 7-character display form of a commit id.
func abbrevSHA(sha string) string {
	if len(sha) > 7 {
		return sha[:7]
	}
	return sha
}

// packs returns the packfiles in the cache.
func packs(repo *git.Repository) (map[plumbing.Hash]bool, error) {
	st, ok := repo.Storer.(*filesystem.Storage)
	if !ok {
		return nil, nil
	}
	hashes, err := st.ObjectPacks()
	if err != nil {
		return nil, fmt.Errorf("git cache: list packs: %w", err)
	}
	set := make(map[plumbing.Hash]bool, len(hashes))
	for _, h := range hashes {
		set[h] = true
	}
	return set, nil
}

// newObjects counts the objects in the packs a fetch added (go-git stores
// every fetched pack whole).
func newObjects(repo *git.Repository, before map[plumbing.Hash]bool) (int64, error) {
	st, ok := repo.Storer.(*filesystem.Storage)
	if !ok {
		return 0, nil
	}
	after, err := packs(repo)
	if err != nil {
		return 0, err
	}
	var total int64
	for h := range after {
		if before[h] {
			continue
		}
		n, err := packCount(st, h)
		if err != nil {
			return 0, err
		}
		total += n
	}
	return total, nil
}

// packCount reads the object count from a pack's index.
func packCount(st *filesystem.Storage, pack plumbing.Hash) (n int64, err error) {
	name := filepath.Join("objects", "pack", "pack-"+pack.String()+".idx")
	file, err := st.Filesystem().Open(name)
	if err != nil {
		return 0, fmt.Errorf("git cache: %w", err)
	}
	defer func() {
		if cerr := file.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("git cache: %w", cerr)
		}
	}()
	idx := idxfile.NewMemoryIndex()
	if err := idxfile.NewDecoder(file).Decode(idx); err != nil {
		return 0, fmt.Errorf("git cache: read %s: %w", name, err)
	}
	return idx.Count()
}

// progressWriter passes the server's progress on as plain lines, prefixed
// "remote: " as git prints them. Git redraws a progress line with '\r';
// only the last state of each line is kept, so a log shows
// "Counting objects: 100% (3/3), done." once rather than every percent.
type progressWriter struct {
	w    io.Writer
	line []byte
	cr   bool // the last byte was '\r'
}

// maxProgressLine bounds a line the server never ends.
const maxProgressLine = 4096

func (p *progressWriter) Write(b []byte) (int, error) {
	for _, c := range b {
		switch {
		case c == '\n':
			if err := p.emit(); err != nil {
				return 0, err
			}
		case c == '\r':
			p.cr = true
		default:
			if p.cr {
				p.line = p.line[:0]
				p.cr = false
			}
			p.line = append(p.line, c)
			if len(p.line) >= maxProgressLine {
				if err := p.emit(); err != nil {
					return 0, err
				}
			}
		}
	}
	return len(b), nil
}

// Flush writes a last line the server left unterminated.
func (p *progressWriter) Flush() error {
	if len(p.line) == 0 {
		return nil
	}
	return p.emit()
}

func (p *progressWriter) emit() error {
	line := p.line
	p.line, p.cr = p.line[:0], false
	if len(line) == 0 {
		return nil
	}
	_, err := fmt.Fprintf(p.w, "remote: %s\n", line)
	return err
}

// remoteError is a failure of the remote, with a one-line message fit for a
// deploy's error and log; Unwrap gives go-git's error.
type remoteError struct {
	msg string
	err error
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() error { return e.err }

// brokenCacheError is a cache whose objects or refs cannot be read.
type brokenCacheError struct{ err error }

func (e *brokenCacheError) Error() string { return "git cache is broken: " + e.err.Error() }
func (e *brokenCacheError) Unwrap() error { return e.err }

// notOnBranchError is ErrNotOnBranch with the commit and branch.
type notOnBranchError struct {
	sha, branch string
	other       string // a ref of the remote whose head the commit is, if known
}

func (e *notOnBranchError) Error() string {
	msg := fmt.Sprintf("commit %s is not on branch %s", abbrevSHA(e.sha), e.branch)
	if e.other != "" {
		msg += " (it is the head of " + e.other + ")"
	}
	return msg
}

func (e *notOnBranchError) Is(target error) bool { return target == ErrNotOnBranch }

// commitNotFoundError is ErrCommitNotFound with the commit and remote.
type commitNotFoundError struct{ sha, branch, url string }

func (e *commitNotFoundError) Error() string {
	return fmt.Sprintf("commit %s not found in %s (branch %s)", abbrevSHA(e.sha), e.url, e.branch)
}

func (e *commitNotFoundError) Is(target error) bool { return target == ErrCommitNotFound }

// branchNotFoundError is ErrBranchNotFound with the branch and remote.
type branchNotFoundError struct {
	branch, url string
	err         error // go-git's error, if any
}

func (e *branchNotFoundError) Error() string {
	return fmt.Sprintf("branch %s not found in %s", e.branch, e.url)
}

func (e *branchNotFoundError) Is(target error) bool { return target == ErrBranchNotFound }
func (e *branchNotFoundError) Unwrap() error        { return e.err }
