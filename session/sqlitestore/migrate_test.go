package sqlitestore

import (
	"database/sql"
	"path/filepath"
	"strings"
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

// openLegacy creates a database at path with migration 0001 alone applied
// and recorded, as the first release left it, and writes old into it.
func openLegacy(tb testing.TB, path string, old storetest.Legacy) {
	tb.Helper()
	ctx := tb.Context()
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
}

// TestUpgradeKeepsData: a database of the first schema, with data, is
// migrated to per-owner session IDs by Open and serves all of it.
func TestUpgradeKeepsData(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "legacy.db")
	old := storetest.LegacyFixture()
	openLegacy(t, path, old)
	st := openFile(t, path)
	storetest.CheckUpgraded(t, st, old)

	var versions int
	if err := st.db.QueryRowContext(t.Context(), `SELECT count(*) FROM schema_migrations`).Scan(&versions); err != nil || versions != migrationCount(t) {
		t.Errorf("schema_migrations rows = %d, %v; want %d", versions, err, migrationCount(t))
	}
	rows, err := st.db.QueryContext(t.Context(), `PRAGMA foreign_key_check`)
	if err != nil {
		t.Fatal(err)
	}
	if rows.Next() {
		t.Errorf("PRAGMA foreign_key_check reports violations after the upgrade")
	}
	rows.Close()
	var leftovers int
	if err := st.db.QueryRowContext(t.Context(), `SELECT count(*) FROM sqlite_schema WHERE name LIKE '%_0001'`).Scan(&leftovers); err != nil || leftovers != 0 {
		t.Errorf("tables of the rebuild left behind: %d, %v", leftovers, err)
	}
	// Reopening applies nothing more and finds everything.
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	st = openFile(t, path)
	if err := st.db.QueryRowContext(t.Context(), `SELECT count(*) FROM schema_migrations`).Scan(&versions); err != nil || versions != migrationCount(t) {
		t.Errorf("schema_migrations rows after reopening = %d, %v; want %d", versions, err, migrationCount(t))
	}
	if list, err := st.ListSessions(t.Context(), "alice", 0); err != nil || len(list) != 2 {
		t.Errorf("ListSessions(alice) after reopening = %+v, %v; want 2 sessions", list, err)
	}
}

// TestUpgradeFailsWhole: data the new keys cannot hold (a node whose owner
// is not its session's) fails the migration with an error naming it, and
// the transaction leaves the database as it was.
func TestUpgradeFailsWhole(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "bad.db")
	old := storetest.LegacyFixture()
	old.Nodes[3].SessionID, old.Nodes[3].Seq = "trip", 3 // bob's node in alice's session
	openLegacy(t, path, old)
	st, err := Open(t.Context(), path)
	if err == nil {
		st.Close()
		t.Fatal("Open succeeded on a node whose owner is not its session's, want the migration to fail")
	}
	if !strings.Contains(err.Error(), "0002_") || !strings.Contains(err.Error(), "FOREIGN KEY") {
		t.Errorf("Open error = %v, want it to name migration 0002 and the foreign key", err)
	}
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var versions, sessions, nodes int
	if err := db.QueryRowContext(t.Context(), `SELECT (SELECT count(*) FROM schema_migrations), (SELECT count(*) FROM sessions), (SELECT count(*) FROM nodes)`).Scan(&versions, &sessions, &nodes); err != nil {
		t.Fatal(err)
	}
	if versions != 1 || sessions != len(old.Sessions) || nodes != len(old.Nodes) {
		t.Errorf("after the failed migration: %d versions, %d sessions, %d nodes; want 1, %d, %d", versions, sessions, nodes, len(old.Sessions), len(old.Nodes))
	}
}
