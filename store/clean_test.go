package store

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flakeship/flakeship/deploy"
)

// openLogged opens the store at path, closed when the test ends, and
// returns whether Open checked the whole file, by its "store opened" log
// record.
func openLogged(t *testing.T, path string) (*Store, bool) {
	t.Helper()
	var buf bytes.Buffer
	s, err := Open(context.Background(), path, slog.New(slog.NewTextHandler(&buf, nil)))
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close store: %v", err)
		}
	})
	// The whole-file check is announced, as it may take a while.
	announced := strings.Contains(buf.String(), `msg="store not known to be closed cleanly: checking the whole file"`)
	for _, line := range strings.Split(buf.String(), "\n") {
		if !strings.Contains(line, `msg="store opened"`) {
			continue
		}
		checked := strings.Contains(line, " checked=true")
		if !checked && !strings.Contains(line, " checked=false") {
			continue
		}
		if announced != checked {
			t.Errorf("checked=%t, and the whole-file check announced: %t", checked, announced)
		}
		return s, checked
	}
	t.Fatalf("no \"store opened\" record saying checked=true or false in:\n%s", buf.String())
	return nil, false
}

// closeStore closes s or fails the test.
func closeStore(t *testing.T, s *Store) {
	t.Helper()
	if err := s.Close(); err != nil {
		t.Fatalf("close store: %v", err)
	}
}

// listAll is every deploy of s, newest first.
func listAll(t *testing.T, s *Store) []int64 {
	t.Helper()
	ds, err := s.List(context.Background(), deploy.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	return ids(ds)
}

func TestOpenAfterACleanCloseSkipsTheWholeFileCheck(t *testing.T) {
	path := filepath.Join(t.TempDir(), "flakeship.db")
	s, checked := openLogged(t, path)
	if !checked {
		t.Errorf("the first Open of a new file did not check it")
	}
	create(t, s, newDeploy("app", 1))
	create(t, s, newDeploy("app", 2))
	want := listAll(t, s)
	closeStore(t, s)

	fi, err := os.Stat(path + cleanSuffix)
	if err != nil {
		t.Fatalf("no clean-stop record after Close: %v", err)
	}
	if fi.Mode() != 0o600 {
		t.Errorf("the clean-stop record has mode %v, want 0600", fi.Mode())
	}
	if _, err := os.Stat(path + cleanSuffix + ".tmp"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a temporary file was left beside the record: %v", err)
	}

	for round := 1; round <= 2; round++ {
		s, checked = openLogged(t, path)
		if checked {
			t.Errorf("round %d: Open checked the whole file after a clean close", round)
		}
		if _, err := os.Stat(path + cleanSuffix); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("round %d: the clean-stop record outlived Open: %v", round, err)
		}
		if got := listAll(t, s); !slices.Equal(got, want) {
			t.Errorf("round %d: deploys %v after reopening, want %v", round, got, want)
		}
		closeStore(t, s)
	}
}

func TestOpenChecksTheWholeFileWhenTheStopWasNotClean(t *testing.T) {
	tests := []struct {
		name string
		// setup leaves a store with deploys 1 and 2 at path, stopped as
		// the case says.
		setup func(t *testing.T, path string)
	}{
		{"killed while running: the files as they were", func(t *testing.T, path string) {
			from := filepath.Join(t.TempDir(), "flakeship.db")
			s := openTestStore(t, from)
			create(t, s, newDeploy("app", 1))
			create(t, s, newDeploy("app", 2))
			for _, suffix := range []string{"", "-wal"} {
				copyFile(t, from+suffix, path+suffix)
			}
		}},
		{"closed cleanly, the record since removed", func(t *testing.T, path string) {
			cleanStore(t, path)
			if err := os.Remove(path + cleanSuffix); err != nil {
				t.Fatal(err)
			}
		}},
		{"closed cleanly, a WAL beside it since", func(t *testing.T, path string) {
			cleanStore(t, path)
			if err := os.WriteFile(path+"-wal", nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{"closed cleanly, rewritten since with its modification time put back", func(t *testing.T, path string) {
			cleanStore(t, path)
			waitForTheClockToPass(t, path)
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, b, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chtimes(path, time.Time{}, fi.ModTime()); err != nil {
				t.Fatal(err)
			}
		}},
		{"closed cleanly, replaced since by a copy", func(t *testing.T, path string) {
			cleanStore(t, path)
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			copyFile(t, path, path+".copy")
			if err := os.Rename(path+".copy", path); err != nil {
				t.Fatal(err)
			}
			if err := os.Chtimes(path, time.Time{}, fi.ModTime()); err != nil {
				t.Fatal(err)
			}
		}},
		{"closed cleanly, written since by another program", func(t *testing.T, path string) {
			cleanStore(t, path)
			db := rawDB(t, path)
			if _, err := db.Exec("CREATE TABLE elsewhere (x TEXT)"); err != nil {
				t.Fatal(err)
			}
			if err := db.Close(); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "flakeship.db")
			tc.setup(t, path)
			s, checked := openLogged(t, path)
			if !checked {
				t.Errorf("Open did not check the whole file")
			}
			if got := listAll(t, s); !slices.Equal(got, []int64{2, 1}) {
				t.Errorf("deploys %v, want [2 1]", got)
			}
			if _, err := os.Stat(path + cleanSuffix); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("a clean-stop record outlived Open: %v", err)
			}
		})
	}
}

func TestDescribeChangesWithWhatOpenMustNotMiss(t *testing.T) {
	path := filepath.Join(t.TempDir(), "flakeship.db")
	cleanStore(t, path)
	before, err := describe(path)
	if err != nil {
		t.Fatal(err)
	}
	if again, err := describe(path); err != nil || again != before {
		t.Fatalf("describe twice gave %q, %v; want %q again", again, err, before)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	// The first page with one byte changed, the size and modification time
	// kept: only the hash of the first page tells.
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	head := make([]byte, headBytes)
	if _, err := f.ReadAt(head, 0); err != nil {
		t.Fatal(err)
	}
	head[headBytes-1] ^= 0xff
	_, err = f.WriteAt(head[headBytes-1:], headBytes-1)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(path, time.Time{}, fi.ModTime()); err != nil {
		t.Fatal(err)
	}
	after, err := describe(path)
	if err != nil {
		t.Fatal(err)
	}
	field := func(desc, key string) string {
		for _, f := range strings.Fields(desc) {
			if v, ok := strings.CutPrefix(f, key+"="); ok {
				return v
			}
		}
		t.Fatalf("no %s in %q", key, desc)
		return ""
	}
	for _, key := range []string{"dev", "ino", "size", "mtime", "wal"} {
		if field(before, key) != field(after, key) {
			t.Errorf("%s changed: %q, then %q", key, before, after)
		}
	}
	if field(before, "head") == field(after, "head") {
		t.Errorf("the first page changed in its last byte, and its hash did not: %q", after)
	}
	if _, err := describe(filepath.Join(t.TempDir(), "missing.db")); err == nil {
		t.Errorf("describe of a missing file succeeded")
	}
}

// cleanStore makes a store at path with deploys 1 and 2 and closes it
// cleanly.
func cleanStore(t *testing.T, path string) {
	t.Helper()
	s, err := Open(context.Background(), path, nil)
	if err != nil {
		t.Fatal(err)
	}
	create(t, s, newDeploy("app", 1))
	create(t, s, newDeploy("app", 2))
	closeStore(t, s)
	if _, err := os.Stat(path + cleanSuffix); err != nil {
		t.Fatalf("no clean-stop record after Close: %v", err)
	}
}

// copyFile copies from to a new file to (0600), or fails the test.
func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestCloseRecordsNoCleanStopWhileAnotherConnectionIsOpen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "flakeship.db")
	var logs bytes.Buffer
	s, err := Open(context.Background(), path, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	create(t, s, newDeploy("app", 1))
	// Another program reading the database keeps the WAL open.
	other := rawDB(t, path)
	var n int
	if err := other.QueryRow("SELECT count(*) FROM deploys").Scan(&n); err != nil || n != 1 {
		t.Fatalf("the other connection counted %d deploys, %v", n, err)
	}
	closeStore(t, s)
	if _, err := os.Stat(path + cleanSuffix); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a clean stop was recorded with the WAL still open: %v", err)
	}
	if !strings.Contains(logs.String(), `level=WARN msg="store closed with its WAL still open: the next start checks the whole file"`) {
		t.Errorf("no warning that the next start checks the whole file in:\n%s", logs.String())
	}
}

// waitForTheClockToPass waits until a file changed now gets a later change
// time than path has: where the file system's clock is coarse (kernels
// before 6.13), a test's rewrite in the same tick as the close would keep
// the change time, which no stop in real life does.
func waitForTheClockToPass(t *testing.T, path string) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	changed := fi.Sys().(*syscall.Stat_t).Ctim.Nano()
	probe := path + ".clock"
	defer os.Remove(probe)
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		if err := os.WriteFile(probe, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		pi, err := os.Stat(probe)
		if err != nil {
			t.Fatal(err)
		}
		if pi.Sys().(*syscall.Stat_t).Ctim.Nano() > changed {
			return
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatal("the file system's clock did not move in 10 s")
}
