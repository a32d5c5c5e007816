package session_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache"
	"github.com/tiercache/tiercache/internal/rediskey"
	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/session"
)

// syncBuffer is a log sink shared by goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// clusterInstance is one Service with its own cache and its own cluster
// client, as one contextd process on a Redis Cluster would have.
type clusterInstance struct {
	svc   *session.Service
	cache *tiercache.Cache
	rdb   *redis.ClusterClient
	log   *syncBuffer // warnings of the Service and the cache
}

// newClusterInstance returns a Service on cl under namespace ns, its cache
// subscribed to invalidations.
func newClusterInstance(tb testing.TB, st session.Store, cl *redistest.Cluster, ns string) *clusterInstance {
	tb.Helper()
	in := &clusterInstance{rdb: cl.Client(tb), log: &syncBuffer{}}
	log := slog.New(slog.NewTextHandler(in.log, &slog.HandlerOptions{Level: slog.LevelWarn}))
	c, err := tiercache.New(tiercache.Options{Redis: in.rdb, Namespace: ns, L2Timeout: 500 * time.Millisecond, Logger: log})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	in.cache = c
	svc, err := session.NewService(session.ServiceOptions{Store: st, Cache: c, Redis: in.rdb, Namespace: ns, Logger: log})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { svc.Close() })
	in.svc = svc
	waitUntil(tb, "the cache subscribed to invalidations on the cluster", func() bool {
		h := c.Health(tb.Context())
		return h.Subscriber != nil && h.Subscriber.Up
	})
	return in
}

// checkClean fails when the instance failed a Redis call or logged a
// warning: write-throughs fail only in the log and the counters, so a
// command touching two slots (CROSSSLOT) would show here.
func (in *clusterInstance) checkClean(tb testing.TB, name string, wantPublishErrors uint64) {
	tb.Helper()
	st := in.svc.Stats()
	if st.CacheWriteFails != 0 || st.StoreFallbacks != 0 || st.Events.ReadErrors != 0 || st.Events.PublishErrors != wantPublishErrors {
		tb.Errorf("instance %s: stats = %+v, want no cache write failures, store fallbacks, read errors and %d publish errors",
			name, st, wantPublishErrors)
	}
	if cs := in.cache.Stats(); cs.L2Errors != 0 || cs.Corrupt != 0 {
		tb.Errorf("instance %s: cache stats = %+v, want no L2 errors", name, cs)
	}
	if log := in.log.String(); log != "" {
		tb.Errorf("instance %s logged warnings:\n%s", name, log)
	}
}

// recvType receives the next event and fails unless it has type typ and,
// when nodeID is not empty, that node ID.
func recvType(tb testing.TB, ch <-chan session.Event, typ, nodeID string) session.Event {
	tb.Helper()
	got := recv(tb, ch)
	if got.Type != typ || (nodeID != "" && got.NodeID != nodeID) {
		tb.Fatalf("event = %+v, want %s of node %q", got, typ, nodeID)
	}
	return got
}

// TestServiceOnCluster runs the Service on a 3-master Redis Cluster with
// two instances (each its own cluster client and cache, one store): two
// owners, one of them named with the characters the hash tag escapes, use
// the same session IDs; every change made on instance a is read and
// received as an event on instance b. Every cache script, event script,
// MULTI and XREAD must stay in one slot, which the absence of Redis errors
// proves.
func TestServiceOnCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a cluster")
	}
	t.Parallel()
	cl := redistest.StartCluster(t, 3)
	ctx := t.Context()
	st := openStore(t)
	const ns = "clu"
	a := newClusterInstance(t, st, cl, ns)
	b := newClusterInstance(t, st, cl, ns)
	owners := []string{"alice", "bob {x}%:1}"}

	// The event streams of the two owners' "trip" sessions live on
	// different masters (node i holds the i-th third of the slots).
	node := func(owner string) int64 {
		key := ns + ":ev:{" + rediskey.Escape(owner) + ":trip}"
		s, err := a.rdb.ClusterKeySlot(ctx, key).Result()
		if err != nil {
			t.Fatal(err)
		}
		return min(s/(16384/3), 2)
	}
	if node(owners[0]) == node(owners[1]) {
		t.Fatalf("the trip streams of %q and %q are on one master; pick owners whose streams are not", owners[0], owners[1])
	}

	type owned struct {
		trip, notes session.Session
		events      <-chan session.Event // b's subscription to trip
		eventIDs    []string             // IDs of trip's events, in order
		hotel       session.Node         // n1, in notes
		chat        session.ChatResult   // in trip, references @n1
	}
	state := map[string]*owned{}
	for _, owner := range owners {
		o := &owned{}
		state[owner] = o
		var err error
		if o.trip, err = a.svc.CreateSession(ctx, owner, "trip", "Trip of "+owner); err != nil {
			t.Fatalf("CreateSession(%q, trip) = %v", owner, err)
		}
		if o.notes, err = a.svc.CreateSession(ctx, owner, "", "Notes"); err != nil {
			t.Fatalf("CreateSession(%q) = %v", owner, err)
		}
		// b reads the empty context first, so its L1 holds what a's writes
		// must invalidate.
		if c, err := b.svc.Context(ctx, owner, "trip"); err != nil || len(c.Nodes) != 0 {
			t.Fatalf("b.Context(%q, trip) = %d nodes, %v; want an empty context", owner, len(c.Nodes), err)
		}
		subCtx, cancel := context.WithCancel(ctx)
		t.Cleanup(cancel)
		if o.events, err = b.svc.Subscribe(subCtx, owner, "trip", ""); err != nil {
			t.Fatalf("b.Subscribe(%q, trip) = %v", owner, err)
		}
	}

	// The steps build on each other: stop at the first that fails.
	step := func(name string, f func(t *testing.T)) {
		t.Helper()
		if !t.Run(name, f) {
			t.FailNow()
		}
	}
	step("chat with references", func(t *testing.T) {
		for _, owner := range owners {
			o := state[owner]
			res, err := a.svc.Chat(ctx, owner, o.notes.ID, "", "the hotel is the one by the station of "+owner, nil)
			if err != nil {
				t.Fatalf("Chat(%q, notes) = %v", owner, err)
			}
			o.hotel = res.Node
			if o.hotel.ShortID != "n1" {
				t.Fatalf("first node of %q has short ID %q, want n1", owner, o.hotel.ShortID)
			}
			if o.chat, err = a.svc.Chat(ctx, owner, "trip", "", "book the hotel @n1", map[string]any{"lang": "en"}); err != nil {
				t.Fatalf("Chat(%q, trip, @n1) = %v", owner, err)
			}
			c := o.chat.Context
			if len(c.Nodes) != 1 || len(c.Refs) != 1 || c.Refs[0].ID != o.hotel.ID || !slices.Equal(o.chat.Node.Refs, []string{o.hotel.ID}) {
				t.Fatalf("Chat(%q, @n1) context = %+v, want the message and a reference to %s", owner, c, o.hotel.ID)
			}
			ev := recvType(t, o.events, session.EventNodeCreated, o.chat.Node.ID)
			if ev.Node == nil || ev.Node.Content != "book the hotel @n1" || ev.SessionID != "trip" {
				t.Fatalf("b received %+v, want the chat node", ev)
			}
			o.eventIDs = append(o.eventIDs, ev.ID)
		}
	})

	step("context across instances", func(t *testing.T) {
		for _, owner := range owners {
			o := state[owner]
			// b held the empty context in L1; a's writes invalidate it.
			waitUntil(t, "b to see "+owner+"'s chat", func() bool {
				c, err := b.svc.Context(ctx, owner, "trip")
				return err == nil && len(c.Nodes) == 1 && c.Nodes[0].ID == o.chat.Node.ID &&
					len(c.Refs) == 1 && c.Refs[0].ID == o.hotel.ID
			})
			if c, err := b.svc.Context(ctx, owner, o.notes.ID); err != nil || len(c.Nodes) != 1 || c.Nodes[0].ID != o.hotel.ID {
				t.Fatalf("b.Context(%q, notes) = %+v, %v", owner, c, err)
			}
		}
	})

	step("node CRUD", func(t *testing.T) {
		for _, owner := range owners {
			o := state[owner]
			n, err := a.svc.CreateNode(ctx, owner, session.Node{SessionID: "trip", Role: session.RoleNote, Content: "pack boots", Refs: []string{"#n1"}})
			if err != nil {
				t.Fatalf("CreateNode(%q) = %v", owner, err)
			}
			o.eventIDs = append(o.eventIDs, recvType(t, o.events, session.EventNodeCreated, n.ID).ID)
			if got, err := b.svc.GetNode(ctx, owner, n.ID); err != nil || got.Content != "pack boots" || !slices.Equal(got.Refs, []string{o.hotel.ID}) {
				t.Fatalf("b.GetNode(%q, %s) = %+v, %v", owner, n.ID, got, err)
			}
			content := "pack boots and a coat"
			upd, err := a.svc.UpdateNode(ctx, owner, n.ID, n.Version, session.NodeUpdate{Content: &content})
			if err != nil {
				t.Fatalf("UpdateNode(%q) = %v", owner, err)
			}
			ev := recvType(t, o.events, session.EventNodeUpdated, n.ID)
			if ev.Version != upd.Version || ev.Node == nil || ev.Node.Content != content {
				t.Fatalf("b received %+v, want version %d", ev, upd.Version)
			}
			o.eventIDs = append(o.eventIDs, ev.ID)
			waitUntil(t, "b to read the update", func() bool {
				got, err := b.svc.GetNode(ctx, owner, n.ID)
				return err == nil && got.Version == upd.Version && got.Content == content
			})
			var mismatch *session.VersionMismatchError
			if _, err := b.svc.UpdateNode(ctx, owner, n.ID, n.Version, session.NodeUpdate{Content: &content}); !errors.As(err, &mismatch) {
				t.Fatalf("b.UpdateNode with a stale version = %v, want a version mismatch", err)
			}
			if _, err := a.svc.DeleteNode(ctx, owner, n.ID, upd.Version); err != nil {
				t.Fatalf("DeleteNode(%q) = %v", owner, err)
			}
			o.eventIDs = append(o.eventIDs, recvType(t, o.events, session.EventNodeDeleted, n.ID).ID)
			waitUntil(t, "b to see the node deleted", func() bool {
				_, err := b.svc.GetNode(ctx, owner, n.ID)
				c, cerr := b.svc.Context(ctx, owner, "trip")
				return errors.Is(err, session.ErrNotFound) && cerr == nil && len(c.Nodes) == 1
			})
		}
	})

	step("resolve short IDs", func(t *testing.T) {
		for _, owner := range owners {
			o := state[owner]
			for _, in := range []*clusterInstance{a, b} {
				got, err := in.svc.Resolve(ctx, owner, "@n1")
				if err != nil || got.ID != o.hotel.ID {
					t.Fatalf("Resolve(%q, @n1) = %s, %v; want %s", owner, got.ID, err, o.hotel.ID)
				}
				if got, err := in.svc.Resolve(ctx, owner, "n2"); err != nil || got.ID != o.chat.Node.ID {
					t.Fatalf("Resolve(%q, n2) = %s, %v; want %s", owner, got.ID, err, o.chat.Node.ID)
				}
				if _, err := in.svc.Resolve(ctx, owner, "n3"); !errors.Is(err, session.ErrNotFound) { // deleted
					t.Fatalf("Resolve(%q, n3) = %v, want ErrNotFound", owner, err)
				}
			}
		}
	})

	step("warm", func(t *testing.T) {
		for _, owner := range owners {
			o := state[owner]
			res, err := b.svc.Warm(ctx, owner, []string{"trip", o.notes.ID, "nosuch"})
			if err != nil || res.Sessions != 2 || res.Nodes != 2 || res.Missing != 1 {
				t.Fatalf("Warm(%q) = %+v, %v; want 2 sessions, 2 nodes, 1 missing", owner, res, err)
			}
		}
		res, err := a.svc.WarmRecent(ctx, 10)
		if err != nil || res.Sessions != 4 || res.Nodes != 4 {
			t.Fatalf("WarmRecent = %+v, %v; want 4 sessions, 4 nodes", res, err)
		}
	})

	step("resume with Last-Event-ID", func(t *testing.T) {
		for _, owner := range owners {
			o := state[owner]
			subCtx, cancel := context.WithCancel(ctx)
			ch, err := a.svc.Subscribe(subCtx, owner, "trip", o.eventIDs[0])
			if err != nil {
				t.Fatalf("a.Subscribe(%q, from %s) = %v", owner, o.eventIDs[0], err)
			}
			for _, want := range o.eventIDs[1:] {
				if got := recv(t, ch); got.ID != want || got.SessionID != "trip" {
					t.Fatalf("resumed event = %+v, want %s", got, want)
				}
			}
			cancel()
			for range ch { // closes after cancel
			}
		}
	})

	step("reset past retained", func(t *testing.T) {
		owner := owners[1]
		sess, err := a.svc.CreateSession(ctx, owner, "busy", "busy")
		if err != nil {
			t.Fatal(err)
		}
		ev := a.svc.Events()
		var ids []string
		for i := range session.EventStreamLen + 300 {
			id, err := ev.Publish(ctx, owner, session.Event{Type: session.EventNodeUpdated, SessionID: sess.ID, Version: int64(i + 1)})
			if err != nil {
				t.Fatalf("Publish #%d: %v", i, err)
			}
			ids = append(ids, id)
		}
		subCtx, cancel := context.WithCancel(ctx)
		defer cancel()
		ch, err := b.svc.Subscribe(subCtx, owner, sess.ID, ids[0])
		if err != nil {
			t.Fatal(err)
		}
		wantReset(t, ch, sess.ID, ids[len(ids)-1])
		next, err := ev.Publish(ctx, owner, session.Event{Type: session.EventNodeUpdated, SessionID: sess.ID})
		if err != nil {
			t.Fatal(err)
		}
		if got := recv(t, ch); got.ID != next {
			t.Fatalf("event after the reset = %+v, want %s", got, next)
		}
	})

	step("lost stream is reset", func(t *testing.T) {
		owner := owners[1]
		o := state[owner]
		key := ns + ":ev:{" + rediskey.Escape(owner) + ":" + o.notes.ID + "}"
		if n, err := a.rdb.Del(ctx, key).Result(); err != nil || n != 1 { // as if it expired
			t.Fatalf("DEL %s = %d, %v; want the notes stream deleted", key, n, err)
		}
		subCtx, cancel := context.WithCancel(ctx)
		defer cancel()
		ch, err := b.svc.Subscribe(subCtx, owner, o.notes.ID, "1-0")
		if err != nil {
			t.Fatal(err)
		}
		reset := wantReset(t, ch, o.notes.ID, "")
		res, err := a.svc.Chat(ctx, owner, o.notes.ID, "", "and breakfast", nil)
		if err != nil {
			t.Fatal(err)
		}
		got := recvType(t, ch, session.EventNodeCreated, res.Node.ID)
		ch2, err := a.svc.Subscribe(subCtx, owner, o.notes.ID, reset.ID)
		if err != nil {
			t.Fatal(err)
		}
		if first := recv(t, ch2); first.ID != got.ID {
			t.Fatalf("resume from the reset ID: first event = %+v, want %s", first, got.ID)
		}
	})

	step("lost publish is recovered", func(t *testing.T) {
		owner := owners[0]
		o := state[owner]
		// A publish that fails (here its context is already done) is
		// remembered; the recovery loop appends a session.reset.
		dead, cancel := context.WithCancel(ctx)
		cancel()
		if _, err := a.svc.Events().Publish(dead, owner, session.Event{Type: session.EventNodeUpdated, SessionID: "trip"}); err == nil {
			t.Fatal("Publish with a cancelled context succeeded")
		}
		got := recv(t, o.events)
		if got.Type != session.EventSessionReset || got.SessionID != "trip" {
			t.Fatalf("b received %+v after a lost publish, want session.reset", got)
		}
		waitUntil(t, "the recovery reset to be counted", func() bool {
			st := a.svc.Events().Stats()
			return st.LostSessions == 0 && st.RecoveryResets == 1
		})
	})

	step("delete session", func(t *testing.T) {
		for _, owner := range owners {
			o := state[owner]
			if err := a.svc.DeleteSession(ctx, owner, "trip", 0); err != nil {
				t.Fatalf("DeleteSession(%q, trip) = %v", owner, err)
			}
			got := recv(t, o.events)
			if got.Type != session.EventSessionDeleted {
				t.Fatalf("b received %+v, want session.deleted", got)
			}
			select {
			case _, ok := <-o.events:
				if ok {
					t.Fatal("event after session.deleted")
				}
			case <-time.After(10 * time.Second):
				t.Fatal("subscription open 10s after session.deleted")
			}
			waitUntil(t, "b to see the session deleted", func() bool {
				_, err := b.svc.Context(ctx, owner, "trip")
				return errors.Is(err, session.ErrNotFound)
			})
			// The other session of the owner, and its reference target, stay.
			if got, err := b.svc.Resolve(ctx, owner, "n1"); err != nil || got.ID != o.hotel.ID {
				t.Fatalf("Resolve(%q, n1) after deleting trip = %s, %v", owner, got.ID, err)
			}
		}
	})

	a.checkClean(t, "a", 1) // the publish with a cancelled context
	b.checkClean(t, "b", 0)
}

// TestEventsClusterNodeRestart: the master holding a session's stream is
// killed and restarted empty (its slots kept, its data lost). A publish
// made while it is down fails and is remembered; the connected subscriber
// on another instance learns of the loss with a session.reset (from its
// reader noticing the lost stream or from the recovery loop), then gets
// the next event; a resume from before the outage is reset too.
func TestEventsClusterNodeRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a cluster")
	}
	t.Parallel()
	cl := redistest.StartCluster(t, 3)
	const owner, sid = "carol {c}%", "s1"
	a := session.NewEvents(cl.Client(t), "rst", nil)
	defer a.Close()
	b := session.NewEvents(cl.Client(t), "rst", nil)
	defer b.Close()

	key := "rst:ev:{" + rediskey.Escape(owner) + ":" + sid + "}"
	slot, err := cl.Client(t).ClusterKeySlot(t.Context(), key).Result()
	if err != nil {
		t.Fatal(err)
	}
	nodes := cl.Nodes()
	node := nodes[min(int(slot)/(16384/len(nodes)), len(nodes)-1)]

	subCtx, cancel := context.WithCancel(t.Context())
	defer cancel()
	ch, err := b.Subscribe(subCtx, owner, sid, "")
	if err != nil {
		t.Fatal(err)
	}
	before, err := a.Publish(t.Context(), owner, session.Event{Type: session.EventNodeCreated, SessionID: sid, NodeID: "x1"})
	if err != nil {
		t.Fatal(err)
	}
	recvType(t, ch, session.EventNodeCreated, "x1")

	node.Kill(t)
	pctx, pcancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	_, err = a.Publish(pctx, owner, session.Event{Type: session.EventNodeUpdated, SessionID: sid, NodeID: "x1"})
	pcancel()
	if err == nil {
		t.Fatal("Publish with the stream's master down succeeded")
	}
	node.Restart(t)

	reset := recv(t, ch)
	if reset.Type != session.EventSessionReset || reset.SessionID != sid {
		t.Fatalf("first event after the restart = %+v, want session.reset", reset)
	}
	waitUntil(t, "the lost publish's recovery reset", func() bool {
		st := a.Stats()
		return st.LostSessions == 0 && st.RecoveryResets == 1
	})
	var next string
	waitUntil(t, "a publish after the restart", func() bool {
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		next, err = a.Publish(ctx, owner, session.Event{Type: session.EventNodeDeleted, SessionID: sid, NodeID: "x1"})
		return err == nil
	})
	for {
		got := recv(t, ch)
		if got.Type == session.EventSessionReset { // the reader's and the recovery's
			continue
		}
		if got.ID != next || got.Type != session.EventNodeDeleted {
			t.Fatalf("event after the reset = %+v, want node.deleted %s", got, next)
		}
		break
	}
	resumed, err := a.Subscribe(subCtx, owner, sid, before)
	if err != nil {
		t.Fatal(err)
	}
	wantReset(t, resumed, sid, "")
	if st := b.Stats(); st.Resets == 0 {
		t.Errorf("b's stats = %+v, want its reset counted", st)
	}
}
