package session_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/session"
)

func recv(tb testing.TB, ch <-chan session.Event) session.Event {
	tb.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			tb.Fatal("channel closed, want an event")
		}
		return ev
	case <-time.After(10 * time.Second):
		tb.Fatal("no event within 10s")
	}
	return session.Event{}
}

// forEachMode runs f as a parallel subtest per mode: "memory" (in-memory
// rings, rdb nil) and "redis" (a Redis server of its own). The Events,
// under namespace ns, is closed at cleanup.
func forEachMode(t *testing.T, ns string, f func(t *testing.T, ev *session.Events, rdb *redis.Client)) {
	t.Helper()
	for _, mode := range []string{"memory", "redis"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			ev := session.NewEvents(nil, ns, nil)
			var rdb *redis.Client
			if mode == "redis" {
				rdb = redistest.Start(t).Client(t)
				ev = session.NewEvents(rdb, ns, nil) // not a nil *redis.Client as a client
			}
			t.Cleanup(ev.Close)
			f(t, ev, rdb)
		})
	}
}

func TestEventsResumeByID(t *testing.T) {
	t.Parallel()
	forEachMode(t, "evt", func(t *testing.T, ev *session.Events, _ *redis.Client) {
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		ch, err := ev.Subscribe(ctx, "o", "s1", "")
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for i := range 5 {
			id, err := ev.Publish(ctx, "o", session.Event{Type: session.EventNodeCreated, SessionID: "s1", Version: int64(i)})
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, id)
		}
		// Another session's events never show.
		if _, err := ev.Publish(ctx, "o", session.Event{Type: session.EventNodeCreated, SessionID: "s2"}); err != nil {
			t.Fatal(err)
		}
		for i := range 5 {
			if got := recv(t, ch); got.ID != ids[i] || got.Version != int64(i) || got.SessionID != "s1" {
				t.Fatalf("event %d = %+v, want ID %s", i, got, ids[i])
			}
		}
		cancel()
		for range ch { // closes after cancel
		}
		ch2, err := ev.Subscribe(t.Context(), "o", "s1", ids[1])
		if err != nil {
			t.Fatal(err)
		}
		for i := 2; i < 5; i++ {
			if got := recv(t, ch2); got.ID != ids[i] {
				t.Fatalf("resumed event = %s, want %s", got.ID, ids[i])
			}
		}
		if _, err := ev.Publish(t.Context(), "o", session.Event{Type: session.EventSessionDeleted, SessionID: "s1"}); err != nil {
			t.Fatal(err)
		}
		if got := recv(t, ch2); got.Type != session.EventSessionDeleted {
			t.Fatalf("event = %s", got.Type)
		}
		if _, ok := <-ch2; ok {
			t.Error("channel open after session.deleted")
		}
		if _, err := ev.Subscribe(t.Context(), "o", "s1", "not-an-id"); !errors.Is(err, session.ErrInvalid) {
			t.Errorf("Subscribe(bad id) = %v, want ErrInvalid", err)
		}
		st := ev.Stats()
		if st.Published != 7 || st.Delivered != 9 {
			t.Errorf("stats = %+v, want 7 published, 9 delivered", st)
		}
	})
}

// TestEventsCloseEndsSubscriptions: Close closes every channel.
func TestEventsCloseEndsSubscriptions(t *testing.T) {
	t.Parallel()
	forEachMode(t, "evc", func(t *testing.T, ev *session.Events, _ *redis.Client) {
		ch, err := ev.Subscribe(t.Context(), "o", "s", "")
		if err != nil {
			t.Fatal(err)
		}
		ev.Close()
		select {
		case _, ok := <-ch:
			if ok {
				t.Error("event after Close")
			}
		case <-time.After(10 * time.Second):
			t.Fatal("channel not closed within 10s of Close")
		}
		if _, err := ev.Publish(t.Context(), "o", session.Event{SessionID: "s"}); err == nil {
			t.Error("Publish after Close succeeded")
		}
	})
}

// TestEventsRingCapped: the in-memory ring keeps the last EventStreamLen
// events; a resume from the last dropped one is complete, one from before
// it starts with a reset.
func TestEventsRingCapped(t *testing.T) {
	t.Parallel()
	ev := session.NewEvents(nil, "ring", nil)
	defer ev.Close()
	var ids []string
	for range session.EventStreamLen + 10 {
		id, err := ev.Publish(t.Context(), "o", session.Event{Type: session.EventNodeUpdated, SessionID: "s"})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	last := ids[len(ids)-1]
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	ch, err := ev.Subscribe(ctx, "o", "s", ids[9]) // the last dropped event
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for got := range ch {
		if got.Type == session.EventSessionReset {
			t.Fatalf("resume from the last dropped event got a reset after %d events", n)
		}
		n++
		if got.ID == last {
			break
		}
	}
	if n != session.EventStreamLen {
		t.Errorf("resumed %d events from the ring, want %d", n, session.EventStreamLen)
	}
}
