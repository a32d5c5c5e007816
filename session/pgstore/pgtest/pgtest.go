// Package pgtest gives tests a fresh PostgreSQL schema on the server that TEST_DATABASE_URL names
// (scripts/test sets it when a local PostgreSQL answers).
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// URL returns TEST_DATABASE_URL after checking once that it is reachable. Unset: the test is
// skipped. Set but unreachable: it fails under CI (CI set), else it is skipped loudly.
func URL(tb testing.TB) string {
	tb.Helper()
	u := os.Getenv("TEST_DATABASE_URL")
	if u == "" {
		tb.Skip("TEST_DATABASE_URL not set; skipping PostgreSQL tests (e.g. postgres://postgres@127.0.0.1:5432/test?sslmode=disable)")
	}
	reachOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		reachErr = exec(ctx, u, "SELECT 1")
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

// Schema creates a fresh schema, dropped when the test ends, and returns a connection string
// that selects it.
func Schema(tb testing.TB) string {
	tb.Helper()
	base := URL(tb)
	var b [6]byte
	_, _ = rand.Read(b[:])
	schema := "tiercache_test_" + hex.EncodeToString(b[:])
	if err := exec(tb.Context(), base, "CREATE SCHEMA "+schema); err != nil {
		tb.Fatalf("create schema %s: %v", schema, err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := exec(ctx, base, "DROP SCHEMA "+schema+" CASCADE"); err != nil {
			tb.Errorf("drop schema %s: %v", schema, err)
		}
	})
	return withSearchPath(tb, base, schema)
}

// exec runs sql on a connection of its own to u.
func exec(ctx context.Context, u, sql string) error {
	conn, err := pgx.Connect(ctx, u)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, sql)
	return err
}

// withSearchPath returns the connection string u (URL or key=value form) selecting schema.
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
