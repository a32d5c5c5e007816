package main

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache"
	"github.com/tiercache/tiercache/session"
)

// healthReport is the body of GET /api/health/redis.
type healthReport struct {
	Status string      `json:"status"` // healthy, degraded, l1-only, closed
	Mode   string      `json:"mode"`   // how the cache started
	Store  string      `json:"store"`
	Redis  redisStatus `json:"redis"`
	// Subscriber is the cache's invalidation backplane (propagation lag,
	// resubscribes); absent in L1-only mode.
	Subscriber *tiercache.Subscriber `json:"subscriber,omitempty"`
	// Breaker is the cache's circuit breaker around Redis: closed, half-open
	// or open; PendingWrites counts writes waiting to be replayed to Redis.
	Breaker       string                  `json:"breaker,omitempty"`
	PendingWrites int                     `json:"pending_writes"`
	Cache         tiercache.Stats         `json:"cache"`
	HitRatio      hitRatios               `json:"hit_ratio"`
	Service       session.ServiceStats    `json:"service"`
	HTTP          map[string]routeLatency `json:"http"`
	Uptime        float64                 `json:"uptime_seconds"`
	Checked       time.Time               `json:"checked_at"`
}

type redisStatus struct {
	Configured bool    `json:"configured"`
	Connected  bool    `json:"connected"`
	LatencyMS  float64 `json:"latency_ms,omitempty"`
	Error      string  `json:"error,omitempty"`
	// UsedMemory is Redis's used_memory; on a Cluster, the sum over the
	// masters (replicas hold copies).
	UsedMemory int64 `json:"used_memory_bytes,omitempty"`
}

// hitRatios: L1 is hits over L1 lookups; L2 is hits over the lookups that
// reached Redis; overall is lookups answered by either tier.
type hitRatios struct {
	L1      float64 `json:"l1"`
	L2      float64 `json:"l2"`
	Overall float64 `json:"overall"`
}

func ratios(st tiercache.Stats) hitRatios {
	return hitRatioOf(st.L1Hits, st.L1Misses, st.L2Hits, st.L2Misses)
}

// handleHealthRedis: GET /api/health/redis, a live check (one PING within
// 300 ms) plus cache statistics and latency figures. 200 whatever the state;
// the state is in "status".
func (s *server) handleHealthRedis(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 300*time.Millisecond)
	defer cancel()
	h := s.Cache.Health(ctx)
	s.health.Store(&h)
	rep := healthReport{
		Status: string(h.State), Mode: s.Mode, Store: s.Store, Cache: h.Stats, HitRatio: ratios(h.Stats),
		Service: s.Service.Stats(), HTTP: s.metrics.routeLatencies(), Uptime: time.Since(s.started).Seconds(), Checked: h.CheckedAt,
		Redis:      redisStatus{Configured: s.Redis != nil, Connected: h.State == tiercache.StateHealthy, Error: h.RedisError},
		Subscriber: h.Subscriber, Breaker: h.Breaker, PendingWrites: h.Pending,
	}
	if h.RedisLatency > 0 {
		rep.Redis.LatencyMS = float64(h.RedisLatency.Microseconds()) / 1000
	}
	if rep.Redis.Connected {
		if n, err := usedMemory(ctx, s.Redis); err == nil {
			rep.Redis.UsedMemory = n
		}
	}
	writeJSON(w, http.StatusOK, rep)
}

// usedMemory returns Redis's used_memory. A Cluster client would send INFO
// to one node only, so on a Cluster it asks every master and sums.
func usedMemory(ctx context.Context, rdb redis.UniversalClient) (int64, error) {
	cc, ok := rdb.(*redis.ClusterClient)
	if !ok {
		info, err := rdb.Info(ctx, "memory").Result()
		return infoInt(info, "used_memory"), err
	}
	var total atomic.Int64
	err := cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
		info, err := c.Info(ctx, "memory").Result()
		if err != nil {
			return err
		}
		total.Add(infoInt(info, "used_memory"))
		return nil
	})
	return total.Load(), err
}

// infoInt returns an integer field of an INFO reply, or 0.
func infoInt(info, field string) int64 { return int64(infoFloat(info, field)) }

// infoFloat returns field from an INFO reply, or 0.
func infoFloat(info, field string) float64 {
	for line := range strings.Lines(info) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), field+":"); ok {
			n, _ := strconv.ParseFloat(v, 64)
			return n
		}
	}
	return 0
}

// handleLivez: GET /livez and GET /healthz (the older name), liveness: 200
// whenever the process serves HTTP. It never touches Redis or the store: a
// liveness probe that failed on a dependency would have Kubernetes restart
// every instance at once when that dependency fails, and a restart fixes
// neither.
func (s *server) handleLivez(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

// readyzDBTimeout bounds the database ping of /readyz.
const readyzDBTimeout = time.Second

// handleReadyz: GET /readyz, 200 once started and until shutdown begins
// while the database answers a ping within readyzDBTimeout, 503 otherwise;
// a database that does not answer gives a JSON error naming it. Redis is a
// soft dependency: while it is down the cache serves from L1 and the store
// (degraded), so readiness stays 200 and reports the state in "cache";
// taking every instance out of the load balancer for a Redis outage would
// turn a slower service into no service. The state is read from the last
// background probe (no Redis I/O here).
func (s *server) handleReadyz(w http.ResponseWriter, r *http.Request) {
	h := s.health.Load()
	state := string(h.State)
	if !s.ready.Load() || h.State == tiercache.StateClosed {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "not ready", "cache": state})
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), readyzDBTimeout)
	err := s.Service.Ping(ctx)
	cancel()
	if err != nil {
		var body struct {
			errorBody
			Status string `json:"status"`
			Cache  string `json:"cache"`
		}
		body.Status, body.Cache = "not ready", state
		body.Error.Code = "database_unavailable"
		body.Error.Message = fmt.Sprintf("database (%s) did not answer a ping within %v: %v", s.Store, readyzDBTimeout, err)
		writeJSON(w, http.StatusServiceUnavailable, body)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready", "cache": state})
}
