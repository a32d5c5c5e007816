package session_test

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/session"
)

// publishN publishes n node.updated events to sessionID and returns their IDs.
func publishN(tb testing.TB, ev *session.Events, sessionID string, n int) []string {
	tb.Helper()
	ids := make([]string, 0, n)
	for i := range n {
		id, err := ev.Publish(tb.Context(), "o", session.Event{Type: session.EventNodeUpdated, SessionID: sessionID, Version: int64(i + 1)})
		if err != nil {
			tb.Fatalf("Publish #%d: %v", i, err)
		}
		ids = append(ids, id)
	}
	return ids
}

// subscribeFrom subscribes with a context cancelled at cleanup.
func subscribeFrom(tb testing.TB, ev *session.Events, sessionID, last string) <-chan session.Event {
	tb.Helper()
	ctx, cancel := context.WithCancel(tb.Context())
	tb.Cleanup(cancel)
	ch, err := ev.Subscribe(ctx, "o", sessionID, last)
	if err != nil {
		tb.Fatalf("Subscribe(%q, %q) = %v", sessionID, last, err)
	}
	return ch
}

// wantReset receives the next event and fails unless it is a session.reset
// of sessionID with ID want ("" for any).
func wantReset(tb testing.TB, ch <-chan session.Event, sessionID, want string) session.Event {
	tb.Helper()
	got := recv(tb, ch)
	if got.Type != session.EventSessionReset || got.SessionID != sessionID || got.ID == "" || (want != "" && got.ID != want) {
		tb.Fatalf("first event = %+v, want a session.reset of %s with ID %q", got, sessionID, want)
	}
	return got
}

// wantResumableReset publishes one event to session "s" after reset was
// received on ch, and fails unless ch delivers it next and a resume from
// the reset's ID starts with it (no second reset). It returns the event's ID.
func wantResumableReset(tb testing.TB, ev *session.Events, ch <-chan session.Event, reset session.Event) string {
	tb.Helper()
	next := publishN(tb, ev, "s", 1)[0]
	if got := recv(tb, ch); got.ID != next || got.Type != session.EventNodeUpdated {
		tb.Fatalf("event after the reset = %+v, want %s", got, next)
	}
	ch2 := subscribeFrom(tb, ev, "s", reset.ID)
	if got := recv(tb, ch2); got.ID != next || got.Type != session.EventNodeUpdated {
		tb.Fatalf("resume from the reset ID %s: first event = %+v, want %s", reset.ID, got, next)
	}
	return next
}

// TestEventsResumePastRetainedIsReset: a resume from an ID whose successors
// were dropped (ring) or trimmed (Redis stream) starts with a session.reset
// whose ID is the newest event; events published after it follow, and a
// resume from the reset's ID is complete (no second reset). A resume from
// a retained ID gets no reset.
func TestEventsResumePastRetainedIsReset(t *testing.T) {
	t.Parallel()
	forEachMode(t, "rst", func(t *testing.T, ev *session.Events, rdb *redis.Client) {
		ids := publishN(t, ev, "s", session.EventStreamLen+300)
		newest := ids[len(ids)-1]
		retained := ids[len(ids)-session.EventStreamLen] // kept by the ring and by MAXLEN ~
		if rdb != nil {
			info, err := rdb.XInfoStream(t.Context(), "rst:ev:{o:s}").Result()
			if err != nil {
				t.Fatal(err)
			}
			if info.EntriesAdded <= info.Length {
				t.Fatalf("stream not trimmed: %d entries added, %d kept", info.EntriesAdded, info.Length)
			}
			retained = info.FirstEntry.ID
		}

		ch := subscribeFrom(t, ev, "s", ids[0])
		reset := wantReset(t, ch, "s", newest)
		wantResumableReset(t, ev, ch, reset)

		// Resuming from a retained ID replays without a reset.
		ch3 := subscribeFrom(t, ev, "s", retained)
		got := recv(t, ch3)
		if got.Type == session.EventSessionReset {
			t.Fatalf("resume from retained ID %s got a reset", retained)
		}
		for i, id := range ids[:len(ids)-1] {
			if id == retained && got.ID != ids[i+1] {
				t.Fatalf("resume from %s: first event %s, want %s", retained, got.ID, ids[i+1])
			}
		}
		st := ev.Stats()
		if st.Resets != 1 {
			t.Errorf("Stats().Resets = %d, want 1", st.Resets)
		}
	})
}

// TestEventsResumeOfLostStreamIsReset: with Redis, a resume whose stream
// is gone (expired, or Redis lost it) gets a reset; so does a resume from
// before a stream that was recreated since. The reset's ID is complete to
// resume from.
func TestEventsResumeOfLostStreamIsReset(t *testing.T) {
	t.Parallel()
	rdb := redistest.Start(t).Client(t)
	ev := session.NewEvents(rdb, "lost", nil)
	defer ev.Close()
	old := publishN(t, ev, "s", 3)
	if err := rdb.Del(t.Context(), "lost:ev:{o:s}").Err(); err != nil { // as if it expired
		t.Fatal(err)
	}

	ch := subscribeFrom(t, ev, "s", old[2])
	reset := wantReset(t, ch, "s", "")
	next := wantResumableReset(t, ev, ch, reset)

	// The stream is lost again and recreated by a publish: a client that
	// last saw an event of the old stream is told, one of the new is not.
	if err := rdb.Del(t.Context(), "lost:ev:{o:s}").Err(); err != nil {
		t.Fatal(err)
	}
	// Stream IDs are milliseconds: a stream recreated within the
	// millisecond of the old one's last ID cannot be told apart (a real
	// loss, expiry or restart, takes far longer), so wait for the next one.
	nextMS, _, _ := strings.Cut(next, "-")
	waitUntil(t, "Redis clock past "+next, func() bool {
		now, err := rdb.Time(t.Context()).Result()
		return err == nil && strconv.FormatInt(now.UnixMilli(), 10) > nextMS
	})
	fresh := publishN(t, ev, "s", 2)
	ch3 := subscribeFrom(t, ev, "s", next)
	wantReset(t, ch3, "s", fresh[1])
	ch4 := subscribeFrom(t, ev, "s", fresh[0])
	if got := recv(t, ch4); got.ID != fresh[1] {
		t.Fatalf("resume from %s: first event = %+v, want %s", fresh[0], got, fresh[1])
	}

	// An ID newer than anything the stream gave out cannot be vouched for.
	ch5 := subscribeFrom(t, ev, "s", "99999999999999-0")
	wantReset(t, ch5, "s", fresh[1])
}

// TestEventsRingResumeAfterRestartIsReset: without Redis, a resume with an
// ID the ring never gave out (another process, before a restart) starts
// with a reset.
func TestEventsRingResumeAfterRestartIsReset(t *testing.T) {
	t.Parallel()
	before := session.NewEvents(nil, "r", nil)
	old := publishN(t, before, "s", 2)
	before.Close()

	ev := session.NewEvents(nil, "r", nil)
	defer ev.Close()
	ch := subscribeFrom(t, ev, "s", old[1])
	reset := wantReset(t, ch, "s", "")
	wantResumableReset(t, ev, ch, reset)
}

// TestEventsSlowRingSubscriberGetsReset: without Redis, a subscriber that
// falls so far behind that the ring drops events it has not received gets
// a reset instead of a silent jump.
func TestEventsSlowRingSubscriberGetsReset(t *testing.T) {
	t.Parallel()
	ev := session.NewEvents(nil, "slow", nil)
	defer ev.Close()
	ch := subscribeFrom(t, ev, "s", "")
	ids := publishN(t, ev, "s", 3*session.EventStreamLen)
	newest := ids[len(ids)-1]
	next := map[string]string{}
	for i := 1; i < len(ids); i++ {
		next[ids[i-1]] = ids[i]
	}
	prev, resets := "", 0
	for {
		got := recv(t, ch)
		if got.Type == session.EventSessionReset {
			resets++ // the ring dropped what this subscriber had not received
		} else if prev != "" && next[prev] != got.ID {
			t.Fatalf("event %s followed %s without a reset; want %s", got.ID, prev, next[prev])
		}
		prev = got.ID
		if got.ID == newest {
			break
		}
	}
	if resets == 0 {
		t.Fatal("received every event although the ring dropped some; the test did not fall behind")
	}
}

// TestEventsLostPublishIsReset: an event published while Redis is down is
// lost, but the session is remembered; once Redis answers again a
// session.reset is appended to its stream, so subscribers on every instance
// (here two, connected before the outage) learn of it.
func TestEventsLostPublishIsReset(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	a := session.NewEvents(srv.Client(t), "out", nil)
	defer a.Close()
	b := session.NewEvents(srv.Client(t), "out", nil)
	defer b.Close()
	chA := subscribeFrom(t, a, "s", "")
	chB := subscribeFrom(t, b, "s", "")
	first := publishN(t, a, "s", 1)[0]
	for _, ch := range []<-chan session.Event{chA, chB} {
		if got := recv(t, ch); got.ID != first {
			t.Fatalf("event before the outage = %+v, want %s", got, first)
		}
	}

	srv.Kill(t)
	if _, err := a.Publish(t.Context(), "o", session.Event{Type: session.EventNodeUpdated, SessionID: "s", Version: 9}); err == nil {
		t.Fatal("Publish with Redis down succeeded")
	}
	if st := a.Stats(); st.PublishErrors != 1 || st.LostSessions != 1 {
		t.Fatalf("stats after a failed publish = %+v, want 1 publish error, 1 lost session", st)
	}
	srv.Restart(t)

	for name, ch := range map[string]<-chan session.Event{"a": chA, "b": chB} {
		got := recv(t, ch)
		if got.Type != session.EventSessionReset || got.SessionID != "s" {
			t.Fatalf("instance %s: first event after the outage = %+v, want session.reset", name, got)
		}
	}
	waitUntil(t, "the lost session's reset is published", func() bool {
		st := a.Stats()
		return st.LostSessions == 0 && st.RecoveryResets == 1
	})
	// The reset is in the stream itself, for every instance and resumer.
	msgs, err := srv.Client(t).XRange(t.Context(), "out:ev:{o:s}", "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, m := range msgs {
		var e session.Event
		if raw, ok := m.Values["e"].(string); ok && json.Unmarshal([]byte(raw), &e) == nil && e.Type == session.EventSessionReset {
			found = true
		}
	}
	if !found {
		t.Errorf("stream after recovery = %v, want a session.reset entry", msgs)
	}
}

// TestEventsLostDeleteIsRepublished: a lost session.deleted is published
// again after the outage, so subscriptions end.
func TestEventsLostDeleteIsRepublished(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	ev := session.NewEvents(srv.Client(t), "del", nil)
	defer ev.Close()
	ch := subscribeFrom(t, ev, "s", "")
	srv.Kill(t)
	if _, err := ev.Publish(t.Context(), "o", session.Event{Type: session.EventSessionDeleted, SessionID: "s"}); err == nil {
		t.Fatal("Publish with Redis down succeeded")
	}
	srv.Restart(t)
	deadline := time.After(20 * time.Second)
	for {
		select {
		case got, ok := <-ch:
			if !ok {
				t.Fatal("subscription ended without session.deleted")
			}
			if got.Type == session.EventSessionDeleted {
				if _, ok := <-ch; ok {
					t.Error("subscription open after session.deleted")
				}
				return
			}
			if got.Type != session.EventSessionReset {
				t.Fatalf("event = %+v, want session.deleted (after resets)", got)
			}
		case <-deadline:
			t.Fatal("no session.deleted within 20s of Redis coming back")
		}
	}
}

// waitUntil polls cond every 10 ms until it holds or 20 s pass.
func waitUntil(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("%s: not within 20s", what)
		}
		time.Sleep(10 * time.Millisecond) // polling interval, not a settle wait
	}
}
