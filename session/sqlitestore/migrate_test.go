package sqlitestore

import (
	"context"
	"database/sql"
	"path/filepath"
	"testing"

	"github.com/tiercache/tiercache/session"
	"github.com/tiercache/tiercache/session/internal/sqlstore"
	"github.com/tiercache/tiercache/session/storetest"
)

// migrationCount is the number of embedded migrations.
func migrationCount(tb testing.TB) int {
	tb.Helper()
	ms, err := sqlstore.LoadMigrations(migrationFiles, "migrations")
	if err != nil {
		tb.Fatal(err)
	}
	return len(ms)
}

// seedLegacy creates a database with migration 0001 alone applied and
// recorded, as the first release left it, writes old into it and returns
// its path.
func seedLegacy(tb testing.TB, old storetest.Legacy) string {
	tb.Helper()
	ctx := tb.Context()
	path := filepath.Join(tb.TempDir(), "legacy.db")
	ms, err := sqlstore.LoadMigrations(migrationFiles, "migrations")
	if err != nil || ms[0].Version != 1 {
		tb.Fatalf("LoadMigrations = %v, %v", ms, err)
	}
	db, err := sql.Open("sqlite", path+"?_foreign_keys=1")
	if err != nil {
		tb.Fatal(err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	exec := func(q string, args ...any) {
		tb.Helper()
		if _, err := db.ExecContext(ctx, q, args...); err != nil {
			tb.Fatalf("%.60s: %v", q, err)
		}
	}
	exec(`CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL) STRICT`)
	exec(ms[0].SQL)
	exec(`INSERT INTO schema_migrations VALUES (1, ?, 0)`, ms[0].Name)
	for _, s := range old.Sessions {
		exec(`INSERT INTO sessions (id, owner, title, version, next_seq, activity, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
			s.ID, s.Owner, s.Title, s.Version, s.NextSeq, s.Activity, s.CreatedAt.UnixMicro(), s.UpdatedAt.UnixMicro())
	}
	for _, n := range old.Nodes {
		short, err := session.ParseShortID(n.ShortID)
		if err != nil {
			tb.Fatal(err)
		}
		_, meta, err := sqlstore.EncodeNode(n)
		if err != nil {
			tb.Fatal(err)
		}
		metaArg, refsArg := storedArgs(n, meta)
		exec(`INSERT INTO nodes (`+nodeCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			n.ID, n.SessionID, n.Owner, short, n.Seq, n.Role, n.Content, metaArg, refsArg, n.Version, n.CreatedAt.UnixMicro(), n.UpdatedAt.UnixMicro())
	}
	for owner, last := range old.LastShort {
		exec(`INSERT INTO owner_short_ids (owner, last) VALUES (?, ?)`, owner, last)
	}
	return path
}

// queryRow runs query on a connection of its own to the database at path
// and scans its one row into dest.
func queryRow(tb testing.TB, path, query string, dest ...any) {
	tb.Helper()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		tb.Fatal(err)
	}
	defer db.Close()
	if err := db.QueryRowContext(tb.Context(), query).Scan(dest...); err != nil {
		tb.Fatalf("%s: %v", query, err)
	}
}

// TestUpgrade runs the shared upgrade tests on databases of the first
// schema, and checks that the table rebuilds of the upgrade left nothing
// behind.
func TestUpgrade(t *testing.T) {
	t.Parallel()
	storetest.RunUpgrade(t, storetest.Upgrade{
		Seed: seedLegacy,
		Open: func(ctx context.Context, path string) (session.Store, error) {
			st, err := Open(ctx, path)
			if err != nil {
				return nil, err
			}
			return st, nil
		},
		QueryRow:   queryRow,
		Check:      checkRebuilt,
		Migrations: migrationCount(t),
		ForeignKey: "FOREIGN KEY",
	})
}

// checkRebuilt checks the upgraded database of st for foreign key
// violations and for tables of the rebuild left behind.
func checkRebuilt(t *testing.T, st session.Store) {
	db := st.(*Store).db
	rows, err := db.QueryContext(t.Context(), `PRAGMA foreign_key_check`)
	if err != nil {
		t.Fatal(err)
	}
	if rows.Next() {
		t.Errorf("PRAGMA foreign_key_check reports violations after the upgrade")
	}
	rows.Close()
	var leftovers int
	if err := db.QueryRowContext(t.Context(), `SELECT count(*) FROM sqlite_schema WHERE name LIKE '%_0001'`).Scan(&leftovers); err != nil || leftovers != 0 {
		t.Errorf("tables of the rebuild left behind: %d, %v", leftovers, err)
	}
}
