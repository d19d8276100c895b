package store

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"testing/fstest"
)

// migrationDB opens an empty database file with the store's write settings,
// closed when the test ends.
func migrationDB(t *testing.T) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", dsn(filepath.Join(t.TempDir(), "m.db"), writeParams))
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(1)
	t.Cleanup(func() { db.Close() })
	return db
}

func userVersion(t *testing.T, db *sql.DB) int {
	t.Helper()
	var v int
	if err := db.QueryRow("PRAGMA user_version").Scan(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

func TestMigrateBringsAnEmptyDatabaseToTheNewestVersion(t *testing.T) {
	ctx := context.Background()
	ms, err := loadMigrations(migrationFiles, "migrations")
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) == 0 {
		t.Fatal("no migrations embedded")
	}
	db := migrationDB(t)
	from, to, err := migrate(ctx, db, ms)
	if err != nil {
		t.Fatalf("migrate: %v", err)
	}
	if from != 0 || to != len(ms) {
		t.Errorf("migrate went from %d to %d, want 0 to %d", from, to, len(ms))
	}
	if v := userVersion(t, db); v != len(ms) {
		t.Errorf("user_version = %d, want %d", v, len(ms))
	}
	var tables []string
	rows, err := db.Query(`SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			t.Fatal(err)
		}
		tables = append(tables, name)
	}
	if want := []string{"deliveries", "deploys", "sessions"}; !reflect.DeepEqual(tables, want) {
		t.Errorf("tables = %v, want %v", tables, want)
	}

	// Again: nothing to do.
	from, to, err = migrate(ctx, db, ms)
	if err != nil || from != len(ms) || to != len(ms) {
		t.Errorf("second migrate = %d, %d, %v; want %d, %d, nil", from, to, err, len(ms), len(ms))
	}
}

func TestMigrationsApplyInNumericOrder(t *testing.T) {
	// Lexically 10_ sorts before 2_; each migration records its number.
	fsys := fstest.MapFS{"1_log.sql": {Data: []byte(`CREATE TABLE log (n INTEGER); INSERT INTO log VALUES (1);`)}}
	for n := 2; n <= 10; n++ {
		fsys[fmt.Sprintf("%d_step.sql", n)] = &fstest.MapFile{Data: []byte(fmt.Sprintf(`INSERT INTO log VALUES (%d);`, n))}
	}
	ms, err := loadMigrations(fsys, ".")
	if err != nil {
		t.Fatal(err)
	}
	db := migrationDB(t)
	if _, _, err := migrate(context.Background(), db, ms); err != nil {
		t.Fatal(err)
	}
	rows, err := db.Query(`SELECT n FROM log ORDER BY rowid`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var order []int
	for rows.Next() {
		var n int
		if err := rows.Scan(&n); err != nil {
			t.Fatal(err)
		}
		order = append(order, n)
	}
	if want := []int{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}; !reflect.DeepEqual(order, want) {
		t.Errorf("migrations ran in order %v, want %v", order, want)
	}
	if v := userVersion(t, db); v != 10 {
		t.Errorf("user_version = %d, want 10", v)
	}
}

func TestLoadMigrationsRefusesBadSets(t *testing.T) {
	ok := &fstest.MapFile{Data: []byte(`SELECT 1;`)}
	tests := []struct {
		name    string
		fsys    fstest.MapFS
		wantErr string
	}{
		{"a gap", fstest.MapFS{"0001_a.sql": ok, "0003_c.sql": ok}, "0003_c.sql: want version 2 next"},
		{"a repeated version", fstest.MapFS{"0001_a.sql": ok, "0001_b.sql": ok}, "0001_b.sql: repeats version 1 of 0001_a.sql"},
		{"no version", fstest.MapFS{"init.sql": ok}, "init.sql: want a file <version>_<what>.sql"},
		{"version zero", fstest.MapFS{"0000_a.sql": ok}, "0000_a.sql: want a file"},
		{"not starting at one", fstest.MapFS{"0002_b.sql": ok}, "want version 1 next"},
		{"another kind of file", fstest.MapFS{"0001_a.sql": ok, "README": ok}, "README: want a file"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := loadMigrations(tc.fsys, ".")
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("loadMigrations error = %v, want one saying %q", err, tc.wantErr)
			}
		})
	}
}

func TestAFailingMigrationChangesNothing(t *testing.T) {
	ctx := context.Background()
	ms, err := loadMigrations(fstest.MapFS{
		"0001_a.sql": {Data: []byte(`CREATE TABLE a (x INTEGER);`)},
		// The first statement works, the second does not: both roll back.
		"0002_b.sql": {Data: []byte(`CREATE TABLE b (x INTEGER); INSERT INTO nowhere VALUES (1);`)},
	}, ".")
	if err != nil {
		t.Fatal(err)
	}
	db := migrationDB(t)
	from, to, err := migrate(ctx, db, ms)
	if err == nil || !strings.Contains(err.Error(), "migration 0002_b.sql") {
		t.Fatalf("migrate error = %v, want one naming 0002_b.sql", err)
	}
	if from != 0 || to != 1 {
		t.Errorf("migrate went from %d to %d, want 0 to 1", from, to)
	}
	if v := userVersion(t, db); v != 1 {
		t.Errorf("user_version = %d, want 1", v)
	}
	var n int
	if err := db.QueryRow(`SELECT count(*) FROM sqlite_schema WHERE name = 'b'`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("table b of the failed migration exists")
	}
}
