package main

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tiercache/tiercache"
	"github.com/tiercache/tiercache/promcache"
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
	counter := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, f)
	}
	gauge := func(name, help string, labels prometheus.Labels, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help, ConstLabels: labels}, f)
	}
	events := func() session.EventStats { return s.Service.Events().Stats() }
	m.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.duration,
		// The cache's own metrics (tiercache_*, docs/OPERATIONS.md, Metrics).
		promcache.New(s.Cache),
		gauge("contextd_active_sessions", "Sessions read or written in the last 15 minutes.", nil, func() float64 { return float64(s.Service.ActiveSessions()) }),
		counter("contextd_cache_invalid_entries_total", "Cache entries that were no valid record of their key (null, missing fields, another record's), read from the store instead.", func() float64 { return float64(s.Service.Stats().InvalidEntries) }),
		counter("contextd_store_fallbacks_total", "Reads served by the store because the cache failed.", func() float64 { return float64(s.Service.Stats().StoreFallbacks) }),
		counter("contextd_events_published_total", "Change events published.", func() float64 { return float64(events().Published) }),
		counter("contextd_events_publish_errors_total", "Change events that could not be published.", func() float64 { return float64(events().PublishErrors) }),
		gauge("contextd_event_subscribers", "Open event subscriptions on this instance.", nil, func() float64 { return float64(events().Subscribers) }),
		counter("contextd_event_resets_total", "session.reset events delivered to subscribers (history no longer retained, stream lost, recovery).", func() float64 { return float64(events().Resets) }),
		gauge("contextd_event_lost_sessions", "Sessions whose events could not be published, waiting for their recovery reset.", nil, func() float64 { return float64(events().LostSessions) }),
		counter("contextd_event_lost_overflow_total", "Failed publishes not remembered because too many sessions were waiting for a reset.", func() float64 { return float64(events().LostOverflow) }),
		counter("contextd_event_recovery_resets_total", "session.reset events published after Redis came back.", func() float64 { return float64(events().RecoveryResets) }),
		counter("contextd_events_superseded_total", "Node events dropped because the session already held a newer version of the node.", func() float64 { return float64(events().Superseded) }),
		counter("contextd_events_malformed_total", "Stream entries skipped because they were not an event of their session.", func() float64 { return float64(events().Malformed) }),
		counter("contextd_event_subscriptions_refused_total", "Event subscriptions refused by EVENTS_MAX_SUBSCRIPTIONS or ..._PER_OWNER.", func() float64 { return float64(events().Refused) }),
		gauge("contextd_event_watched_sessions", "Sessions whose streams this instance's event reader follows.", nil, func() float64 { return float64(events().Watched) }),
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
	// The health probe's view of the cache (every 2 s, with a Redis ping).
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
