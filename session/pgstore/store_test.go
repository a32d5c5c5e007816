package pgstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tiercache/tiercache/session"
	"github.com/tiercache/tiercache/session/storetest"
)

// databaseURL returns TEST_DATABASE_URL after checking once that it is
// reachable. Unset: skip. Set but unreachable: fail under CI, else skip.
func databaseURL(tb testing.TB) string {
	tb.Helper()
	u := os.Getenv("TEST_DATABASE_URL")
	if u == "" {
		tb.Skip("TEST_DATABASE_URL not set; skipping PostgreSQL tests (e.g. postgres://postgres@127.0.0.1:5432/test?sslmode=disable)")
	}
	reachOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, u)
		if err == nil {
			err = conn.Ping(ctx)
			conn.Close(ctx)
		}
		reachErr = err
	})
	if reachErr != nil {
		if os.Getenv("CI") != "" {
			tb.Fatalf("TEST_DATABASE_URL is set but PostgreSQL is unreachable: %v", reachErr)
		}
		tb.Skipf("!!! TEST_DATABASE_URL is set but PostgreSQL is unreachable, skipping: %v", reachErr)
	}
	return u
}

var (
	reachOnce sync.Once
	reachErr  error
)

// withSearchPath returns the connection string u selecting schema.
func withSearchPath(tb testing.TB, u, schema string) string {
	tb.Helper()
	if strings.HasPrefix(u, "postgres://") || strings.HasPrefix(u, "postgresql://") {
		p, err := url.Parse(u)
		if err != nil {
			tb.Fatalf("parse TEST_DATABASE_URL: %v", err)
		}
		q := p.Query()
		q.Set("search_path", schema)
		p.RawQuery = q.Encode()
		return p.String()
	}
	return u + " search_path=" + schema
}

// newSchema creates a fresh schema, dropped when the test ends, and returns
// a connection string that uses it.
func newSchema(tb testing.TB) string {
	tb.Helper()
	base := databaseURL(tb)
	var b [6]byte
	rand.Read(b[:])
	schema := "tiercache_test_" + hex.EncodeToString(b[:])
	exec := func(ctx context.Context, sql string) error {
		conn, err := pgx.Connect(ctx, base)
		if err != nil {
			return err
		}
		defer conn.Close(ctx)
		_, err = conn.Exec(ctx, sql)
		return err
	}
	if err := exec(tb.Context(), "CREATE SCHEMA "+schema); err != nil {
		tb.Fatalf("create schema %s: %v", schema, err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := exec(ctx, "DROP SCHEMA "+schema+" CASCADE"); err != nil {
			tb.Errorf("drop schema %s: %v", schema, err)
		}
	})
	return withSearchPath(tb, base, schema)
}

func openTest(tb testing.TB, u string) *Store {
	tb.Helper()
	st, err := Open(tb.Context(), u)
	if err != nil {
		tb.Fatalf("Open = %v", err)
	}
	tb.Cleanup(func() { st.Close() })
	return st
}

func TestContract(t *testing.T) {
	t.Parallel()
	databaseURL(t)
	storetest.Run(t, func(t *testing.T) session.Store {
		return openTest(t, newSchema(t))
	})
}

// TestConcurrentOpen starts several stores on one empty schema at once, as
// several service instances would: the advisory lock lets exactly one apply
// the migrations, and all of them work afterwards.
func TestConcurrentOpen(t *testing.T) {
	t.Parallel()
	u := newSchema(t)
	const n = 4
	stores := make([]*Store, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			stores[i], errs[i] = Open(t.Context(), u)
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("Open #%d = %v", i, err)
		}
		t.Cleanup(func() { stores[i].Close() })
	}
	var versions int
	if err := stores[0].pool.QueryRow(t.Context(), `SELECT count(*) FROM schema_migrations`).Scan(&versions); err != nil || versions != migrationCount(t) {
		t.Errorf("schema_migrations rows = %d, %v; want %d", versions, err, migrationCount(t))
	}
	s, err := stores[1].CreateSession(t.Context(), session.Session{Owner: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	for i, st := range stores {
		if _, err := st.CreateNode(t.Context(), session.Node{SessionID: s.ID, Owner: "alice", Role: session.RoleUser, Content: fmt.Sprint(i)}); err != nil {
			t.Errorf("store %d CreateNode = %v", i, err)
		}
	}
	if err := stores[2].Close(); err != nil {
		t.Errorf("Close() = %v", err)
	}
	if err := stores[2].Close(); err != nil {
		t.Errorf("second Close() = %v", err)
	}
}

func TestOpenErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		url  string
	}{
		{name: "malformed", url: "postgres://%zz"},
		{name: "refused", url: "postgres://postgres@127.0.0.1:1/test?sslmode=disable&connect_timeout=2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, err := Open(t.Context(), tt.url)
			if err == nil {
				st.Close()
				t.Fatalf("Open(%q) succeeded, want an error", tt.url)
			}
			if !strings.HasPrefix(err.Error(), "pgstore: ") {
				t.Errorf("Open error %q lacks the pgstore: prefix", err)
			}
		})
	}
}
