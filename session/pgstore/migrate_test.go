package pgstore

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/tiercache/tiercache/session"
	"github.com/tiercache/tiercache/session/internal/sqlstore"
	"github.com/tiercache/tiercache/session/pgstore/pgtest"
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

// seedLegacy applies migration 0001 alone to a new schema and records it,
// as the first release left a database, writes old into it and returns a
// connection string that uses it.
func seedLegacy(tb testing.TB, old storetest.Legacy) string {
	tb.Helper()
	ctx := tb.Context()
	u := pgtest.Schema(tb)
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
	return u
}

// queryRow runs query on a connection of its own to u and scans its one
// row into dest.
func queryRow(tb testing.TB, u, query string, dest ...any) {
	tb.Helper()
	conn, err := pgx.Connect(tb.Context(), u)
	if err != nil {
		tb.Fatal(err)
	}
	defer conn.Close(tb.Context())
	if err := conn.QueryRow(tb.Context(), query).Scan(dest...); err != nil {
		tb.Fatalf("%s: %v", query, err)
	}
}

// TestUpgrade runs the shared upgrade tests on schemas of the first
// version.
func TestUpgrade(t *testing.T) {
	t.Parallel()
	pgtest.URL(t)
	storetest.RunUpgrade(t, storetest.Upgrade{
		Seed: seedLegacy,
		Open: func(ctx context.Context, u string) (session.Store, error) {
			st, err := Open(ctx, u)
			if err != nil {
				return nil, err
			}
			return st, nil
		},
		QueryRow:   queryRow,
		Migrations: migrationCount(t),
		ForeignKey: "foreign key",
	})
}
