package session_test

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/session"
)

// TestSameSessionIDTwoOwners: two owners each have a session "trip" on one
// Redis and one database. Cache entries (read by a second instance from
// Redis), node lists, events and the active-session count never cross
// between them; the owner name needs escaping in Redis keys.
func TestSameSessionIDTwoOwners(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t)
	ctx := t.Context()
	st := openStore(t)
	const ns = "own"
	w := newService(t, st, rs, ns)
	const alice, bob = "alice", "bob {x}%:1" // braces, '%' and ':' in an owner name
	subscribe := func(svc *session.Service, owner string) <-chan session.Event {
		t.Helper()
		sctx, cancel := context.WithCancel(ctx)
		t.Cleanup(cancel)
		ch, err := svc.Subscribe(sctx, owner, "trip", "")
		if err != nil {
			t.Fatalf("Subscribe(%q, trip) = %v", owner, err)
		}
		return ch
	}
	for _, owner := range []string{alice, bob} {
		if _, err := w.CreateSession(ctx, owner, "trip", owner+"'s trip"); err != nil {
			t.Fatalf("CreateSession(%q, trip) = %v", owner, err)
		}
	}
	if _, err := w.CreateSession(ctx, bob, "trip", "again"); !errors.Is(err, session.ErrExists) {
		t.Errorf("CreateSession(bob, trip) again = %v, want ErrExists", err)
	}
	// Subscribers on another instance: events travel through Redis streams.
	r := newService(t, st, rs, ns)
	aEvents, bEvents := subscribe(r, alice), subscribe(r, bob)

	a1, err := w.Chat(ctx, alice, "trip", "", "alice one", nil)
	if err != nil {
		t.Fatal(err)
	}
	b1, err := w.Chat(ctx, bob, "trip", "", "bob one", nil)
	if err != nil {
		t.Fatal(err)
	}
	a2, err := w.Chat(ctx, alice, "trip", "", "alice two, see @n1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(a2.Node.Refs, []string{a1.Node.ID}) {
		t.Errorf("alice's @n1 resolved to %v, want her own %s", a2.Node.Refs, a1.Node.ID)
	}
	for _, want := range []session.Node{a1.Node, a2.Node} {
		if ev := recv(t, aEvents); ev.NodeID != want.ID || ev.SessionID != "trip" {
			t.Fatalf("alice's event = %+v, want node.created of %s (bob's %s must not show)", ev, want.ID, b1.Node.ID)
		}
	}
	if ev := recv(t, bEvents); ev.NodeID != b1.Node.ID {
		t.Fatalf("bob's first event = %+v, want node.created of %s", ev, b1.Node.ID)
	}

	// The reading instance has an empty L1: it reads both owners' entries
	// from Redis, each under its own key.
	for _, tt := range []struct {
		owner string
		want  []string
	}{{alice, []string{a1.Node.ID, a2.Node.ID}}, {bob, []string{b1.Node.ID}}} {
		c, err := r.Context(ctx, tt.owner, "trip")
		if err != nil {
			t.Fatalf("Context(%q, trip) = %v", tt.owner, err)
		}
		var got []string
		for _, n := range c.Nodes {
			got = append(got, n.ID)
		}
		if !slices.Equal(got, tt.want) || c.Session.Owner != tt.owner || c.Session.Title != tt.owner+"'s trip" {
			t.Errorf("Context(%q, trip) = session %+v, nodes %q; want the owner's own, nodes %q", tt.owner, c.Session, got, tt.want)
		}
	}
	rdb := rs.Client(t)
	for _, key := range []string{
		ns + ":{sess:alice:trip}", ns + ":{list:alice:trip}",
		ns + ":{sess:bob %7Bx%7D%25:1:trip}", ns + ":{list:bob %7Bx%7D%25:1:trip}",
		ns + ":ev:{alice:trip}", ns + ":ev:{bob %7Bx%7D%25:1:trip}",
	} {
		if n, err := rdb.Exists(ctx, key).Result(); err != nil || n != 1 {
			t.Errorf("Redis key %q: exists %d, %v; want 1", key, n, err)
		}
	}
	if n := w.Stats().ActiveSessions; n != 2 {
		t.Errorf("ActiveSessions = %d, want 2 (one trip per owner)", n)
	}
	if res, err := r.Warm(ctx, bob, []string{"trip"}); err != nil || res.Sessions != 1 || res.Nodes != 1 {
		t.Errorf("Warm(bob, trip) = %+v, %v; want 1 session with 1 node", res, err)
	}
	if _, err := r.Warm(ctx, "", []string{"trip"}); !errors.Is(err, session.ErrInvalid) {
		t.Errorf("Warm(no owner) = %v, want ErrInvalid", err)
	}

	// Updating and deleting bob's trip leaves alice's alone.
	if _, err := w.UpdateSession(ctx, bob, "trip", 0, "bob renamed"); err != nil {
		t.Fatal(err)
	}
	if err := w.DeleteSession(ctx, bob, "trip", 0); err != nil {
		t.Fatal(err)
	}
	if ev := recv(t, bEvents); ev.Type != session.EventSessionDeleted {
		t.Fatalf("bob's next event = %+v, want session.deleted", ev)
	}
	a3, err := w.Chat(ctx, alice, "trip", "", "alice three", nil)
	if err != nil {
		t.Fatal(err)
	}
	if ev := recv(t, aEvents); ev.NodeID != a3.Node.ID {
		t.Fatalf("alice's next event = %+v, want node.created of %s (not bob's session.deleted)", ev, a3.Node.ID)
	}
	for _, svc := range []*session.Service{w, r} {
		if _, err := svc.GetSession(ctx, bob, "trip"); !errors.Is(err, session.ErrNotFound) {
			t.Errorf("GetSession(bob, deleted trip) = %v, want ErrNotFound", err)
		}
		if c, err := svc.Context(ctx, alice, "trip"); err != nil || c.Session.Title != "alice's trip" || len(c.Nodes) != 3 {
			t.Errorf("Context(alice, trip) after bob's delete = %+v, %v; want her 3 nodes", c, err)
		}
	}
}
