package pgstore

import (
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/tiercache/tiercache/session"
	"github.com/tiercache/tiercache/session/pgstore/pgtest"
	"github.com/tiercache/tiercache/session/storetest"
)

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
	pgtest.URL(t)
	storetest.Run(t, func(t *testing.T) session.Store {
		return openTest(t, pgtest.Schema(t))
	})
}

// TestConcurrentOpen starts several stores on one empty schema at once, as
// several service instances would: the advisory lock lets exactly one apply
// the migrations, and all of them work afterwards.
func TestConcurrentOpen(t *testing.T) {
	t.Parallel()
	u := pgtest.Schema(t)
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
		if _, err := st.CreateNode(t.Context(), session.Node{SessionID: s.ID, Owner: "alice", Role: session.RoleUser, Content: fmt.Sprint(i)}, 0); err != nil {
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
