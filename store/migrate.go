package store

import (
	"context"
	"database/sql"
	"embed"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strconv"
	"strings"
)

// migrationFiles holds the schema changes, migrations/NNNN_what.sql,
// numbered from 1 without gaps. A released file is never edited: a change
// is a new file.
//
//go:embed migrations/*.sql
var migrationFiles embed.FS

// migration is one schema change; applying it brings the schema to version.
type migration struct {
	version int
	name    string
	sql     string
}

// loadMigrations reads the files of directory dir of fsys, each named
// <version>_<what>.sql, and returns them by version. The versions must run
// 1, 2, 3... without gaps or repeats.
func loadMigrations(fsys fs.FS, dir string) ([]migration, error) {
	entries, err := fs.ReadDir(fsys, dir)
	if err != nil {
		return nil, fmt.Errorf("read migrations: %w", err)
	}
	var ms []migration
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || path.Ext(name) != ".sql" {
			return nil, fmt.Errorf("migration %s: want a file <version>_<what>.sql", name)
		}
		num, _, ok := strings.Cut(name, "_")
		version, err := strconv.Atoi(num)
		if !ok || err != nil || version < 1 {
			return nil, fmt.Errorf("migration %s: want a file <version>_<what>.sql, version from 1", name)
		}
		text, err := fs.ReadFile(fsys, path.Join(dir, name))
		if err != nil {
			return nil, fmt.Errorf("migration %s: %w", name, err)
		}
		ms = append(ms, migration{version: version, name: name, sql: string(text)})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].version < ms[j].version })
	for i, m := range ms {
		if i > 0 && ms[i-1].version == m.version {
			return nil, fmt.Errorf("migration %s: repeats version %d of %s", m.name, m.version, ms[i-1].name)
		}
		if m.version != i+1 {
			return nil, fmt.Errorf("migration %s: want version %d next", m.name, i+1)
		}
	}
	return ms, nil
}

// migrate brings the schema of db up to the last of ms, each migration in
// its own transaction together with the PRAGMA user_version that records
// it, so the schema is always at some version, never between two. It
// returns the schema versions before and after.
func migrate(ctx context.Context, db *sql.DB, ms []migration) (from, to int, err error) {
	if err := db.QueryRowContext(ctx, "PRAGMA user_version").Scan(&from); err != nil {
		return 0, 0, fmt.Errorf("read schema version: %w", err)
	}
	to = from
	for _, m := range ms {
		if m.version <= to {
			continue
		}
		if err := apply(ctx, db, m, len(ms)); err != nil {
			return from, to, fmt.Errorf("migration %s: %w", m.name, err)
		}
		to = m.version
	}
	if to > len(ms) {
		return from, to, fmt.Errorf("schema version %d is newer than the newest migration (%d)", to, len(ms))
	}
	return from, to, nil
}

// apply runs migration m in a transaction, unless another process applied
// it first.
func apply(ctx context.Context, db *sql.DB, m migration, newest int) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback() // a no-op once committed
	var version int
	if err := tx.QueryRowContext(ctx, "PRAGMA user_version").Scan(&version); err != nil {
		return fmt.Errorf("read schema version: %w", err)
	}
	switch {
	case version > newest:
		return fmt.Errorf("schema version %d is newer than the newest migration (%d)", version, newest)
	case version >= m.version:
		return nil
	case version != m.version-1:
		return fmt.Errorf("schema version is %d, want %d", version, m.version-1)
	}
	if _, err := tx.ExecContext(ctx, m.sql); err != nil {
		return err
	}
	// PRAGMA takes no parameters; version is an int.
	if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", m.version)); err != nil {
		return fmt.Errorf("set schema version: %w", err)
	}
	return tx.Commit()
}
