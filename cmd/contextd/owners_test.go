package main

import (
	"net/http"
	"slices"
	"testing"

	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/session"
)

// TestSameSessionIDTwoOwners: session IDs are unique per owner. Two API
// keys both create "trip" and chat in it; each context, session, list,
// @n1 reference and SSE stream shows only the owner's own, changes to one
// leave the other alone, and 409 comes only from the same owner reusing
// the ID. With Redis (streams) and without (in-memory rings), on each store.
func TestSameSessionIDTwoOwners(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t)
	for name, db := range stores(t) {
		for _, mode := range []string{"redis", "memory"} {
			t.Run(name+"/"+mode, func(t *testing.T) {
				t.Parallel()
				const alice, bob = "alice-key-123", "bob-key-4567"
				o := instanceOptions{Database: db(t), APIKeys: map[string]string{alice: "alice", bob: "bob"}}
				if mode == "redis" {
					o.Redis = rs
				}
				in := startInstance(t, o)
				for _, tt := range []struct{ key, owner string }{{alice, "alice"}, {bob, "bob"}} {
					var s session.Session
					r := must(t, in.URL, req{Method: "POST", Path: "/api/sessions", Key: tt.key, Body: map[string]any{"id": "trip", "title": tt.owner + "'s trip"}}, http.StatusCreated, &s)
					if s.ID != "trip" || s.Owner != tt.owner || s.Version != 1 || r.Header.Get("Location") != "/api/sessions/trip" {
						t.Errorf("%s creates trip = %+v, Location %q; want ID trip of %s", tt.owner, s, r.Header.Get("Location"), tt.owner)
					}
				}
				for _, key := range []string{alice, bob} {
					r := must(t, in.URL, req{Method: "POST", Path: "/api/sessions", Key: key, Body: map[string]any{"id": "trip"}}, http.StatusConflict, nil)
					if r.errCode(t) != "exists" {
						t.Errorf("same owner reusing trip: code %s, want exists", r.errCode(t))
					}
				}
				aEvents, _ := subscribe(t, in.URL, alice, "trip", "")
				bEvents, _ := subscribe(t, in.URL, bob, "trip", "")

				a1 := chat(t, in.URL, alice, "trip", "alice one").Node
				b1 := chat(t, in.URL, bob, "trip", "bob one").Node
				a2res := chat(t, in.URL, alice, "trip", "alice two, see @n1")
				a2 := a2res.Node
				if !slices.Equal(a2.Refs, []string{a1.ID}) {
					t.Errorf("alice's @n1 = %v, want her own %s", a2.Refs, a1.ID)
				}
				b2 := chat(t, in.URL, bob, "trip", "bob two, see @n1").Node
				if !slices.Equal(b2.Refs, []string{b1.ID}) {
					t.Errorf("bob's @n1 = %v, want his own %s", b2.Refs, b1.ID)
				}
				for _, want := range []string{a1.ID, a2.ID} {
					if ev := nextEvent(t, aEvents); ev.Type != session.EventNodeCreated || ev.Data.NodeID != want || ev.Data.Node.Owner != "alice" {
						t.Fatalf("alice's SSE event = %s %+v, want node.created of her %s", ev.Type, ev.Data, want)
					}
				}
				for _, want := range []string{b1.ID, b2.ID} {
					if ev := nextEvent(t, bEvents); ev.Type != session.EventNodeCreated || ev.Data.NodeID != want || ev.Data.Node.Owner != "bob" {
						t.Fatalf("bob's SSE event = %s %+v, want node.created of his %s", ev.Type, ev.Data, want)
					}
				}
				for _, tt := range []struct {
					key, owner string
					want       []string
				}{{alice, "alice", []string{a1.ID, a2.ID}}, {bob, "bob", []string{b1.ID, b2.ID}}} {
					c := getContext(t, in.URL, tt.key, "trip")
					var got []string
					for _, n := range append(c.Nodes, c.Refs...) {
						got = append(got, n.ID)
						if n.Owner != tt.owner {
							t.Errorf("%s's context holds %s of owner %s", tt.owner, n.ID, n.Owner)
						}
					}
					if !slices.Equal(got, tt.want) || c.Session.Owner != tt.owner || c.Session.Title != tt.owner+"'s trip" {
						t.Errorf("%s's context = session %+v, nodes %q; want %q", tt.owner, c.Session, got, tt.want)
					}
					var list struct{ Sessions []session.Session }
					must(t, in.URL, req{Method: "GET", Path: "/api/sessions", Key: tt.key}, http.StatusOK, &list)
					if len(list.Sessions) != 1 || list.Sessions[0].Owner != tt.owner {
						t.Errorf("%s's sessions = %+v, want only their trip", tt.owner, list.Sessions)
					}
				}

				// Bob renames and deletes his trip; alice's is untouched
				// and her stream sees none of it.
				var aBefore session.Session
				must(t, in.URL, req{Method: "GET", Path: "/api/sessions/trip", Key: alice}, http.StatusOK, &aBefore)
				must(t, in.URL, req{Method: "PATCH", Path: "/api/sessions/trip", Key: bob, Header: map[string]string{"If-Match": `"3"`}, Body: map[string]any{"title": "bob renamed"}}, http.StatusOK, nil)
				must(t, in.URL, req{Method: "DELETE", Path: "/api/sessions/trip", Key: bob}, http.StatusNoContent, nil)
				if ev := nextEvent(t, bEvents); ev.Type != session.EventSessionDeleted {
					t.Fatalf("bob's SSE event = %s, want session.deleted", ev.Type)
				}
				a3 := chat(t, in.URL, alice, "trip", "alice three").Node
				if ev := nextEvent(t, aEvents); ev.Type != session.EventNodeCreated || ev.Data.NodeID != a3.ID {
					t.Fatalf("alice's SSE event = %s %+v, want node.created of %s (nothing of bob's)", ev.Type, ev.Data, a3.ID)
				}
				var aAfter session.Session
				must(t, in.URL, req{Method: "GET", Path: "/api/sessions/trip", Key: alice}, http.StatusOK, &aAfter)
				if aAfter.Title != aBefore.Title || aAfter.Version != aBefore.Version+1 {
					t.Errorf("alice's trip after bob's rename and delete = %+v, want %+v with one more node", aAfter, aBefore)
				}
				if c := getContext(t, in.URL, alice, "trip"); len(c.Nodes) != 3 {
					t.Errorf("alice's context after bob's delete has %d nodes, want 3", len(c.Nodes))
				}
				must(t, in.URL, req{Method: "GET", Path: "/api/sessions/trip", Key: bob}, http.StatusNotFound, nil)
				must(t, in.URL, req{Method: "GET", Path: "/api/nodes/" + b1.ID, Key: bob}, http.StatusNotFound, nil)
				must(t, in.URL, req{Method: "GET", Path: "/api/nodes/resolve/n1", Key: alice}, http.StatusOK, nil)
				// Bob may take the ID again; alice still gets 409.
				must(t, in.URL, req{Method: "POST", Path: "/api/sessions", Key: bob, Body: map[string]any{"id": "trip"}}, http.StatusCreated, nil)
				must(t, in.URL, req{Method: "POST", Path: "/api/sessions", Key: alice, Body: map[string]any{"id": "trip"}}, http.StatusConflict, nil)
			})
		}
	}
}
