package pgstore

import (
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

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

// seedLegacy applies migration 0001 alone to the schema of u and records
// it, as the first release left a database, and writes old into it.
func seedLegacy(tb testing.TB, u string, old storetest.Legacy) {
	tb.Helper()
	ctx := tb.Context()
	ms, err := sqlstore.LoadMigrations(migrationFiles, "migrations")
	if err != nil || ms[0].Version != 1 {
		tb.Fatalf("LoadMigrations = %v, %v", ms, err)
	}
	conn, err := pgx.Connect(ctx, u)
	if err != nil {
		tb.Fatal(err)
	}
	defer conn.Close(ctx)
	exec := func(q string, args ...any) {
		tb.Helper()
		if _, err := conn.Exec(ctx, q, args...); err != nil {
			tb.Fatalf("%.60s: %v", q, err)
		}
	}
	exec(`CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())`)
	exec(ms[0].SQL)
	exec(`INSERT INTO schema_migrations (version, name) VALUES (1, $1)`, ms[0].Name)
	for _, s := range old.Sessions {
		exec(`INSERT INTO sessions (id, owner, title, version, next_seq, activity, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
			s.ID, s.Owner, s.Title, s.Version, s.NextSeq, s.Activity, s.CreatedAt, s.UpdatedAt)
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
		exec(`INSERT INTO nodes (`+nodeCols+`) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)`,
			n.ID, n.SessionID, n.Owner, short, n.Seq, n.Role, n.Content, meta, n.Refs, n.Version, n.CreatedAt, n.UpdatedAt)
	}
	for owner, last := range old.LastShort {
		exec(`INSERT INTO owner_short_ids (owner, last) VALUES ($1, $2)`, owner, last)
	}
	exec(`SELECT setval('session_activity', 100)`)
}

// TestUpgradeKeepsData: a schema of the first version, with data, is
// migrated to per-owner session IDs by Open and serves all of it.
func TestUpgradeKeepsData(t *testing.T) {
	t.Parallel()
	u := newSchema(t)
	old := storetest.LegacyFixture()
	seedLegacy(t, u, old)
	st := openTest(t, u)
	storetest.CheckUpgraded(t, st, old)
	var versions int
	if err := st.pool.QueryRow(t.Context(), `SELECT count(*) FROM schema_migrations`).Scan(&versions); err != nil || versions != migrationCount(t) {
		t.Errorf("schema_migrations rows = %d, %v; want %d", versions, err, migrationCount(t))
	}
}

// TestUpgradeFailsWhole: data the new keys cannot hold (a node whose owner
// is not its session's) fails the migration with an error naming it, and
// the transaction leaves the schema as it was.
func TestUpgradeFailsWhole(t *testing.T) {
	t.Parallel()
	u := newSchema(t)
	old := storetest.LegacyFixture()
	old.Nodes[3].SessionID, old.Nodes[3].Seq = "trip", 3 // bob's node in alice's session
	seedLegacy(t, u, old)
	st, err := Open(t.Context(), u)
	if err == nil {
		st.Close()
		t.Fatal("Open succeeded on a node whose owner is not its session's, want the migration to fail")
	}
	if !strings.Contains(err.Error(), "0002_") || !strings.Contains(err.Error(), "foreign key") {
		t.Errorf("Open error = %v, want it to name migration 0002 and the foreign key", err)
	}
	conn, err := pgx.Connect(t.Context(), u)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(t.Context())
	var versions, sessions, nodes int
	if err := conn.QueryRow(t.Context(), `SELECT (SELECT count(*) FROM schema_migrations), (SELECT count(*) FROM sessions), (SELECT count(*) FROM nodes)`).Scan(&versions, &sessions, &nodes); err != nil {
		t.Fatal(err)
	}
	if versions != 1 || sessions != len(old.Sessions) || nodes != len(old.Nodes) {
		t.Errorf("after the failed migration: %d versions, %d sessions, %d nodes; want 1, %d, %d", versions, sessions, nodes, len(old.Sessions), len(old.Nodes))
	}
}
