// Command fetch compares flakeship's go-git fetcher (builder.Fetcher) with
// the git CLI on a repository of real size: it generates a history with
// `git fast-import` (-commits commits, each changing a few of -files files),
// serves it over smart HTTP with `git http-backend`, and times
//
//   - the first fetch into an empty cache against `git clone --bare`, and
//   - fetching one new commit into that cache against `git fetch` of the
//     same commit into the bare clone,
//
// alternating which goes first, and prints the medians as one line of JSON.
//
//	fetch -commits 3000 -files 400 -rounds 5 [-cpuprofile FILE]
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/flakeship/flakeship/bench/rig"
	"github.com/flakeship/flakeship/builder"
)

// result is what fetch prints; times are medians in milliseconds.
type result struct {
	Commits      int     `json:"commits"`
	Files        int     `json:"files"`
	PackKiB      int64   `json:"pack_kib"`
	GenerateMs   float64 `json:"generate_ms"`
	FirstRounds  int     `json:"first_rounds"`
	FirstGoGitMs float64 `json:"first_gogit_ms"`
	FirstGitMs   float64 `json:"first_git_ms"`
	IncrRounds   int     `json:"incr_rounds"`
	IncrGoGitMs  float64 `json:"incr_gogit_ms"`
	IncrGitMs    float64 `json:"incr_git_ms"`
}

// options are fetch's flags.
type options struct {
	commits, files, changes, firstRounds, incrRounds int
	keep                                             bool
	cpuProfile                                       string
}

func main() {
	var o options
	flag.IntVar(&o.commits, "commits", 3000, "commits of the generated history")
	flag.IntVar(&o.files, "files", 400, "files in the tree")
	flag.IntVar(&o.changes, "changes", 3, "files each commit changes")
	flag.IntVar(&o.firstRounds, "first-rounds", 3, "first fetches of each kind")
	flag.IntVar(&o.incrRounds, "rounds", 5, "incremental fetches of each kind")
	flag.BoolVar(&o.keep, "keep", false, "keep the generated repositories")
	flag.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of the timed fetches to this file (go-git runs in this process, git in its own)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	res, err := run(ctx, o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fetch:", err)
		os.Exit(1)
	}
	out, _ := json.Marshal(res)
	fmt.Println(string(out))
}

func run(ctx context.Context, o options) (*result, error) {
	if o.commits < 1 || o.files < 1 || o.changes < 1 || o.changes > o.files || o.firstRounds < 1 || o.incrRounds < 1 {
		return nil, errors.New("-commits, -files, -changes (at most -files) and the rounds must be positive")
	}
	dir, err := os.MkdirTemp("", "flakeship-bench-fetch-")
	if err != nil {
		return nil, err
	}
	if o.keep {
		fmt.Fprintln(os.Stderr, "fetch: keeping", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	res := &result{Commits: o.commits, Files: o.files, FirstRounds: o.firstRounds, IncrRounds: o.incrRounds}

	root := filepath.Join(dir, "served")
	bare := filepath.Join(root, "app.git")
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, err
	}
	if _, err := rig.Git(ctx, root, "init", "--quiet", "--bare", "--initial-branch=main", bare); err != nil {
		return nil, err
	}
	t0 := time.Now()
	h := newHistory(o.files, o.changes)
	if err := h.importCommits(ctx, bare, o.commits, false); err != nil {
		return nil, err
	}
	// One pack with deltas, as a served repository has after gc.
	if _, err := rig.Git(ctx, bare, "repack", "-a", "-d", "-f", "--quiet", "--window=10", "--depth=50"); err != nil {
		return nil, err
	}
	res.GenerateMs = rig.Ms(time.Since(t0))
	if res.PackKiB, err = packKiB(bare); err != nil {
		return nil, err
	}

	srv, err := rig.ServeGit(ctx, root, os.Stderr)
	if err != nil {
		return nil, err
	}
	defer srv.Close()
	url := srv.URL("app")
	fetcher := builder.NewFetcher(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	spec := func(cache string) builder.Spec {
		return builder.Spec{Name: "bench", CloneURL: url, Branch: "main", CacheDir: cache}
	}
	head, err := rig.Git(ctx, bare, "rev-parse", "refs/heads/main")
	if err != nil {
		return nil, err
	}

	if o.cpuProfile != "" {
		stop, err := startProfile(o.cpuProfile)
		if err != nil {
			return nil, err
		}
		defer stop()
	}

	// First fetches: into an empty cache, and git clone --bare.
	var gogit, cli []time.Duration
	var cache, clone string
	for r := range o.firstRounds {
		cache = filepath.Join(dir, fmt.Sprintf("cache-%d", r))
		clone = filepath.Join(dir, fmt.Sprintf("clone-%d.git", r))
		goFirst := func() error {
			t := time.Now()
			if _, err := fetcher.Fetch(ctx, spec(cache), head, io.Discard); err != nil {
				return err
			}
			gogit = append(gogit, time.Since(t))
			return nil
		}
		gitFirst := func() error {
			t := time.Now()
			if _, err := rig.Git(ctx, dir, "clone", "--bare", "--quiet", url, clone); err != nil {
				return err
			}
			cli = append(cli, time.Since(t))
			return nil
		}
		if err := alternate(r, goFirst, gitFirst); err != nil {
			return nil, err
		}
		if r < o.firstRounds-1 {
			if err := errors.Join(os.RemoveAll(cache), os.RemoveAll(clone)); err != nil {
				return nil, err
			}
		}
	}
	res.FirstGoGitMs, res.FirstGitMs = rig.Ms(rig.Median(gogit)), rig.Ms(rig.Median(cli))

	// Incremental: one new commit on the server, fetched into both.
	gogit, cli = nil, nil
	for r := range o.incrRounds {
		if err := h.importCommits(ctx, bare, 1, true); err != nil {
			return nil, err
		}
		sha, err := rig.Git(ctx, bare, "rev-parse", "refs/heads/main")
		if err != nil {
			return nil, err
		}
		goIncr := func() error {
			t := time.Now()
			c, err := fetcher.Fetch(ctx, spec(cache), sha, io.Discard)
			if err != nil {
				return err
			}
			if c.Head != sha {
				return fmt.Errorf("go-git fetched %s, want %s", c.Head, sha)
			}
			gogit = append(gogit, time.Since(t))
			return nil
		}
		gitIncr := func() error {
			t := time.Now()
			// What Fetcher does: the branch, forced, into refs/heads.
			if _, err := rig.Git(ctx, clone, "fetch", "--quiet", "origin", "+refs/heads/main:refs/heads/main"); err != nil {
				return err
			}
			cli = append(cli, time.Since(t))
			got, err := rig.Git(ctx, clone, "rev-parse", "refs/heads/main")
			if err != nil {
				return err
			}
			if got != sha {
				return fmt.Errorf("git fetched %s, want %s", got, sha)
			}
			return nil
		}
		if err := alternate(r, goIncr, gitIncr); err != nil {
			return nil, err
		}
	}
	res.IncrGoGitMs, res.IncrGitMs = rig.Ms(rig.Median(gogit)), rig.Ms(rig.Median(cli))
	return res, nil
}

// startProfile starts a CPU profile into path and returns what stops it.
func startProfile(path string) (stop func(), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() {
		pprof.StopCPUProfile()
		if err := f.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "fetch: write CPU profile:", err)
		}
	}, nil
}

// alternate runs a then b in even rounds and b then a in odd ones, so
// neither always meets a cold or a warm page cache.
func alternate(round int, a, b func() error) error {
	if round%2 == 1 {
		a, b = b, a
	}
	if err := a(); err != nil {
		return err
	}
	return b()
}

// packKiB is the size of the packs of a bare repository.
func packKiB(bare string) (int64, error) {
	var n int64
	err := filepath.WalkDir(filepath.Join(bare, "objects", "pack"), func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".pack") {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		n += fi.Size()
		return nil
	})
	return n / 1024, err
}

// history is a generated project: a tree of source-like files, each commit
// editing a few lines of a few of them, as day-to-day work does.
type history struct {
	rng     *rand.Rand
	paths   []string
	files   [][]string // lines of each file
	changes int
	n       int // commits made
}

func newHistory(files, changes int) *history {
	h := &history{rng: rand.New(rand.NewPCG(1, 2)), changes: changes}
	for i := range files {
		h.paths = append(h.paths, fmt.Sprintf("pkg%02d/file%03d.go", i%20, i))
		lines := make([]string, 40+h.rng.IntN(120))
		for j := range lines {
			lines[j] = h.line(i, j)
		}
		h.files = append(h.files, lines)
	}
	return h
}

// line is a line of source-like text.
func (h *history) line(file, n int) string {
	words := []string{"if", "err", "return", "value", "ctx", "config", "target", "deploy", "nil", "for", "range", "len"}
	var b strings.Builder
	b.WriteString("\t")
	for range 3 + h.rng.IntN(8) {
		b.WriteString(words[h.rng.IntN(len(words))])
		b.WriteByte(' ')
	}
	fmt.Fprintf(&b, "// %d.%d", file, n)
	return b.String()
}

// importCommits adds n commits to the branch main of the bare repository
// with git fast-import: the first commit of the history holds every file,
// each later one edits -changes of them. onTop continues the branch's
// current head.
func (h *history) importCommits(ctx context.Context, bare string, n int, onTop bool) error {
	pr, pw := io.Pipe()
	cmd := rig.GitCommand(ctx, bare, pr, "fast-import", "--quiet")
	done := make(chan error, 1)
	go func() {
		_, err := rig.Output(cmd)
		pr.CloseWithError(err)
		done <- err
	}()
	w := bufio.NewWriterSize(pw, 1<<20)
	werr := h.stream(w, n, onTop)
	if werr == nil {
		werr = w.Flush()
	}
	pw.CloseWithError(werr)
	return errors.Join(werr, <-done)
}

// stream writes n commits in fast-import's format.
func (h *history) stream(w *bufio.Writer, n int, onTop bool) error {
	data := func(s string) { fmt.Fprintf(w, "data %d\n%s\n", len(s), s) }
	for c := range n {
		h.n++
		when := time.Date(2023, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(h.n) * 17 * time.Minute).Unix()
		fmt.Fprintf(w, "commit refs/heads/main\n")
		fmt.Fprintf(w, "author Bench Author <author@flakeship.invalid> %d +0000\n", when)
		fmt.Fprintf(w, "committer Bench Author <author@flakeship.invalid> %d +0000\n", when)
		data(fmt.Sprintf("change %d\n\nAdjust a few things.", h.n))
		if c == 0 && onTop {
			fmt.Fprintf(w, "from refs/heads/main^0\n")
		}
		var touched []int
		if h.n == 1 {
			for i := range h.paths {
				touched = append(touched, i)
			}
		} else {
			for range h.changes {
				touched = append(touched, h.edit())
			}
		}
		for _, i := range touched {
			fmt.Fprintf(w, "M 100644 inline %s\n", h.paths[i])
			data(strings.Join(h.files[i], "\n") + "\n")
		}
		w.WriteString("\n")
	}
	_, err := w.WriteString("done\n")
	return err
}

// edit changes two lines of a random file and adds one, and returns the
// file's index.
func (h *history) edit() int {
	i := h.rng.IntN(len(h.files))
	lines := h.files[i]
	for range 2 {
		j := h.rng.IntN(len(lines))
		lines[j] = h.line(i, h.n*1000+j)
	}
	at := h.rng.IntN(len(lines) + 1)
	lines = append(lines[:at], append([]string{h.line(i, h.n)}, lines[at:]...)...)
	h.files[i] = lines
	return i
}
