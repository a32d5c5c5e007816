package main

import (
	"os"
	"slices"
	"strconv"
	"testing"

	"github.com/tiercache/tiercache/internal/redistest"
)

// TestEventStreamsLoad is the acceptance load check of the event reader,
// run only with CONTEXTD_EVENTS_LOAD=1 (it opens 2,000 SSE streams and
// asserts a latency bound, which only holds without -race on a machine that
// is not saturated):
//
//	CONTEXTD_EVENTS_LOAD=1 go test -count=1 -run TestEventStreamsLoad -v ./cmd/contextd/
//
// 2,000 streams over 1,000 sessions on one instance with Redis: every stream
// receives its event, chat p99 stays under 20 ms, the cache stays healthy
// with its breaker never opened, no Redis connection is blocked and the
// instance holds one notification subscription (the events' only held
// connection) however many sessions it watches. The chats (one per
// session) run CONTEXTD_EVENTS_LOAD_WORKERS at a time (default 2, the
// cores of the development machine); the same chats on a fresh instance
// with no stream open are the baseline, reported as a ratio. With more
// workers than cores, SQLite's serialized writes, not the streams, set the
// p99 (the baseline's as well).
func TestEventStreamsLoad(t *testing.T) {
	if os.Getenv("CONTEXTD_EVENTS_LOAD") == "" {
		t.Skip("set CONTEXTD_EVENTS_LOAD=1 to run the 2,000-stream load check")
	}
	// The baseline: the same chats on a fresh instance of its own (its own
	// Redis and database, so neither run inherits the other's data) with no
	// stream open.
	workers := 2
	if v := os.Getenv("CONTEXTD_EVENTS_LOAD_WORKERS"); v != "" {
		var err error
		if workers, err = strconv.Atoi(v); err != nil || workers < 1 {
			t.Fatalf("CONTEXTD_EVENTS_LOAD_WORKERS=%q: want a count of 1 or more", v)
		}
	}
	base := streamLoad(t, startInstance(t, instanceOptions{Redis: redistest.Start(t)}), 1000, 0, workers)
	srv := redistest.Start(t)
	in := startInstance(t, instanceOptions{Redis: srv})
	lat := streamLoad(t, in, 1000, 2, workers)
	slices.Sort(base)
	slices.Sort(lat)
	p50, p99, worst := lat[len(lat)/2], lat[len(lat)*99/100], lat[len(lat)-1]
	c := countEventConns(t, srv.Client(t), in.ns)
	h := healthOf(t, in)
	t.Logf("%d chat workers; baseline (a fresh instance, no streams): chat p50 %.2f ms, p99 %.2f ms", workers, base[len(base)/2], base[len(base)*99/100])
	t.Logf("2000 streams over 1000 sessions: chat p50 %.2f ms, p99 %.2f ms (%.2f× the baseline's), max %.2f ms; health %s, breaker %s, %d outages; "+
		"Redis clients %d, blocked %d, notification subscribers %d; events watched %d",
		p50, p99, p99/base[len(base)*99/100], worst, h.Status, h.Breaker, h.Cache.Outages, c.clients, c.blocked, c.notifySubs, h.Service.Events.Watched)
	if p99 >= 20 {
		t.Errorf("chat p99 = %.2f ms, want under 20 ms", p99)
	}
	if h.Status != "healthy" || h.Cache.Outages != 0 {
		t.Errorf("health = %s with %d breaker openings, want healthy with 0", h.Status, h.Cache.Outages)
	}
	if c.blocked != 0 || c.notifySubs != 1 {
		t.Errorf("Redis: %d blocked connections, %d notification subscribers; want 0 and 1", c.blocked, c.notifySubs)
	}
}
