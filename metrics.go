package tiercache

import (
	"context"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/tiercache/tiercache/internal/histogram"
)

// Metrics. The counters live in Stats (stats.go) and cost the paths that bump them what they
// always did. Three latency distributions are recorded here, each only where the cache already
// pays for a Redis round trip, a loader call or a received message, never on an L1 hit:
//
//   - L2: every Redis call that goes through the breaker and its budget (l2doN): reads, writes,
//     pipelines, publishes, lease calls, probes. Calls the open breaker refuses are not calls.
//   - Load: every loader call (callLoader), whatever its outcome.
//   - Propagation: for each peer's invalidation applied, the receive time minus the publish
//     time stamped in the message by the peer's clock (see recordLag).
//
// They go to fixed-bucket histograms ([Cache.Histograms], read by promcache) and, with
// Options.MeterProvider, to OpenTelemetry histograms too (meters).

// Histogram layout shared by the three: 10 µs, 20 µs, … 2^21 × 10 µs (about 21 s), then one
// bucket for longer.
const (
	histFirst   = 10 * time.Microsecond
	histBuckets = 22
)

// Histogram is a snapshot of one latency distribution, in seconds.
type Histogram struct {
	// Bounds are the buckets' upper bounds in seconds, ascending: 10 µs doubling up to about
	// 21 s. The slice is shared by every snapshot: do not modify it.
	Bounds []float64
	// Counts[i] counts observations at most Bounds[i] and above Bounds[i-1] (not cumulative);
	// the last element, Counts[len(Bounds)], counts those above every bound.
	Counts []uint64
	// Count is the number of observations (the sum of Counts); Sum their total in seconds.
	Count uint64
	Sum   float64
}

// Histograms holds the cache's latency distributions since [New].
type Histograms struct {
	// L2 is the duration of each Redis round trip the cache makes (reads, writes, batches,
	// invalidation publishes, lease calls, health pings), failed ones included; calls the open
	// circuit breaker refuses never reach Redis and are not counted. Empty in L1-only mode.
	L2 Histogram
	// Load is the duration of each loader call (GetOrLoad, GetOrLoadMany, eager refreshes),
	// failed and panicking ones included.
	Load Histogram
	// Propagation is, for each peer's invalidation message this instance applied, the time it
	// was applied minus the time the peer stamped in it when publishing. Across hosts it
	// includes the difference between their clocks; a negative difference counts as 0.
	Propagation Histogram
}

// Histograms returns snapshots of the cache's latency distributions. It is safe to call
// concurrently with everything else; each snapshot copies a few dozen counters without
// stopping writers (Count always equals the sum of Counts; Sum may lag or lead them by the
// observations recorded meanwhile).
func (c *Cache) Histograms() Histograms {
	return Histograms{
		L2:          Histogram(c.hist.l2.Snapshot()),
		Load:        Histogram(c.hist.load.Snapshot()),
		Propagation: Histogram(c.hist.lag.Snapshot()),
	}
}

type hists struct{ l2, load, lag *histogram.Histogram }

func newHists() hists {
	return hists{
		l2:   histogram.New(histFirst, histBuckets),
		load: histogram.New(histFirst, histBuckets),
		lag:  histogram.New(histFirst, histBuckets),
	}
}

// observeL2 records one Redis call's duration.
func (c *Cache) observeL2(ctx context.Context, d time.Duration) {
	c.hist.l2.Record(d)
	if m := c.om; m != nil {
		m.l2.Record(ctx, d.Seconds(), m.rec...)
	}
}

// observeLoad records one loader call's duration.
func (c *Cache) observeLoad(ctx context.Context, d time.Duration) {
	c.hist.load.Record(d)
	if m := c.om; m != nil {
		m.load.Record(ctx, d.Seconds(), m.rec...)
	}
}

// observeLag records one applied invalidation's propagation lag.
func (c *Cache) observeLag(d time.Duration) {
	d = max(d, 0)
	c.hist.lag.Record(d)
	if m := c.om; m != nil {
		m.lag.Record(context.Background(), d.Seconds(), m.rec...)
	}
}

// meterScope is the instrumentation scope of the cache's OTel instruments.
const meterScope = instrumentationName

// meters are the cache's OpenTelemetry instruments (Options.MeterProvider). The histograms are
// synchronous and recorded beside the fixed-bucket ones; everything else is observed from Stats
// by one callback at each collection, which Close unregisters.
type meters struct {
	m             metric.Meter
	l2, load, lag metric.Float64Histogram
	rec           []metric.RecordOption // the namespace attribute, built once
	reg           metric.Registration   // nil until observe
}

// Attribute keys of the metrics (low-cardinality values only).
const (
	attrTier      = attribute.Key("tier")      // l1, l2
	attrResult    = attribute.Key("result")    // hit, miss; ok, error
	attrOp        = attribute.Key("op")        // set, delete
	attrDirection = attribute.Key("direction") // sent, received, coalesced
	attrState     = attribute.Key("state")     // closed, half-open, open
)

// breakerStates are the values of the breaker state gauge, in gobreaker's names.
var breakerStates = [...]string{"closed", "half-open", "open"}

// counterMetric is one observable counter read from Stats.
type counterMetric struct {
	name, unit, desc string
	attrs            []attribute.KeyValue
	value            func(*Stats) uint64
}

// counterMetrics are the OTel counters, in the order of docs/OPERATIONS.md's table.
var counterMetrics = []counterMetric{
	{"tiercache.lookups", "{lookup}", "Lookups answered (hit) or not (miss), by tier.", []attribute.KeyValue{attrTier.String("l1"), attrResult.String("hit")}, func(s *Stats) uint64 { return s.L1Hits }},
	{"tiercache.lookups", "{lookup}", "", []attribute.KeyValue{attrTier.String("l1"), attrResult.String("miss")}, func(s *Stats) uint64 { return s.L1Misses }},
	{"tiercache.lookups", "{lookup}", "", []attribute.KeyValue{attrTier.String("l2"), attrResult.String("hit")}, func(s *Stats) uint64 { return s.L2Hits }},
	{"tiercache.lookups", "{lookup}", "", []attribute.KeyValue{attrTier.String("l2"), attrResult.String("miss")}, func(s *Stats) uint64 { return s.L2Misses }},
	{"tiercache.l2.errors", "{call}", "Redis calls that failed (transport errors, timeouts).", nil, func(s *Stats) uint64 { return s.L2Errors }},
	{"tiercache.loads", "{call}", "Loader calls that returned values (ok) or failed (error).", []attribute.KeyValue{attrResult.String("ok")}, func(s *Stats) uint64 { return s.Loads }},
	{"tiercache.loads", "{call}", "", []attribute.KeyValue{attrResult.String("error")}, func(s *Stats) uint64 { return s.LoadErrors }},
	{"tiercache.loader.panics", "{call}", "Loader calls that panicked (also counted as load errors).", nil, func(s *Stats) uint64 { return s.LoaderPanics }},
	{"tiercache.writes", "{key}", "Acknowledged writes, by operation.", []attribute.KeyValue{attrOp.String("set")}, func(s *Stats) uint64 { return s.Sets }},
	{"tiercache.writes", "{key}", "", []attribute.KeyValue{attrOp.String("delete")}, func(s *Stats) uint64 { return s.Deletes }},
	{"tiercache.stale_refused", "{key}", "Writes and fills refused because Redis held a newer version.", nil, func(s *Stats) uint64 { return s.StaleRefused }},
	{"tiercache.l1.evictions", "{entry}", "L1 entries evicted for size.", nil, func(s *Stats) uint64 { return s.Evictions }},
	{"tiercache.compression.saved", "By", "Bytes saved by compression over all writes.", nil, func(s *Stats) uint64 { return s.CompressionSaved }},
	{"tiercache.corrupt", "{entry}", "Unreadable entries found in Redis (treated as misses and deleted).", nil, func(s *Stats) uint64 { return s.Corrupt }},
	{"tiercache.revalidated", "{lookup}", "L2 lookups answered by L1's copy after Redis confirmed its version.", nil, func(s *Stats) uint64 { return s.Revalidated }},
	{"tiercache.invalidations", "{message}", "Invalidation messages published (sent), peers' applied (received), and messages saved by coalescing several keys into one (coalesced).", []attribute.KeyValue{attrDirection.String("sent")}, func(s *Stats) uint64 { return s.InvalidationsSent }},
	{"tiercache.invalidations", "{message}", "", []attribute.KeyValue{attrDirection.String("received")}, func(s *Stats) uint64 { return s.InvalidationsReceived }},
	{"tiercache.invalidations", "{message}", "", []attribute.KeyValue{attrDirection.String("coalesced")}, func(s *Stats) uint64 { return s.InvalidationsCoalesced }},
	{"tiercache.gaps", "{gap}", "Lost subscriptions and sequence holes: times L1 could not be vouched for.", nil, func(s *Stats) uint64 { return s.Gaps }},
	{"tiercache.l1.flushes", "{flush}", "Whole-L1 flushes (gaps, resubscriptions, peers' namespace flushes).", nil, func(s *Stats) uint64 { return s.Flushes }},
	{"tiercache.stale_served", "{lookup}", "Fail-safe values served past their expiry (flagged with ErrStale).", nil, func(s *Stats) uint64 { return s.StaleServed }},
	{"tiercache.lease.waits", "{lookup}", "Misses that waited for another instance's load.", nil, func(s *Stats) uint64 { return s.LeaseWaits }},
	{"tiercache.leases", "{lease}", "Load leases this instance acquired in Redis.", nil, func(s *Stats) uint64 { return s.Leases }},
	{"tiercache.refreshes", "{refresh}", "Eager background refreshes.", nil, func(s *Stats) uint64 { return s.Refreshes }},
	{"tiercache.breaker.openings", "{opening}", "Times the circuit breaker around Redis opened (outages).", nil, func(s *Stats) uint64 { return s.Outages }},
	{"tiercache.recoveries", "{recovery}", "Completed recoveries after an outage (L1 flushed, remembered writes replayed).", nil, func(s *Stats) uint64 { return s.Recoveries }},
	{"tiercache.replayed", "{write}", "Remembered writes replayed after an outage.", nil, func(s *Stats) uint64 { return s.Replayed }},
	{"tiercache.replay.superseded", "{write}", "Replays refused because Redis already held a newer version.", nil, func(s *Stats) uint64 { return s.ReplaySuperseded }},
	{"tiercache.replay.dropped", "{write}", "Remembered writes Redis rejected for good (lost, logged).", nil, func(s *Stats) uint64 { return s.ReplayDropped }},
	{"tiercache.replay.expired", "{write}", "Remembered writes whose lifetime ended before Redis took them.", nil, func(s *Stats) uint64 { return s.ReplayExpired }},
	{"tiercache.sequence_fillers", "{message}", "Invalidation sequence numbers given a filler because their message may not have gone out.", nil, func(s *Stats) uint64 { return s.SequenceFillers }},
}

// gaugeMetric is one observable gauge (or up-down counter) read from Stats.
type gaugeMetric struct {
	name, unit, desc string
	value            func(*Stats) int64
}

// levelMetrics are the OTel up-down counters: amounts that can be summed across instances.
var levelMetrics = []gaugeMetric{
	{"tiercache.l1.entries", "{entry}", "Entries in L1 now (estimate).", func(s *Stats) int64 { return int64(s.L1Entries) }},
	{"tiercache.l1.size", "By", "Weighted bytes in L1 now.", func(s *Stats) int64 { return int64(s.L1Bytes) }},
	{"tiercache.pending_writes", "{write}", "Writes remembered during an outage, waiting for Redis.", func(s *Stats) int64 { return int64(s.PendingWrites) }},
}

// newMeters creates the histograms on mp. It runs before the cache starts goroutines that
// make Redis calls (c.om is read without synchronisation); observe registers the rest once the
// cache is built.
func newMeters(c *Cache, mp metric.MeterProvider) (*meters, error) {
	m := mp.Meter(meterScope)
	set := attribute.NewSet(attrNamespace.String(c.cfg.Namespace))
	bounds := c.hist.l2.Bounds()
	hist := func(name, desc string) (metric.Float64Histogram, error) {
		return m.Float64Histogram(name, metric.WithUnit("s"), metric.WithDescription(desc),
			metric.WithExplicitBucketBoundaries(bounds...))
	}
	om := &meters{m: m, rec: []metric.RecordOption{metric.WithAttributeSet(set)}}
	var err error
	if om.l2, err = hist("tiercache.l2.duration", "Duration of each Redis round trip the cache makes."); err != nil {
		return nil, err
	}
	if om.load, err = hist("tiercache.load.duration", "Duration of each loader call."); err != nil {
		return nil, err
	}
	if om.lag, err = hist("tiercache.propagation.lag", "Time from a peer publishing an invalidation to this instance applying it (across hosts, includes clock skew; negative counts as 0)."); err != nil {
		return nil, err
	}
	return om, nil
}

// observe creates the observable instruments and registers the callback that reads Stats at
// each collection (Close unregisters it).
func (om *meters) observe(c *Cache) error {
	m := om.m
	ns := attrNamespace.String(c.cfg.Namespace)
	set := attribute.NewSet(ns)
	var err error
	// One instrument per name; the rows of a name differ in their attributes.
	counters := map[string]metric.Int64ObservableCounter{}
	var insts []metric.Observable
	for _, cm := range counterMetrics {
		if _, ok := counters[cm.name]; ok {
			continue
		}
		inst, err := m.Int64ObservableCounter(cm.name, metric.WithUnit(cm.unit), metric.WithDescription(cm.desc))
		if err != nil {
			return err
		}
		counters[cm.name] = inst
		insts = append(insts, inst)
	}
	counterOpts := make([]metric.ObserveOption, len(counterMetrics))
	for i, cm := range counterMetrics {
		counterOpts[i] = metric.WithAttributeSet(attribute.NewSet(append([]attribute.KeyValue{ns}, cm.attrs...)...))
	}
	levels := make([]metric.Int64ObservableUpDownCounter, len(levelMetrics))
	for i, lm := range levelMetrics {
		if levels[i], err = m.Int64ObservableUpDownCounter(lm.name, metric.WithUnit(lm.unit), metric.WithDescription(lm.desc)); err != nil {
			return err
		}
		insts = append(insts, levels[i])
	}
	degraded, err := m.Float64ObservableCounter("tiercache.degraded", metric.WithUnit("s"),
		metric.WithDescription("Time the circuit breaker around Redis was not closed, the current outage included."))
	if err != nil {
		return err
	}
	breaker, err := m.Int64ObservableGauge("tiercache.breaker.state", metric.WithUnit("{state}"),
		metric.WithDescription("1 for the circuit breaker's current state (closed, half-open, open), 0 for the others; absent in L1-only mode."))
	if err != nil {
		return err
	}
	subscribed, err := m.Int64ObservableGauge("tiercache.subscriber.up", metric.WithUnit("{subscriber}"),
		metric.WithDescription("1 while the invalidation subscriber is subscribed and hearing Redis; absent in L1-only mode."))
	if err != nil {
		return err
	}
	insts = append(insts, degraded, breaker, subscribed)
	nsOpt := metric.WithAttributeSet(set)
	var stateOpts [len(breakerStates)]metric.ObserveOption
	for i, st := range breakerStates {
		stateOpts[i] = metric.WithAttributeSet(attribute.NewSet(ns, attrState.String(st)))
	}
	reg, err := m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		s := c.Stats()
		for i, cm := range counterMetrics {
			o.ObserveInt64(counters[cm.name], int64(cm.value(&s)), counterOpts[i])
		}
		for i, lm := range levelMetrics {
			o.ObserveInt64(levels[i], lm.value(&s), nsOpt)
		}
		o.ObserveFloat64(degraded, s.Degraded.Seconds(), nsOpt)
		if c.rdb != nil {
			for i, st := range breakerStates {
				o.ObserveInt64(breaker, b2i(s.Breaker == st), stateOpts[i])
			}
			o.ObserveInt64(subscribed, b2i(s.Subscribed), nsOpt)
		}
		return nil
	}, insts...)
	if err != nil {
		return err
	}
	om.reg = reg
	return nil
}

func b2i(b bool) int64 {
	if b {
		return 1
	}
	return 0
}
