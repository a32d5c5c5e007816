package promcache_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache"
	"github.com/tiercache/tiercache/internal/metricstest"
	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/lock"
	"github.com/tiercache/tiercache/promcache"
)

func newCache(tb testing.TB, srv *redistest.Server, o tiercache.Options) *tiercache.Cache {
	tb.Helper()
	if srv != nil {
		o.Redis = srv.Client(tb)
	}
	c, err := tiercache.New(o)
	if err != nil {
		tb.Fatalf("tiercache.New: %v", err)
	}
	tb.Cleanup(func() { c.Close() })
	if srv != nil {
		metricstest.WaitFor(tb, "the invalidation subscriber", func() bool { return c.Stats().Subscribed })
	}
	return c
}

// sample is the value of the series name whose labels include want, or false.
func sample(mfs []*dto.MetricFamily, name string, want map[string]string) (*dto.Metric, bool) {
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, lp := range m.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			for k, v := range want {
				if have[k] != v {
					continue next
				}
			}
			return m, true
		}
	}
	return nil, false
}

func value(m *dto.Metric) float64 {
	switch {
	case m.GetCounter() != nil:
		return m.GetCounter().GetValue()
	case m.GetGauge() != nil:
		return m.GetGauge().GetValue()
	}
	return -1
}

// Two caches with one namespace on one registry, told apart by Label; a known workload on a,
// exact counters; b's propagation lag of a's messages.
func TestCollector(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	a := newCache(t, srv, tiercache.Options{LeaseTTL: -1})
	b := newCache(t, srv, tiercache.Options{LeaseTTL: -1})
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(promcache.New(a, promcache.Label("instance", "a"))); err != nil {
		t.Fatalf("Register(a): %v", err)
	}
	if err := reg.Register(promcache.New(b, promcache.Label("instance", "b"))); err != nil {
		t.Fatalf("Register(b) with another instance label: %v", err)
	}

	trips := metricstest.Workload(t, a)
	metricstest.WaitFor(t, "b to apply a's three messages", func() bool { return b.Stats().InvalidationsReceived >= 3 })

	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	st := a.Stats()
	A := func(kv ...string) map[string]string {
		m := map[string]string{"instance": "a", "namespace": tiercache.DefaultNamespace}
		for i := 0; i+1 < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	for _, tt := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"tiercache_lookups_total", A("tier", "l1", "result", "hit"), 2},
		{"tiercache_lookups_total", A("tier", "l1", "result", "miss"), 3},
		{"tiercache_lookups_total", A("tier", "l2", "result", "hit"), 0},
		{"tiercache_lookups_total", A("tier", "l2", "result", "miss"), 3},
		{"tiercache_loads_total", A("result", "ok"), 1},
		{"tiercache_loads_total", A("result", "error"), 0},
		{"tiercache_writes_total", A("op", "set"), 4},
		{"tiercache_writes_total", A("op", "delete"), 1},
		{"tiercache_invalidations_total", A("direction", "sent"), 3},
		{"tiercache_invalidations_total", A("direction", "received"), 0},
		{"tiercache_invalidations_total", A("direction", "coalesced"), 2},
		{"tiercache_l2_errors_total", A(), 0},
		{"tiercache_gaps_total", A(), 0},
		{"tiercache_breaker_openings_total", A(), 0},
		{"tiercache_degraded_seconds_total", A(), 0},
		{"tiercache_pending_writes", A(), 0},
		{"tiercache_l1_entries", A(), float64(st.L1Entries)},
		{"tiercache_l1_size_bytes", A(), float64(st.L1Bytes)},
		{"tiercache_breaker_state", A("state", "closed"), 1},
		{"tiercache_breaker_state", A("state", "open"), 0},
		{"tiercache_breaker_state", A("state", "half-open"), 0},
		{"tiercache_subscriber_up", A(), 1},
	} {
		m, ok := sample(mfs, tt.name, tt.labels)
		if !ok {
			t.Errorf("%s%v: no such series", tt.name, tt.labels)
			continue
		}
		if got := value(m); got != tt.want {
			t.Errorf("%s%v = %v, want %v", tt.name, tt.labels, got, tt.want)
		}
	}
	if st.L1Entries == 0 {
		t.Error("a holds no L1 entries after the workload")
	}

	hist := func(name, instance string) *dto.Histogram {
		t.Helper()
		m, ok := sample(mfs, name, map[string]string{"instance": instance})
		if !ok || m.GetHistogram() == nil {
			t.Fatalf("%s{instance=%q}: no histogram", name, instance)
		}
		return m.GetHistogram()
	}
	if h := hist("tiercache_l2_duration_seconds", "a"); h.GetSampleCount() != trips || h.GetSampleSum() <= 0 {
		t.Errorf("a's L2 histogram: count %d sum %v, want %d round trips and a positive sum", h.GetSampleCount(), h.GetSampleSum(), trips)
	} else {
		// Cumulative buckets ending at the count.
		bs := h.GetBucket()
		for i := 1; i < len(bs); i++ {
			if bs[i].GetCumulativeCount() < bs[i-1].GetCumulativeCount() || bs[i].GetUpperBound() <= bs[i-1].GetUpperBound() {
				t.Fatalf("bucket %d (le %v: %d) after (le %v: %d): not cumulative", i, bs[i].GetUpperBound(), bs[i].GetCumulativeCount(), bs[i-1].GetUpperBound(), bs[i-1].GetCumulativeCount())
			}
		}
		if len(bs) != len(a.Histograms().L2.Bounds) || bs[len(bs)-1].GetCumulativeCount() > trips {
			t.Errorf("a's L2 histogram: %d buckets, last cumulative %d; want %d buckets, at most %d", len(bs), bs[len(bs)-1].GetCumulativeCount(), len(a.Histograms().L2.Bounds), trips)
		}
	}
	if h := hist("tiercache_load_duration_seconds", "a"); h.GetSampleCount() != 1 {
		t.Errorf("a's load histogram count = %d, want 1", h.GetSampleCount())
	}
	if h := hist("tiercache_propagation_lag_seconds", "b"); h.GetSampleCount() < 1 {
		t.Errorf("b's propagation lag count = %d, want >= 1", h.GetSampleCount())
	}
	if h := hist("tiercache_propagation_lag_seconds", "a"); h.GetSampleCount() != 0 {
		t.Errorf("a's propagation lag count = %d, want 0 (it received nothing)", h.GetSampleCount())
	}
	// b's received counter: the two caches' series are distinct.
	if m, ok := sample(mfs, "tiercache_invalidations_total", map[string]string{"instance": "b", "direction": "received"}); !ok || value(m) < 3 {
		t.Errorf("b's received invalidations: %v (found %v), want >= 3", m, ok)
	}
	// Per family, one series per cache and label set.
	if n, err := testutil.GatherAndCount(reg, "tiercache_lookups_total"); err != nil || n != 8 {
		t.Errorf("GatherAndCount(tiercache_lookups_total) = %d, %v; want 8 (4 per cache)", n, err)
	}

	// Every documented name is exported and every exported name documented.
	documented := metricstest.Documented(t, "../docs/OPERATIONS.md", "metrics", 1)
	exported := map[string]bool{}
	for _, mf := range mfs {
		exported[mf.GetName()] = true
	}
	metricstest.SameNames(t, documented, exported, "the scrape")
}

// Without Label, two caches of one namespace clash on a registry: the reason Label exists.
// With distinct namespaces they do not.
func TestCollectorClash(t *testing.T) {
	t.Parallel()
	a := newCache(t, nil, tiercache.Options{})
	b := newCache(t, nil, tiercache.Options{})
	other := newCache(t, nil, tiercache.Options{Namespace: "other"})
	reg := prometheus.NewRegistry()
	reg.MustRegister(promcache.New(a))
	if err := reg.Register(promcache.New(b)); err == nil {
		t.Error("registering a second cache of the same namespace without Label succeeded")
	}
	if err := reg.Register(promcache.New(other)); err != nil {
		t.Errorf("registering a cache of another namespace: %v", err)
	}
	// L1-only: no breaker or subscriber series.
	if n, err := testutil.GatherAndCount(reg, "tiercache_breaker_state", "tiercache_subscriber_up"); err != nil || n != 0 {
		t.Errorf("breaker and subscriber series in L1-only mode: %d, %v; want 0", n, err)
	}
}

// Bad labels fail the registration with an error naming them.
func TestCollectorBadLabel(t *testing.T) {
	t.Parallel()
	c := newCache(t, nil, tiercache.Options{})
	for _, tt := range []struct {
		name, label, want string
	}{
		{"invalid name", "bad-name", `Label("bad-name", "x"): not a valid label name`},
		{"reserved name", "__name", `Label("__name", "x"): not a valid label name`},
		{"empty name", "", `Label("", "x"): not a valid label name`},
		{"the namespace label", "namespace", `Label("namespace"`},
		{"a variable label", "tier", "tier"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := prometheus.NewRegistry().Register(promcache.New(c, promcache.Label(tt.label, "x")))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Register with Label(%q) = %v, want an error containing %s", tt.label, err, tt.want)
			}
		})
	}
}

func TestLockCollectorBadLabel(t *testing.T) {
	t.Parallel()
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"}) // never dialled: nothing is locked
	t.Cleanup(func() { rdb.Close() })
	l, err := lock.New(lock.Options{Clients: []redis.UniversalClient{rdb}})
	if err != nil {
		t.Fatal(err)
	}
	err = prometheus.NewRegistry().Register(promcache.NewLock(l, promcache.Label("1st", "x")))
	if want := `Label("1st", "x"): not a valid label name`; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("Register(NewLock) with Label(1st) = %v, want an error containing %s", err, want)
	}
}

func TestLockCollector(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	l, err := lock.New(lock.Options{Clients: []redis.UniversalClient{srv.Client(t)}, ExtendEvery: -1})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	le, err := l.TryLock(ctx, "job")
	if err != nil {
		t.Fatal(err)
	}
	defer le.Release(ctx)
	if _, err := l.TryLock(ctx, "job"); !errors.Is(err, lock.ErrNotLocked) {
		t.Fatalf("second TryLock = %v, want ErrNotLocked", err)
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(promcache.NewLock(l, promcache.Label("locker", "jobs")))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"tiercache_lock_attempts_total", map[string]string{"result": "acquired", "locker": "jobs"}, 1},
		{"tiercache_lock_attempts_total", map[string]string{"result": "busy"}, 1},
		{"tiercache_lock_attempts_total", map[string]string{"result": "failed"}, 0},
		{"tiercache_lock_lost_total", nil, 0},
	} {
		if m, ok := sample(mfs, tt.name, tt.labels); !ok || value(m) != tt.want {
			t.Errorf("%s%v = %v (found %v), want %v", tt.name, tt.labels, m, ok, tt.want)
		}
	}
	exported := map[string]bool{}
	for _, mf := range mfs {
		exported[mf.GetName()] = true
	}
	metricstest.SameNames(t, metricstest.Documented(t, "../docs/OPERATIONS.md", "lock-metrics", 1), exported, "the lock scrape")
}
