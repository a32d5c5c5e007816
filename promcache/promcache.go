// Package promcache exports a [tiercache.Cache]'s metrics to Prometheus: hits and misses per
// tier, Redis and loader latency histograms, invalidations and their propagation lag, gaps,
// the circuit breaker, degraded time, pending and replayed writes, and the rest of
// [tiercache.Stats]; and a [lock.Locker]'s attempts and lost leases.
//
// It is a module of its own so that the library's users who do not use Prometheus carry no
// client_golang in their module graph. A collector is registered on the caller's registry; the
// package never touches the global one:
//
//	reg := prometheus.NewRegistry()
//	reg.MustRegister(promcache.New(cache))
//
// Metrics are built at each scrape from [tiercache.Cache.Stats] and
// [tiercache.Cache.Histograms] (const metrics): nothing runs between scrapes, and the cache's
// hot path is the same with or without a collector. Every cache metric carries the label
// namespace; [Label] adds constant labels, so that two caches with one namespace (or a cache
// and its twin in a test) can share a registry. The names and their meaning are listed in the
// library's docs/OPERATIONS.md, section Metrics.
package promcache

import (
	"cmp"
	"fmt"
	"regexp"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tiercache/tiercache"
	"github.com/tiercache/tiercache/lock"
)

// An Option adjusts a collector.
type Option func(*options)

type options struct {
	labels prometheus.Labels
	err    error // the first bad Label, reported by every Desc at registration
}

// Label adds the constant label name=value to every metric of the collector, for example
// Label("cache", "users") to tell two caches apart on one registry (give each of them a Label
// of that name: a registry refuses one name with different label names). A name that is not of the
// classic form [a-zA-Z_][a-zA-Z0-9_]* (without a leading "__", which Prometheus reserves), or
// that the collector uses itself (namespace, tier, result, op, direction, state), makes the
// collector's registration fail with an error naming it.
func Label(name, value string) Option {
	return func(o *options) {
		if !labelName.MatchString(name) || strings.HasPrefix(name, "__") {
			o.err = cmp.Or(o.err, fmt.Errorf("promcache: Label(%q, %q): not a valid label name ([a-zA-Z_][a-zA-Z0-9_]*, no leading __)", name, value))
			return
		}
		if o.labels == nil {
			o.labels = prometheus.Labels{}
		}
		o.labels[name] = value
	}
}

var labelName = regexp.MustCompile(`^[a-zA-Z_][a-zA-Z0-9_]*$`)

// desc is prometheus.NewDesc, or an invalid Desc carrying o's error.
func (o *options) desc(name, help string, variable []string, labels prometheus.Labels) *prometheus.Desc {
	if o.err != nil {
		return prometheus.NewInvalidDesc(o.err)
	}
	return prometheus.NewDesc(name, help, variable, labels)
}

func build(opts []Option) options {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// metric is one exported series family: its description and how to read its samples.
type metric struct {
	desc *prometheus.Desc
	kind prometheus.ValueType
	// rows are the samples: a value read from Stats for each set of variable label values.
	rows []row
}

type row struct {
	labels []string
	value  func(*tiercache.Stats) float64
}

// u turns a Stats counter into a sample value.
func u(f func(*tiercache.Stats) uint64) func(*tiercache.Stats) float64 {
	return func(s *tiercache.Stats) float64 { return float64(f(s)) }
}

// one is the row of a family without variable labels.
func one(f func(*tiercache.Stats) uint64) []row { return []row{{value: u(f)}} }

type cacheCollector struct {
	c       *tiercache.Cache
	metrics []metric
	breaker *prometheus.Desc
	subUp   *prometheus.Desc
	l2      *prometheus.Desc
	load    *prometheus.Desc
	lag     *prometheus.Desc
}

// New returns a collector of c's metrics, to register on the caller's registry. Collecting is
// safe concurrently with everything the cache does; it costs one Stats call and three
// histogram copies. The collector holds c: unregister it when c is closed (a closed cache's
// counters stay as they were).
func New(c *tiercache.Cache, opts ...Option) prometheus.Collector {
	o := build(opts)
	labels := prometheus.Labels{"namespace": c.Namespace()}
	for name, v := range o.labels {
		if name == "namespace" {
			o.err = cmp.Or(o.err, fmt.Errorf("promcache: Label(%q, %q): the collector sets the namespace label itself", name, v))
		}
		labels[name] = v
	}
	k := &cacheCollector{c: c}
	desc := func(name, help string, variable ...string) *prometheus.Desc {
		return o.desc(name, help, variable, labels)
	}
	counter := func(name, help string, rows []row, variable ...string) {
		k.metrics = append(k.metrics, metric{desc(name, help, variable...), prometheus.CounterValue, rows})
	}
	gauge := func(name, help string, rows []row) {
		k.metrics = append(k.metrics, metric{desc(name, help), prometheus.GaugeValue, rows})
	}
	type S = tiercache.Stats
	counter("tiercache_lookups_total", "Cache lookups answered (hit) or not (miss), by tier; an L2 lookup follows each L1 miss that reaches Redis.", []row{
		{[]string{"l1", "hit"}, u(func(s *S) uint64 { return s.L1Hits })},
		{[]string{"l1", "miss"}, u(func(s *S) uint64 { return s.L1Misses })},
		{[]string{"l2", "hit"}, u(func(s *S) uint64 { return s.L2Hits })},
		{[]string{"l2", "miss"}, u(func(s *S) uint64 { return s.L2Misses })},
	}, "tier", "result")
	counter("tiercache_l2_errors_total", "Redis calls that failed (transport errors, timeouts).", one(func(s *S) uint64 { return s.L2Errors }))
	counter("tiercache_loads_total", "Loader calls that returned values (ok) or failed (error).", []row{
		{[]string{"ok"}, u(func(s *S) uint64 { return s.Loads })},
		{[]string{"error"}, u(func(s *S) uint64 { return s.LoadErrors })},
	}, "result")
	counter("tiercache_loader_panics_total", "Loader calls that panicked (also counted as load errors).", one(func(s *S) uint64 { return s.LoaderPanics }))
	counter("tiercache_writes_total", "Acknowledged writes and deletes, per key.", []row{
		{[]string{"set"}, u(func(s *S) uint64 { return s.Sets })},
		{[]string{"delete"}, u(func(s *S) uint64 { return s.Deletes })},
	}, "op")
	counter("tiercache_stale_refused_total", "Writes and fills refused because Redis held a newer version.", one(func(s *S) uint64 { return s.StaleRefused }))
	counter("tiercache_l1_evictions_total", "L1 entries evicted for size.", one(func(s *S) uint64 { return s.Evictions }))
	counter("tiercache_compression_saved_bytes_total", "Bytes saved by compression over all writes.", one(func(s *S) uint64 { return s.CompressionSaved }))
	counter("tiercache_corrupt_total", "Unreadable entries found in Redis (treated as misses and deleted).", one(func(s *S) uint64 { return s.Corrupt }))
	counter("tiercache_revalidated_total", "L2 lookups answered by L1's copy after Redis confirmed its version.", one(func(s *S) uint64 { return s.Revalidated }))
	counter("tiercache_invalidations_total", "Invalidation messages published (sent), peers' messages applied (received), and messages saved by sending several keys as one (coalesced).", []row{
		{[]string{"sent"}, u(func(s *S) uint64 { return s.InvalidationsSent })},
		{[]string{"received"}, u(func(s *S) uint64 { return s.InvalidationsReceived })},
		{[]string{"coalesced"}, u(func(s *S) uint64 { return s.InvalidationsCoalesced })},
	}, "direction")
	counter("tiercache_gaps_total", "Lost subscriptions and sequence holes: times L1 could not be vouched for.", one(func(s *S) uint64 { return s.Gaps }))
	counter("tiercache_l1_flushes_total", "Whole-L1 flushes (gaps, resubscriptions, peers' namespace flushes, late messages).", one(func(s *S) uint64 { return s.Flushes }))
	counter("tiercache_stale_served_total", "Fail-safe values served past their expiry (flagged with ErrStale).", one(func(s *S) uint64 { return s.StaleServed }))
	counter("tiercache_lease_waits_total", "Misses that waited for another instance's load.", one(func(s *S) uint64 { return s.LeaseWaits }))
	counter("tiercache_leases_total", "Load leases this instance acquired in Redis.", one(func(s *S) uint64 { return s.Leases }))
	counter("tiercache_refreshes_total", "Eager background refreshes.", one(func(s *S) uint64 { return s.Refreshes }))
	counter("tiercache_breaker_openings_total", "Times the circuit breaker around Redis opened from closed (outages).", one(func(s *S) uint64 { return s.Outages }))
	counter("tiercache_recoveries_total", "Completed recoveries after an outage (L1 flushed, remembered writes replayed).", one(func(s *S) uint64 { return s.Recoveries }))
	counter("tiercache_replayed_total", "Remembered writes replayed after an outage.", one(func(s *S) uint64 { return s.Replayed }))
	counter("tiercache_replay_superseded_total", "Replays refused because Redis already held a newer version.", one(func(s *S) uint64 { return s.ReplaySuperseded }))
	counter("tiercache_replay_dropped_total", "Remembered writes Redis rejected for good (lost, logged).", one(func(s *S) uint64 { return s.ReplayDropped }))
	counter("tiercache_replay_expired_total", "Remembered writes whose lifetime ended before Redis took them.", one(func(s *S) uint64 { return s.ReplayExpired }))
	counter("tiercache_sequence_fillers_total", "Invalidation sequence numbers given a filler because their message may not have gone out.", one(func(s *S) uint64 { return s.SequenceFillers }))
	counter("tiercache_degraded_seconds_total", "Time the circuit breaker around Redis was not closed, the current outage included.", []row{
		{value: func(s *S) float64 { return s.Degraded.Seconds() }},
	})
	gauge("tiercache_l1_entries", "Entries in L1 now (estimate).", one(func(s *S) uint64 { return s.L1Entries }))
	gauge("tiercache_l1_size_bytes", "Weighted bytes in L1 now.", one(func(s *S) uint64 { return s.L1Bytes }))
	gauge("tiercache_pending_writes", "Writes remembered during an outage, waiting for Redis.", one(func(s *S) uint64 { return s.PendingWrites }))
	k.breaker = desc("tiercache_breaker_state", "1 for the circuit breaker's current state, 0 for the others (absent in L1-only mode).", "state")
	k.subUp = desc("tiercache_subscriber_up", "1 while the invalidation subscriber is subscribed (absent in L1-only mode).")
	k.l2 = desc("tiercache_l2_duration_seconds", "Duration of each Redis round trip the cache makes, failed ones included.")
	k.load = desc("tiercache_load_duration_seconds", "Duration of each loader call, failed ones included.")
	k.lag = desc("tiercache_propagation_lag_seconds", "Time from a peer publishing an invalidation to this instance applying it (across hosts, includes clock skew; negative counts as 0).")
	return k
}

// Describe implements [prometheus.Collector].
func (k *cacheCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, m := range k.metrics {
		ch <- m.desc
	}
	for _, d := range []*prometheus.Desc{k.breaker, k.subUp, k.l2, k.load, k.lag} {
		ch <- d
	}
}

// breakerStates are the values of tiercache_breaker_state's state label.
var breakerStates = []string{"closed", "half-open", "open"}

// Collect implements [prometheus.Collector].
func (k *cacheCollector) Collect(ch chan<- prometheus.Metric) {
	s := k.c.Stats()
	h := k.c.Histograms()
	for _, m := range k.metrics {
		for _, r := range m.rows {
			ch <- constMetric(m.desc, m.kind, r.value(&s), r.labels...)
		}
	}
	if s.Breaker != "" {
		for _, st := range breakerStates {
			ch <- constMetric(k.breaker, prometheus.GaugeValue, b2f(s.Breaker == st), st)
		}
		ch <- constMetric(k.subUp, prometheus.GaugeValue, b2f(s.Subscribed))
	}
	ch <- constHistogram(k.l2, h.L2)
	ch <- constHistogram(k.load, h.Load)
	ch <- constHistogram(k.lag, h.Propagation)
}

func constMetric(d *prometheus.Desc, kind prometheus.ValueType, v float64, labels ...string) prometheus.Metric {
	m, err := prometheus.NewConstMetric(d, kind, v, labels...)
	if err != nil {
		return prometheus.NewInvalidMetric(d, err)
	}
	return m
}

// constHistogram turns a snapshot's per-bucket counts into Prometheus's cumulative ones.
func constHistogram(d *prometheus.Desc, h tiercache.Histogram) prometheus.Metric {
	buckets := make(map[float64]uint64, len(h.Bounds))
	var cum uint64
	for i, b := range h.Bounds {
		cum += h.Counts[i]
		buckets[b] = cum
	}
	m, err := prometheus.NewConstHistogram(d, h.Count, h.Sum, buckets)
	if err != nil {
		return prometheus.NewInvalidMetric(d, err)
	}
	return m
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

type lockCollector struct {
	l              *lock.Locker
	attempts, lost *prometheus.Desc
}

// NewLock returns a collector of l's lock attempts and lost leases ([lock.Locker.Stats]), to
// register on the caller's registry. Its metrics carry only the constant labels of opts: give
// each Locker registered on one registry a distinct [Label].
func NewLock(l *lock.Locker, opts ...Option) prometheus.Collector {
	o := build(opts)
	return &lockCollector{
		l: l,
		attempts: o.desc("tiercache_lock_attempts_total",
			"Lock attempts that took the lock (acquired), found another owner holding it (busy), or failed for the servers (failed).",
			[]string{"result"}, o.labels),
		lost: o.desc("tiercache_lock_lost_total",
			"Leases lost before their release: an extension refused, the validity deadline or MaxHold passed.", nil, o.labels),
	}
}

// Describe implements [prometheus.Collector].
func (k *lockCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- k.attempts
	ch <- k.lost
}

// Collect implements [prometheus.Collector].
func (k *lockCollector) Collect(ch chan<- prometheus.Metric) {
	s := k.l.Stats()
	ch <- constMetric(k.attempts, prometheus.CounterValue, float64(s.Acquired), "acquired")
	ch <- constMetric(k.attempts, prometheus.CounterValue, float64(s.Busy), "busy")
	ch <- constMetric(k.attempts, prometheus.CounterValue, float64(s.Failed), "failed")
	ch <- constMetric(k.lost, prometheus.CounterValue, float64(s.Lost))
}
