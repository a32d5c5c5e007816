package main

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/session"
)

func shortIDs(nodes []session.Node) []string {
	out := make([]string, len(nodes))
	for i, n := range nodes {
		out[i] = n.ShortID
	}
	return out
}

// TestChatContextAcrossSessions: chat appends, context assembly with
// references inside and across sessions, short-ID lookup across sessions;
// against real Redis and each store.
func TestChatContextAcrossSessions(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t)
	for name, db := range stores(t) {
		t.Run(name, func(t *testing.T) {
			in := startInstance(t, instanceOptions{Redis: rs, Database: db(t)})
			a := createSession(t, in.URL, "", "A")
			b := createSession(t, in.URL, "", "B")
			r1 := chat(t, in.URL, "", a.ID, "first message")
			r2 := chat(t, in.URL, "", a.ID, "second, building on @n1.")
			if r1.Node.ShortID != "n1" || r2.Node.ShortID != "n2" {
				t.Fatalf("short IDs = %s, %s, want n1, n2", r1.Node.ShortID, r2.Node.ShortID)
			}
			if !slices.Equal(r2.Node.Refs, []string{r1.Node.ID}) {
				t.Errorf("refs of n2 = %v, want [%s]", r2.Node.Refs, r1.Node.ID)
			}
			if got := shortIDs(r2.Context.Nodes); !slices.Equal(got, []string{"n1", "n2"}) {
				t.Errorf("chat context nodes = %v, want [n1 n2]", got)
			}
			if len(r2.Context.Refs) != 0 {
				t.Errorf("chat context refs = %v, want none (n1 is in the session)", shortIDs(r2.Context.Refs))
			}
			// Cross-session: B's message references A's n2 (and n1 through it is not followed: one level).
			r3 := chat(t, in.URL, "", b.ID, "in B, see (@n2) and #n1 is not a ref")
			c := getContext(t, in.URL, "", b.ID)
			if got := shortIDs(c.Nodes); !slices.Equal(got, []string{r3.Node.ShortID}) {
				t.Errorf("B context nodes = %v, want [%s]", got, r3.Node.ShortID)
			}
			if got := shortIDs(c.Refs); !slices.Equal(got, []string{"n2"}) {
				t.Errorf("B context refs = %v, want [n2] (one level)", got)
			}
			// Short-ID lookup across sessions, in all three spellings.
			for _, q := range []string{"n1", "%23n1", "@n1", "n3"} {
				var n session.Node
				must(t, in.URL, req{Method: "GET", Path: "/api/nodes/resolve/" + q}, http.StatusOK, &n)
				want := map[bool]string{true: r3.Node.ID, false: r1.Node.ID}[q == "n3"]
				if n.ID != want {
					t.Errorf("resolve %s = %s, want %s", q, n.ID, want)
				}
			}
			r := must(t, in.URL, req{Method: "GET", Path: "/api/nodes/resolve/n99"}, http.StatusNotFound, nil)
			if r.errCode(t) != "not_found" {
				t.Errorf("resolve n99 code = %s", r.errCode(t))
			}
			// Unknown references: 422 naming all of them, nothing stored.
			r = must(t, in.URL, req{Method: "POST", Path: "/api/chat", Body: map[string]any{"session_id": a.ID, "content": "see @n41 and @n42"}}, http.StatusUnprocessableEntity, nil)
			if !strings.Contains(string(r.Body), "n41") || !strings.Contains(string(r.Body), "n42") {
				t.Errorf("unknown refs error %s does not name n41 and n42", r.Body)
			}
			if got := len(getContext(t, in.URL, "", a.ID).Nodes); got != 2 {
				t.Errorf("after a refused chat, A has %d nodes, want 2", got)
			}
			// Chat without a session starts one.
			var res session.ChatResult
			must(t, in.URL, req{Method: "POST", Path: "/api/chat", Body: map[string]any{"content": "new topic\nmore"}}, http.StatusCreated, &res)
			if res.Context.Session.Title != "new topic" || len(res.Context.Nodes) != 1 {
				t.Errorf("chat without session: title %q, %d nodes", res.Context.Session.Title, len(res.Context.Nodes))
			}
			// Delete a referenced node: B's context drops the dangling ref.
			must(t, in.URL, req{Method: "DELETE", Path: "/api/nodes/" + r2.Node.ID}, http.StatusNoContent, nil)
			if c := getContext(t, in.URL, "", b.ID); len(c.Refs) != 0 {
				t.Errorf("after deleting n2, B refs = %v, want none", shortIDs(c.Refs))
			}
			must(t, in.URL, req{Method: "GET", Path: "/api/nodes/resolve/n2"}, http.StatusNotFound, nil)
			// Session CRUD.
			var upd session.Session
			cur := must(t, in.URL, req{Method: "GET", Path: "/api/sessions/" + a.ID}, http.StatusOK, nil)
			must(t, in.URL, req{Method: "PATCH", Path: "/api/sessions/" + a.ID, Header: map[string]string{"If-Match": cur.Header.Get("ETag")}, Body: map[string]any{"title": "A2"}}, http.StatusOK, &upd)
			if upd.Title != "A2" {
				t.Errorf("PATCH title = %q", upd.Title)
			}
			var list struct{ Sessions []session.Session }
			must(t, in.URL, req{Method: "GET", Path: "/api/sessions?limit=10"}, http.StatusOK, &list)
			if len(list.Sessions) != 3 {
				t.Errorf("list = %d sessions, want 3", len(list.Sessions))
			}
			must(t, in.URL, req{Method: "DELETE", Path: "/api/sessions/" + a.ID}, http.StatusNoContent, nil)
			must(t, in.URL, req{Method: "GET", Path: "/api/sessions/" + a.ID + "/context"}, http.StatusNotFound, nil)
			must(t, in.URL, req{Method: "GET", Path: "/api/nodes/" + r1.Node.ID}, http.StatusNotFound, nil)
			must(t, in.URL, req{Method: "GET", Path: "/api/nodes/resolve/n1"}, http.StatusNotFound, nil)
		})
	}
}

// TestOwnerIsolation: another owner's sessions, nodes and short IDs are 404
// and never appear in a context or resolve a reference.
func TestOwnerIsolation(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t)
	for name, db := range stores(t) {
		t.Run(name, func(t *testing.T) {
			const alice, bob = "alice-key-123", "bob-key-4567"
			in := startInstance(t, instanceOptions{Redis: rs, Database: db(t), APIKeys: map[string]string{alice: "alice", bob: "bob"}})
			as := createSession(t, in.URL, alice, "alice's")
			chat(t, in.URL, alice, as.ID, "a1")
			chat(t, in.URL, alice, as.ID, "a2")
			a3 := chat(t, in.URL, alice, as.ID, "a3").Node
			bs := createSession(t, in.URL, bob, "bob's")
			b1 := chat(t, in.URL, bob, bs.ID, "b1").Node
			for _, q := range []req{
				{Method: "GET", Path: "/api/sessions/" + as.ID},
				{Method: "GET", Path: "/api/sessions/" + as.ID + "/context"},
				{Method: "GET", Path: "/api/sessions/" + as.ID + "/events"},
				{Method: "PATCH", Path: "/api/sessions/" + as.ID, Header: map[string]string{"If-Match": `"1"`}, Body: map[string]any{"title": "mine"}},
				{Method: "DELETE", Path: "/api/sessions/" + as.ID},
				{Method: "GET", Path: "/api/nodes/" + a3.ID},
				{Method: "PATCH", Path: "/api/nodes/" + a3.ID, Header: map[string]string{"If-Match": `"1"`}, Body: map[string]any{"content": "x"}},
				{Method: "DELETE", Path: "/api/nodes/" + a3.ID},
				{Method: "GET", Path: "/api/nodes/resolve/n3"},
				{Method: "POST", Path: "/api/chat", Body: map[string]any{"session_id": as.ID, "content": "hi"}},
				{Method: "POST", Path: "/api/nodes", Body: map[string]any{"session_id": as.ID, "content": "hi"}},
			} {
				q.Key = bob
				r := do(t, in.URL, q)
				if r.Status != http.StatusNotFound {
					t.Errorf("bob %s %s = %d %s, want 404", q.Method, q.Path, r.Status, r.Body)
				}
			}
			// Bob's @n3 is not alice's n3; bob's @n1 is his own.
			r := must(t, in.URL, req{Method: "POST", Path: "/api/chat", Key: bob, Body: map[string]any{"session_id": bs.ID, "content": "see @n3"}}, http.StatusUnprocessableEntity, nil)
			if r.errCode(t) != "unknown_refs" {
				t.Errorf("code = %s", r.errCode(t))
			}
			res := chat(t, in.URL, bob, bs.ID, "see @n1")
			if !slices.Equal(res.Node.Refs, []string{b1.ID}) {
				t.Errorf("bob's @n1 resolved to %v, want his own %s", res.Node.Refs, b1.ID)
			}
			// Referencing alice's node by ID is refused.
			must(t, in.URL, req{Method: "POST", Path: "/api/nodes", Key: bob, Body: map[string]any{"session_id": bs.ID, "content": "x", "refs": []string{a3.ID}}}, http.StatusUnprocessableEntity, nil)
			c := getContext(t, in.URL, bob, bs.ID)
			for _, n := range append(c.Nodes, c.Refs...) {
				if n.Owner != "bob" {
					t.Errorf("bob's context holds %s of owner %s", n.ID, n.Owner)
				}
			}
			// Warming alice's session as bob warms nothing.
			var wr session.WarmResult
			must(t, in.URL, req{Method: "POST", Path: "/api/cache/warm", Key: bob, Body: map[string]any{"session_ids": []string{as.ID}}}, http.StatusOK, &wr)
			if wr.Sessions != 0 || wr.Missing != 1 {
				t.Errorf("bob warming alice's session = %+v, want 0 warmed, 1 missing", wr)
			}
			// No key, wrong key: 401.
			for _, k := range []string{"", "wrong-key-000"} {
				if r := do(t, in.URL, req{Method: "GET", Path: "/api/sessions", Key: k}); r.Status != http.StatusUnauthorized || r.errCode(t) != "unauthorized" {
					t.Errorf("key %q: %d %s, want 401", k, r.Status, r.Body)
				}
			}
			if r := do(t, in.URL, req{Method: "GET", Path: "/api/sessions", Header: map[string]string{"X-API-Key": alice}}); r.Status != http.StatusOK {
				t.Errorf("X-API-Key: %d", r.Status)
			}
			// Alice's data is intact.
			if c := getContext(t, in.URL, alice, as.ID); len(c.Nodes) != 3 {
				t.Errorf("alice has %d nodes, want 3", len(c.Nodes))
			}
		})
	}
}

// TestIfMatch: updates need If-Match (428), a stale one gets 412 and changes
// nothing.
func TestIfMatch(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t)
	for name, db := range stores(t) {
		t.Run(name, func(t *testing.T) {
			in := startInstance(t, instanceOptions{Redis: rs, Database: db(t)})
			s := createSession(t, in.URL, "", "s")
			var n session.Node
			r := must(t, in.URL, req{Method: "POST", Path: "/api/nodes", Body: map[string]any{"session_id": s.ID, "content": "v1", "metadata": map[string]any{"k": 1}}}, http.StatusCreated, &n)
			if r.Header.Get("ETag") != `"1"` {
				t.Errorf("ETag = %q, want \"1\"", r.Header.Get("ETag"))
			}
			path := "/api/nodes/" + n.ID
			if r := do(t, in.URL, req{Method: "PATCH", Path: path, Body: map[string]any{"content": "v2"}}); r.Status != http.StatusPreconditionRequired {
				t.Errorf("PATCH without If-Match = %d, want 428", r.Status)
			}
			var n2 session.Node
			must(t, in.URL, req{Method: "PATCH", Path: path, Header: map[string]string{"If-Match": `"1"`}, Body: map[string]any{"content": "v2"}}, http.StatusOK, &n2)
			if n2.Version != 2 || n2.Content != "v2" {
				t.Errorf("after PATCH: version %d content %q", n2.Version, n2.Content)
			}
			r = do(t, in.URL, req{Method: "PATCH", Path: path, Header: map[string]string{"If-Match": `"1"`}, Body: map[string]any{"content": "v3"}})
			if r.Status != http.StatusPreconditionFailed || r.errCode(t) != "version_mismatch" {
				t.Errorf("stale PATCH = %d %s, want 412", r.Status, r.Body)
			}
			if r := do(t, in.URL, req{Method: "DELETE", Path: path, Header: map[string]string{"If-Match": `"1"`}}); r.Status != http.StatusPreconditionFailed {
				t.Errorf("stale DELETE = %d, want 412", r.Status)
			}
			var got session.Node
			must(t, in.URL, req{Method: "GET", Path: path}, http.StatusOK, &got)
			if got.Version != 2 || got.Content != "v2" {
				t.Errorf("after stale writes: version %d content %q, want 2 v2", got.Version, got.Content)
			}
			if c := getContext(t, in.URL, "", s.ID); c.Nodes[0].Content != "v2" {
				t.Errorf("context content %q, want v2", c.Nodes[0].Content)
			}
			if r := do(t, in.URL, req{Method: "PATCH", Path: path, Header: map[string]string{"If-Match": "abc"}, Body: map[string]any{"content": "v3"}}); r.Status != http.StatusBadRequest {
				t.Errorf("bad If-Match = %d, want 400", r.Status)
			}
		})
	}
}

// TestEventsResume: SSE events arrive with IDs and a reconnect with
// Last-Event-ID receives exactly the events it missed; with Redis streams
// and with the in-memory ring.
func TestEventsResume(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"redis", "memory"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			o := instanceOptions{}
			if mode == "redis" {
				o.Redis = redistest.Start(t)
			}
			in := startInstance(t, o)
			s := createSession(t, in.URL, "", "s")
			ch, stop := subscribe(t, in.URL, "", s.ID, "")
			c1 := chat(t, in.URL, "", s.ID, "one").Node
			chat(t, in.URL, "", s.ID, "two")
			e1, e2 := nextEvent(t, ch), nextEvent(t, ch)
			if e1.Type != session.EventNodeCreated || e1.Data.NodeID != c1.ID || e2.Data.Node == nil || e2.Data.Node.Content != "two" {
				t.Fatalf("events = %+v, %+v", e1, e2)
			}
			stop() // disconnect
			must(t, in.URL, req{Method: "PATCH", Path: "/api/nodes/" + c1.ID, Header: map[string]string{"If-Match": `"1"`}, Body: map[string]any{"content": "one'"}}, http.StatusOK, nil)
			chat(t, in.URL, "", s.ID, "three")
			ch2, _ := subscribe(t, in.URL, "", s.ID, e2.ID)
			e3, e4 := nextEvent(t, ch2), nextEvent(t, ch2)
			if e3.Type != session.EventNodeUpdated || e3.Data.NodeID != c1.ID || e4.Type != session.EventNodeCreated || e4.Data.Node.Content != "three" {
				t.Fatalf("resumed events = %s %+v, %s %+v", e3.Type, e3.Data, e4.Type, e4.Data)
			}
			if !(e1.ID < e2.ID || len(e1.ID) < len(e2.ID)) || e3.ID == e2.ID {
				t.Errorf("IDs not increasing: %s %s %s", e1.ID, e2.ID, e3.ID)
			}
			// Deleting the session ends the stream after a session.deleted event.
			must(t, in.URL, req{Method: "DELETE", Path: "/api/sessions/" + s.ID}, http.StatusNoContent, nil)
			if e := nextEvent(t, ch2); e.Type != session.EventSessionDeleted {
				t.Errorf("event = %s, want session.deleted", e.Type)
			}
			select {
			case _, ok := <-ch2:
				if ok {
					t.Error("stream not closed after session.deleted")
				}
			case <-time.After(10 * time.Second):
				t.Error("stream not closed within 10s after session.deleted")
			}
			if r := do(t, in.URL, req{Method: "GET", Path: "/api/sessions/" + s.ID + "/events"}); r.Status != http.StatusNotFound {
				t.Errorf("events of a deleted session = %d, want 404", r.Status)
			}
		})
	}
}

// TestWarmFillsL2: warming loads sessions written straight to the store into
// Redis (checked on the keys).
func TestWarmFillsL2(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t)
	in := startInstance(t, instanceOptions{Redis: rs})
	ctx := t.Context()
	st := in.app.store
	var sids, nids []string
	for i := range 3 {
		s, err := st.CreateSession(ctx, session.Session{Owner: localOwner, Title: fmt.Sprint("s", i)})
		if err != nil {
			t.Fatal(err)
		}
		sids = append(sids, s.ID)
		for j := range 4 {
			n, err := st.CreateNode(ctx, session.Node{SessionID: s.ID, Owner: localOwner, Role: "user", Content: fmt.Sprint("n", j)}, 0)
			if err != nil {
				t.Fatal(err)
			}
			nids = append(nids, n.ID)
		}
	}
	key := func(k string) string { return in.ns + ":{" + k + "}" }
	if n := rs.Do(t, "EXISTS", key("node:"+nids[0])); n != int64(0) {
		t.Fatalf("node key exists before warming")
	}
	var wr session.WarmResult
	must(t, in.URL, req{Method: "POST", Path: "/api/cache/warm", Body: map[string]any{"session_ids": append(sids, "s_nope")}}, http.StatusOK, &wr)
	if wr.Sessions != 3 || wr.Nodes != 12 || wr.Missing != 1 {
		t.Errorf("warm = %+v, want 3 sessions, 12 nodes, 1 missing", wr)
	}
	for _, id := range nids {
		if n := rs.Do(t, "EXISTS", key("node:"+id)); n != int64(1) {
			t.Errorf("after warming, %s missing from Redis", key("node:"+id))
		}
	}
	for _, id := range sids {
		for _, k := range []string{"list:" + localOwner + ":" + id, "sess:" + localOwner + ":" + id} {
			if n := rs.Do(t, "EXISTS", key(k)); n != int64(1) {
				t.Errorf("after warming, %s missing from Redis", key(k))
			}
		}
	}
	// Start-up warming of recent sessions goes through the same path.
	res, err := in.app.svc.WarmRecent(ctx, 2)
	if err != nil || res.Sessions != 2 {
		t.Errorf("WarmRecent(2) = %+v, %v", res, err)
	}
	must(t, in.URL, req{Method: "POST", Path: "/api/cache/warm", Body: map[string]any{"recent": 5}}, http.StatusOK, &wr)
	if wr.Sessions != 3 {
		t.Errorf("warm recent = %+v, want 3 sessions", wr)
	}
}

// TestTwoInstances: two contextd instances (separate caches and Redis
// clients) on one Redis and one database: an update through one shows in
// the other's context and reaches an SSE subscriber connected to the other.
func TestTwoInstances(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t)
	for name, db := range stores(t) {
		t.Run(name, func(t *testing.T) {
			dbURL := db(t)
			ns := "two" + randHex(3)
			a := startInstance(t, instanceOptions{Redis: rs, Database: dbURL, Namespace: ns, L1TTL: 500 * time.Millisecond})
			b := startInstance(t, instanceOptions{Redis: rs, Database: dbURL, Namespace: ns, L1TTL: 500 * time.Millisecond})
			s := createSession(t, a.URL, "", "shared")
			n := chat(t, a.URL, "", s.ID, "original").Node
			if c := getContext(t, b.URL, "", s.ID); len(c.Nodes) != 1 || c.Nodes[0].Content != "original" {
				t.Fatalf("B context = %+v", c.Nodes)
			}
			ch, _ := subscribe(t, b.URL, "", s.ID, "")
			must(t, a.URL, req{Method: "PATCH", Path: "/api/nodes/" + n.ID, Header: map[string]string{"If-Match": `"1"`}, Body: map[string]any{"content": "edited on A"}}, http.StatusOK, nil)
			ev := nextEvent(t, ch)
			if ev.Type != session.EventNodeUpdated || ev.Data.Node == nil || ev.Data.Node.Content != "edited on A" {
				t.Errorf("B subscriber got %s %+v", ev.Type, ev.Data)
			}
			start := time.Now()
			eventually(t, "B's context shows A's update", func() bool {
				c := getContext(t, b.URL, "", s.ID)
				return len(c.Nodes) == 1 && c.Nodes[0].Content == "edited on A" && c.Nodes[0].Version == 2
			})
			t.Logf("B saw A's update after %v (L1 TTL 500ms; cross-instance invalidation shortens this when present)", time.Since(start))
			// A new node on B shows on A, and on B's stream.
			chat(t, b.URL, "", s.ID, "from B")
			if ev := nextEvent(t, ch); ev.Type != session.EventNodeCreated {
				t.Errorf("event = %s, want node.created", ev.Type)
			}
			eventually(t, "A's context shows B's node", func() bool { return len(getContext(t, a.URL, "", s.ID).Nodes) == 2 })
		})
	}
}

// TestRedisKilledUnderLoad: with Redis killed while context reads run, every
// read is still answered, /api/health/redis reports degraded and /healthz
// stays 200; after a restart the health check reports healthy again.
func TestRedisKilledUnderLoad(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t)
	in := startInstance(t, instanceOptions{Redis: rs, L1TTL: 200 * time.Millisecond, L2Timeout: -1})
	s := createSession(t, in.URL, "", "s")
	for i := range 5 {
		chat(t, in.URL, "", s.ID, fmt.Sprint("m", i))
	}
	var (
		ok, bad atomic.Int64
		lastBad atomic.Value
		stop    = make(chan struct{})
		wg      sync.WaitGroup
	)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				r := do(t, in.URL, req{Method: "GET", Path: "/api/sessions/" + s.ID + "/context"})
				if r.Status == http.StatusOK {
					ok.Add(1)
				} else {
					bad.Add(1)
					lastBad.Store(fmt.Sprintf("%d %s", r.Status, r.Body))
				}
			}
		}()
	}
	eventually(t, "some reads before the kill", func() bool { return ok.Load() > 20 })
	rs.Kill(t)
	status := func() string {
		var h healthReport
		must(t, in.URL, req{Method: "GET", Path: "/api/health/redis"}, http.StatusOK, &h)
		return h.Status
	}
	eventually(t, "health says degraded", func() bool { return status() == "degraded" })
	before := ok.Load()
	eventually(t, "reads keep being answered with Redis down", func() bool { return ok.Load() > before+20 })
	must(t, in.URL, req{Method: "GET", Path: "/healthz"}, http.StatusOK, nil)
	must(t, in.URL, req{Method: "GET", Path: "/readyz"}, http.StatusOK, nil)
	// Writes still work (the store is the record); the change is visible here.
	chat(t, in.URL, "", s.ID, "written while Redis was down")
	eventually(t, "own write visible while degraded", func() bool { return len(getContext(t, in.URL, "", s.ID).Nodes) == 6 })
	var h healthReport
	must(t, in.URL, req{Method: "GET", Path: "/api/health/redis"}, http.StatusOK, &h)
	if h.Redis.Connected || h.Redis.Error == "" {
		t.Errorf("degraded health: redis %+v, want not connected with an error", h.Redis)
	}
	rs.Restart(t)
	eventually(t, "health says healthy after restart", func() bool { return status() == "healthy" })
	eventually(t, "breaker closed after restart", func() bool {
		var h healthReport
		must(t, in.URL, req{Method: "GET", Path: "/api/health/redis"}, http.StatusOK, &h)
		return h.Breaker == "" || h.Breaker == "closed"
	})
	before = ok.Load()
	eventually(t, "reads after recovery", func() bool { return ok.Load() > before+20 })
	close(stop)
	wg.Wait()
	if n := bad.Load(); n != 0 {
		t.Errorf("%d context reads failed (of %d); last: %v", n, n+ok.Load(), lastBad.Load())
	}
	if c := getContext(t, in.URL, "", s.ID); len(c.Nodes) != 6 {
		t.Errorf("after recovery the context has %d nodes, want 6", len(c.Nodes))
	}
}

// TestChosenSessionIDAndETag: a caller-chosen session ID, 409 when taken;
// the context's ETag changes with any node and If-None-Match gives 304.
func TestChosenSessionIDAndETag(t *testing.T) {
	t.Parallel()
	in := startInstance(t, instanceOptions{})
	must(t, in.URL, req{Method: "POST", Path: "/api/sessions", Body: map[string]any{"id": "demo", "title": "d"}}, http.StatusCreated, nil)
	r := must(t, in.URL, req{Method: "POST", Path: "/api/sessions", Body: map[string]any{"id": "demo"}}, http.StatusConflict, nil)
	if r.errCode(t) != "exists" {
		t.Errorf("code = %s", r.errCode(t))
	}
	must(t, in.URL, req{Method: "POST", Path: "/api/sessions", Body: map[string]any{"id": "no/slash"}}, http.StatusUnprocessableEntity, nil)
	n := chat(t, in.URL, "", "demo", "one").Node
	ctx1 := must(t, in.URL, req{Method: "GET", Path: "/api/sessions/demo/context"}, http.StatusOK, nil)
	etag := ctx1.Header.Get("ETag")
	if etag == "" {
		t.Fatal("no ETag on context")
	}
	must(t, in.URL, req{Method: "GET", Path: "/api/sessions/demo/context", Header: map[string]string{"If-None-Match": etag}}, http.StatusNotModified, nil)
	must(t, in.URL, req{Method: "PATCH", Path: "/api/nodes/" + n.ID, Header: map[string]string{"If-Match": `"1"`}, Body: map[string]any{"content": "uno"}}, http.StatusOK, nil)
	var c session.Context
	ctx2 := must(t, in.URL, req{Method: "GET", Path: "/api/sessions/demo/context", Header: map[string]string{"If-None-Match": etag}}, http.StatusOK, &c)
	if ctx2.Header.Get("ETag") == etag || c.Nodes[0].Content != "uno" {
		t.Errorf("after an update: ETag %s (was %s), content %q", ctx2.Header.Get("ETag"), etag, c.Nodes[0].Content)
	}
}
