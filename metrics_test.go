package tiercache

import (
	"context"
	"errors"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/tiercache/tiercache/internal/redistest"
)

// metricsWorkload runs a known sequence of operations on a and returns how many Redis round
// trips it made (calls through the breaker). Leases must be off (LeaseTTL < 0) for the count.
func metricsWorkload(tb testing.TB, a *Cache) (roundTrips uint64) {
	tb.Helper()
	ctx := context.Background()
	must := func(what string, err error) {
		tb.Helper()
		if err != nil {
			tb.Fatalf("%s: %v", what, err)
		}
	}
	must("Set(k1)", a.Set(ctx, "k1", []byte("v1"))) // 1 round trip
	if _, err := a.Get(ctx, "k1"); err != nil {     // L1 hit
		tb.Fatalf("Get(k1): %v", err)
	}
	if _, err := a.Get(ctx, "k2"); !errors.Is(err, ErrNotFound) { // L1 and L2 miss: 1
		tb.Fatalf("Get(k2) = %v, want ErrNotFound", err)
	}
	load := func(ctx context.Context, key string) ([]byte, error) { return []byte("loaded"), nil }
	_, err := a.GetOrLoad(ctx, "k3", load) // L1 and L2 miss, a load, its fill: 2
	must("GetOrLoad(k3)", err)
	// One pipeline of three writes and one message for them (two messages saved): 1
	must("SetMany", a.SetMany(ctx, map[string][]byte{"m1": []byte("1"), "m2": []byte("2"), "m3": []byte("3")}))
	must("Delete(k1)", a.Delete(ctx, "k1")) // 1
	// m1 from L1, x missing in both tiers: 1
	got, err := a.GetMany(ctx, []string{"m1", "x"})
	must("GetMany", err)
	if len(got) != 1 {
		tb.Fatalf("GetMany(m1, x) = %d values, want 1", len(got))
	}
	return 7
}

// wantWorkloadStats is what metricsWorkload leaves in the counters the metrics export.
var wantWorkloadStats = Stats{
	L1Hits: 2, L1Misses: 3, L2Misses: 3, Loads: 1, Sets: 4, Deletes: 1, // a load's fill is no set
	InvalidationsSent: 3, InvalidationsCoalesced: 2,
}

func TestOTelMetrics(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	ra, rb := sdkmetric.NewManualReader(), sdkmetric.NewManualReader()
	a := newCache(t, srv, Options{LeaseTTL: -1, MeterProvider: sdkmetric.NewMeterProvider(sdkmetric.WithReader(ra))})
	b := newCache(t, srv, Options{LeaseTTL: -1, MeterProvider: sdkmetric.NewMeterProvider(sdkmetric.WithReader(rb))})

	trips := metricsWorkload(t, a)
	// b applies a's three messages (the Set, the batch, the Delete).
	waitFor(t, "b to apply a's invalidations", 10*time.Second, func() bool { return b.Stats().InvalidationsReceived >= 3 })

	rm := collect(t, ra)
	st := a.Stats()
	for _, tt := range []struct {
		name  string
		attrs []attribute.KeyValue
		want  int64
	}{
		{"tiercache.lookups", []attribute.KeyValue{attrTier.String("l1"), attrResult.String("hit")}, int64(wantWorkloadStats.L1Hits)},
		{"tiercache.lookups", []attribute.KeyValue{attrTier.String("l1"), attrResult.String("miss")}, int64(wantWorkloadStats.L1Misses)},
		{"tiercache.lookups", []attribute.KeyValue{attrTier.String("l2"), attrResult.String("hit")}, 0},
		{"tiercache.lookups", []attribute.KeyValue{attrTier.String("l2"), attrResult.String("miss")}, int64(wantWorkloadStats.L2Misses)},
		{"tiercache.loads", []attribute.KeyValue{attrResult.String("ok")}, 1},
		{"tiercache.loads", []attribute.KeyValue{attrResult.String("error")}, 0},
		{"tiercache.writes", []attribute.KeyValue{attrOp.String("set")}, int64(wantWorkloadStats.Sets)},
		{"tiercache.writes", []attribute.KeyValue{attrOp.String("delete")}, 1},
		{"tiercache.invalidations", []attribute.KeyValue{attrDirection.String("sent")}, 3},
		{"tiercache.invalidations", []attribute.KeyValue{attrDirection.String("received")}, 0},
		{"tiercache.invalidations", []attribute.KeyValue{attrDirection.String("coalesced")}, 2},
		{"tiercache.l2.errors", nil, 0},
		{"tiercache.breaker.openings", nil, 0},
		{"tiercache.l1.entries", nil, int64(st.L1Entries)},
		{"tiercache.l1.size", nil, int64(st.L1Bytes)},
		{"tiercache.pending_writes", nil, 0},
		{"tiercache.breaker.state", []attribute.KeyValue{attrState.String("closed")}, 1},
		{"tiercache.breaker.state", []attribute.KeyValue{attrState.String("open")}, 0},
		{"tiercache.subscriber.up", nil, 1},
	} {
		if got, ok := otelInt(rm, tt.name, tt.attrs...); !ok || got != tt.want {
			t.Errorf("%s%v = %d (found %v), want %d", tt.name, tt.attrs, got, ok, tt.want)
		}
	}
	if st.L1Entries == 0 || st.L1Bytes == 0 {
		t.Errorf("Stats L1Entries=%d L1Bytes=%d after the workload, want both > 0", st.L1Entries, st.L1Bytes)
	}
	if d, ok := otelFloat(rm, "tiercache.degraded"); !ok || d != 0 {
		t.Errorf("tiercache.degraded = %v (found %v), want 0", d, ok)
	}
	// Every data point carries the namespace.
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			for _, set := range pointAttrs(m) {
				if v, ok := set.Value(attrNamespace); !ok || v.AsString() != DefaultNamespace {
					t.Errorf("%s: data point without tiercache.namespace=%s: %v", m.Name, DefaultNamespace, set.ToSlice())
				}
			}
		}
	}

	h := a.Histograms()
	if got, ok := otelHist(rm, "tiercache.l2.duration"); !ok || got.Count != trips {
		t.Errorf("tiercache.l2.duration count = %d (found %v), want %d round trips", got.Count, ok, trips)
	}
	if h.L2.Count != trips {
		t.Errorf("Histograms().L2.Count = %d, want %d round trips", h.L2.Count, trips)
	}
	if got, ok := otelHist(rm, "tiercache.load.duration"); !ok || got.Count != 1 || h.Load.Count != 1 {
		t.Errorf("load duration: OTel count %d (found %v), Histograms %d; want 1 each", got.Count, ok, h.Load.Count)
	}
	if got, ok := otelHist(rm, "tiercache.l2.duration"); ok {
		if len(got.Bounds) != len(h.L2.Bounds) || got.Sum <= 0 {
			t.Errorf("tiercache.l2.duration: %d bounds, sum %v; want %d bounds (as Histograms) and a positive sum", len(got.Bounds), got.Sum, len(h.L2.Bounds))
		}
	}
	if h.Propagation.Count != 0 {
		t.Errorf("a's propagation lag count = %d, want 0 (it received nothing)", h.Propagation.Count)
	}

	// b: the propagation lag of a's messages.
	rmb := collect(t, rb)
	if got, ok := otelHist(rmb, "tiercache.propagation.lag"); !ok || got.Count < 1 {
		t.Errorf("b's tiercache.propagation.lag count = %d (found %v), want >= 1", got.Count, ok)
	}
	if got, ok := otelInt(rmb, "tiercache.invalidations", attrDirection.String("received")); !ok || got < 3 {
		t.Errorf("b's received invalidations = %d (found %v), want >= 3", got, ok)
	}
	if hb := b.Histograms(); hb.Propagation.Count < 3 {
		t.Errorf("b.Histograms().Propagation.Count = %d, want >= 3", hb.Propagation.Count)
	}

	// Every OTel name documented in docs/OPERATIONS.md is collected (a histogram only once it
	// has an observation: a's or b's), and every collected one is documented.
	documented := documentedMetrics(t, 2)
	collected := map[string]bool{}
	for _, r := range []metricdata.ResourceMetrics{rm, rmb} {
		for _, sm := range r.ScopeMetrics {
			for _, m := range sm.Metrics {
				collected[m.Name] = true
			}
		}
	}
	for name := range documented {
		if !collected[name] {
			t.Errorf("docs/OPERATIONS.md documents OTel metric %s; the collection has none", name)
		}
	}
	for name := range collected {
		if !documented[name] {
			t.Errorf("OTel metric %s is not documented in docs/OPERATIONS.md", name)
		}
	}

	// Close unregisters the callback: the observable instruments report nothing more.
	a.Close()
	rm = collect(t, ra)
	if _, ok := otelInt(rm, "tiercache.lookups", attrTier.String("l1"), attrResult.String("hit")); ok {
		t.Error("tiercache.lookups still observed after Close")
	}
}

// The degraded time counts the current outage and keeps what earlier ones added.
func TestDegradedTime(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	c := newCache(t, srv, Options{LeaseTTL: -1, BreakerFailures: 1, BreakerWindow: -1, L2Timeout: 20 * time.Millisecond})
	if s := c.Stats(); s.Degraded != 0 || s.Breaker != "closed" || !s.Subscribed {
		t.Fatalf("healthy: Degraded=%v Breaker=%q Subscribed=%v, want 0, closed, true", s.Degraded, s.Breaker, s.Subscribed)
	}
	resume := pauseRedis(t, srv)
	waitFor(t, "the breaker to open", 10*time.Second, func() bool {
		_, _ = c.Get(context.Background(), "k", SkipL1())
		return c.Stats().Outages == 1
	})
	d1 := c.Stats().Degraded
	waitFor(t, "the degraded time to grow during the outage", 10*time.Second, func() bool { return c.Stats().Degraded > d1 })
	if s := c.Stats(); s.Breaker == "closed" {
		t.Errorf("Breaker = closed during the outage")
	}
	resume()
	waitFor(t, "the breaker to close", 10*time.Second, func() bool { return c.Stats().Breaker == "closed" })
	after := c.Stats().Degraded
	if after <= d1 {
		t.Errorf("Degraded after the outage = %v, want > %v", after, d1)
	}
	// Closed: it stops growing.
	if _, err := c.Get(context.Background(), "k"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get after recovery = %v, want ErrNotFound", err)
	}
	if again := c.Stats().Degraded; again != after {
		t.Errorf("Degraded moved from %v to %v while the breaker was closed", after, again)
	}
}

// A MeterProvider that fails is New's error, named, and leaves nothing running.
func TestMeterProviderErrors(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	for _, tt := range []struct {
		name string
		mp   metric.MeterProvider
		want string
	}{
		{"histogram", failingProvider{failHistogram: true}, "tiercache: MeterProvider: no histograms here"},
		{"callback", failingProvider{}, "tiercache: MeterProvider: no callbacks here"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := New(Options{Redis: srv.Client(t), MeterProvider: tt.mp})
			if err == nil {
				c.Close()
				t.Fatal("New with a failing MeterProvider succeeded")
			}
			if err.Error() != tt.want {
				t.Errorf("New error = %q, want %q", err, tt.want)
			}
		})
	}
}

type failingProvider struct {
	noop.MeterProvider
	failHistogram bool
}

func (p failingProvider) Meter(string, ...metric.MeterOption) metric.Meter {
	return failingMeter{failHistogram: p.failHistogram}
}

type failingMeter struct {
	noop.Meter
	failHistogram bool
}

func (m failingMeter) Float64Histogram(name string, opts ...metric.Float64HistogramOption) (metric.Float64Histogram, error) {
	if m.failHistogram {
		return nil, errors.New("no histograms here")
	}
	return m.Meter.Float64Histogram(name, opts...)
}

func (failingMeter) RegisterCallback(metric.Callback, ...metric.Observable) (metric.Registration, error) {
	return nil, errors.New("no callbacks here")
}

func collect(tb testing.TB, r *sdkmetric.ManualReader) metricdata.ResourceMetrics {
	tb.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.Collect(context.Background(), &rm); err != nil {
		tb.Fatalf("Collect: %v", err)
	}
	return rm
}

func findMetric(rm metricdata.ResourceMetrics, name string) (metricdata.Metrics, bool) {
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name == name {
				return m, true
			}
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
	m, ok := findMetric(rm, name)
	if !ok {
		return 0, false
	}
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
	m, ok := findMetric(rm, name)
	if !ok {
		return 0, false
	}
	if d, ok := m.Data.(metricdata.Sum[float64]); ok && len(d.DataPoints) == 1 {
		return d.DataPoints[0].Value, true
	}
	return 0, false
}

func otelHist(rm metricdata.ResourceMetrics, name string) (metricdata.HistogramDataPoint[float64], bool) {
	m, ok := findMetric(rm, name)
	if !ok {
		return metricdata.HistogramDataPoint[float64]{}, false
	}
	if d, ok := m.Data.(metricdata.Histogram[float64]); ok && len(d.DataPoints) == 1 {
		return d.DataPoints[0], true
	}
	return metricdata.HistogramDataPoint[float64]{}, false
}

func pointAttrs(m metricdata.Metrics) []attribute.Set {
	var sets []attribute.Set
	switch d := m.Data.(type) {
	case metricdata.Sum[int64]:
		for _, p := range d.DataPoints {
			sets = append(sets, p.Attributes)
		}
	case metricdata.Sum[float64]:
		for _, p := range d.DataPoints {
			sets = append(sets, p.Attributes)
		}
	case metricdata.Gauge[int64]:
		for _, p := range d.DataPoints {
			sets = append(sets, p.Attributes)
		}
	case metricdata.Histogram[float64]:
		for _, p := range d.DataPoints {
			sets = append(sets, p.Attributes)
		}
	}
	return sets
}

// documentedMetrics reads the names in column col (1: Prometheus, 2: OTel) of the metrics
// table in docs/OPERATIONS.md (the rows between "<!-- metrics -->" and "<!-- /metrics -->").
func documentedMetrics(tb testing.TB, col int) map[string]bool {
	tb.Helper()
	doc, err := os.ReadFile("docs/OPERATIONS.md")
	if err != nil {
		tb.Fatal(err)
	}
	_, table, ok := strings.Cut(string(doc), "<!-- metrics -->")
	table, _, ok2 := strings.Cut(table, "<!-- /metrics -->")
	if !ok || !ok2 {
		tb.Fatal("docs/OPERATIONS.md has no <!-- metrics --> … <!-- /metrics --> table")
	}
	name := regexp.MustCompile("`([a-z0-9_.]+)`")
	names := map[string]bool{}
	for _, line := range strings.Split(table, "\n") {
		cells := strings.Split(line, "|")
		if len(cells) < col+2 || !strings.HasPrefix(strings.TrimSpace(line), "|") {
			continue
		}
		for _, m := range name.FindAllStringSubmatch(cells[col], -1) {
			names[m[1]] = true
		}
	}
	if len(names) < 10 {
		tb.Fatalf("docs/OPERATIONS.md metrics table: %d names in column %d, want the whole list", len(names), col)
	}
	return names
}
