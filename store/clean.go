package store

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// A store that Close closed cleanly is not checked whole at the next Open:
// PRAGMA quick_check reads every page, seconds for a store of a million
// deploys, and start-up would grow with history. Close leaves a file beside
// the database (<database>-clean) that describes the database file as it
// left it: device, inode, size, modification and change times to the
// nanosecond, whether a WAL file exists, and a hash of the first page,
// where SQLite keeps the page and free-list counts. Open skips the check
// only when that description still matches, and removes the file before
// it writes anything; so after a crash, a kill, a power loss, or any change
// to the file while flakeship was stopped (a restored backup, another
// program, damage written to it), the next Open checks the whole file
// again. The file is written and removed durably (fsync, rename, directory
// sync): one that did not reach the disk only costs a full check.

// cleanSuffix names the file Close leaves beside a database it closed
// cleanly.
const cleanSuffix = "-clean"

// headBytes is how much of the start of the database the description
// hashes: SQLite's smallest page, which holds the 100-byte header.
const headBytes = 4096

// describe returns a one-line description of the database file at path: it
// changes with any write to the file or its WAL.
func describe(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return "", errors.New("no file status on this system")
	}
	h := sha256.New()
	if _, err := io.Copy(h, io.LimitReader(f, headBytes)); err != nil {
		return "", err
	}
	_, err = os.Lstat(path + "-wal")
	wal := err == nil
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	return fmt.Sprintf("flakeship store closed cleanly: dev=%d ino=%d size=%d mtime=%d ctime=%d wal=%t head=%x\n",
		st.Dev, st.Ino, fi.Size(), st.Mtim.Nano(), st.Ctim.Nano(), wal, h.Sum(nil)), nil
}

// closedCleanly reports whether Close left the database at path as it is
// now: whether Open may skip the whole-file check.
func closedCleanly(path string) (bool, error) {
	want, err := os.ReadFile(path + cleanSuffix)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read clean-stop record: %w", err)
	}
	got, err := describe(path)
	if err != nil {
		return false, fmt.Errorf("describe database file: %w", err)
	}
	return got == string(want), nil
}

// markClean records that the database at path was closed cleanly, once its
// last connection is closed, and reports whether it did. With a WAL left
// behind (a connection still open) it records nothing: the next Open
// checks the file.
func markClean(path string) (bool, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return false, fmt.Errorf("record clean stop: %w", err)
	}
	if _, err := os.Lstat(path + "-wal"); !errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	// Where the file system's clock is coarse, a write within the same tick
	// as the close would keep the modification time. A time one nanosecond
	// before the last write is one no later write can give the file.
	if err := os.Chtimes(path, time.Time{}, fi.ModTime().Add(-time.Nanosecond)); err != nil {
		return false, fmt.Errorf("record clean stop: %w", err)
	}
	desc, err := describe(path)
	if err != nil {
		return false, fmt.Errorf("record clean stop: describe database file: %w", err)
	}
	if err := writeDurably(path+cleanSuffix, []byte(desc)); err != nil {
		return false, fmt.Errorf("record clean stop: %w", err)
	}
	return true, nil
}

// unmarkClean removes the clean-stop record of the database at path, if
// there is one, and makes the removal durable: from here on the database
// may change.
func unmarkClean(path string) error {
	err := os.Remove(path + cleanSuffix)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("remove clean-stop record: %w", err)
	}
	return syncDir(filepath.Dir(path))
}

// writeDurably replaces the file name with data (0600) through a temporary
// file, synced and renamed, and syncs the directory.
func writeDurably(name string, data []byte) error {
	tmp := name + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, name)
	}
	if err != nil {
		return errors.Join(err, removeIfExists(tmp))
	}
	return syncDir(filepath.Dir(name))
}

// removeIfExists removes name; a missing file is no error.
func removeIfExists(name string) error {
	if err := os.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}
