package storetest

import (
	"cmp"
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tiercache/tiercache/session"
)

// LegacySession is a session row as a database of the first schema holds
// it, with the columns a store keeps beside the [session.Session] fields.
type LegacySession struct {
	session.Session
	NextSeq  int64 // the last Seq given to a node of the session
	Activity int64 // the store-wide tie-breaker of equal UpdatedAt
}

// Legacy is data written under the first schema, when session IDs were
// unique across owners. A store's [Upgrade.Seed] writes it with that schema
// (its migration 0001 alone); [RunUpgrade] opens the store, which migrates
// it, and calls [CheckUpgraded].
type Legacy struct {
	Sessions []LegacySession
	Nodes    []session.Node // ShortID "n12" is stored as its number
	// LastShort is each owner's newest short-ID number (owner_short_ids).
	LastShort map[string]int64
}

// Upgrade is what [RunUpgrade] needs of a store to test its migrations on
// a database the first release left behind.
type Upgrade struct {
	// Seed creates a database with the store's migration 0001 alone applied
	// and recorded, as the first release left it, writes old into it, and
	// returns the name Open takes. It registers the database's removal with
	// tb.Cleanup.
	Seed func(tb testing.TB, old Legacy) string
	// Open opens the store on the database name, migrating it.
	Open func(ctx context.Context, name string) (session.Store, error)
	// QueryRow runs query on the database name with a connection of its
	// own, not the store's, and scans its one row into dest.
	QueryRow func(tb testing.TB, name, query string, dest ...any)
	// Check, when set, runs the store's own checks of the upgraded database
	// while st is open on it.
	Check func(t *testing.T, st session.Store)
	// Migrations is the number of the store's embedded migrations.
	Migrations int
	// ForeignKey is how the database's error for a violated foreign key
	// names it ("foreign key", "FOREIGN KEY").
	ForeignKey string
}

// RunUpgrade runs the upgrade tests against u's store: a database of the
// first schema, with data, is migrated by Open and serves all of it, also
// once reopened; data the new keys cannot hold fails the migration with an
// error naming it, and the database stays as it was. Subtests run in
// parallel.
func RunUpgrade(t *testing.T, u Upgrade) {
	t.Run("KeepsData", func(t *testing.T) {
		t.Parallel()
		testUpgradeKeepsData(t, u)
	})
	t.Run("FailsWhole", func(t *testing.T) {
		t.Parallel()
		testUpgradeFailsWhole(t, u)
	})
}

// openUpgraded opens u's store on the database name and closes it when the
// test ends.
func openUpgraded(t *testing.T, u Upgrade, name string) session.Store {
	t.Helper()
	st, err := u.Open(t.Context(), name)
	if err != nil {
		t.Fatalf("Open = %v", err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func testUpgradeKeepsData(t *testing.T, u Upgrade) {
	old := LegacyFixture()
	name := u.Seed(t, old)
	st := openUpgraded(t, u, name)
	CheckUpgraded(t, st, old)
	var versions int
	u.QueryRow(t, name, `SELECT count(*) FROM schema_migrations`, &versions)
	if versions != u.Migrations {
		t.Errorf("schema_migrations rows = %d; want %d", versions, u.Migrations)
	}
	if u.Check != nil {
		u.Check(t, st)
	}

	// Reopening applies nothing more and finds everything.
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	st = openUpgraded(t, u, name)
	u.QueryRow(t, name, `SELECT count(*) FROM schema_migrations`, &versions)
	if versions != u.Migrations {
		t.Errorf("schema_migrations rows after reopening = %d; want %d", versions, u.Migrations)
	}
	if list, err := st.ListSessions(t.Context(), "alice", 0); err != nil || len(list) != 2 {
		t.Errorf("ListSessions(alice) after reopening = %+v, %v; want 2 sessions", list, err)
	}
}

func testUpgradeFailsWhole(t *testing.T, u Upgrade) {
	old := LegacyFixture()
	old.Nodes[3].SessionID, old.Nodes[3].Seq = "trip", 3 // bob's node in alice's session
	name := u.Seed(t, old)
	st, err := u.Open(t.Context(), name)
	if err == nil {
		st.Close()
		t.Fatal("Open succeeded on a node whose owner is not its session's, want the migration to fail")
	}
	if !strings.Contains(err.Error(), "0002_") || !strings.Contains(err.Error(), u.ForeignKey) {
		t.Errorf("Open error = %v, want it to name migration 0002 and the foreign key", err)
	}
	var versions, sessions, nodes int
	u.QueryRow(t, name, `SELECT (SELECT count(*) FROM schema_migrations), (SELECT count(*) FROM sessions), (SELECT count(*) FROM nodes)`,
		&versions, &sessions, &nodes)
	if versions != 1 || sessions != len(old.Sessions) || nodes != len(old.Nodes) {
		t.Errorf("after the failed migration: %d versions, %d sessions, %d nodes; want 1, %d, %d", versions, sessions, nodes, len(old.Sessions), len(old.Nodes))
	}
}

// LegacyFixture returns the data CheckUpgraded expects: alice's sessions
// "trip" (two nodes, a third deleted: NextSeq 3, short ID n3 used up) and
// "lisbon" (one node referencing into "trip"), and bob's session "plans".
// Times are fixed, at microsecond precision.
func LegacyFixture() Legacy {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 123456000, time.UTC)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	sess := func(owner, id, title string, version, nextSeq, activity int64, created, updated int) LegacySession {
		return LegacySession{Session: session.Session{ID: id, Owner: owner, Title: title, Version: version,
			CreatedAt: at(created), UpdatedAt: at(updated)}, NextSeq: nextSeq, Activity: activity}
	}
	node := func(id, sessionID, owner, shortID string, seq int64, content string, meta map[string]any, refs []string, version int64, created, updated int) session.Node {
		return session.Node{ID: id, SessionID: sessionID, Owner: owner, ShortID: shortID, Seq: seq, Role: session.RoleUser,
			Content: content, Metadata: meta, Refs: refs, Version: version, CreatedAt: at(created), UpdatedAt: at(updated)}
	}
	return Legacy{
		Sessions: []LegacySession{
			sess("alice", "trip", "Trip budget", 6, 3, 5, 0, 40),
			sess("alice", "lisbon", "Lisbon", 2, 1, 4, 10, 30),
			sess("bob", "plans", "Plans", 2, 1, 3, 20, 25),
		},
		Nodes: []session.Node{
			node("nd_a1", "trip", "alice", "n1", 1, "Budget is 2000 EUR.", nil, nil, 2, 1, 35),
			node("nd_a2", "trip", "alice", "n2", 2, "héllo", map[string]any{"k": "v"}, []string{"nd_a1"}, 1, 2, 2),
			node("nd_a4", "lisbon", "alice", "n4", 1, "Within @n1.", nil, []string{"nd_a1"}, 1, 30, 30),
			node("nd_b1", "plans", "bob", "n1", 1, "bob's", nil, nil, 1, 25, 25),
		},
		LastShort: map[string]int64{"alice": 4, "bob": 1},
	}
}

// CheckUpgraded checks that st, opened on a database that held old (see
// [Legacy]) under the first schema and migrated since, serves all of it
// unchanged, continues each session's Seq and each owner's short IDs, and
// now keeps session IDs per owner.
func CheckUpgraded(t *testing.T, st session.Store, old Legacy) {
	t.Helper()
	ctx := t.Context()
	var keys []session.SessionKey
	for _, s := range old.Sessions {
		keys = append(keys, s.Key())
		if got, err := st.GetSession(ctx, s.Owner, s.ID); err != nil || !sameSession(got, s.Session) {
			t.Errorf("GetSession(%q, %q) after the upgrade = %+v, %v; want %+v", s.Owner, s.ID, got, err, s.Session)
		}
	}
	var ids []string
	for _, n := range old.Nodes {
		ids = append(ids, n.ID)
	}
	nodes, err := st.GetNodes(ctx, ids)
	if err != nil {
		t.Fatalf("GetNodes after the upgrade = %v", err)
	}
	for _, n := range old.Nodes {
		if got, ok := nodes[n.ID]; !ok || !sameNode(got, n) {
			t.Errorf("node %s after the upgrade = %+v (found %v), want %+v", n.ID, got, ok, n)
		}
		if got, err := st.ResolveShortID(ctx, n.Owner, n.ShortID); err != nil || got.ID != n.ID {
			t.Errorf("ResolveShortID(%q, %q) after the upgrade = %+v, %v; want %s", n.Owner, n.ShortID, got, err, n.ID)
		}
	}
	lists, err := st.SessionNodeIDs(ctx, keys)
	if err != nil {
		t.Fatalf("SessionNodeIDs after the upgrade = %v", err)
	}
	for _, s := range old.Sessions {
		var want []string
		for _, n := range old.Nodes {
			if n.SessionKey() == s.Key() {
				want = append(want, n.ID)
			}
		}
		if l := lists[s.Key()]; !slices.Equal(l.NodeIDs, want) || l.Version != s.Version || l.Owner != s.Owner || l.SessionID != s.ID {
			t.Errorf("node list of %+v after the upgrade = %+v, want %q at version %d", s.Key(), l, want, s.Version)
		}
	}
	// Lists keep their order: updated_at, then activity, descending.
	byOwner := map[string][]LegacySession{}
	for _, s := range old.Sessions {
		byOwner[s.Owner] = append(byOwner[s.Owner], s)
	}
	for owner, ss := range byOwner {
		slices.SortFunc(ss, func(a, b LegacySession) int {
			return cmp.Or(b.UpdatedAt.Compare(a.UpdatedAt), cmp.Compare(b.Activity, a.Activity))
		})
		list, err := st.ListSessions(ctx, owner, 0)
		if err != nil || len(list) != len(ss) {
			t.Fatalf("ListSessions(%q) after the upgrade = %+v, %v; want %d sessions", owner, list, err, len(ss))
		}
		for i := range ss {
			if list[i].ID != ss[i].ID {
				t.Errorf("ListSessions(%q)[%d] after the upgrade = %s, want %s", owner, i, list[i].ID, ss[i].ID)
			}
		}
	}

	// Sequences continue where they were.
	first := old.Sessions[0]
	n, err := st.CreateNode(ctx, session.Node{SessionID: first.ID, Owner: first.Owner, Role: session.RoleNote, Content: "after the upgrade"}, 0)
	if err != nil {
		t.Fatalf("CreateNode(%+v) after the upgrade = %v", first.Key(), err)
	}
	if wantShort := session.FormatShortID(old.LastShort[first.Owner] + 1); n.Seq != first.NextSeq+1 || n.ShortID != wantShort {
		t.Errorf("new node after the upgrade: seq %d, short ID %s; want seq %d, short ID %s", n.Seq, n.ShortID, first.NextSeq+1, wantShort)
	}

	// Session IDs are per owner now: another owner takes first's ID, and
	// the two sessions stay apart.
	other := "carol"
	for owner := range old.LastShort {
		if owner != first.Owner {
			other = owner
		}
	}
	twin, err := st.CreateSession(ctx, session.Session{ID: first.ID, Owner: other, Title: "twin"})
	if err != nil {
		t.Fatalf("CreateSession(%q as %q) after the upgrade = %v, want it created", first.ID, other, err)
	}
	tn := mustNode(t, st, twin, "twin's")
	if l := nodeIDs(t, st, twin); !slices.Equal(l.NodeIDs, []string{tn.ID}) {
		t.Errorf("twin's node list = %q, want [%s]", l.NodeIDs, tn.ID)
	}
	if _, err := st.DeleteSession(ctx, other, first.ID, 0); err != nil {
		t.Fatalf("DeleteSession(twin) = %v", err)
	}
	if l := nodeIDs(t, st, first.Session); len(l.NodeIDs) != len(lists[first.Key()].NodeIDs)+1 {
		t.Errorf("%+v after deleting the twin has %d nodes, want %d", first.Key(), len(l.NodeIDs), len(lists[first.Key()].NodeIDs)+1)
	}
}
