// Package storetest is the contract test suite every [session.Store]
// implementation passes. A store's tests call [Run] with a function that
// opens a fresh, empty store for one test.
package storetest

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tiercache/tiercache/session"
)

// Run runs the contract suite against the stores open returns. open is
// called once per subtest and must return a new, empty store; it should
// register the store's Close with t.Cleanup. Subtests run in parallel.
func Run(t *testing.T, open func(t *testing.T) session.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, st session.Store)
	}{
		{"Sessions", testSessions},
		{"OwnerIsolation", testOwnerIsolation},
		{"SameIDTwoOwners", testSameIDTwoOwners},
		{"ShortIDs", testShortIDs},
		{"NodeRoundTrip", testNodeRoundTrip},
		{"NodeOrder", testNodeOrder},
		{"UpdateNode", testUpdateNode},
		{"DeleteNode", testDeleteNode},
		{"DeleteSession", testDeleteSession},
		{"Batch", testBatch},
		{"Validation", testValidation},
		{"ConcurrentCreateNode", testConcurrentCreateNode},
		{"NodeLimit", testNodeLimit},
		{"RecentSessions", testRecentSessions},
		{"SessionVersions", testSessionVersions},
		{"Ping", testPing},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.fn(t, open(t))
		})
	}
}

func mustSession(tb testing.TB, st session.Store, owner, title string) session.Session {
	tb.Helper()
	s, err := st.CreateSession(tb.Context(), session.Session{Owner: owner, Title: title})
	if err != nil {
		tb.Fatalf("CreateSession(%q, %q) = %v", owner, title, err)
	}
	return s
}

func mustNode(tb testing.TB, st session.Store, s session.Session, content string, refs ...string) session.Node {
	tb.Helper()
	n, err := st.CreateNode(tb.Context(), session.Node{SessionID: s.ID, Owner: s.Owner, Role: session.RoleUser, Content: content, Refs: refs}, 0)
	if err != nil {
		tb.Fatalf("CreateNode(%q in %s) = %v", content, s.ID, err)
	}
	return n
}

func getNode(tb testing.TB, st session.Store, id string) (session.Node, bool) {
	tb.Helper()
	m, err := st.GetNodes(tb.Context(), []string{id})
	if err != nil {
		tb.Fatalf("GetNodes(%q) = %v", id, err)
	}
	n, ok := m[id]
	return n, ok
}

func getSession(tb testing.TB, st session.Store, s session.Session) session.Session {
	tb.Helper()
	got, err := st.GetSession(tb.Context(), s.Owner, s.ID)
	if err != nil {
		tb.Fatalf("GetSession(%q, %q) = %v", s.Owner, s.ID, err)
	}
	return got
}

func nodeIDs(tb testing.TB, st session.Store, s session.Session) session.NodeList {
	tb.Helper()
	m, err := st.SessionNodeIDs(tb.Context(), []session.SessionKey{s.Key()})
	if err != nil {
		tb.Fatalf("SessionNodeIDs(%+v) = %v", s.Key(), err)
	}
	l, ok := m[s.Key()]
	if !ok {
		tb.Fatalf("SessionNodeIDs(%+v): session missing", s.Key())
	}
	return l
}

// sameNode compares nodes, timestamps by instant.
func sameNode(a, b session.Node) bool {
	if !a.CreatedAt.Equal(b.CreatedAt) || !a.UpdatedAt.Equal(b.UpdatedAt) {
		return false
	}
	a.CreatedAt, a.UpdatedAt, b.CreatedAt, b.UpdatedAt = time.Time{}, time.Time{}, time.Time{}, time.Time{}
	return reflect.DeepEqual(a, b)
}

func sameSession(a, b session.Session) bool {
	return a.ID == b.ID && a.Owner == b.Owner && a.Title == b.Title && a.Version == b.Version &&
		a.CreatedAt.Equal(b.CreatedAt) && a.UpdatedAt.Equal(b.UpdatedAt)
}

func wantErr(tb testing.TB, call string, err, target error) {
	tb.Helper()
	if !errors.Is(err, target) {
		tb.Fatalf("%s = %v, want %v", call, err, target)
	}
	if !strings.HasPrefix(err.Error(), "session: ") {
		tb.Errorf("%s error %q lacks the \"session: \" prefix", call, err)
	}
}

func wantInvalid(tb testing.TB, call string, err error, field, mention string) {
	tb.Helper()
	wantErr(tb, call, err, session.ErrInvalid)
	var ie *session.InvalidError
	if !errors.As(err, &ie) || ie.Field != field {
		tb.Fatalf("%s = %v, want an InvalidError for field %q", call, err, field)
	}
	if mention != "" && !strings.Contains(err.Error(), mention) {
		tb.Errorf("%s = %v, want it to mention %q", call, err, mention)
	}
}

// wantMismatch checks that err, which call returned, is a
// *session.VersionMismatchError for the session or node (kind) id with Want
// want and Current current.
func wantMismatch(tb testing.TB, call string, err error, kind, id string, want, current int64) {
	tb.Helper()
	wantErr(tb, call, err, session.ErrVersionMismatch)
	var vm *session.VersionMismatchError
	if !errors.As(err, &vm) || vm.Kind != kind || vm.ID != id || vm.Want != want || vm.Current != current {
		tb.Fatalf("%s error = %#v, want a %s VersionMismatchError for %s with Want %d, Current %d", call, err, kind, id, want, current)
	}
}

func ptr[T any](v T) *T { return &v }
