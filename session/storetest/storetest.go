// Package storetest is the contract test suite every [session.Store]
// implementation passes. A store's tests call [Run] with a function that
// opens a fresh, empty store for one test.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
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

func testSessions(t *testing.T, st session.Store) {
	ctx := t.Context()
	before := time.Now().Add(-time.Second)
	s, err := st.CreateSession(ctx, session.Session{Owner: "alice", Title: "first"})
	if err != nil {
		t.Fatalf("CreateSession = %v", err)
	}
	if !session.ValidID(s.ID) || s.Owner != "alice" || s.Title != "first" || s.Version != 1 {
		t.Errorf("CreateSession = %+v, want a new ID, owner alice, title first, version 1", s)
	}
	if s.CreatedAt.Before(before) || !s.CreatedAt.Equal(s.UpdatedAt) || s.CreatedAt.Location() != time.UTC {
		t.Errorf("CreateSession timestamps = %v, %v; want now in UTC, equal", s.CreatedAt, s.UpdatedAt)
	}
	if got := getSession(t, st, s); !sameSession(got, s) {
		t.Errorf("GetSession = %+v, want %+v", got, s)
	}
	_, err = st.GetSession(ctx, "alice", "s_missing")
	wantErr(t, "GetSession(missing)", err, session.ErrNotFound)

	withID, err := st.CreateSession(ctx, session.Session{ID: "s_chosen-1", Owner: "alice"})
	if err != nil || withID.ID != "s_chosen-1" {
		t.Fatalf("CreateSession(with ID) = %+v, %v", withID, err)
	}
	_, err = st.CreateSession(ctx, session.Session{ID: "s_chosen-1", Owner: "alice", Title: "again"})
	wantErr(t, "CreateSession(ID the owner uses)", err, session.ErrExists)
	if got := getSession(t, st, withID); !sameSession(got, withID) {
		t.Errorf("GetSession after a refused create = %+v, want unchanged %+v", got, withID)
	}

	up, err := st.UpdateSession(ctx, "alice", s.ID, 0, "renamed")
	if err != nil || up.Title != "renamed" || up.Version != 2 || up.UpdatedAt.Before(s.UpdatedAt) || !up.CreatedAt.Equal(s.CreatedAt) {
		t.Fatalf("UpdateSession = %+v, %v; want title renamed, version 2", up, err)
	}
	if got := getSession(t, st, s); !sameSession(got, up) {
		t.Errorf("GetSession after update = %+v, want %+v", got, up)
	}
	_, err = st.UpdateSession(ctx, "alice", s.ID, 0, strings.Repeat("x", session.MaxTitle+1))
	wantInvalid(t, "UpdateSession(long title)", err, "title", "")

	list, err := st.ListSessions(ctx, "alice", 0)
	if err != nil || len(list) != 2 || list[0].ID != s.ID {
		t.Errorf("ListSessions(alice) = %+v, %v; want the renamed session first of 2", list, err)
	}
}

func testOwnerIsolation(t *testing.T, st session.Store) {
	ctx := t.Context()
	as := mustSession(t, st, "alice", "a")
	an := mustNode(t, st, as, "alice's secret")
	bs := mustSession(t, st, "bob", "b")

	_, err := st.GetSession(ctx, "bob", as.ID)
	wantErr(t, "GetSession(bob, alice's)", err, session.ErrNotFound)
	_, err = st.UpdateSession(ctx, "bob", as.ID, 0, "mine")
	wantErr(t, "UpdateSession(bob, alice's)", err, session.ErrNotFound)
	_, err = st.CreateNode(ctx, session.Node{SessionID: as.ID, Owner: "bob", Role: session.RoleUser, Content: "x"}, 0)
	wantErr(t, "CreateNode(bob into alice's session)", err, session.ErrNotFound)
	content := "changed"
	_, err = st.UpdateNode(ctx, "bob", an.ID, 0, session.NodeUpdate{Content: &content})
	wantErr(t, "UpdateNode(bob, alice's node)", err, session.ErrNotFound)
	_, err = st.DeleteNode(ctx, "bob", an.ID, 0)
	wantErr(t, "DeleteNode(bob, alice's node)", err, session.ErrNotFound)
	_, err = st.ResolveShortID(ctx, "bob", an.ShortID)
	wantErr(t, "ResolveShortID(bob, alice's short ID)", err, session.ErrNotFound)
	_, err = st.DeleteSession(ctx, "bob", as.ID, 0)
	wantErr(t, "DeleteSession(bob, alice's)", err, session.ErrNotFound)

	_, err = st.CreateNode(ctx, session.Node{SessionID: bs.ID, Owner: "bob", Role: session.RoleUser, Content: "x", Refs: []string{an.ID}}, 0)
	wantInvalid(t, "CreateNode(bob, ref to alice's node)", err, "refs", an.ID)
	bn := mustNode(t, st, bs, "bob's")
	refs := []string{an.ID}
	_, err = st.UpdateNode(ctx, "bob", bn.ID, 0, session.NodeUpdate{Refs: &refs})
	wantInvalid(t, "UpdateNode(bob, ref to alice's node)", err, "refs", an.ID)

	if got, ok := getNode(t, st, an.ID); !ok || !sameNode(got, an) {
		t.Errorf("alice's node after bob's attempts = %+v, %v; want %+v", got, ok, an)
	}
	if got := getSession(t, st, as); got.Version != 2 || got.Title != "a" {
		t.Errorf("alice's session after bob's attempts = %+v", got)
	}
	list, err := st.ListSessions(ctx, "bob", 0)
	if err != nil || len(list) != 1 || list[0].ID != bs.ID {
		t.Errorf("ListSessions(bob) = %+v, %v; want only bob's session", list, err)
	}
	if l := nodeIDs(t, st, bs); !slices.Equal(l.NodeIDs, []string{bn.ID}) {
		t.Errorf("bob's node list = %q, want [%q]", l.NodeIDs, bn.ID)
	}
}

// testSameIDTwoOwners: session IDs are unique per owner. Two owners each
// create a session "trip"; both exist, each owner sees and changes only
// their own, nodes, node lists and short IDs stay apart, and only the same
// owner reusing the ID gets ErrExists.
func testSameIDTwoOwners(t *testing.T, st session.Store) {
	ctx := t.Context()
	as, err := st.CreateSession(ctx, session.Session{ID: "trip", Owner: "alice", Title: "alice's trip"})
	if err != nil {
		t.Fatalf("CreateSession(alice, trip) = %v", err)
	}
	bs, err := st.CreateSession(ctx, session.Session{ID: "trip", Owner: "bob", Title: "bob's trip"})
	if err != nil {
		t.Fatalf("CreateSession(bob, trip) = %v, want it created: session IDs are unique per owner", err)
	}
	if bs.ID != "trip" || bs.Owner != "bob" || bs.Version != 1 {
		t.Errorf("CreateSession(bob, trip) = %+v, want ID trip, owner bob, version 1", bs)
	}
	for _, owner := range []string{"alice", "bob"} {
		_, err = st.CreateSession(ctx, session.Session{ID: "trip", Owner: owner})
		wantErr(t, "CreateSession("+owner+", trip) again", err, session.ErrExists)
	}
	if got := getSession(t, st, as); !sameSession(got, as) {
		t.Errorf("GetSession(alice, trip) = %+v, want %+v", got, as)
	}
	if got := getSession(t, st, bs); !sameSession(got, bs) {
		t.Errorf("GetSession(bob, trip) = %+v, want %+v", got, bs)
	}

	a1 := mustNode(t, st, as, "alice 1")
	a2 := mustNode(t, st, as, "alice 2", a1.ID)
	b1 := mustNode(t, st, bs, "bob 1")
	if a1.Seq != 1 || a2.Seq != 2 || b1.Seq != 1 {
		t.Errorf("seqs = %d, %d (alice), %d (bob); want 1, 2 and 1: each session counts its own", a1.Seq, a2.Seq, b1.Seq)
	}
	if a1.ShortID != "n1" || a2.ShortID != "n2" || b1.ShortID != "n1" {
		t.Errorf("short IDs = %s, %s (alice), %s (bob); want n1, n2 and n1", a1.ShortID, a2.ShortID, b1.ShortID)
	}
	if l := nodeIDs(t, st, as); !slices.Equal(l.NodeIDs, []string{a1.ID, a2.ID}) || l.Version != 3 || l.Owner != "alice" {
		t.Errorf("alice's trip node list = %+v, want [%s %s] at version 3", l, a1.ID, a2.ID)
	}
	if l := nodeIDs(t, st, bs); !slices.Equal(l.NodeIDs, []string{b1.ID}) || l.Version != 2 || l.Owner != "bob" {
		t.Errorf("bob's trip node list = %+v, want [%s] at version 2", l, b1.ID)
	}
	sess, err := st.GetSessions(ctx, []session.SessionKey{as.Key(), bs.Key()})
	if err != nil || len(sess) != 2 || sess[as.Key()].Title != "alice's trip" || sess[bs.Key()].Title != "bob's trip" {
		t.Errorf("GetSessions(both trips) = %+v, %v; want each owner's own", sess, err)
	}
	for _, tt := range []struct {
		owner string
		want  session.Node
	}{{"alice", a1}, {"bob", b1}} {
		if got, err := st.ResolveShortID(ctx, tt.owner, "n1"); err != nil || got.ID != tt.want.ID {
			t.Errorf("ResolveShortID(%s, n1) = %+v, %v; want %s", tt.owner, got, err, tt.want.ID)
		}
	}
	_, err = st.CreateNode(ctx, session.Node{SessionID: "trip", Owner: "bob", Role: session.RoleUser, Content: "x", Refs: []string{a1.ID}}, 0)
	wantInvalid(t, "CreateNode(bob's trip, ref to alice's trip node)", err, "refs", a1.ID)
	for _, owner := range []string{"alice", "bob"} {
		list, err := st.ListSessions(ctx, owner, 0)
		if err != nil || len(list) != 1 || list[0].Owner != owner || list[0].ID != "trip" {
			t.Errorf("ListSessions(%s) = %+v, %v; want only their own trip", owner, list, err)
		}
	}

	// Updates of one leave the other untouched.
	aUp, err := st.UpdateSession(ctx, "alice", "trip", 3, "alice renamed")
	if err != nil || aUp.Version != 4 {
		t.Fatalf("UpdateSession(alice, trip, version 3) = %+v, %v", aUp, err)
	}
	bNow := getSession(t, st, bs)
	if bNow.Title != "bob's trip" || bNow.Version != 2 {
		t.Errorf("bob's trip after alice's rename = %+v, want title \"bob's trip\" at version 2", bNow)
	}
	_, err = st.UpdateSession(ctx, "bob", "trip", 4, "stale for bob")
	wantErr(t, "UpdateSession(bob, trip, alice's version)", err, session.ErrVersionMismatch)
	content := "bob edited"
	if _, err := st.UpdateNode(ctx, "bob", b1.ID, 1, session.NodeUpdate{Content: &content}); err != nil {
		t.Fatalf("UpdateNode(bob's node) = %v", err)
	}
	if got := getSession(t, st, as); !sameSession(got, aUp) {
		t.Errorf("alice's trip after bob's node update = %+v, want unchanged %+v", got, aUp)
	}
	if _, err := st.DeleteNode(ctx, "bob", b1.ID, 0); err != nil {
		t.Fatalf("DeleteNode(bob's node) = %v", err)
	}
	if got := getSession(t, st, as); !sameSession(got, aUp) {
		t.Errorf("alice's trip after bob's node delete = %+v, want unchanged %+v", got, aUp)
	}
	b2 := mustNode(t, st, bs, "bob 2")
	if b2.Seq != 2 || b2.ShortID != "n2" {
		t.Errorf("bob's next node = seq %d, %s; want seq 2, n2", b2.Seq, b2.ShortID)
	}

	// Deleting one deletes only its own nodes.
	del, err := st.DeleteSession(ctx, "bob", "trip", 0)
	if err != nil || len(del) != 1 || del[0].ID != b2.ID {
		t.Fatalf("DeleteSession(bob, trip) = %+v, %v; want bob's one node", del, err)
	}
	_, err = st.GetSession(ctx, "bob", "trip")
	wantErr(t, "GetSession(bob, deleted trip)", err, session.ErrNotFound)
	if got := getSession(t, st, as); !sameSession(got, aUp) {
		t.Errorf("alice's trip after bob's delete = %+v, want unchanged %+v", got, aUp)
	}
	if l := nodeIDs(t, st, as); !slices.Equal(l.NodeIDs, []string{a1.ID, a2.ID}) {
		t.Errorf("alice's trip nodes after bob's delete = %q, want [%s %s]", l.NodeIDs, a1.ID, a2.ID)
	}
	if m, err := st.GetNodes(ctx, []string{a1.ID, a2.ID}); err != nil || len(m) != 2 {
		t.Errorf("GetNodes(alice's) after bob's delete = %v, %v; want both", m, err)
	}
	if lists, err := st.SessionNodeIDs(ctx, []session.SessionKey{bs.Key()}); err != nil || len(lists) != 0 {
		t.Errorf("SessionNodeIDs(bob's deleted trip) = %v, %v; want none", lists, err)
	}
	// Bob can take the ID again; alice still cannot.
	if _, err := st.CreateSession(ctx, session.Session{ID: "trip", Owner: "bob"}); err != nil {
		t.Errorf("CreateSession(bob, trip) after deleting his = %v", err)
	}
	_, err = st.CreateSession(ctx, session.Session{ID: "trip", Owner: "alice"})
	wantErr(t, "CreateSession(alice, trip) after bob's delete", err, session.ErrExists)
	_, err = st.DeleteSession(ctx, "alice", "trip", 2)
	wantErr(t, "DeleteSession(alice, trip, stale version)", err, session.ErrVersionMismatch)
	if l := nodeIDs(t, st, as); len(l.NodeIDs) != 2 {
		t.Errorf("alice's trip after a stale delete = %q, want both nodes", l.NodeIDs)
	}
}

func testShortIDs(t *testing.T, st session.Store) {
	ctx := t.Context()
	s1 := mustSession(t, st, "alice", "one")
	s2 := mustSession(t, st, "alice", "two")
	var nodes []session.Node
	var last int64
	for i := range 6 {
		s := s1
		if i%2 == 1 {
			s = s2
		}
		n := mustNode(t, st, s, fmt.Sprint("node ", i))
		num, err := session.ParseShortID(n.ShortID)
		if err != nil || num <= last {
			t.Fatalf("node %d short ID %q (%v), want one greater than n%d", i, n.ShortID, err, last)
		}
		last = num
		nodes = append(nodes, n)
	}
	if nodes[0].ShortID != "n1" {
		t.Errorf("first short ID of a new owner = %q, want n1", nodes[0].ShortID)
	}
	if b := mustNode(t, st, mustSession(t, st, "bob", "b"), "bob's first"); b.ShortID != "n1" {
		t.Errorf("bob's first short ID = %q, want n1 (sequences are per owner)", b.ShortID)
	}
	for _, n := range nodes {
		for _, form := range []string{n.ShortID, "#" + n.ShortID, "@" + n.ShortID} {
			got, err := st.ResolveShortID(ctx, "alice", form)
			if err != nil || !sameNode(got, n) {
				t.Errorf("ResolveShortID(alice, %q) = %+v, %v; want %+v", form, got, err, n)
			}
		}
	}
	_, err := st.ResolveShortID(ctx, "alice", "n999")
	wantErr(t, "ResolveShortID(unknown)", err, session.ErrNotFound)
	_, err = st.ResolveShortID(ctx, "alice", "n01")
	wantInvalid(t, "ResolveShortID(n01)", err, "short_id", "n01")

	m, err := st.ResolveShortIDs(ctx, "alice", []string{"@" + nodes[1].ShortID, nodes[4].ShortID, "n999", "#" + nodes[1].ShortID})
	if err != nil || len(m) != 2 || !sameNode(m[nodes[1].ShortID], nodes[1]) || !sameNode(m[nodes[4].ShortID], nodes[4]) {
		t.Errorf("ResolveShortIDs = %v, %v; want %s and %s", m, err, nodes[1].ShortID, nodes[4].ShortID)
	}
	_, err = st.ResolveShortIDs(ctx, "alice", []string{"n1", "x"})
	wantInvalid(t, "ResolveShortIDs(bad)", err, "short_id", `"x"`)
	if m, err := st.ResolveShortIDs(ctx, "alice", nil); err != nil || len(m) != 0 {
		t.Errorf("ResolveShortIDs(nil) = %v, %v; want empty", m, err)
	}

	// Short IDs are never reused, also after the newest node is deleted.
	if _, err := st.DeleteNode(ctx, "alice", nodes[5].ID, 0); err != nil {
		t.Fatalf("DeleteNode = %v", err)
	}
	if n := mustNode(t, st, s1, "after delete"); n.ShortID != "n7" {
		t.Errorf("short ID after deleting n6 = %q, want n7", n.ShortID)
	}
}

func testNodeRoundTrip(t *testing.T, st session.Store) {
	ctx := t.Context()
	s := mustSession(t, st, "alice", "a")
	other := mustSession(t, st, "alice", "other")
	ref := mustNode(t, st, other, "referenced")
	before := time.Now().Add(-time.Second)
	in := session.Node{
		ID: "nd_custom-1", SessionID: s.ID, Owner: "alice", Role: session.RoleAssistant,
		Content:  "héllo 👋\n\"quoted\"",
		Metadata: map[string]any{"model": "x", "tokens": 12, "nested": map[string]any{"ok": true, "list": []any{1.5, "a"}}},
		Refs:     []string{ref.ID},
	}
	n, err := st.CreateNode(ctx, in, 0)
	if err != nil {
		t.Fatalf("CreateNode = %v", err)
	}
	wantMeta := map[string]any{"model": "x", "tokens": float64(12), "nested": map[string]any{"ok": true, "list": []any{1.5, "a"}}}
	if n.ID != in.ID || n.SessionID != s.ID || n.Owner != "alice" || n.Role != in.Role || n.Content != in.Content ||
		!reflect.DeepEqual(n.Metadata, wantMeta) || !slices.Equal(n.Refs, in.Refs) || n.Version != 1 || n.Seq < 1 {
		t.Errorf("CreateNode = %+v, want the input with version 1, JSON-typed metadata %v", n, wantMeta)
	}
	if n.CreatedAt.Before(before) || !n.CreatedAt.Equal(n.UpdatedAt) || n.CreatedAt.Location() != time.UTC {
		t.Errorf("CreateNode timestamps = %v, %v; want now in UTC, equal", n.CreatedAt, n.UpdatedAt)
	}
	if got, ok := getNode(t, st, n.ID); !ok || !sameNode(got, n) {
		t.Errorf("GetNodes = %+v, want %+v", got, n)
	}
	_, err = st.CreateNode(ctx, session.Node{ID: in.ID, SessionID: s.ID, Owner: "alice", Role: session.RoleUser, Content: "again"}, 0)
	wantErr(t, "CreateNode(taken ID)", err, session.ErrExists)

	plain := mustNode(t, st, s, "plain")
	if plain.Metadata != nil || plain.Refs != nil {
		t.Errorf("CreateNode without metadata and refs = %+v, want nil Metadata and Refs", plain)
	}
	if got := getSession(t, st, s); got.Version != 3 || got.UpdatedAt.Before(n.UpdatedAt) {
		t.Errorf("session after two nodes = %+v, want version 3 and UpdatedAt >= %v", got, n.UpdatedAt)
	}
	_, err = st.CreateNode(ctx, session.Node{SessionID: "s_missing", Owner: "alice", Role: session.RoleUser, Content: "x"}, 0)
	wantErr(t, "CreateNode(missing session)", err, session.ErrNotFound)
}

func testNodeOrder(t *testing.T, st session.Store) {
	s := mustSession(t, st, "alice", "a")
	if l := nodeIDs(t, st, s); l.NodeIDs == nil || len(l.NodeIDs) != 0 || l.Version != 1 {
		t.Errorf("node list of a new session = %+v, want empty (non-nil) at version 1", l)
	}
	var want []string
	var lastSeq int64
	for i := range 5 {
		n := mustNode(t, st, s, fmt.Sprint(i))
		if n.Seq <= lastSeq {
			t.Errorf("node %d Seq = %d, want > %d", i, n.Seq, lastSeq)
		}
		lastSeq = n.Seq
		want = append(want, n.ID)
	}
	l := nodeIDs(t, st, s)
	if !slices.Equal(l.NodeIDs, want) || l.SessionID != s.ID || l.Version != 6 {
		t.Errorf("SessionNodeIDs = %+v, want %q at version 6", l, want)
	}
	if _, err := st.DeleteNode(t.Context(), "alice", want[2], 0); err != nil {
		t.Fatal(err)
	}
	want = slices.Delete(want, 2, 3)
	want = append(want, mustNode(t, st, s, "last").ID)
	if l := nodeIDs(t, st, s); !slices.Equal(l.NodeIDs, want) || l.Version != 8 {
		t.Errorf("SessionNodeIDs after delete and append = %+v, want %q at version 8", l, want)
	}
}

func testUpdateNode(t *testing.T, st session.Store) {
	ctx := t.Context()
	s := mustSession(t, st, "alice", "a")
	other := mustNode(t, st, s, "other")
	n := mustNode(t, st, s, "original")

	content := "edited"
	up, err := st.UpdateNode(ctx, "alice", n.ID, 1, session.NodeUpdate{Content: &content})
	if err != nil || up.Content != content || up.Version != 2 || up.UpdatedAt.Before(n.UpdatedAt) ||
		!up.CreatedAt.Equal(n.CreatedAt) || up.ShortID != n.ShortID || up.Seq != n.Seq {
		t.Fatalf("UpdateNode(if 1) = %+v, %v; want content %q at version 2", up, err, content)
	}
	if got, _ := getNode(t, st, n.ID); !sameNode(got, up) {
		t.Errorf("GetNodes after update = %+v, want %+v", got, up)
	}
	sessBefore := getSession(t, st, s)

	stale := "stale write"
	_, err = st.UpdateNode(ctx, "alice", n.ID, 1, session.NodeUpdate{Content: &stale})
	wantMismatch(t, "UpdateNode(stale if 1)", err, "node", n.ID, 1, 2)
	_, err = st.UpdateNode(ctx, "alice", n.ID, 7, session.NodeUpdate{Content: &stale})
	wantErr(t, "UpdateNode(future if 7)", err, session.ErrVersionMismatch)
	if got, _ := getNode(t, st, n.ID); !sameNode(got, up) {
		t.Errorf("node after stale updates = %+v, want unchanged %+v", got, up)
	}
	if got := getSession(t, st, s); !sameSession(got, sessBefore) {
		t.Errorf("session after stale updates = %+v, want unchanged %+v", got, sessBefore)
	}

	role, refs := session.RoleNote, []string{other.ID}
	meta := map[string]any{"k": "v"}
	up2, err := st.UpdateNode(ctx, "alice", n.ID, 0, session.NodeUpdate{Role: &role, Refs: &refs, Metadata: meta})
	if err != nil || up2.Version != 3 || up2.Role != role || !slices.Equal(up2.Refs, refs) || up2.Metadata["k"] != "v" || up2.Content != content {
		t.Fatalf("UpdateNode(unconditional role, refs, metadata) = %+v, %v", up2, err)
	}
	if got := getSession(t, st, s); got.Version != sessBefore.Version+1 {
		t.Errorf("session version after a node update = %d, want %d", got.Version, sessBefore.Version+1)
	}
	noRefs := []string{}
	up3, err := st.UpdateNode(ctx, "alice", n.ID, 3, session.NodeUpdate{Refs: &noRefs, Metadata: map[string]any{}})
	if err != nil || up3.Refs != nil || up3.Metadata != nil || up3.Version != 4 {
		t.Errorf("UpdateNode(clear refs and metadata) = %+v, %v; want nil refs and metadata at version 4", up3, err)
	}

	tests := []struct {
		name      string
		ifVersion int64
		upd       session.NodeUpdate
		field     string
	}{
		{name: "empty", upd: session.NodeUpdate{}, field: "update"},
		{name: "negative version", ifVersion: -1, upd: session.NodeUpdate{Content: &content}, field: "if_version"},
		{name: "big content", upd: session.NodeUpdate{Content: ptr(strings.Repeat("x", session.MaxContentBytes+1))}, field: "content"},
		{name: "bad role", upd: session.NodeUpdate{Role: ptr("root")}, field: "role"},
		{name: "missing ref", upd: session.NodeUpdate{Refs: &[]string{"nd_missing"}}, field: "refs"},
		{name: "self ref", upd: session.NodeUpdate{Refs: &[]string{n.ID}}, field: "refs"},
		{name: "big metadata", upd: session.NodeUpdate{Metadata: map[string]any{"k": strings.Repeat("x", session.MaxMetadataBytes)}}, field: "metadata"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := st.UpdateNode(ctx, "alice", n.ID, tt.ifVersion, tt.upd)
			wantInvalid(t, "UpdateNode("+tt.name+")", err, tt.field, "")
			if got, _ := getNode(t, st, n.ID); !sameNode(got, up3) {
				t.Errorf("node after invalid update = %+v, want unchanged %+v", got, up3)
			}
		})
	}
	_, err = st.UpdateNode(ctx, "alice", "nd_missing", 0, session.NodeUpdate{Content: &content})
	wantErr(t, "UpdateNode(missing)", err, session.ErrNotFound)
}

func ptr[T any](v T) *T { return &v }

func testDeleteNode(t *testing.T, st session.Store) {
	ctx := t.Context()
	s := mustSession(t, st, "alice", "a")
	keep := mustNode(t, st, s, "keep")
	n := mustNode(t, st, s, "doomed")
	content := "v2"
	n, err := st.UpdateNode(ctx, "alice", n.ID, 0, session.NodeUpdate{Content: &content})
	if err != nil {
		t.Fatal(err)
	}
	_, err = st.DeleteNode(ctx, "alice", n.ID, 1)
	wantMismatch(t, "DeleteNode(stale if 1)", err, "node", n.ID, 1, 2)
	if _, ok := getNode(t, st, n.ID); !ok {
		t.Fatalf("node gone after a stale delete")
	}
	_, err = st.DeleteNode(ctx, "alice", n.ID, -3)
	wantInvalid(t, "DeleteNode(if -3)", err, "if_version", "")

	del, err := st.DeleteNode(ctx, "alice", n.ID, 2)
	if err != nil || !sameNode(del, n) {
		t.Fatalf("DeleteNode(if 2) = %+v, %v; want %+v", del, err, n)
	}
	if _, ok := getNode(t, st, n.ID); ok {
		t.Errorf("GetNodes finds the deleted node")
	}
	if l := nodeIDs(t, st, s); !slices.Equal(l.NodeIDs, []string{keep.ID}) {
		t.Errorf("node list after delete = %q, want [%q]", l.NodeIDs, keep.ID)
	}
	_, err = st.ResolveShortID(ctx, "alice", n.ShortID)
	wantErr(t, "ResolveShortID(deleted)", err, session.ErrNotFound)
	_, err = st.DeleteNode(ctx, "alice", n.ID, 0)
	wantErr(t, "DeleteNode(again)", err, session.ErrNotFound)
}

func testDeleteSession(t *testing.T, st session.Store) {
	ctx := t.Context()
	s := mustSession(t, st, "alice", "doomed")
	keep := mustSession(t, st, "alice", "keep")
	n1 := mustNode(t, st, s, "one")
	n2 := mustNode(t, st, s, "two")
	referrer := mustNode(t, st, keep, "points into the doomed session", n1.ID)

	del, err := st.DeleteSession(ctx, "alice", s.ID, 0)
	if err != nil || len(del) != 2 || !sameNode(del[0], n1) || !sameNode(del[1], n2) {
		t.Fatalf("DeleteSession = %+v, %v; want its two nodes in order", del, err)
	}
	_, err = st.GetSession(ctx, "alice", s.ID)
	wantErr(t, "GetSession(deleted)", err, session.ErrNotFound)
	m, err := st.GetNodes(ctx, []string{n1.ID, n2.ID})
	if err != nil || len(m) != 0 {
		t.Errorf("GetNodes(deleted session's nodes) = %v, %v; want none", m, err)
	}
	_, err = st.ResolveShortID(ctx, "alice", n2.ShortID)
	wantErr(t, "ResolveShortID(node of deleted session)", err, session.ErrNotFound)
	if lists, err := st.SessionNodeIDs(ctx, []session.SessionKey{s.Key()}); err != nil || len(lists) != 0 {
		t.Errorf("SessionNodeIDs(deleted) = %v, %v; want none", lists, err)
	}
	if got, ok := getNode(t, st, referrer.ID); !ok || !sameNode(got, referrer) {
		t.Errorf("referring node in another session = %+v, %v; want it unchanged, with a dangling ref", got, ok)
	}
	_, err = st.DeleteSession(ctx, "alice", s.ID, 0)
	wantErr(t, "DeleteSession(again)", err, session.ErrNotFound)
	if del, err := st.DeleteSession(ctx, "alice", keep.ID, 0); err != nil || len(del) != 1 {
		t.Errorf("DeleteSession(keep) = %v, %v; want one node", del, err)
	}
}

func testBatch(t *testing.T, st session.Store) {
	ctx := t.Context()
	a := mustSession(t, st, "alice", "a")
	b := mustSession(t, st, "bob", "b")
	empty := mustSession(t, st, "bob", "empty")
	var ids []string
	for i := range 3 {
		ids = append(ids, mustNode(t, st, a, fmt.Sprint("a", i)).ID, mustNode(t, st, b, fmt.Sprint("b", i)).ID)
	}
	nodes, err := st.GetNodes(ctx, append([]string{"nd_missing", ids[0]}, ids...))
	if err != nil || len(nodes) != len(ids) {
		t.Fatalf("GetNodes(%d ids + missing + duplicate) = %d nodes, %v; want %d", len(ids), len(nodes), err, len(ids))
	}
	for _, id := range ids {
		if nodes[id].ID != id {
			t.Errorf("GetNodes: %q maps to %+v", id, nodes[id])
		}
	}
	if m, err := st.GetNodes(ctx, nil); err != nil || len(m) != 0 {
		t.Errorf("GetNodes(nil) = %v, %v; want empty", m, err)
	}
	missing := session.SessionKey{Owner: "alice", ID: "s_missing"}
	bobsA := session.SessionKey{Owner: "bob", ID: a.ID} // alice's ID, bob's key: no such session
	sess, err := st.GetSessions(ctx, []session.SessionKey{a.Key(), missing, b.Key(), a.Key(), bobsA})
	if err != nil || len(sess) != 2 || !sameSession(sess[a.Key()], getSession(t, st, a)) || sess[b.Key()].Owner != "bob" {
		t.Errorf("GetSessions = %v, %v; want alice's and bob's", sess, err)
	}
	if m, err := st.GetSessions(ctx, []session.SessionKey{}); err != nil || len(m) != 0 {
		t.Errorf("GetSessions(empty) = %v, %v; want empty", m, err)
	}
	lists, err := st.SessionNodeIDs(ctx, []session.SessionKey{a.Key(), b.Key(), empty.Key(), missing, bobsA})
	if err != nil || len(lists) != 3 || len(lists[a.Key()].NodeIDs) != 3 || len(lists[b.Key()].NodeIDs) != 3 ||
		lists[empty.Key()].NodeIDs == nil || len(lists[empty.Key()].NodeIDs) != 0 || lists[a.Key()].Version != 4 ||
		lists[a.Key()].Owner != "alice" || lists[a.Key()].SessionID != a.ID {
		t.Errorf("SessionNodeIDs = %+v, %v; want 3, 3 and 0 nodes, missing absent", lists, err)
	}
	// A batch larger than typical bind-parameter limits.
	many := make([]string, 5000)
	for i := range many {
		many[i] = fmt.Sprintf("nd_x%d", i)
	}
	many = append(many, ids[1])
	if m, err := st.GetNodes(ctx, many); err != nil || len(m) != 1 {
		t.Errorf("GetNodes(5001 ids) = %d nodes, %v; want 1", len(m), err)
	}
}

func testValidation(t *testing.T, st session.Store) {
	ctx := t.Context()
	s := mustSession(t, st, "alice", "a")
	tooMany := make([]string, session.MaxRefs+1)
	for i := range tooMany {
		tooMany[i] = fmt.Sprintf("nd_%d", i)
	}
	base := func() session.Node {
		return session.Node{SessionID: s.ID, Owner: "alice", Role: session.RoleUser, Content: "x"}
	}
	tests := []struct {
		name    string
		mutate  func(*session.Node)
		field   string
		mention string
	}{
		{name: "oversized content", mutate: func(n *session.Node) { n.Content = strings.Repeat("x", session.MaxContentBytes+1) }, field: "content"},
		{name: "oversized metadata", mutate: func(n *session.Node) { n.Metadata = map[string]any{"k": strings.Repeat("x", session.MaxMetadataBytes)} }, field: "metadata"},
		{name: "too many refs", mutate: func(n *session.Node) { n.Refs = tooMany }, field: "refs"},
		{name: "bad role", mutate: func(n *session.Node) { n.Role = "wizard" }, field: "role", mention: "wizard"},
		{name: "missing ref", mutate: func(n *session.Node) { n.Refs = []string{"nd_nope"} }, field: "refs", mention: "nd_nope"},
		{name: "bad id", mutate: func(n *session.Node) { n.ID = "../x" }, field: "id"},
		{name: "no owner", mutate: func(n *session.Node) { n.Owner = "" }, field: "owner"},
		{name: "NUL content", mutate: func(n *session.Node) { n.Content = "\x00" }, field: "content"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := base()
			tt.mutate(&n)
			_, err := st.CreateNode(ctx, n, 0)
			wantInvalid(t, "CreateNode("+tt.name+")", err, tt.field, tt.mention)
		})
	}
	_, err := st.CreateSession(ctx, session.Session{Owner: "alice", Title: strings.Repeat("t", session.MaxTitle+1)})
	wantInvalid(t, "CreateSession(long title)", err, "title", "")
	_, err = st.CreateSession(ctx, session.Session{Title: "no owner"})
	wantInvalid(t, "CreateSession(no owner)", err, "owner", "")

	// Nothing was written: no nodes, session untouched, no short ID used up.
	if l := nodeIDs(t, st, s); len(l.NodeIDs) != 0 || l.Version != 1 {
		t.Errorf("node list after invalid creates = %+v, want empty at version 1", l)
	}
	if got := getSession(t, st, s); !sameSession(got, s) {
		t.Errorf("session after invalid creates = %+v, want %+v", got, s)
	}
	if list, err := st.ListSessions(ctx, "alice", 0); err != nil || len(list) != 1 {
		t.Errorf("ListSessions after invalid creates = %v, %v; want one session", list, err)
	}
	if n := mustNode(t, st, s, "first valid"); n.ShortID != "n1" {
		t.Errorf("first valid node short ID = %q, want n1 (failed creates must not use up short IDs)", n.ShortID)
	}
}

func testConcurrentCreateNode(t *testing.T, st session.Store) {
	const workers, perWorker = 8, 5
	s1 := mustSession(t, st, "alice", "one")
	s2 := mustSession(t, st, "alice", "two")
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex // guards nodes
		nodes []session.Node
		errs  = make(chan error, workers*perWorker)
	)
	for w := range workers {
		wg.Go(func() {
			s := s1
			if w%2 == 1 {
				s = s2
			}
			for i := range perWorker {
				n, err := st.CreateNode(t.Context(), session.Node{SessionID: s.ID, Owner: "alice", Role: session.RoleUser, Content: fmt.Sprint(w, "/", i)}, 0)
				if err != nil {
					errs <- err
					continue
				}
				mu.Lock()
				nodes = append(nodes, n)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("concurrent CreateNode = %v", err)
	}
	shortIDs := map[string]bool{}
	seqs := map[string]bool{}
	for _, n := range nodes {
		if shortIDs[n.ShortID] {
			t.Errorf("short ID %q assigned twice", n.ShortID)
		}
		shortIDs[n.ShortID] = true
		key := fmt.Sprint(n.SessionID, "/", n.Seq)
		if seqs[key] {
			t.Errorf("seq %s assigned twice", key)
		}
		seqs[key] = true
	}
	for i := 1; i <= workers*perWorker; i++ {
		if !shortIDs[session.FormatShortID(int64(i))] {
			t.Errorf("short ID n%d missing; want n1..n%d without gaps", i, workers*perWorker)
		}
	}
	total := len(nodeIDs(t, st, s1).NodeIDs) + len(nodeIDs(t, st, s2).NodeIDs)
	if total != workers*perWorker {
		t.Errorf("node lists hold %d nodes, want %d", total, workers*perWorker)
	}
}

// testNodeLimit: concurrent creates with a maxNodes store exactly that
// many nodes in the session; the rest get a *LimitError and write nothing
// (the session's version counts only the stored ones). Other sessions and
// a zero maxNodes are not limited.
func testNodeLimit(t *testing.T, st session.Store) {
	ctx := t.Context()
	const limit, workers = 3, 8
	s := mustSession(t, st, "alice", "full")
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			_, err := st.CreateNode(ctx, session.Node{SessionID: s.ID, Owner: "alice", Role: session.RoleUser, Content: fmt.Sprint(w)}, limit)
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	created, limited := 0, 0
	for err := range errs {
		var le *session.LimitError
		switch {
		case err == nil:
			created++
		case errors.As(err, &le) && errors.Is(err, session.ErrLimit) && le.Limit == limit && le.ID == s.ID:
			limited++
		default:
			t.Errorf("CreateNode past the limit = %v, want a *LimitError", err)
		}
	}
	lists, err := st.SessionNodeIDs(ctx, []session.SessionKey{s.Key()})
	if err != nil {
		t.Fatal(err)
	}
	l := lists[s.Key()]
	if created != limit || limited != workers-limit || len(l.NodeIDs) != limit || l.Version != int64(1+limit) {
		t.Errorf("%d concurrent creates with limit %d: %d created, %d limited, %d stored at session version %d; want %d, %d, %d, %d",
			workers, limit, created, limited, len(l.NodeIDs), l.Version, limit, workers-limit, limit, 1+limit)
	}
	if _, err := st.CreateNode(ctx, session.Node{SessionID: s.ID, Owner: "alice", Role: session.RoleUser, Content: "unlimited"}, 0); err != nil {
		t.Errorf("CreateNode with maxNodes 0 = %v, want no limit", err)
	}
	other := mustSession(t, st, "alice", "other")
	if _, err := st.CreateNode(ctx, session.Node{SessionID: other.ID, Owner: "alice", Role: session.RoleUser, Content: "x"}, limit); err != nil {
		t.Errorf("CreateNode in another session = %v", err)
	}
}

func testRecentSessions(t *testing.T, st session.Store) {
	ctx := t.Context()
	a := mustSession(t, st, "alice", "a")
	b := mustSession(t, st, "bob", "b")
	c := mustSession(t, st, "alice", "c")
	mustNode(t, st, a, "touch a")
	ids := func(ss []session.Session) []string {
		var out []string
		for _, s := range ss {
			out = append(out, s.ID)
		}
		return out
	}
	recent, err := st.RecentSessions(ctx, 10)
	if want := []string{a.ID, c.ID, b.ID}; err != nil || !slices.Equal(ids(recent), want) {
		t.Errorf("RecentSessions(10) = %q, %v; want %q", ids(recent), err, want)
	}
	recent, err = st.RecentSessions(ctx, 2)
	if want := []string{a.ID, c.ID}; err != nil || !slices.Equal(ids(recent), want) {
		t.Errorf("RecentSessions(2) = %q, %v; want %q", ids(recent), err, want)
	}
	if _, err := st.UpdateSession(ctx, "bob", b.ID, 0, "renamed"); err != nil {
		t.Fatal(err)
	}
	recent, err = st.RecentSessions(ctx, 0)
	if want := []string{b.ID, a.ID, c.ID}; err != nil || !slices.Equal(ids(recent), want) {
		t.Errorf("RecentSessions(0) after renaming b = %q, %v; want %q", ids(recent), err, want)
	}
	list, err := st.ListSessions(ctx, "alice", 1)
	if want := []string{a.ID}; err != nil || !slices.Equal(ids(list), want) {
		t.Errorf("ListSessions(alice, 1) = %q, %v; want %q", ids(list), err, want)
	}
	if list, err := st.ListSessions(ctx, "nobody", 5); err != nil || len(list) != 0 {
		t.Errorf("ListSessions(nobody) = %v, %v; want none", list, err)
	}
}

// testSessionVersions: UpdateSession and DeleteSession with an expected
// version write only when it is current; a stale one changes nothing and
// names the current version.
func testSessionVersions(t *testing.T, st session.Store) {
	ctx := t.Context()
	s := mustSession(t, st, "alice", "v1")
	mustNode(t, st, s, "bumps the session to version 2")
	cur := getSession(t, st, s)
	if cur.Version != 2 {
		t.Fatalf("session after a node create: version %d, want 2", cur.Version)
	}
	_, err := st.UpdateSession(ctx, "alice", s.ID, 1, "stale")
	wantMismatch(t, "UpdateSession(stale version 1)", err, "session", s.ID, 1, 2)
	if got := getSession(t, st, s); !sameSession(got, cur) {
		t.Fatalf("session after a stale update = %+v, want unchanged %+v", got, cur)
	}
	up, err := st.UpdateSession(ctx, "alice", s.ID, 2, "v3")
	if err != nil || up.Title != "v3" || up.Version != 3 {
		t.Fatalf("UpdateSession(version 2) = %+v, %v; want title v3, version 3", up, err)
	}
	_, err = st.UpdateSession(ctx, "alice", s.ID, -1, "x")
	wantInvalid(t, "UpdateSession(version -1)", err, "if_version", "")
	_, err = st.UpdateSession(ctx, "bob", s.ID, 3, "mine")
	wantErr(t, "UpdateSession(bob, alice's, current version)", err, session.ErrNotFound)
	_, err = st.UpdateSession(ctx, "alice", "s_missing", 1, "x")
	wantErr(t, "UpdateSession(missing, version 1)", err, session.ErrNotFound)

	_, err = st.DeleteSession(ctx, "alice", s.ID, 2)
	wantMismatch(t, "DeleteSession(stale version 2)", err, "session", s.ID, 2, 3)
	if got := getSession(t, st, s); !sameSession(got, up) {
		t.Fatalf("session after a stale delete = %+v, want unchanged %+v", got, up)
	}
	if l := nodeIDs(t, st, s); len(l.NodeIDs) != 1 {
		t.Fatalf("nodes after a stale delete = %q, want the one node", l.NodeIDs)
	}
	del, err := st.DeleteSession(ctx, "alice", s.ID, 3)
	if err != nil || len(del) != 1 {
		t.Fatalf("DeleteSession(version 3) = %+v, %v; want its one node", del, err)
	}
	_, err = st.GetSession(ctx, "alice", s.ID)
	wantErr(t, "GetSession(deleted)", err, session.ErrNotFound)
}

// testPing: Ping answers nil on an open store, an error once its context
// is done, and an error naming the store after Close.
func testPing(t *testing.T, st session.Store) {
	if err := st.Ping(t.Context()); err != nil {
		t.Fatalf("Ping = %v, want nil", err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := st.Ping(ctx); err == nil {
		t.Errorf("Ping(cancelled context) = nil, want an error")
	}
	if err := st.Close(); err != nil {
		t.Fatalf("Close = %v", err)
	}
	err := st.Ping(t.Context())
	if err == nil || !strings.Contains(err.Error(), "ping database") {
		t.Errorf("Ping after Close = %v, want an error naming the database ping", err)
	}
}
