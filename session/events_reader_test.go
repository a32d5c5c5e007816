package session_test

import (
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/session"
)

// TestEventsReaderWithoutAnnouncement: an entry appended without its
// announcement (a lost pub/sub message, a contextd from before the
// announcements) still reaches the subscriber, through the sweep; after
// the reader's subscription is killed, an event appended meanwhile arrives
// too, and nothing is reset (nothing was lost).
func TestEventsReaderWithoutAnnouncement(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	ev := session.NewEvents(rdb, "ann", nil)
	defer ev.Close()
	ch := subscribeFrom(t, ev, "s", "")
	first := publishN(t, ev, "s", 1)[0]
	if got := recv(t, ch); got.ID != first {
		t.Fatalf("event = %+v, want %s", got, first)
	}
	quiet := func(text string) string {
		t.Helper()
		id, err := rdb.XAdd(t.Context(), &redis.XAddArgs{Stream: "ann:ev:{o:s}",
			Values: map[string]any{"e": `{"type":"node.updated","session_id":"s","node_id":"` + text + `"}`}}).Result()
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	id := quiet("swept")
	if got := recv(t, ch); got.ID != id || got.NodeID != "swept" {
		t.Fatalf("event appended without announcement = %+v, want %s", got, id)
	}
	waitUntil(t, "the reader's subscription", func() bool {
		n, err := rdb.PubSubNumSub(t.Context(), "ann:ev:notify").Result()
		return err == nil && n["ann:ev:notify"] == 1
	})
	srv.Do(t, "CLIENT", "KILL", "TYPE", "pubsub")
	id = quiet("during the gap")
	if got := recv(t, ch); got.ID != id || got.Type == session.EventSessionReset {
		t.Fatalf("event appended while the subscription was down = %+v, want %s", got, id)
	}
	next := publishN(t, ev, "s", 1)[0]
	if got := recv(t, ch); got.ID != next {
		t.Fatalf("event after the re-subscription = %+v, want %s", got, next)
	}
	if st := ev.Stats(); st.Resets != 0 {
		t.Errorf("stats = %+v, want no reset", st)
	}
}
