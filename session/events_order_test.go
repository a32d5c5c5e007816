package session_test

import (
	"sync"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/session"
)

// TestEventsNodeVersionOrder: a node event whose version is not above the
// last one published for that node is dropped (superseded), so subscribers
// see each node's versions strictly increasing; session events and other
// nodes are not affected.
func TestEventsNodeVersionOrder(t *testing.T) {
	t.Parallel()
	forEachMode(t, "ord", func(t *testing.T, ev *session.Events, _ *redis.Client) {
		ch := subscribeFrom(t, ev, "s", "")
		pub := func(node string, v int64) string {
			t.Helper()
			id, err := ev.Publish(t.Context(), "o", session.Event{Type: session.EventNodeUpdated, SessionID: "s", NodeID: node, Version: v})
			if err != nil {
				t.Fatalf("Publish(%s v%d) = %v", node, v, err)
			}
			return id
		}
		for _, p := range []struct {
			node       string
			v          int64
			superseded bool
		}{{"n1", 3, false}, {"n1", 2, true}, {"n1", 3, true}, {"n2", 1, false}, {"n1", 10, false}, {"n1", 9, true}, {"n2", 2, false}} {
			if id := pub(p.node, p.v); (id == "") != p.superseded {
				t.Errorf("Publish(%s v%d) = %q, want superseded %v", p.node, p.v, id, p.superseded)
			}
		}
		for _, want := range []struct {
			node string
			v    int64
		}{{"n1", 3}, {"n2", 1}, {"n1", 10}, {"n2", 2}} {
			if got := recv(t, ch); got.NodeID != want.node || got.Version != want.v {
				t.Fatalf("event = %s v%d, want %s v%d", got.NodeID, got.Version, want.node, want.v)
			}
		}
		if st := ev.Stats(); st.Superseded != 3 || st.Published != 4 {
			t.Errorf("stats = %+v, want 3 superseded, 4 published", st)
		}
	})
}

// TestEventsNodeVersionOrderAcrossInstances: two Events on one Redis
// publishing one node's versions concurrently, in any order: the stream
// holds them strictly increasing, and the newest is always kept.
func TestEventsNodeVersionOrderAcrossInstances(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	a := session.NewEvents(srv.Client(t), "x", nil)
	defer a.Close()
	b := session.NewEvents(srv.Client(t), "x", nil)
	defer b.Close()
	ch := subscribeFrom(t, b, "s", "")
	const n = 200
	var wg sync.WaitGroup
	for v := int64(n); v >= 1; v-- { // newest first: most must be dropped
		e := a
		if v%2 == 0 {
			e = b
		}
		wg.Go(func() {
			if _, err := e.Publish(t.Context(), "o", session.Event{Type: session.EventNodeUpdated, SessionID: "s", NodeID: "n", Version: v}); err != nil {
				t.Errorf("Publish(v%d) = %v", v, err)
			}
		})
	}
	wg.Wait()
	prev := int64(0)
	for prev < n {
		got := recv(t, ch)
		if got.Version <= prev {
			t.Fatalf("version %d after %d", got.Version, prev)
		}
		prev = got.Version
	}
}
