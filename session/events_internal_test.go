package session

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// deadRedis returns a client of an address nothing listens on, failing
// fast (no retries).
func deadRedis(tb testing.TB) *redis.Client {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	tb.Cleanup(func() { c.Close() })
	return c
}

// TestLostSessionsBounded: the sessions remembered for a recovery reset are
// bounded, one entry per session, and the overflow is counted; Close stops
// the recovery loop although Redis never answers.
func TestLostSessionsBounded(t *testing.T) {
	t.Parallel()
	e := NewEvents(deadRedis(t), "b", nil)
	e.maxLost = 2
	for _, s := range []string{"s1", "s1", "s2", "s3", "s4"} {
		if _, err := e.Publish(t.Context(), "o", Event{Type: EventNodeUpdated, SessionID: s}); err == nil {
			t.Fatalf("Publish(%s) to a dead Redis succeeded", s)
		}
	}
	st := e.Stats()
	if st.PublishErrors != 5 || st.LostSessions != 2 || st.LostOverflow != 2 {
		t.Errorf("stats = %+v, want 5 publish errors, 2 lost sessions, 2 overflowed", st)
	}
	done := make(chan struct{})
	go func() { e.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return within 10s while the recovery loop retried")
	}
	e.mu.Lock()
	recovering := e.recovering
	e.mu.Unlock()
	if recovering {
		t.Error("recovery loop still marked running after Close")
	}
	if _, err := e.Publish(context.Background(), "o", Event{SessionID: "s5"}); err == nil {
		t.Error("Publish after Close succeeded")
	}
	if st := e.Stats(); st.LostSessions != 0 {
		t.Errorf("lost sessions after Close = %d, want 0 (forgotten)", st.LostSessions)
	}
}
