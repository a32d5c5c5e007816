package session_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tiercache/tiercache"
	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/session"
	"github.com/tiercache/tiercache/session/sqlitestore"
)

// countingStore counts the batch reads a Service makes.
type countingStore struct {
	session.Store
	getNodes, nodeIDs, getSessions atomic.Int64
}

func (c *countingStore) GetNodes(ctx context.Context, ids []string) (map[string]session.Node, error) {
	c.getNodes.Add(1)
	return c.Store.GetNodes(ctx, ids)
}

func (c *countingStore) SessionNodeIDs(ctx context.Context, keys []session.SessionKey) (map[session.SessionKey]session.NodeList, error) {
	c.nodeIDs.Add(1)
	return c.Store.SessionNodeIDs(ctx, keys)
}

func (c *countingStore) GetSessions(ctx context.Context, keys []session.SessionKey) (map[session.SessionKey]session.Session, error) {
	c.getSessions.Add(1)
	return c.Store.GetSessions(ctx, keys)
}

func openStore(tb testing.TB) session.Store {
	tb.Helper()
	st, err := sqlitestore.Open(tb.Context(), filepath.Join(tb.TempDir(), "s.db"))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { st.Close() })
	return st
}

// newService returns a Service with its own cache (on rs when not nil).
func newService(tb testing.TB, st session.Store, rs *redistest.Server, ns string) *session.Service {
	tb.Helper()
	var opts tiercache.Options
	opts.Namespace = ns
	// 500 ms, not the default 50 ms, Redis budget: with -race on two shared
	// cores a healthy call can take longer; these tests are about the Service.
	opts.L2Timeout = 500 * time.Millisecond
	if rs != nil {
		opts.Redis = rs.Client(tb)
	}
	c, err := tiercache.New(opts)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	svc, err := session.NewService(session.ServiceOptions{Store: st, Cache: c, Redis: opts.Redis, Namespace: ns})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { svc.Close() })
	return svc
}

// TestContextOneBatch: a cold context read makes one batch load of the
// listed nodes and one of the referenced ones; a warm one makes none.
func TestContextOneBatch(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t)
	ctx := t.Context()
	st := openStore(t)
	w := newService(t, st, rs, "ob")
	other, err := w.CreateSession(ctx, "o", "", "other")
	if err != nil {
		t.Fatal(err)
	}
	r0, err := w.Chat(ctx, "o", other.ID, "", "elsewhere", nil)
	if err != nil {
		t.Fatal(err)
	}
	s, _ := w.CreateSession(ctx, "o", "", "main")
	for i := range 20 {
		text := fmt.Sprint("message ", i)
		if i == 5 {
			text += " see @" + r0.Node.ShortID
		}
		if _, err := w.Chat(ctx, "o", s.ID, session.RoleUser, text, map[string]any{"i": i}); err != nil {
			t.Fatal(err)
		}
	}
	// A second instance with an empty L1 but the same namespace reads from L2;
	// a third with a fresh namespace reads from the store.
	cs := &countingStore{Store: st}
	cold := newService(t, cs, rs, "ob-cold")
	c, err := cold.Context(ctx, "o", s.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Nodes) != 20 || len(c.Refs) != 1 || c.Refs[0].ID != r0.Node.ID {
		t.Fatalf("context: %d nodes, refs %v", len(c.Nodes), c.Refs)
	}
	for i, n := range c.Nodes {
		if n.Seq != int64(i+1) {
			t.Errorf("node %d has seq %d: not in order", i, n.Seq)
		}
	}
	if got := cs.getNodes.Load(); got != 2 {
		t.Errorf("cold context: %d GetNodes calls, want 2 (nodes, refs)", got)
	}
	if got := cs.nodeIDs.Load(); got != 1 {
		t.Errorf("cold context: %d SessionNodeIDs calls, want 1", got)
	}
	cs.getNodes.Store(0)
	cs.nodeIDs.Store(0)
	cs.getSessions.Store(0)
	if _, err := cold.Context(ctx, "o", s.ID); err != nil {
		t.Fatal(err)
	}
	if n := cs.getNodes.Load() + cs.nodeIDs.Load() + cs.getSessions.Load(); n != 0 {
		t.Errorf("warm context made %d store reads, want 0", n)
	}
	// Other owners see nothing.
	if _, err := cold.Context(ctx, "intruder", s.ID); !errors.Is(err, session.ErrNotFound) {
		t.Errorf("Context as another owner = %v, want ErrNotFound", err)
	}
	if _, err := cold.Resolve(ctx, "intruder", "n1"); !errors.Is(err, session.ErrNotFound) {
		t.Errorf("Resolve as another owner = %v, want ErrNotFound", err)
	}
	if _, err := cold.Resolve(ctx, "o", "#n1"); err != nil {
		t.Errorf("Resolve(#n1) = %v", err)
	}
	if _, err := cold.Resolve(ctx, "o", "n-1"); !errors.Is(err, session.ErrInvalid) {
		t.Errorf("Resolve(n-1) = %v, want ErrInvalid", err)
	}
	st2 := cold.Stats()
	if st2.ActiveSessions != 1 || st2.Latency["context"].Count != 3 || st2.Latency["context"].P99 <= 0 {
		t.Errorf("stats = %+v", st2)
	}
}

// TestChatUnknownRefs: every unknown reference is named and nothing is stored.
func TestChatUnknownRefs(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	svc := newService(t, openStore(t), nil, "ur")
	s, _ := svc.CreateSession(ctx, "o", "", "s")
	if _, err := svc.Chat(ctx, "o", s.ID, "", "a", nil); err != nil {
		t.Fatal(err)
	}
	_, err := svc.Chat(ctx, "o", s.ID, "", "see @n1, @n7 and @n9", nil)
	var ue *session.UnknownRefsError
	if !errors.As(err, &ue) || !slices.Equal(ue.ShortIDs, []string{"n7", "n9"}) || !errors.Is(err, session.ErrInvalid) {
		t.Fatalf("Chat with unknown refs = %v, want UnknownRefsError [n7 n9]", err)
	}
	c, _ := svc.Context(ctx, "o", s.ID)
	if len(c.Nodes) != 1 {
		t.Errorf("%d nodes after refused chat, want 1", len(c.Nodes))
	}
}

// TestServiceFallsBackToStore: with Redis gone, reads are served from the
// store (and L1), by the cache's degraded mode or the Service's fallback.
func TestServiceFallsBackToStore(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t)
	ctx := t.Context()
	st := openStore(t)
	svc := newService(t, st, rs, "fb")
	s, _ := svc.CreateSession(ctx, "o", "", "s")
	for i := range 3 {
		if _, err := svc.Chat(ctx, "o", s.ID, "", fmt.Sprint(i), nil); err != nil {
			t.Fatal(err)
		}
	}
	rs.Kill(t)
	cold := newService(t, st, rs, "fb") // empty L1, Redis down
	c, err := cold.Context(ctx, "o", s.ID)
	if err != nil || len(c.Nodes) != 3 {
		t.Fatalf("Context with Redis down = %d nodes, %v", len(c.Nodes), err)
	}
	// Whether the cache's degraded mode or the Service's own fallback
	// answered (StoreFallbacks) depends on the cache; either way reads work.
	if _, err := cold.Resolve(ctx, "o", "n2"); err != nil {
		t.Errorf("Resolve with Redis down: %v", err)
	}
}

// TestDeleteTombstone: after a node is deleted, neither this nor another
// instance serves it, and its short ID no longer resolves.
func TestDeleteTombstone(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t)
	ctx := t.Context()
	st := openStore(t)
	a := newService(t, st, rs, "del")
	b := newService(t, st, rs, "del")
	s, _ := a.CreateSession(ctx, "o", "", "s")
	r, _ := a.Chat(ctx, "o", s.ID, "", "x", nil)
	if _, err := b.GetNode(ctx, "o", r.Node.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := a.DeleteNode(ctx, "o", r.Node.ID, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := a.GetNode(ctx, "o", r.Node.ID); !errors.Is(err, session.ErrNotFound) {
		t.Errorf("writer GetNode after delete = %v, want ErrNotFound", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := b.GetNode(ctx, "o", r.Node.ID)
		if errors.Is(err, session.ErrNotFound) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("other instance still serves the deleted node after 10s: %v", err)
		}
		time.Sleep(10 * time.Millisecond) // polling interval
	}
	if _, err := a.Resolve(ctx, "o", r.Node.ShortID); !errors.Is(err, session.ErrNotFound) {
		t.Errorf("Resolve deleted short ID = %v, want ErrNotFound", err)
	}
}

// cancellingStore cancels its caller's request context as soon as a node update is stored: a
// client that gives up right after the commit.
type cancellingStore struct {
	session.Store
	cancel context.CancelFunc
}

func (c *cancellingStore) UpdateNode(ctx context.Context, owner, id string, ifVersion int64, upd session.NodeUpdate) (session.Node, error) {
	n, err := c.Store.UpdateNode(ctx, owner, id, ifVersion, upd)
	c.cancel()
	return n, err
}

// TestCommittedChangeSurvivesCancel: when the caller's context ends right after the store
// committed a change, the cache write-through and the change event still happen, so a peer
// instance serves the new version and subscribers hear of it. (Before: both ran on the cancelled
// context and failed; Redis kept the old entry until it expired, and the event was lost.)
func TestCommittedChangeSurvivesCancel(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t)
	ctx := t.Context()
	st := openStore(t)
	cs := &cancellingStore{Store: st}
	w := newService(t, cs, rs, "cancel")
	peer := newService(t, st, rs, "cancel")
	s, err := w.CreateSession(ctx, "o", "", "s")
	if err != nil {
		t.Fatal(err)
	}
	r, err := w.Chat(ctx, "o", s.ID, session.RoleUser, "v1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := peer.GetNode(ctx, "o", r.Node.ID); err != nil || n.Content != "v1" {
		t.Fatalf("peer.GetNode = %q, %v; want v1", n.Content, err)
	}
	events, err := peer.Subscribe(ctx, "o", s.ID, "")
	if err != nil {
		t.Fatal(err)
	}
	reqCtx, cancel := context.WithCancel(ctx)
	cs.cancel = cancel
	content := "v2"
	if _, err := w.UpdateNode(reqCtx, "o", r.Node.ID, r.Node.Version, session.NodeUpdate{Content: &content}); err != nil {
		t.Fatalf("UpdateNode with the context cancelled after the commit: %v", err)
	}
	if reqCtx.Err() == nil {
		t.Fatal("the store did not cancel the request context")
	}
	waitUntil(t, "the peer to serve the update", func() bool {
		n, err := peer.GetNode(ctx, "o", r.Node.ID)
		return err == nil && n.Content == "v2"
	})
	select {
	case ev := <-events:
		if ev.Type != session.EventNodeUpdated || ev.NodeID != r.Node.ID {
			t.Fatalf("event = %+v, want node.updated of %s", ev, r.Node.ID)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no event for the update within 10 s")
	}
}
