package main

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache"
	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/session"
)

// rawJSON writes payloads as they are under the JSON codec's ID, so a test
// can plant well-formed envelopes holding any JSON.
type rawJSON struct{}

func (rawJSON) ID() uint8                                { return tiercache.JSON[int]().ID() }
func (rawJSON) Encode(v json.RawMessage) ([]byte, error) { return v, nil }
func (rawJSON) Decode(b []byte) (json.RawMessage, error) { return b, nil }

// planter writes well-formed cache entries with arbitrary payloads into the
// namespace of an instance, as another (buggy) writer sharing its Redis would.
type planter struct {
	in   *instance
	json *tiercache.TypedCache[json.RawMessage]
	str  *tiercache.TypedCache[string]
}

func newPlanter(tb testing.TB, rs *redistest.Server, in *instance) *planter {
	tb.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: rs.Addr()})
	c, err := tiercache.New(tiercache.Options{Redis: rdb, Namespace: in.ns})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close(); rdb.Close() })
	return &planter{in: in, json: tiercache.Typed(c, rawJSON{}), str: tiercache.Typed(c, tiercache.String())}
}

// plant stores payload under key with an automatic (clock) version, above
// any the service writes and any tombstone, then waits until the instance's L1 has dropped its own copy (the
// write's invalidation reached it), so its next read goes to Redis.
func (p *planter) plant(tb testing.TB, key string, payload any) {
	tb.Helper()
	var err error
	switch x := payload.(type) {
	case string:
		err = p.str.Set(tb.Context(), key, x)
	default:
		b, _ := json.Marshal(x)
		if raw, ok := x.(json.RawMessage); ok {
			b = raw
		}
		err = p.json.Set(tb.Context(), key, b)
	}
	if err != nil {
		tb.Fatalf("plant %s: %v", key, err)
	}
	nodes := tiercache.Typed(p.in.app.cache, tiercache.JSON[session.Node]())
	lists := tiercache.Typed(p.in.app.cache, tiercache.JSON[session.NodeList]())
	sessions := tiercache.Typed(p.in.app.cache, tiercache.JSON[session.Session]())
	sids := tiercache.Typed(p.in.app.cache, tiercache.String())
	eventually(tb, "instance L1 drops "+key, func() bool {
		_, a := nodes.Peek(key)
		_, b := lists.Peek(key)
		_, c := sessions.Peek(key)
		_, d := sids.Peek(key)
		return !a && !b && !c && !d
	})
}

// TestCacheNeverHidesStoredData: a well-formed cache entry that is no valid
// record of its key (JSON null, an object of another shape, another node's
// record, a short-ID entry naming another node) is a miss: counted, deleted
// and read from the store. GET node, resolve, the context and the session
// answer what the store holds, never 404 or an empty context.
func TestCacheNeverHidesStoredData(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t)
	in := startInstance(t, instanceOptions{Redis: rs})
	p := newPlanter(t, rs, in)
	s := createSession(t, in.URL, "", "trip")
	n1 := chat(t, in.URL, "", s.ID, "first").Node
	n2 := chat(t, in.URL, "", s.ID, "second").Node
	other := createSession(t, in.URL, "", "other")
	nodeKey := "node:" + n1.ID
	listKey := "list:" + localOwner + ":" + s.ID
	sidKey := "sid:" + localOwner + ":" + n1.ShortID
	sessKey := "sess:" + localOwner + ":" + s.ID

	getNode := func(t *testing.T) {
		t.Helper()
		var got session.Node
		must(t, in.URL, req{Method: "GET", Path: "/api/nodes/" + n1.ID}, http.StatusOK, &got)
		if got.ID != n1.ID || got.Content != "first" {
			t.Errorf("GET node = %+v, want %s with content first", got, n1.ID)
		}
	}
	resolve := func(t *testing.T) {
		t.Helper()
		var got session.Node
		must(t, in.URL, req{Method: "GET", Path: "/api/nodes/resolve/" + n1.ShortID}, http.StatusOK, &got)
		if got.ID != n1.ID {
			t.Errorf("resolve %s = node %s, want %s", n1.ShortID, got.ID, n1.ID)
		}
	}
	context := func(t *testing.T) {
		t.Helper()
		c := getContext(t, in.URL, "", s.ID)
		if len(c.Nodes) != 2 || c.Nodes[0].ID != n1.ID || c.Nodes[1].ID != n2.ID || c.Session.ID != s.ID {
			t.Errorf("context = session %q, %d nodes %+v; want %s with %s, %s", c.Session.ID, len(c.Nodes), c.Nodes, s.ID, n1.ID, n2.ID)
		}
	}
	getSession := func(t *testing.T) {
		t.Helper()
		var got session.Session
		must(t, in.URL, req{Method: "GET", Path: "/api/sessions/" + s.ID}, http.StatusOK, &got)
		if got.ID != s.ID || got.Title != "trip" {
			t.Errorf("GET session = %+v, want %s titled trip", got, s.ID)
		}
	}
	var otherList session.NodeList
	otherList = session.NodeList{Owner: localOwner, SessionID: other.ID, Version: 1, NodeIDs: []string{}}
	tests := []struct {
		name    string
		key     string
		payload any
		read    func(t *testing.T)
	}{
		{"null node, GET", nodeKey, json.RawMessage("null"), getNode},
		{"null node, resolve", nodeKey, json.RawMessage("null"), resolve},
		{"null node, context", nodeKey, json.RawMessage("null"), context},
		{"empty object node", nodeKey, json.RawMessage("{}"), getNode},
		{"another node's record", nodeKey, n2, getNode},
		{"another node's record, context", nodeKey, n2, context},
		{"list of another shape", listKey, json.RawMessage(`{"ids":["` + n1.ID + `"]}`), context},
		{"null list", listKey, json.RawMessage("null"), context},
		{"another session's list", listKey, otherList, context},
		{"null session", sessKey, json.RawMessage("null"), getSession},
		{"another session's record", sessKey, other, getSession},
		{"short ID naming another node", sidKey, n2.ID, resolve},
		{"short ID naming no node", sidKey, "nd_nothere", resolve},
		{"short ID that is no ID", sidKey, "not an id!", resolve},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := in.app.svc.Stats().InvalidEntries
			p.plant(t, tt.key, tt.payload)
			tt.read(t)
			if after := in.app.svc.Stats().InvalidEntries; after <= before {
				t.Errorf("invalid entries %d -> %d, want it counted", before, after)
			}
			tt.read(t) // and again, once the entry is gone
		})
	}

	var h healthReport
	must(t, in.URL, req{Method: "GET", Path: "/api/health/redis"}, http.StatusOK, &h)
	if h.Service.InvalidEntries < uint64(len(tests)) || h.Cache.Corrupt == 0 {
		t.Errorf("health: service.invalid_entries %d, cache.corrupt %d; want >= %d and > 0", h.Service.InvalidEntries, h.Cache.Corrupt, len(tests))
	}
	m := must(t, in.URL, req{Method: "GET", Path: "/metrics"}, http.StatusOK, nil)
	for _, want := range []string{"contextd_cache_invalid_entries_total", "tiercache_corrupt_total",
		"tiercache_replay_dropped_total", "tiercache_replay_superseded_total", "tiercache_replay_expired_total",
		"tiercache_sequence_fillers_total", "tiercache_loader_panics_total"} {
		if !strings.Contains(string(m.Body), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}
