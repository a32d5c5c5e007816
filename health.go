package tiercache

import (
	"context"
	"encoding/json"
	"net/http"
	"time"
)

// State is the cache's overall condition, as reported by [Cache.Health].
type State string

const (
	// StateHealthy: Redis answers; both tiers are in use.
	StateHealthy State = "healthy"
	// StateDegraded: Redis is configured but does not answer; the cache serves L1 (bounded by
	// L1TTL) and loaders.
	StateDegraded State = "degraded"
	// StateRecovering: Redis answers again; L1 is being flushed and the writes remembered
	// during the outage replayed.
	StateRecovering State = "recovering"
	// StateL1Only: no Redis is configured; one process, L1 alone.
	StateL1Only State = "l1-only"
	// StateClosed: Close was called.
	StateClosed State = "closed"
)

// Health describes the cache at one moment.
type Health struct {
	State        State         `json:"state"`
	RedisLatency time.Duration `json:"redis_latency_ns,omitempty"` // one PING round trip
	RedisError   string        `json:"redis_error,omitempty"`
	Breaker      string        `json:"breaker,omitempty"` // closed, half-open or open
	Pool         *PoolStats    `json:"pool,omitempty"`
	Pending      int           `json:"pending_writes"`       // writes waiting for Redis
	Subscriber   *Subscriber   `json:"subscriber,omitempty"` // nil in L1-only mode
	Stats        Stats         `json:"stats"`
	CheckedAt    time.Time     `json:"checked_at"`
}

// PoolStats is the Redis client's connection pool at the time of a health check.
type PoolStats struct {
	Hits, Misses, Timeouts       uint32
	TotalConns, IdleConns, Stale uint32
}

// Subscriber describes the invalidation backplane of one instance.
type Subscriber struct {
	Up             bool          `json:"up"`                  // subscribed and hearing Redis
	LastMessageAge time.Duration `json:"last_message_age_ns"` // since the last message or pong
	Resubscribes   uint64        `json:"resubscribes"`        // reconnects go-redis made on its own
	Origin         string        `json:"origin"`              // this instance's ID in messages
	LagP50         time.Duration `json:"lag_p50_ns"`          // publish to applied, recent peers' messages
	LagP99         time.Duration `json:"lag_p99_ns"`
	LagSamples     int           `json:"lag_samples"`
	// Behind: peers' messages arrive more than 250 ms later than usual, so L1 was flushed and
	// new entries live at most UnsubscribedL1TTL until they catch up; LagFlushes counts those
	// flushes (also in Stats.Flushes).
	Behind     bool   `json:"behind"`
	LagFlushes uint64 `json:"lag_flushes"`
}

// Health pings Redis (within ctx) and reports the cache's state and statistics. It is safe to call
// concurrently and never fails: problems are reported in the result.
func (c *Cache) Health(ctx context.Context) Health {
	h := Health{Stats: c.Stats(), CheckedAt: c.cfg.Clock.Now()}
	if b := c.bp; b != nil {
		sub := &Subscriber{Up: b.vouched(), Resubscribes: b.resubscribes.Load(), Origin: b.origin,
			Behind: b.behind.Load() > 0, LagFlushes: b.lagFlushes.Load()}
		if last := b.lastMsg.Load(); last != 0 {
			sub.LastMessageAge = time.Since(time.Unix(0, last))
		}
		sub.LagP50, sub.LagP99, sub.LagSamples = b.lagPercentiles()
		h.Subscriber = sub
	}
	switch {
	case c.closed.Load():
		h.State = StateClosed
	case c.rdb == nil:
		h.State = StateL1Only
	default:
		h.Breaker = c.g.cb.State().String()
		h.Pending = int(c.g.npending.Load())
		if ps := c.rdb.PoolStats(); ps != nil {
			h.Pool = &PoolStats{Hits: ps.Hits, Misses: ps.Misses, Timeouts: ps.Timeouts,
				TotalConns: ps.TotalConns, IdleConns: ps.IdleConns, Stale: ps.StaleConns}
		}
		start := time.Now()
		err := c.l2do(ctx, func(ctx context.Context) error { return c.rdb.Ping(ctx).Err() })
		switch {
		case err != nil:
			h.State, h.RedisError = StateDegraded, err.Error()
		case c.g.degraded():
			h.State, h.RedisLatency = StateDegraded, time.Since(start)
		case c.g.recovering.Load() || h.Pending > 0:
			h.State, h.RedisLatency = StateRecovering, time.Since(start)
		default:
			h.State, h.RedisLatency = StateHealthy, time.Since(start)
		}
	}
	return h
}

// HealthHandler serves Health as JSON: 200 while the cache can serve (healthy, degraded,
// recovering, L1-only), 503 once it is closed.
func (c *Cache) HealthHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := c.Health(r.Context())
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		if h.State == StateClosed {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		_ = json.NewEncoder(w).Encode(h)
	})
}
