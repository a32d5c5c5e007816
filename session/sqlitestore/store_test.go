package sqlitestore

import (
	"fmt"
	"path/filepath"
	"sync"
	"testing"

	"github.com/tiercache/tiercache/session"
	"github.com/tiercache/tiercache/session/storetest"
)

func openFile(tb testing.TB, path string) *Store {
	tb.Helper()
	st, err := Open(tb.Context(), path)
	if err != nil {
		tb.Fatalf("Open(%q) = %v", path, err)
	}
	tb.Cleanup(func() { st.Close() })
	return st
}

func TestContract(t *testing.T) {
	t.Parallel()
	storetest.Run(t, func(t *testing.T) session.Store {
		return openFile(t, filepath.Join(t.TempDir(), "sessions.db"))
	})
}

func TestContractMemory(t *testing.T) {
	t.Parallel()
	storetest.Run(t, func(t *testing.T) session.Store {
		return openFile(t, ":memory:")
	})
}

func TestReopen(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "sessions.db")
	st, err := Open(t.Context(), path)
	if err != nil {
		t.Fatal(err)
	}
	s, err := st.CreateSession(t.Context(), session.Session{Owner: "alice", Title: "kept"})
	if err != nil {
		t.Fatal(err)
	}
	n, err := st.CreateNode(t.Context(), session.Node{SessionID: s.ID, Owner: "alice", Role: session.RoleUser, Content: "hi"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatalf("Close() = %v", err)
	}
	if err := st.Close(); err != nil {
		t.Errorf("second Close() = %v, want nil", err)
	}
	if _, err := st.GetSession(t.Context(), "alice", s.ID); err == nil {
		t.Errorf("GetSession after Close succeeded, want an error")
	}

	st2 := openFile(t, path)
	got, err := st2.ResolveShortID(t.Context(), "alice", "@n1")
	if err != nil || got.ID != n.ID {
		t.Fatalf("ResolveShortID after reopen = %+v, %v; want %s", got, err, n.ID)
	}
	var versions int
	if err := st2.db.QueryRowContext(t.Context(), `SELECT count(*) FROM schema_migrations`).Scan(&versions); err != nil || versions != migrationCount(t) {
		t.Errorf("schema_migrations rows = %d, %v; want %d", versions, err, migrationCount(t))
	}
	var mode string
	if err := st2.db.QueryRowContext(t.Context(), `PRAGMA journal_mode`).Scan(&mode); err != nil || mode != "wal" {
		t.Errorf("journal_mode = %q, %v; want wal", mode, err)
	}
	var fk int
	if err := st2.db.QueryRowContext(t.Context(), `PRAGMA foreign_keys`).Scan(&fk); err != nil || fk != 1 {
		t.Errorf("foreign_keys = %d, %v; want 1", fk, err)
	}
}

// TestTwoStoresOneFile stands in for two processes sharing a database:
// the stores' in-process write queues are separate, so their writers meet
// in SQLite's lock and the busy timeout.
func TestTwoStoresOneFile(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "shared.db")
	stores := []*Store{openFile(t, path), openFile(t, path)}
	s, err := stores[0].CreateSession(t.Context(), session.Session{Owner: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	const perStore = 4
	var wg sync.WaitGroup
	errs := make(chan error, 2*perStore*5)
	for i := range 2 * perStore {
		st := stores[i%2]
		wg.Go(func() {
			for j := range 5 {
				_, err := st.CreateNode(t.Context(), session.Node{SessionID: s.ID, Owner: "alice", Role: session.RoleNote, Content: fmt.Sprint(i, j)}, 0)
				if err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("CreateNode = %v", err)
	}
	lists, err := stores[1].SessionNodeIDs(t.Context(), []session.SessionKey{s.Key()})
	if err != nil || len(lists[s.Key()].NodeIDs) != 2*perStore*5 {
		t.Fatalf("SessionNodeIDs = %v, %v; want %d nodes", lists, err, 2*perStore*5)
	}
	_, err = stores[1].ResolveShortID(t.Context(), "alice", session.FormatShortID(2*perStore*5))
	if err != nil {
		t.Errorf("ResolveShortID(n%d) = %v; want the last node", 2*perStore*5, err)
	}
}

func TestOpenErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		path string
	}{
		{name: "empty", path: ""},
		{name: "missing directory", path: filepath.Join(t.TempDir(), "no", "such", "dir", "x.db")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if st, err := Open(t.Context(), tt.path); err == nil {
				st.Close()
				t.Fatalf("Open(%q) succeeded, want an error", tt.path)
			}
		})
	}
}
