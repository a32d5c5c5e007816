package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/rediskey"
	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/session"
)

// eventModes runs f against an instance on a Redis of its own and against
// an L1-only instance (in-memory rings).
func eventModes(t *testing.T, f func(t *testing.T, in *instance, srv *redistest.Server)) {
	t.Helper()
	for _, mode := range []string{"redis", "memory"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			var srv *redistest.Server
			if mode == "redis" {
				srv = redistest.Start(t)
			}
			f(t, startInstance(t, instanceOptions{Redis: srv}), srv)
		})
	}
}

// eventConns is what Redis's CLIENT LIST shows of the connections used for
// events: clients blocked in a command (a blocking XREAD) and subscribers
// of the event notification channel.
type eventConns struct {
	clients, blocked int
	notifySubs       int64
}

func countEventConns(tb testing.TB, rdb *redis.Client, ns string) eventConns {
	tb.Helper()
	list, err := rdb.ClientList(tb.Context()).Result()
	if err != nil {
		tb.Fatalf("CLIENT LIST: %v", err)
	}
	var c eventConns
	for _, line := range strings.Split(strings.TrimSpace(list), "\n") {
		c.clients++
		for _, f := range strings.Fields(line) {
			if flags, ok := strings.CutPrefix(f, "flags="); ok && strings.Contains(flags, "b") {
				c.blocked++
			}
		}
	}
	subs, err := rdb.PubSubNumSub(tb.Context(), ns+":ev:notify").Result()
	if err != nil {
		tb.Fatalf("PUBSUB NUMSUB: %v", err)
	}
	c.notifySubs = subs[ns+":ev:notify"]
	return c
}

// healthOf reads /api/health/redis.
func healthOf(tb testing.TB, in *instance) healthReport {
	tb.Helper()
	var h healthReport
	must(tb, in.URL, req{Method: "GET", Path: "/api/health/redis"}, http.StatusOK, &h)
	return h
}

// streamLoad opens streamsPer SSE streams on each of n new sessions, chats
// once in every session (workers at a time) and checks that every stream
// receives its session's node.created. It returns the chats' latencies in
// milliseconds. With streamsPer 0 it only chats: a baseline.
func streamLoad(t *testing.T, in *instance, n, streamsPer, workers int) []float64 {
	t.Helper()
	type watched struct {
		id      string
		streams []<-chan sseEvent
	}
	sess := make([]watched, n)
	for i := range sess {
		sess[i].id = createSession(t, in.URL, "", fmt.Sprintf("s%d", i)).ID
		for range streamsPer {
			ch, _ := subscribe(t, in.URL, "", sess[i].id, "")
			sess[i].streams = append(sess[i].streams, ch)
		}
	}
	if got := in.app.svc.Events().Stats().Subscribers; got != int64(n*streamsPer) {
		t.Fatalf("%d subscribers counted, want %d", got, n*streamsPer)
	}
	lat := make([]float64, n)
	nodes := make([]string, n)
	var wg sync.WaitGroup
	next := make(chan int)
	for range workers {
		wg.Go(func() {
			for i := range next {
				start := time.Now()
				nodes[i] = chat(t, in.URL, "", sess[i].id, "hello "+strconv.Itoa(i)).Node.ID
				lat[i] = float64(time.Since(start).Microseconds()) / 1000
			}
		})
	}
	for i := range sess {
		next <- i
	}
	close(next)
	wg.Wait()
	for i, s := range sess {
		for j, ch := range s.streams {
			ev := nextEvent(t, ch)
			if ev.Type != session.EventNodeCreated || ev.Data.NodeID != nodes[i] || ev.Data.SessionID != s.id {
				t.Fatalf("session %d stream %d: first event %+v, want node.created of %s", i, j, ev, nodes[i])
			}
		}
	}
	return lat
}

// TestEventStreamsDoNotStarveCache: SSE streams on more sessions than the
// Redis pool has connections (50 against 20 on two cores) hold no
// connection of the cache's pool: no connection is blocked in Redis, the
// instance has exactly one subscription of the notification channel
// whatever the number of sessions, chats work, every stream receives its
// event, and the cache stays healthy with its breaker never opened.
func TestEventStreamsDoNotStarveCache(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	in := startInstance(t, instanceOptions{Redis: srv})
	rdb := srv.Client(t)
	streamLoad(t, in, 50, 1, 4)

	c := countEventConns(t, rdb, in.ns)
	if c.blocked != 0 {
		t.Errorf("CLIENT LIST: %d connections blocked in a command with 50 sessions watched, want 0", c.blocked)
	}
	if c.notifySubs != 1 {
		t.Errorf("PUBSUB NUMSUB %s:ev:notify = %d, want 1 (one reader per instance)", in.ns, c.notifySubs)
	}
	if c.clients >= 50 {
		t.Errorf("CLIENT LIST: %d connections with 50 sessions watched; they must not grow with the sessions", c.clients)
	}
	h := healthOf(t, in)
	if h.Status != "healthy" || h.Cache.Outages != 0 || h.Breaker != "closed" {
		t.Errorf("health = %s, breaker %s, %d outages; want healthy, closed, 0", h.Status, h.Breaker, h.Cache.Outages)
	}
	if w := h.Service.Events.Watched; w != 50 {
		t.Errorf("events.watched = %d, want 50", w)
	}
}

// TestNodeEventsInVersionOrder: 50 concurrent If-Match writers of one node,
// spread over two instances sharing Redis and the database (so an
// in-process lock could not order them), repeated; every subscriber, on
// either instance, receives the node's node.updated events in strictly
// increasing version order, ending with the last version.
func TestNodeEventsInVersionOrder(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	db := t.TempDir() + "/contextd.db"
	ns := "t" + randHex(4)
	a := startInstance(t, instanceOptions{Redis: srv, Database: db, Namespace: ns})
	b := startInstance(t, instanceOptions{Redis: srv, Database: db, Namespace: ns})
	s := createSession(t, a.URL, "", "order")
	node := chat(t, a.URL, "", s.ID, "v1").Node
	subs := map[string]<-chan sseEvent{}
	for name, in := range map[string]*instance{"a": a, "b": b} {
		for i := range 2 {
			subs[fmt.Sprintf("%s%d", name, i)], _ = subscribe(t, in.URL, "", s.ID, "")
		}
	}
	const writers, rounds = 50, 3
	version := node.Version
	for round := range rounds {
		var wg sync.WaitGroup
		for w := range writers {
			in := a
			if w%2 == 1 {
				in = b
			}
			wg.Go(func() { patchUntilApplied(t, in, node.ID, fmt.Sprintf("r%d w%d", round, w)) })
		}
		wg.Wait()
		version += writers
		for name, ch := range subs {
			prev := int64(0)
			for prev < version {
				ev := nextEvent(t, ch)
				if ev.Type != session.EventNodeUpdated || ev.Data.NodeID != node.ID {
					t.Fatalf("subscriber %s: event %s %+v, want node.updated of %s", name, ev.Type, ev.Data, node.ID)
				}
				if ev.Data.Version <= prev {
					t.Fatalf("subscriber %s, round %d: version %d after %d: a client applying events in order would go back", name, round, ev.Data.Version, prev)
				}
				prev = ev.Data.Version
			}
		}
	}
}

// patchUntilApplied updates the node's content with If-Match on its
// current version, retrying after each 412 until one applies.
func patchUntilApplied(tb testing.TB, in *instance, id, content string) {
	tb.Helper()
	for {
		var n session.Node
		must(tb, in.URL, req{Method: "GET", Path: "/api/nodes/" + id}, http.StatusOK, &n)
		r := do(tb, in.URL, req{Method: "PATCH", Path: "/api/nodes/" + id, Header: map[string]string{"If-Match": strconv.Quote(strconv.FormatInt(n.Version, 10))},
			Body: map[string]any{"content": content}})
		switch r.Status {
		case http.StatusOK:
			return
		case http.StatusPreconditionFailed:
			continue
		default:
			tb.Errorf("PATCH /api/nodes/%s = %d %s", id, r.Status, r.Body)
			return
		}
	}
}

// TestResumePastTheEndIsReset: a Last-Event-ID beyond anything the session
// gave out, up to the largest stream ID, gets a session.reset and then a
// live stream (not a stream that closes at once, which browsers retry
// forever).
func TestResumePastTheEndIsReset(t *testing.T) {
	t.Parallel()
	eventModes(t, func(t *testing.T, in *instance, _ *redistest.Server) {
		s := createSession(t, in.URL, "", "past")
		chat(t, in.URL, "", s.ID, "first")
		for _, last := range []string{"18446744073709551615-18446744073709551615", "18446744073709551615-0", "99999999999999-0"} {
			ch, stop := subscribe(t, in.URL, "", s.ID, last)
			if ev := nextEvent(t, ch); ev.Type != session.EventSessionReset || ev.Data.SessionID != s.ID {
				t.Fatalf("Last-Event-ID %s: first event %s %+v, want session.reset", last, ev.Type, ev.Data)
			}
			res := chat(t, in.URL, "", s.ID, "after "+last)
			if ev := nextEvent(t, ch); ev.Type != session.EventNodeCreated || ev.Data.NodeID != res.Node.ID {
				t.Fatalf("Last-Event-ID %s: event after the reset %s %+v, want node.created of %s", last, ev.Type, ev.Data, res.Node.ID)
			}
			stop()
		}
	})
}

// TestMalformedStreamEntriesSkipped: entries in a session's stream that are
// not events of that session (not JSON, no type, no or another session ID,
// no event field) reach no client, live or resuming, and are counted.
func TestMalformedStreamEntriesSkipped(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	in := startInstance(t, instanceOptions{Redis: srv})
	rdb := srv.Client(t)
	s := createSession(t, in.URL, "", "bad")
	live, _ := subscribe(t, in.URL, "", s.ID, "")
	before := chat(t, in.URL, "", s.ID, "before")
	resumeFrom := nextEvent(t, live)
	if resumeFrom.Data.NodeID != before.Node.ID {
		t.Fatalf("live stream: first event %+v, want node.created of %s", resumeFrom, before.Node.ID)
	}
	key := in.ns + ":ev:{" + rediskey.Escape(localOwner) + ":" + s.ID + "}"
	bad := []map[string]any{
		{"e": "not json"},
		{"e": `{}`},
		{"e": `{"type":"node.created"}`},
		{"e": `{"type":"node.created","session_id":"other"}`},
		{"x": "1"},
	}
	for _, v := range bad {
		if err := rdb.XAdd(t.Context(), &redis.XAddArgs{Stream: key, Values: v}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	// The live reader is woken by the next real event, and reads past them.
	good := chat(t, in.URL, "", s.ID, "after")
	if ev := nextEvent(t, live); ev.Type != session.EventNodeCreated || ev.Data.NodeID != good.Node.ID || ev.Data.SessionID != s.ID {
		t.Fatalf("live stream: first event %s %+v, want node.created of %s", ev.Type, ev.Data, good.Node.ID)
	}
	// A resume from before them reads them from the stream too.
	resumed, _ := subscribe(t, in.URL, "", s.ID, resumeFrom.ID)
	if ev := nextEvent(t, resumed); ev.Type != session.EventNodeCreated || ev.Data.NodeID != good.Node.ID {
		t.Fatalf("resumed stream: first event %s %+v, want node.created of %s", ev.Type, ev.Data, good.Node.ID)
	}
	// Each reading path (the live reader, the resume's catch-up) counts each.
	if got := healthOf(t, in).Service.Events.Malformed; got != uint64(2*len(bad)) {
		t.Errorf("events.malformed = %d, want %d", got, 2*len(bad))
	}
}

// TestEventSubscriptionLimits: past the per-owner or per-instance limit a
// subscription gets 503 too_many_subscriptions (a JSON error, with
// Retry-After); once a stream ends, its slot is free again.
func TestEventSubscriptionLimits(t *testing.T) {
	t.Parallel()
	const alice, bob = "alice-key-123", "bob-key-4567"
	eventModesKeys(t, map[string]string{alice: "alice", bob: "bob"}, func(t *testing.T, in *instance) {
		in.app.svc.Events().SetLimits(session.EventLimits{MaxSubscriptions: 3, MaxSubscriptionsPerOwner: 2})
		as := createSession(t, in.URL, alice, "a")
		bs := createSession(t, in.URL, bob, "b")
		_, stopA1 := subscribe(t, in.URL, alice, as.ID, "")
		subscribe(t, in.URL, alice, as.ID, "")
		refused := func(key, id, why string) {
			t.Helper()
			r := openStream(t, in.URL, key, id)
			if r.Status != http.StatusServiceUnavailable || r.errCode(t) != "too_many_subscriptions" || r.Header.Get("Retry-After") == "" {
				t.Fatalf("%s: subscribe = %d %s (Retry-After %q), want 503 too_many_subscriptions with Retry-After", why, r.Status, r.Body, r.Header.Get("Retry-After"))
			}
		}
		refused(alice, as.ID, "alice's third")
		subscribe(t, in.URL, bob, bs.ID, "") // the instance's third
		refused(bob, bs.ID, "the instance's fourth")
		stopA1()
		eventually(t, "alice's first stream to end", func() bool { return in.app.svc.Events().Stats().Subscribers == 2 })
		ch, _ := subscribe(t, in.URL, alice, as.ID, "")
		res := chat(t, in.URL, alice, as.ID, "hi")
		if ev := nextEvent(t, ch); ev.Data.NodeID != res.Node.ID {
			t.Fatalf("event on the re-opened stream = %+v, want node.created of %s", ev, res.Node.ID)
		}
		if st := in.app.svc.Events().Stats(); st.Refused != 2 {
			t.Errorf("events.refused = %d, want 2", st.Refused)
		}
	})
}

// openStream requests a session's event stream and returns the response;
// a 200 (an open stream) is closed at once with its body unread.
func openStream(tb testing.TB, base, key, sessionID string) response {
	tb.Helper()
	ctx, cancel := context.WithCancel(tb.Context())
	defer cancel()
	r, err := http.NewRequestWithContext(ctx, "GET", base+"/api/sessions/"+sessionID+"/events", nil)
	if err != nil {
		tb.Fatal(err)
	}
	r.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(r)
	if err != nil {
		tb.Fatalf("GET events of %s: %v", sessionID, err)
	}
	defer resp.Body.Close()
	out := response{Status: resp.StatusCode, Header: resp.Header}
	if resp.StatusCode != http.StatusOK {
		out.Body, _ = io.ReadAll(resp.Body)
	}
	return out
}

// eventModesKeys is eventModes with API keys.
func eventModesKeys(t *testing.T, keys map[string]string, f func(t *testing.T, in *instance)) {
	t.Helper()
	for _, mode := range []string{"redis", "memory"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			o := instanceOptions{APIKeys: keys}
			if mode == "redis" {
				o.Redis = redistest.Start(t)
			}
			f(t, startInstance(t, o))
		})
	}
}

// TestEventLimitsConfig: the limits come from the environment or flags;
// a bad value is an error naming the variable.
func TestEventLimitsConfig(t *testing.T) {
	t.Parallel()
	c, err := loadConfig([]string{"--events-max-subscriptions-per-owner", "7"}, func(k string) string {
		return map[string]string{"EVENTS_MAX_SUBSCRIPTIONS": "70"}[k]
	}, &strings.Builder{})
	if err != nil {
		t.Fatal(err)
	}
	if c.Events.MaxSubscriptions != 70 || c.Events.MaxSubscriptionsPerOwner != 7 {
		t.Errorf("limits = %+v, want 70 and 7", c.Events)
	}
	c, err = loadConfig(nil, func(string) string { return "" }, &strings.Builder{})
	if err != nil || c.Events.MaxSubscriptions != session.DefaultMaxSubscriptions || c.Events.MaxSubscriptionsPerOwner != session.DefaultMaxSubscriptionsPerOwner {
		t.Errorf("default limits = %+v, %v", c.Events, err)
	}
	for _, v := range []string{"EVENTS_MAX_SUBSCRIPTIONS", "EVENTS_MAX_SUBSCRIPTIONS_PER_OWNER"} {
		for _, bad := range []string{"0", "-1", "many"} {
			_, err := loadConfig(nil, func(k string) string {
				if k == v {
					return bad
				}
				return ""
			}, &strings.Builder{})
			if err == nil || !strings.Contains(err.Error(), v) {
				t.Errorf("%s=%s: loadConfig error = %v, want one naming %s", v, bad, err, v)
			}
		}
	}
}
