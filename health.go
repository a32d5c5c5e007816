package tiercache

import (
	"context"
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
	Subscriber   *Subscriber   `json:"subscriber,omitempty"` // nil in L1-only mode
	Stats        Stats         `json:"stats"`
	CheckedAt    time.Time     `json:"checked_at"`
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
}

// Health pings Redis (within ctx) and reports the cache's state and statistics. It is safe to call
// concurrently and never fails: problems are reported in the result.
func (c *Cache) Health(ctx context.Context) Health {
	h := Health{Stats: c.Stats(), CheckedAt: c.cfg.Clock.Now()}
	if b := c.bp; b != nil {
		sub := &Subscriber{Up: b.up.Load(), Resubscribes: b.resubscribes.Load(), Origin: b.origin}
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
		start := time.Now()
		if err := c.rdb.Ping(ctx).Err(); err != nil {
			h.State, h.RedisError = StateDegraded, err.Error()
		} else {
			h.State, h.RedisLatency = StateHealthy, time.Since(start)
		}
	}
	return h
}
