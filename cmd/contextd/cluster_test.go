package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/session"
)

// TestClusterWalkThrough runs the README walk-through on two contextd
// instances configured with REDIS_CLUSTER_ADDRS of a 3-master Redis Cluster
// and one database: a subscriber on instance b receives the events of
// changes made on instance a (through the session's stream), resumes with
// Last-Event-ID, and b reads a's writes. The owner's name holds the
// characters the hash tags escape.
func TestClusterWalkThrough(t *testing.T) {
	cl := redistest.ParallelCluster(t, 3)
	const key = "walk-through-key"
	for name, db := range stores(t) {
		t.Run(name, func(t *testing.T) {
			o := instanceOptions{Cluster: cl, Namespace: "walk-" + name, Database: db(t), APIKeys: map[string]string{key: "team {a}%:b}"}}
			a, b := startInstance(t, o), startInstance(t, o)

			s := createSession(t, a.URL, key, "Trip planning")
			events, _ := subscribe(t, b.URL, key, s.ID, "")

			first := chat(t, a.URL, key, s.ID, "We fly to Lisbon on May 3.")
			second := chat(t, a.URL, key, s.ID, "Book a hotel near the airport, see @n1.")
			if first.Node.ShortID != "n1" || !slices.Equal(second.Node.Refs, []string{first.Node.ID}) {
				t.Fatalf("chat: n1 = %s, refs of the second = %v; want n1 and [%s]", first.Node.ShortID, second.Node.Refs, first.Node.ID)
			}
			c := getContext(t, b.URL, key, s.ID)
			if got := shortIDs(c.Nodes); !slices.Equal(got, []string{"n1", "n2"}) {
				t.Fatalf("b's context nodes = %v, want [n1 n2]", got)
			}
			var firstEvent string
			for i, want := range []session.Node{first.Node, second.Node} {
				ev := nextEvent(t, events)
				if ev.Type != session.EventNodeCreated || ev.Data.NodeID != want.ID || ev.Data.SessionID != s.ID || ev.ID == "" {
					t.Fatalf("SSE event %d on b = %+v, want node.created of %s", i, ev, want.ID)
				}
				if i == 0 {
					firstEvent = ev.ID
				}
			}

			// A resume from the first event replays the second.
			resumed, _ := subscribe(t, b.URL, key, s.ID, firstEvent)
			if ev := nextEvent(t, resumed); ev.Type != session.EventNodeCreated || ev.Data.NodeID != second.Node.ID {
				t.Fatalf("resumed SSE event = %+v, want node.created of %s", ev, second.Node.ID)
			}

			var n session.Node
			must(t, b.URL, req{Method: "GET", Path: "/api/nodes/resolve/@n1", Key: key}, http.StatusOK, &n)
			if n.ID != first.Node.ID {
				t.Fatalf("b resolves @n1 to %s, want %s", n.ID, first.Node.ID)
			}
			var warm session.WarmResult
			must(t, b.URL, req{Method: "POST", Path: "/api/cache/warm", Key: key, Body: map[string]any{"session_ids": []string{s.ID}}}, http.StatusOK, &warm)
			if warm.Sessions != 1 || warm.Nodes != 2 {
				t.Fatalf("warm = %+v, want 1 session, 2 nodes", warm)
			}

			content := "We fly to Lisbon on May 4."
			var upd session.Node
			must(t, a.URL, req{Method: "PATCH", Path: "/api/nodes/" + first.Node.ID, Key: key,
				Header: map[string]string{"If-Match": `"1"`}, Body: map[string]any{"content": content}}, http.StatusOK, &upd)
			if ev := nextEvent(t, events); ev.Type != session.EventNodeUpdated || ev.Data.NodeID != first.Node.ID {
				t.Fatalf("SSE event on b = %+v, want node.updated of %s", ev, first.Node.ID)
			}
			eventually(t, "b to serve the updated node", func() bool {
				var got session.Node
				r := do(t, b.URL, req{Method: "GET", Path: "/api/nodes/" + first.Node.ID, Key: key})
				return r.Status == http.StatusOK && json.Unmarshal(r.Body, &got) == nil && got.Content == content
			})

			// used_memory is summed over the masters: more than any one node uses.
			var nodeMax int64
			for _, n := range cl.Nodes() {
				info, _ := n.Do(t, "INFO", "memory").(string)
				nodeMax = max(nodeMax, infoInt(info, "used_memory"))
			}
			for name, in := range map[string]*instance{"a": a, "b": b} {
				var h healthReport
				must(t, in.URL, req{Method: "GET", Path: "/api/health/redis"}, http.StatusOK, &h)
				if h.Status != "healthy" || !h.Redis.Connected || h.Redis.UsedMemory <= nodeMax {
					t.Errorf("instance %s: health = status %q, redis %+v; want healthy with used memory summed over the masters (more than one node's %d)",
						name, h.Status, h.Redis, nodeMax)
				}
				st := h.Service
				if st.CacheWriteFails != 0 || st.StoreFallbacks != 0 || st.Events.PublishErrors != 0 || st.Events.ReadErrors != 0 || h.Cache.L2Errors != 0 {
					t.Errorf("instance %s: service %+v, cache %+v; want no Redis failures", name, st, h.Cache)
				}
			}

			must(t, a.URL, req{Method: "DELETE", Path: "/api/sessions/" + s.ID, Key: key}, http.StatusNoContent, nil)
			if ev := nextEvent(t, events); ev.Type != session.EventSessionDeleted {
				t.Fatalf("SSE event on b = %+v, want session.deleted", ev)
			}
			must(t, b.URL, req{Method: "GET", Path: "/api/sessions/" + s.ID + "/context", Key: key}, http.StatusNotFound, nil)
		})
	}
}

// TestClusterThreeInstancesSharded: three instances on a Cluster with sharded invalidations
// (CACHE_SHARDED_PUBSUB): an update made through any one of them reaches the other two, in
// their context reads (their L1 held the old node) and on their SSE subscribers.
func TestClusterThreeInstancesSharded(t *testing.T) {
	cl := redistest.ParallelCluster(t, 3)
	const key = "sharded-key"
	o := instanceOptions{Cluster: cl, Sharded: true, L1TTL: time.Minute, APIKeys: map[string]string{key: "team"},
		Database: filepath.Join(t.TempDir(), "shared.db"), Namespace: "sharded"}
	ins := []*instance{startInstance(t, o), startInstance(t, o), startInstance(t, o)}
	s := createSession(t, ins[0].URL, key, "Sharded")
	n := chat(t, ins[0].URL, key, s.ID, "version 1").Node
	events := make([]<-chan sseEvent, len(ins))
	for i, in := range ins {
		events[i], _ = subscribe(t, in.URL, key, s.ID, "")
		getContext(t, in.URL, key, s.ID) // each instance's L1 now holds the session's context
	}
	version := n.Version
	for round, writer := range ins {
		content := fmt.Sprintf("version %d, through instance %d", round+2, round)
		var upd session.Node
		must(t, writer.URL, req{Method: "PATCH", Path: "/api/nodes/" + n.ID, Key: key,
			Header: map[string]string{"If-Match": fmt.Sprintf(`"%d"`, version)}, Body: map[string]any{"content": content}}, http.StatusOK, &upd)
		version = upd.Version
		for i, in := range ins {
			if ev := nextEvent(t, events[i]); ev.Type != session.EventNodeUpdated || ev.Data.NodeID != n.ID {
				t.Fatalf("round %d: SSE event on instance %d = %+v, want node.updated of %s", round, i, ev, n.ID)
			}
			eventually(t, fmt.Sprintf("round %d: instance %d's context to show the update", round, i), func() bool {
				c := getContext(t, in.URL, key, s.ID)
				return len(c.Nodes) == 1 && c.Nodes[0].Content == content
			})
		}
	}
}
