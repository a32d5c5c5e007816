package tiercache_test

import (
	"context"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/tiercache/tiercache"
	"github.com/tiercache/tiercache/internal/metricstest"
	"github.com/tiercache/tiercache/internal/redistest"
)

// The metric attributes, as docs/OPERATIONS.md names them.
var (
	tier      = attribute.Key("tier")
	result    = attribute.Key("result")
	op        = attribute.Key("op")
	direction = attribute.Key("direction")
	state     = attribute.Key("state")
	namespace = attribute.Key("tiercache.namespace")
)

// meteredCache returns a cache on srv reporting to a manual reader, closed at cleanup, with
// its subscriber up.
func meteredCache(tb testing.TB, srv *redistest.Server) (*tiercache.Cache, *sdkmetric.ManualReader) {
	tb.Helper()
	r := sdkmetric.NewManualReader()
	c, err := tiercache.New(tiercache.Options{Redis: srv.Client(tb), LeaseTTL: -1,
		MeterProvider: sdkmetric.NewMeterProvider(sdkmetric.WithReader(r))})
	if err != nil {
		tb.Fatalf("New: %v", err)
	}
	tb.Cleanup(func() { c.Close() })
	metricstest.WaitFor(tb, "the invalidation subscriber", func() bool { return c.Stats().Subscribed })
	return c, r
}

// A manual reader collected after a known workload: every instrument with its value, the L2
// histogram counting each round trip, and the propagation lag on the peer.
func TestOTelMetrics(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	a, ra := meteredCache(t, srv)
	b, rb := meteredCache(t, srv)

	trips := metricstest.Workload(t, a)
	metricstest.WaitFor(t, "b to apply a's three messages", func() bool { return b.Stats().InvalidationsReceived >= 3 })

	rm := collect(t, ra)
	st, want := a.Stats(), metricstest.WorkloadStats
	for _, tt := range []struct {
		name  string
		attrs []attribute.KeyValue
		want  uint64
	}{
		{"tiercache.lookups", []attribute.KeyValue{tier.String("l1"), result.String("hit")}, want.L1Hits},
		{"tiercache.lookups", []attribute.KeyValue{tier.String("l1"), result.String("miss")}, want.L1Misses},
		{"tiercache.lookups", []attribute.KeyValue{tier.String("l2"), result.String("hit")}, want.L2Hits},
		{"tiercache.lookups", []attribute.KeyValue{tier.String("l2"), result.String("miss")}, want.L2Misses},
		{"tiercache.loads", []attribute.KeyValue{result.String("ok")}, want.Loads},
		{"tiercache.loads", []attribute.KeyValue{result.String("error")}, 0},
		{"tiercache.writes", []attribute.KeyValue{op.String("set")}, want.Sets},
		{"tiercache.writes", []attribute.KeyValue{op.String("delete")}, want.Deletes},
		{"tiercache.invalidations", []attribute.KeyValue{direction.String("sent")}, want.InvalidationsSent},
		{"tiercache.invalidations", []attribute.KeyValue{direction.String("received")}, 0},
		{"tiercache.invalidations", []attribute.KeyValue{direction.String("coalesced")}, want.InvalidationsCoalesced},
		{"tiercache.l2.errors", nil, 0},
		{"tiercache.breaker.openings", nil, 0},
		{"tiercache.l1.entries", nil, st.L1Entries},
		{"tiercache.l1.size", nil, st.L1Bytes},
		{"tiercache.pending_writes", nil, 0},
		{"tiercache.breaker.state", []attribute.KeyValue{state.String("closed")}, 1},
		{"tiercache.breaker.state", []attribute.KeyValue{state.String("half-open")}, 0},
		{"tiercache.breaker.state", []attribute.KeyValue{state.String("open")}, 0},
		{"tiercache.subscriber.up", nil, 1},
	} {
		if got, ok := otelInt(rm, tt.name, tt.attrs...); !ok || got != int64(tt.want) {
			t.Errorf("%s%v = %d (found %v), want %d", tt.name, tt.attrs, got, ok, tt.want)
		}
	}
	if st.L1Entries == 0 || st.L1Bytes == 0 {
		t.Errorf("Stats L1Entries=%d L1Bytes=%d after the workload, want both > 0", st.L1Entries, st.L1Bytes)
	}
	if d, ok := otelFloat(rm, "tiercache.degraded"); !ok || d != 0 {
		t.Errorf("tiercache.degraded = %v (found %v), want 0", d, ok)
	}
	for _, m := range allMetrics(rm) {
		for _, set := range pointAttrs(m) {
			if v, ok := set.Value(namespace); !ok || v.AsString() != tiercache.DefaultNamespace {
				t.Errorf("%s: data point without tiercache.namespace=%s: %v", m.Name, tiercache.DefaultNamespace, set.ToSlice())
			}
		}
	}

	h := a.Histograms()
	l2, ok := otelHist(rm, "tiercache.l2.duration")
	if !ok || l2.Count != trips || h.L2.Count != trips {
		t.Errorf("L2 duration count: OTel %d (found %v), Histograms %d; want %d round trips", l2.Count, ok, h.L2.Count, trips)
	}
	if len(l2.Bounds) != len(h.L2.Bounds) || l2.Sum <= 0 {
		t.Errorf("tiercache.l2.duration: %d bounds, sum %v; want %d bounds (as Histograms) and a positive sum", len(l2.Bounds), l2.Sum, len(h.L2.Bounds))
	}
	if got, ok := otelHist(rm, "tiercache.load.duration"); !ok || got.Count != 1 || h.Load.Count != 1 {
		t.Errorf("load duration count: OTel %d (found %v), Histograms %d; want 1 each", got.Count, ok, h.Load.Count)
	}
	if h.Propagation.Count != 0 {
		t.Errorf("a's propagation lag count = %d, want 0 (it received nothing)", h.Propagation.Count)
	}

	rmb := collect(t, rb)
	if got, ok := otelHist(rmb, "tiercache.propagation.lag"); !ok || got.Count < 1 {
		t.Errorf("b's tiercache.propagation.lag count = %d (found %v), want >= 1", got.Count, ok)
	}
	if got, ok := otelInt(rmb, "tiercache.invalidations", direction.String("received")); !ok || got < 3 {
		t.Errorf("b's received invalidations = %d (found %v), want >= 3", got, ok)
	}
	if hb := b.Histograms(); hb.Propagation.Count < 3 {
		t.Errorf("b.Histograms().Propagation.Count = %d, want >= 3", hb.Propagation.Count)
	}

	// Every OTel name documented in docs/OPERATIONS.md is collected (a histogram only once it
	// has an observation: a's or b's), and every collected one is documented.
	documented := metricstest.Documented(t, "docs/OPERATIONS.md", "metrics", 2)
	collected := map[string]bool{}
	for _, m := range append(allMetrics(rm), allMetrics(rmb)...) {
		collected[m.Name] = true
	}
	metricstest.SameNames(t, documented, collected, "the OTel collection")

	// Close unregisters the callback: the observable instruments report nothing more.
	a.Close()
	if _, ok := otelInt(collect(t, ra), "tiercache.lookups", tier.String("l1"), result.String("hit")); ok {
		t.Error("tiercache.lookups still observed after Close")
	}
}

func collect(tb testing.TB, r *sdkmetric.ManualReader) metricdata.ResourceMetrics {
	tb.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.Collect(context.Background(), &rm); err != nil {
		tb.Fatalf("Collect: %v", err)
	}
	return rm
}

func allMetrics(rm metricdata.ResourceMetrics) []metricdata.Metrics {
	var all []metricdata.Metrics
	for _, sm := range rm.ScopeMetrics {
		all = append(all, sm.Metrics...)
	}
	return all
}

func findMetric(rm metricdata.ResourceMetrics, name string) (metricdata.Metrics, bool) {
	for _, m := range allMetrics(rm) {
		if m.Name == name {
			return m, true
		}
	}
	return metricdata.Metrics{}, false
}

func hasAttrs(set attribute.Set, attrs []attribute.KeyValue) bool {
	for _, kv := range attrs {
		if v, ok := set.Value(kv.Key); !ok || v != kv.Value {
			return false
		}
	}
	return true
}

// otelInt is the value of name's int64 data point (sum or gauge) carrying attrs.
func otelInt(rm metricdata.ResourceMetrics, name string, attrs ...attribute.KeyValue) (int64, bool) {
	m, _ := findMetric(rm, name)
	var points []metricdata.DataPoint[int64]
	switch d := m.Data.(type) {
	case metricdata.Sum[int64]:
		points = d.DataPoints
	case metricdata.Gauge[int64]:
		points = d.DataPoints
	}
	for _, p := range points {
		if hasAttrs(p.Attributes, attrs) {
			return p.Value, true
		}
	}
	return 0, false
}

func otelFloat(rm metricdata.ResourceMetrics, name string) (float64, bool) {
	m, _ := findMetric(rm, name)
	if d, ok := m.Data.(metricdata.Sum[float64]); ok && len(d.DataPoints) == 1 {
		return d.DataPoints[0].Value, true
	}
	return 0, false
}

func otelHist(rm metricdata.ResourceMetrics, name string) (metricdata.HistogramDataPoint[float64], bool) {
	m, _ := findMetric(rm, name)
	if d, ok := m.Data.(metricdata.Histogram[float64]); ok && len(d.DataPoints) == 1 {
		return d.DataPoints[0], true
	}
	return metricdata.HistogramDataPoint[float64]{}, false
}

// pointAttrs lists the attribute sets of m's data points.
func pointAttrs(m metricdata.Metrics) []attribute.Set {
	switch d := m.Data.(type) {
	case metricdata.Sum[int64]:
		return setsOf(d.DataPoints)
	case metricdata.Sum[float64]:
		return setsOf(d.DataPoints)
	case metricdata.Gauge[int64]:
		return setsOf(d.DataPoints)
	case metricdata.Histogram[float64]:
		var sets []attribute.Set
		for _, p := range d.DataPoints {
			sets = append(sets, p.Attributes)
		}
		return sets
	}
	return nil
}

func setsOf[N int64 | float64](points []metricdata.DataPoint[N]) []attribute.Set {
	sets := make([]attribute.Set, len(points))
	for i, p := range points {
		sets[i] = p.Attributes
	}
	return sets
}
