package main

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tiercache/tiercache"
	"github.com/tiercache/tiercache/session"
)

// metrics is contextd's Prometheus registry (its own, not the global one)
// and the per-route latency tracker behind /api/health/redis.
type metrics struct {
	reg      *prometheus.Registry
	duration *prometheus.HistogramVec
	routes   session.LatencyRecorder // per route pattern, for /api/health/redis
}

// routeLatency is one route's request count and percentiles in seconds.
type routeLatency = session.LatencySummary

func newMetrics(s *server) *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	m.duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "contextd_http_request_duration_seconds",
		Help:    "HTTP request durations by route pattern, method and status code.",
		Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
	}, []string{"route", "code"})
	stats := func() tiercache.Stats { return s.Cache.Stats() }
	counter := func(name, help string, labels prometheus.Labels, f func() float64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help, ConstLabels: labels}, f)
	}
	gauge := func(name, help string, labels prometheus.Labels, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help, ConstLabels: labels}, f)
	}
	l1, l2 := prometheus.Labels{"tier": "l1"}, prometheus.Labels{"tier": "l2"}
	m.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.duration,
		counter("contextd_cache_hits_total", "Cache lookups answered, by tier.", l1, func() float64 { return float64(stats().L1Hits) }),
		counter("contextd_cache_hits_total", "Cache lookups answered, by tier.", l2, func() float64 { return float64(stats().L2Hits) }),
		counter("contextd_cache_misses_total", "Cache lookups not answered, by tier.", l1, func() float64 { return float64(stats().L1Misses) }),
		counter("contextd_cache_misses_total", "Cache lookups not answered, by tier.", l2, func() float64 { return float64(stats().L2Misses) }),
		counter("contextd_cache_l2_errors_total", "Redis calls that failed.", nil, func() float64 { return float64(stats().L2Errors) }),
		counter("contextd_cache_evictions_total", "L1 entries evicted for size.", nil, func() float64 { return float64(stats().Evictions) }),
		counter("contextd_cache_loads_total", "Loader calls (store reads) that returned values.", nil, func() float64 { return float64(stats().Loads) }),
		counter("contextd_cache_stale_refused_total", "Writes refused because Redis held a newer version.", nil, func() float64 { return float64(stats().StaleRefused) }),
		counter("contextd_cache_invalidations_sent_total", "Invalidation messages published by this instance.", nil, func() float64 { return float64(stats().InvalidationsSent) }),
		counter("contextd_cache_invalidations_received_total", "Peers' invalidation messages applied by this instance.", nil, func() float64 { return float64(stats().InvalidationsReceived) }),
		counter("contextd_cache_gaps_total", "Lost subscriptions and sequence holes (L1 could not be vouched for).", nil, func() float64 { return float64(stats().Gaps) }),
		counter("contextd_cache_l1_flushes_total", "Whole-L1 flushes.", nil, func() float64 { return float64(stats().Flushes) }),
		gauge("contextd_cache_propagation_lag_p99_seconds", "p99 of publish-to-applied lag of recent peers' invalidations (last probe).", nil, func() float64 {
			if sub := s.health.Load().Subscriber; sub != nil {
				return sub.LagP99.Seconds()
			}
			return 0
		}),
		gauge("contextd_cache_subscriber_up", "1 when the invalidation subscriber hears Redis (last probe).", nil, func() float64 {
			if sub := s.health.Load().Subscriber; sub != nil && sub.Up {
				return 1
			}
			return 0
		}),
		counter("contextd_cache_outages_total", "Times the circuit breaker around Redis opened.", nil, func() float64 { return float64(stats().Outages) }),
		counter("contextd_cache_recoveries_total", "Completed recoveries after a Redis outage.", nil, func() float64 { return float64(stats().Recoveries) }),
		counter("contextd_cache_stale_served_total", "Fail-safe values served past their expiry.", nil, func() float64 { return float64(stats().StaleServed) }),
		gauge("contextd_cache_pending_writes", "Writes remembered during an outage, waiting for Redis.", nil, func() float64 { return float64(stats().PendingWrites) }),
		gauge("contextd_cache_l1_bytes", "Weighted bytes in L1.", nil, func() float64 { return float64(stats().L1Bytes) }),
		gauge("contextd_cache_l1_entries", "Entries in L1.", nil, func() float64 { return float64(stats().L1Entries) }),
		gauge("contextd_active_sessions", "Sessions read or written in the last 15 minutes.", nil, func() float64 { return float64(s.Service.ActiveSessions()) }),
		counter("contextd_cache_corrupt_total", "Unreadable cache entries found in Redis (bad bytes or an invalid record), treated as misses and deleted.", nil, func() float64 { return float64(stats().Corrupt) }),
		counter("contextd_cache_replay_superseded_total", "Writes remembered while Redis was unreachable whose replay Redis refused: it already held a newer version.", nil, func() float64 { return float64(stats().ReplaySuperseded) }),
		counter("contextd_cache_replay_dropped_total", "Writes remembered while Redis was unreachable that Redis rejected for good at the replay (WRONGTYPE, script error): lost, logged.", nil, func() float64 { return float64(stats().ReplayDropped) }),
		counter("contextd_cache_replay_expired_total", "Writes remembered while Redis was unreachable whose lifetime ended before Redis took them (it refused them for memory, or stayed unreachable).", nil, func() float64 { return float64(stats().ReplayExpired) }),
		counter("contextd_cache_sequence_fillers_total", "Invalidation sequence numbers given a filler because their message may not have gone out.", nil, func() float64 { return float64(stats().SequenceFillers) }),
		counter("contextd_cache_loader_panics_total", "Loader calls that panicked (each caller got an error; also in the load errors).", nil, func() float64 { return float64(stats().LoaderPanics) }),
		counter("contextd_cache_invalid_entries_total", "Cache entries that were no valid record of their key (null, missing fields, another record's), read from the store instead.", nil, func() float64 { return float64(s.Service.Stats().InvalidEntries) }),
		counter("contextd_store_fallbacks_total", "Reads served by the store because the cache failed.", nil, func() float64 { return float64(s.Service.Stats().StoreFallbacks) }),
		counter("contextd_events_published_total", "Change events published.", nil, func() float64 { return float64(s.Service.Events().Stats().Published) }),
		counter("contextd_events_publish_errors_total", "Change events that could not be published.", nil, func() float64 { return float64(s.Service.Events().Stats().PublishErrors) }),
		gauge("contextd_event_subscribers", "Open event subscriptions on this instance.", nil, func() float64 { return float64(s.Service.Events().Stats().Subscribers) }),
		counter("contextd_event_resets_total", "session.reset events delivered to subscribers (history no longer retained, stream lost, recovery).", nil, func() float64 { return float64(s.Service.Events().Stats().Resets) }),
		gauge("contextd_event_lost_sessions", "Sessions whose events could not be published, waiting for their recovery reset.", nil, func() float64 { return float64(s.Service.Events().Stats().LostSessions) }),
		counter("contextd_event_lost_overflow_total", "Failed publishes not remembered because too many sessions were waiting for a reset.", nil, func() float64 { return float64(s.Service.Events().Stats().LostOverflow) }),
		counter("contextd_event_recovery_resets_total", "session.reset events published after Redis came back.", nil, func() float64 { return float64(s.Service.Events().Stats().RecoveryResets) }),
		counter("contextd_events_superseded_total", "Node events dropped because the session already held a newer version of the node.", nil, func() float64 { return float64(s.Service.Events().Stats().Superseded) }),
		counter("contextd_events_malformed_total", "Stream entries skipped because they were not an event of their session.", nil, func() float64 { return float64(s.Service.Events().Stats().Malformed) }),
		counter("contextd_event_subscriptions_refused_total", "Event subscriptions refused by EVENTS_MAX_SUBSCRIPTIONS or ..._PER_OWNER.", nil, func() float64 { return float64(s.Service.Events().Stats().Refused) }),
		gauge("contextd_event_watched_sessions", "Sessions whose streams this instance's event reader follows.", nil, func() float64 { return float64(s.Service.Events().Stats().Watched) }),
		gauge("contextd_redis_up", "1 when the last probe reached Redis, 0 when it did not, -1 without Redis.", nil, func() float64 {
			switch s.health.Load().State {
			case tiercache.StateHealthy:
				return 1
			case tiercache.StateL1Only:
				return -1
			}
			return 0
		}),
	)
	for _, b := range []string{"closed", "half-open", "open"} {
		m.reg.MustRegister(gauge("contextd_cache_breaker_state", "1 for the state of the circuit breaker around Redis (last probe).", prometheus.Labels{"state": b}, func() float64 {
			if s.health.Load().Breaker == b {
				return 1
			}
			return 0
		}))
	}
	for _, st := range []tiercache.State{tiercache.StateHealthy, tiercache.StateDegraded, tiercache.StateL1Only, tiercache.StateClosed} {
		m.reg.MustRegister(gauge("contextd_cache_state", "1 for the cache's current state (last probe).", prometheus.Labels{"state": string(st)}, func() float64 {
			if s.health.Load().State == st {
				return 1
			}
			return 0
		}))
	}
	return m
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// instrument records every request's duration under its route pattern.
func (m *metrics) instrument(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		next.ServeHTTP(sw, r)
		route := r.Pattern
		if route == "" || route == "/" {
			route = "unmatched"
		}
		if route == "GET /api/sessions/{id}/events" {
			return // streams last minutes; they would swamp the histogram
		}
		d := time.Since(start)
		code := sw.status
		if code == 0 {
			code = http.StatusOK
		}
		m.duration.WithLabelValues(route, codeClass(code)).Observe(d.Seconds())
		m.routes.Record(route, d)
	})
}

func codeClass(code int) string {
	return string(rune('0'+code/100)) + "xx"
}

func (m *metrics) routeLatencies() map[string]routeLatency { return m.routes.Summaries() }
