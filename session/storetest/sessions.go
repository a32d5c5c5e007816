package storetest

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tiercache/tiercache/session"
)

// The contract cases about sessions: their life cycle, owners, versions and listing. Run
// lists every case.

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
