// Package store keeps deploys, and the webhook deliveries that created them,
// in a SQLite database (modernc.org/sqlite, no cgo) and implements
// deploy.Store. The database is in WAL mode with synchronous=FULL: when a
// write returns, it survives a crash of the process or the machine.
package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/flakeship/flakeship/deploy"
)

var _ deploy.Store = (*Store)(nil)

// Connection settings, as modernc.org/sqlite DSN parameters: database/sql
// opens connections whenever it likes, and only what rides in the DSN reaches
// every one of them.
const (
	// checkParams set nothing that writes: the file is checked before anything
	// may change it.
	checkParams = "_pragma=busy_timeout(10000)"
	// baseParams: WAL so readers never wait for the writer; synchronous=FULL
	// because in WAL mode NORMAL may lose the last commits on power loss, and
	// an acknowledged webhook must not be lost; busy_timeout for other
	// processes holding the file (a backup, the sqlite3 shell).
	baseParams = "_pragma=busy_timeout(10000)&_pragma=foreign_keys(1)" +
		"&_pragma=journal_mode(WAL)&_pragma=synchronous(FULL)"
	// writeParams make every transaction BEGIN IMMEDIATE: it takes the write
	// lock at its start, so it never fails with SQLITE_BUSY on upgrading a
	// read to a write.
	writeParams = baseParams + "&_txlock=immediate"
	// readParams make reader connections refuse to write.
	readParams = baseParams + "&_pragma=query_only(1)"
)

// readConns is the size of the reader pool: a few concurrent page views and
// API reads; more buy nothing on a store this small.
const readConns = 4

// Store is deploy.Store on a SQLite file. It is safe for concurrent use.
type Store struct {
	path string
	abs  string // path made absolute, for the clean-stop record at Close
	log  *slog.Logger
	// write has one connection: write transactions wait for it in
	// database/sql rather than poll SQLite's lock under busy_timeout, and
	// the process never races itself for the write lock. Code inside a
	// write transaction must use only that transaction: the one connection
	// is busy until it ends.
	write *sql.DB
	// read has a few query_only connections: in WAL mode a reader sees every
	// committed write, and neither waits for a writer's fsync nor holds one
	// up, so listing deploys never delays the answer to a webhook.
	read *sql.DB
	// stmts are the writes of every push, prepared once on the writer
	// connection: SQLite's parser would otherwise be a quarter of a push's
	// CPU.
	stmts writeStmts

	closeOnce sync.Once
	closeErr  error
}

// Open opens the store at path, creating the file (0600) and its directory
// (0700) if they are missing, and migrates its schema to the newest this
// binary knows. It refuses a damaged file, and a file from a newer
// flakeship, without changing either. It checks the whole file (PRAGMA
// quick_check) unless Close closed it cleanly and nothing changed it since
// (clean.go), so that a start after a clean stop takes the same time
// however long the history. A nil log discards log records.
func Open(ctx context.Context, path string, log *slog.Logger) (*Store, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("store %s: %w", path, err)
	}
	migrations, err := loadMigrations(migrationFiles, "migrations")
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	if err := createFile(abs); err != nil {
		return nil, fmt.Errorf("store %s: %w", path, err)
	}
	clean, err := closedCleanly(abs)
	if err != nil {
		return nil, fmt.Errorf("store %s: %w", path, err)
	}
	log = log.With("path", path)
	if !clean {
		log.Info("store not known to be closed cleanly: checking the whole file")
	}
	if err := check(ctx, path, abs, len(migrations), !clean); err != nil {
		return nil, err
	}
	// From here on the file may change: the next Open checks it whole
	// unless this store is closed cleanly.
	if err := unmarkClean(abs); err != nil {
		return nil, fmt.Errorf("store %s: %w", path, err)
	}

	write, err := sql.Open("sqlite", dsn(abs, writeParams))
	if err != nil {
		return nil, fmt.Errorf("store %s: %w", path, err)
	}
	write.SetMaxOpenConns(1)
	write.SetMaxIdleConns(1)
	from, to, err := migrate(ctx, write, migrations)
	if err == nil {
		err = checkJournalMode(ctx, write)
	}
	if err != nil {
		return nil, errors.Join(fmt.Errorf("store %s: %w", path, err), write.Close())
	}
	read, err := sql.Open("sqlite", dsn(abs, readParams))
	if err != nil {
		return nil, errors.Join(fmt.Errorf("store %s: %w", path, err), write.Close())
	}
	read.SetMaxOpenConns(readConns)
	read.SetMaxIdleConns(readConns)

	if from != to {
		log.Info("store schema migrated", "from", from, "to", to)
	}
	stmts, err := prepareWrites(ctx, write)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("store %s: %w", path, err), read.Close(), write.Close())
	}
	log.Info("store opened", "schema_version", to, "checked", !clean)
	return &Store{path: path, abs: abs, log: log, write: write, read: read, stmts: stmts}, nil
}

// Close closes the store and, when every connection closed without an
// error, records the clean stop that lets the next Open skip the whole-file
// check. It is safe to call more than once.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		// The writer last: the last connection to close checkpoints the WAL
		// into the database file.
		err := errors.Join(s.stmts.close(), s.read.Close(), s.write.Close())
		if err == nil {
			var marked bool
			if marked, err = markClean(s.abs); err == nil && !marked {
				s.log.Warn("store closed with its WAL still open: the next start checks the whole file")
			}
		}
		if err != nil {
			s.closeErr = fmt.Errorf("store %s: close: %w", s.path, err)
		}
	})
	return s.closeErr
}

// dsn is the data source name of the database at the absolute path, with
// params. The path is escaped, since SQLite reads "file:" names as URIs.
func dsn(path, params string) string {
	return "file:" + (&url.URL{Path: path}).EscapedPath() + "?" + params
}

// createFile makes path's directory (0700) and an empty database file
// (0600) if they are missing: SQLite gives the -wal and -shm files the mode
// of the database, so all three stay private. It syncs every directory it
// changes, so the new names survive a power loss along with the first
// commits.
func createFile(path string) error {
	dir := filepath.Dir(path)
	var made []string // directories MkdirAll will create
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(d); !errors.Is(err, fs.ErrNotExist) || d == filepath.Dir(d) {
			break
		}
		made = append(made, d)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create directory: %w", err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		fi, err := os.Stat(path)
		if err != nil {
			return err
		}
		if fi.IsDir() {
			return errors.New("is a directory, want a database file")
		}
		if !fi.Mode().IsRegular() {
			return errors.New("not a regular file, want a database file")
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("create file: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("create file: %w", err)
	}
	dirs := []string{dir}
	for _, d := range made {
		dirs = append(dirs, filepath.Dir(d))
	}
	for _, d := range dirs {
		if err := syncDir(d); err != nil {
			return err
		}
	}
	return nil
}

// syncDir makes the entries of directory dir durable.
func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync directory: %w", err)
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync directory: %w", err)
	}
	return nil
}

// check makes sure the file at abs (named path to the user) is a SQLite
// database whose schema is not newer than newest, and with whole sound
// (quick_check), before anything writes to it: its connection only reads
// and sets no journal mode, so a file it refuses is left as it was.
func check(ctx context.Context, path, abs string, newest int, whole bool) (err error) {
	db, err := sql.Open("sqlite", dsn(abs, checkParams))
	if err != nil {
		return fmt.Errorf("store %s: %w", path, err)
	}
	db.SetMaxOpenConns(1)
	defer func() {
		if cerr := db.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("store %s: %w", path, cerr)
		}
	}()

	if whole {
		problems, err := quickCheck(ctx, db)
		if err != nil {
			if damaged(err) {
				return &damagedError{path: path, detail: err.Error()}
			}
			return fmt.Errorf("store %s: check integrity: %w", path, err)
		}
		if len(problems) != 1 || problems[0] != "ok" {
			return &damagedError{path: path, detail: "quick_check: " + summary(problems)}
		}
	}

	var version int
	if err := db.QueryRowContext(ctx, "PRAGMA user_version").Scan(&version); err != nil {
		if damaged(err) {
			return &damagedError{path: path, detail: err.Error()}
		}
		return fmt.Errorf("store %s: read schema version: %w", path, err)
	}
	if version > newest {
		return &newerSchemaError{path: path, have: version, know: newest}
	}
	return nil
}

// quickCheck returns the rows of PRAGMA quick_check: "ok" alone when the
// file is sound.
func quickCheck(ctx context.Context, db *sql.DB) ([]string, error) {
	rows, err := db.QueryContext(ctx, "PRAGMA quick_check")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var problems []string
	for rows.Next() {
		var p string
		if err := rows.Scan(&p); err != nil {
			return nil, err
		}
		problems = append(problems, p)
	}
	return problems, rows.Err()
}

// summary puts the first few quick_check problems on one line.
func summary(problems []string) string {
	const shown = 3
	more := ""
	if len(problems) > shown {
		more = fmt.Sprintf("; and %d more", len(problems)-shown)
		problems = problems[:shown]
	}
	return strings.Join(strings.Fields(strings.Join(problems, "; ")), " ") + more
}

// damaged reports whether err is SQLite finding the file damaged or not a
// database.
func damaged(err error) bool {
	code := sqliteCode(err)
	return code == sqlite3.SQLITE_CORRUPT || code == sqlite3.SQLITE_NOTADB
}

// sqliteCode returns the primary SQLite result code of err, or 0.
func sqliteCode(err error) int {
	var serr *sqlite.Error
	if errors.As(err, &serr) {
		return serr.Code() & 0xff
	}
	return 0
}

// checkJournalMode fails unless the database is in WAL mode: SQLite keeps
// the old mode, without an error, where WAL cannot work (some network
// filesystems).
func checkJournalMode(ctx context.Context, db *sql.DB) error {
	var mode string
	if err := db.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
		return fmt.Errorf("read journal mode: %w", err)
	}
	if !strings.EqualFold(mode, "wal") {
		return fmt.Errorf("journal mode is %s, want wal (is the file on a filesystem without shared memory?)", mode)
	}
	return nil
}

// damagedError refuses a file that is not a sound SQLite database.
type damagedError struct {
	path, detail string
}

func (e *damagedError) Error() string {
	return fmt.Sprintf("store %s is damaged or not a SQLite database (%s): restore a backup", e.path, e.detail)
}

// newerSchemaError refuses a database that a newer flakeship migrated.
type newerSchemaError struct {
	path       string
	have, know int
}

func (e *newerSchemaError) Error() string {
	return fmt.Sprintf("store %s has schema version %d, newer than this flakeship (%d): upgrade flakeship or restore a backup",
		e.path, e.have, e.know)
}
