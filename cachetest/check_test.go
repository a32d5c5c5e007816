package cachetest

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"
)

func ms(n int) time.Duration { return time.Duration(n) * time.Millisecond }

// set, del, get and miss build operations with logical times for
// hand-written histories.
func set(inst, key string, v uint64, start, end time.Duration) any {
	return WriteOp{Instance: inst, Key: key, Version: v, Start: start, End: end}
}

func del(inst, key string, v uint64, start, end time.Duration) any {
	return WriteOp{Instance: inst, Key: key, Version: v, Delete: true, Start: start, End: end}
}

func get(inst, key string, v uint64, start, end time.Duration) any {
	return ReadOp{Instance: inst, Key: key, Version: v, Found: true, Start: start, End: end}
}

func miss(inst, key string, start, end time.Duration) any {
	return ReadOp{Instance: inst, Key: key, Start: start, End: end}
}

// newTestHistory returns a History holding ops, recorded in the given order.
func newTestHistory(tb testing.TB, ops ...any) *History {
	tb.Helper()
	h := NewHistory()
	for _, o := range ops {
		switch o := o.(type) {
		case WriteOp:
			h.RecordWrite(o)
		case ReadOp:
			h.RecordRead(o)
		default:
			tb.Fatalf("newTestHistory: unexpected op %T", o)
		}
	}
	return h
}

func TestCheckHandBuilt(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name           string
		ops            []any
		bound          time.Duration
		wantStale      int
		wantViolations int
		wantMax        time.Duration // max staleness
		wantNewer      uint64        // version of Examples[0].Newer, if any violation
	}{
		{
			name: "fresh read",
			ops: []any{
				set("a", "k", 1, ms(0), ms(10)),
				get("b", "k", 1, ms(20), ms(21)),
			},
		},
		{
			name: "read concurrent with write",
			ops: []any{
				set("a", "k", 1, ms(0), ms(10)),
				set("a", "k", 2, ms(20), ms(100)),
				get("b", "k", 1, ms(50), ms(60)),  // write in flight
				get("b", "k", 1, ms(90), ms(150)), // write acknowledged during the read
			},
		},
		{
			name: "write acknowledged exactly at read start",
			ops: []any{
				set("a", "k", 1, ms(0), ms(10)),
				set("a", "k", 2, ms(20), ms(100)),
				get("b", "k", 1, ms(100), ms(101)),
			},
		},
		{
			name: "stale by 2s",
			ops: []any{
				set("a", "k", 1, ms(0), ms(10)),
				set("a", "k", 2, ms(990), ms(1000)),
				get("b", "k", 1, ms(3000), ms(3001)),
			},
			bound:     time.Second,
			wantStale: 1, wantViolations: 1, wantMax: 2 * time.Second, wantNewer: 2,
		},
		{
			name: "stale by 500ms",
			ops: []any{
				set("a", "k", 1, ms(0), ms(10)),
				set("a", "k", 2, ms(990), ms(1000)),
				get("b", "k", 1, ms(1500), ms(1501)),
			},
			bound:     time.Second,
			wantStale: 1, wantMax: ms(500),
		},
		{
			name: "stale by exactly the bound is not a violation",
			ops: []any{
				set("a", "k", 2, ms(990), ms(1000)),
				get("b", "k", 1, ms(2000), ms(2001)),
			},
			bound:     time.Second,
			wantStale: 1, wantMax: time.Second,
		},
		{
			name: "staleness counts from the earliest newer acknowledgement",
			ops: []any{
				set("a", "k", 1, ms(0), ms(10)),
				set("a", "k", 2, ms(990), ms(1000)),
				set("a", "k", 3, ms(2990), ms(3000)),
				get("b", "k", 1, ms(3500), ms(3501)), // v2 known for 2.5s
				get("c", "k", 2, ms(3500), ms(3501)), // v3 known for 0.5s
			},
			bound:     time.Second,
			wantStale: 2, wantViolations: 1, wantMax: ms(2500), wantNewer: 2,
		},
		{
			name: "not found after delete",
			ops: []any{
				set("a", "k", 1, ms(0), ms(10)),
				del("a", "k", 2, ms(20), ms(30)),
				miss("b", "k", ms(5000), ms(5001)),
			},
		},
		{
			name: "not found before any write",
			ops: []any{
				miss("b", "k", ms(0), ms(1)),
				miss("b", "other", ms(5000), ms(5001)),
				set("a", "k", 1, ms(10), ms(20)),
			},
		},
		{
			name: "not found with a delete in flight",
			ops: []any{
				set("a", "k", 1, ms(0), ms(10)),
				del("a", "k", 2, ms(2000), ms(4000)),
				miss("b", "k", ms(3000), ms(3001)),
			},
		},
		{
			name: "not found while a set is newest",
			ops: []any{
				set("a", "k", 1, ms(0), ms(10)),
				miss("b", "k", ms(3010), ms(3011)),
			},
			bound:     time.Second,
			wantStale: 1, wantViolations: 1, wantMax: 3 * time.Second, wantNewer: 1,
		},
		{
			name: "not found after a delete then a set",
			ops: []any{
				del("a", "k", 2, ms(0), ms(10)),
				set("a", "k", 3, ms(990), ms(1000)),
				miss("b", "k", ms(1500), ms(1501)),
			},
			bound:     time.Second,
			wantStale: 1, wantMax: ms(500),
		},
		{
			name: "found older than delete",
			ops: []any{
				set("a", "k", 1, ms(0), ms(10)),
				del("a", "k", 2, ms(990), ms(1000)),
				get("b", "k", 1, ms(2500), ms(2501)),
			},
			bound:     time.Second,
			wantStale: 1, wantViolations: 1, wantMax: ms(1500), wantNewer: 2,
		},
		{
			name: "out-of-order versions from two instances",
			ops: []any{
				// Recorded in reverse; b's lower version is acknowledged
				// after a's higher one (a caller-supplied version).
				get("c", "k", 3, ms(4000), ms(4001)),
				get("c", "k", 5, ms(3000), ms(3001)),
				set("b", "k", 3, ms(1500), ms(2000)),
				set("a", "k", 5, ms(900), ms(1000)),
			},
			bound:     time.Second,
			wantStale: 1, wantViolations: 1, wantMax: 3 * time.Second, wantNewer: 5,
		},
		{
			name: "newer version than any write",
			ops: []any{
				set("a", "k", 1, ms(0), ms(10)),
				get("b", "k", 7, ms(20), ms(21)),
			},
		},
		{
			name: "keys are independent",
			ops: []any{
				set("a", "k1", 9, ms(0), ms(10)),
				get("b", "k2", 1, ms(5000), ms(5001)),
				set("a", "k2", 1, ms(0), ms(10)),
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := newTestHistory(t, tt.ops...)
			r := h.Check(CheckOptions{Bound: tt.bound})
			if r.StaleReads != tt.wantStale || r.Violations != tt.wantViolations || r.Staleness.Max != tt.wantMax {
				t.Errorf("Check() = stale %d, violations %d, max staleness %v; want %d, %d, %v\n%v",
					r.StaleReads, r.Violations, r.Staleness.Max, tt.wantStale, tt.wantViolations, tt.wantMax, r)
			}
			if len(r.Examples) != tt.wantViolations {
				t.Fatalf("len(Examples) = %d, want %d", len(r.Examples), tt.wantViolations)
			}
			if tt.wantViolations > 0 && r.Examples[0].Newer.Version != tt.wantNewer {
				t.Errorf("Examples[0].Newer.Version = %d, want %d (%v)", r.Examples[0].Newer.Version, tt.wantNewer, r.Examples[0])
			}
			if gotErr := r.Err() != nil; gotErr != (tt.wantViolations > 0) {
				t.Errorf("Err() = %v, want error: %v", r.Err(), tt.wantViolations > 0)
			}
		})
	}
}

func TestCheckCounts(t *testing.T) {
	t.Parallel()
	h := newTestHistory(t,
		set("a", "k1", 1, ms(0), ms(10)),
		del("b", "k2", 1, ms(0), ms(10)),
		get("a", "k1", 1, ms(20), ms(21)),
		miss("c", "k2", ms(20), ms(21)),
		miss("c", "k3", ms(20), ms(21)),
	)
	r := h.Check(CheckOptions{})
	if r.Reads != 3 || r.Writes != 2 || r.Keys != 3 || r.Bound != DefaultBound {
		t.Errorf("Check() = reads %d, writes %d, keys %d, bound %v; want 3, 2, 3, %v", r.Reads, r.Writes, r.Keys, r.Bound, DefaultBound)
	}
	want := map[string]InstanceReport{
		"a": {Reads: 1, Writes: 1},
		"b": {Writes: 1},
		"c": {Reads: 2, Lag: Distribution{Count: 1, P50: ms(10), P90: ms(10), P99: ms(10), Max: ms(10)}},
	}
	for name, w := range want {
		if got := r.Instances[name]; got != w {
			t.Errorf("Instances[%q] = %+v, want %+v", name, got, w)
		}
	}
	if len(r.Instances) != len(want) {
		t.Errorf("len(Instances) = %d, want %d", len(r.Instances), len(want))
	}
}

func TestCheckLag(t *testing.T) {
	t.Parallel()
	h := newTestHistory(t,
		set("a", "k", 1, ms(0), ms(10)),
		get("a", "k", 1, ms(11), ms(12)), // the writer's own read: no sample
		miss("b", "k", ms(12), ms(13)),   // not yet propagated (stale by 2ms)
		get("b", "k", 1, ms(15), ms(16)), // lag 5ms
		get("c", "k", 1, ms(30), ms(31)), // lag 20ms
		get("c", "k", 1, ms(40), ms(41)), // not the first: no sample
		set("a", "k", 2, ms(90), ms(100)),
		get("b", "k", 2, ms(150), ms(151)), // lag 50ms
		set("d", "k", 1, ms(190), ms(200)), // already surpassed: no sample
		set("b", "k", 3, ms(290), ms(300)),
		get("b", "k", 3, ms(310), ms(311)),     // the writer's own read: no sample
		get("a", "k", 3, ms(320), ms(321)),     // lag 20ms
		get("c", "k", 3, ms(295), ms(296)),     // v2: c's first read of v2 or newer, lag 195ms; v3: began before the ack, lag 0
		get("e", "other", 1, ms(500), ms(501)), // another key: no sample
	)
	r := h.Check(CheckOptions{})
	// Samples: a 20ms; b 5ms, 50ms; c 20ms, 195ms, 0.
	want := Distribution{Count: 6, P50: ms(20), P90: ms(195), P99: ms(195), Max: ms(195)}
	if r.Lag != want {
		t.Errorf("Lag = %v, want %v", r.Lag, want)
	}
	wantByInstance := map[string]int{"a": 1, "b": 2, "c": 3, "d": 0, "e": 0}
	for name, n := range wantByInstance {
		if got := r.Instances[name].Lag.Count; got != n {
			t.Errorf("Instances[%q].Lag.Count = %d, want %d", name, got, n)
		}
	}
	if got := r.Instances["c"].Lag; got.P50 != ms(20) || got.Max != ms(195) {
		t.Errorf("Instances[c].Lag = %v, want p50=20ms max=195ms", got)
	}
	if r.StaleReads != 1 || r.Staleness.Max != ms(2) {
		t.Errorf("StaleReads = %d, max staleness %v; want 1, 2ms\n%v", r.StaleReads, r.Staleness.Max, r)
	}
}

func TestCheckExamples(t *testing.T) {
	t.Parallel()
	var ops []any
	for i := range 20 {
		key := fmt.Sprintf("k%02d", i)
		ops = append(ops,
			set("a", key, 2, 0, ms(10)),
			get("b", key, 1, ms(1010+100*i), ms(1011+100*i)), // stale by 1s+100ms*i
		)
	}
	h := newTestHistory(t, ops...)
	tests := []struct {
		name        string
		maxExamples int
		wantKeys    []string
	}{
		{name: "three worst", maxExamples: 3, wantKeys: []string{"k19", "k18", "k17"}},
		{name: "none", maxExamples: -1},
		{name: "default", maxExamples: 0, wantKeys: []string{"k19", "k18", "k17", "k16", "k15", "k14", "k13", "k12", "k11", "k10"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := h.Check(CheckOptions{Bound: time.Second, MaxExamples: tt.maxExamples})
			if r.Violations != 19 { // k00 is stale by exactly the bound
				t.Errorf("Violations = %d, want 19", r.Violations)
			}
			var keys []string
			for _, v := range r.Examples {
				keys = append(keys, v.Key)
			}
			if fmt.Sprint(keys) != fmt.Sprint(tt.wantKeys) {
				t.Errorf("example keys = %v, want %v", keys, tt.wantKeys)
			}
		})
	}
}

func TestReportString(t *testing.T) {
	t.Parallel()
	h := newTestHistory(t,
		set("a", "k", 1, 0, ms(10)),
		set("a", "k", 2, ms(20), ms(30)),
		get("b", "k", 1, ms(2030), ms(2031)),
		miss("b", "gone", ms(5), ms(6)),
	)
	r := h.Check(CheckOptions{})
	s := r.String()
	for _, want := range []string{
		"2 reads, 2 writes, 2 keys, 2 instances; bound 1s",
		"stale reads: 1, violations (stale by > 1s): 1",
		"staleness: n=1 p50=2s p90=2s p99=2s max=2s",
		"instance b: 2 reads, 0 writes, 1 stale, 1 violations",
		`key "k" on b: read [2.03s, 2.031s] returned v1, stale by 2s: v2 by a acknowledged at 30ms (latest acknowledged v2)`,
	} {
		if !strings.Contains(s, want) {
			t.Errorf("String() = %q, want it to contain %q", s, want)
		}
	}
	if err := r.Err(); err == nil || !strings.Contains(err.Error(), "1 of 2 reads stale by more than 1s") {
		t.Errorf("Err() = %v, want an error counting 1 of 2 reads", err)
	}
}

func TestDistribution(t *testing.T) {
	t.Parallel()
	seq := func(n int) []time.Duration {
		d := make([]time.Duration, n)
		for i := range d {
			d[i] = time.Duration(n - i) // reversed: newDistribution sorts
		}
		return d
	}
	tests := []struct {
		name string
		in   []time.Duration
		want Distribution
		str  string
	}{
		{name: "empty", want: Distribution{}, str: "n=0"},
		{name: "one", in: []time.Duration{ms(3)}, want: Distribution{1, ms(3), ms(3), ms(3), ms(3)}, str: "n=1 p50=3ms p90=3ms p99=3ms max=3ms"},
		{name: "hundred", in: seq(100), want: Distribution{100, 50, 90, 99, 100}},
		{name: "ten", in: seq(10), want: Distribution{10, 5, 9, 10, 10}},
		{name: "thousand", in: seq(1000), want: Distribution{1000, 500, 900, 990, 1000}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := newDistribution(tt.in)
			if got != tt.want {
				t.Errorf("newDistribution() = %+v, want %+v", got, tt.want)
			}
			if tt.str != "" && got.String() != tt.str {
				t.Errorf("String() = %q, want %q", got.String(), tt.str)
			}
		})
	}
}

func TestRecordPanicsOnReversedInterval(t *testing.T) {
	t.Parallel()
	h := NewHistory()
	tests := []struct {
		name   string
		record func()
	}{
		{name: "write", record: func() { h.RecordWrite(WriteOp{Key: "k", Start: ms(2), End: ms(1)}) }},
		{name: "read", record: func() { h.RecordRead(ReadOp{Key: "k", Start: ms(2), End: ms(1)}) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Errorf("Record%s with End before Start did not panic", tt.name)
				}
			}()
			tt.record()
		})
	}
}

func TestClockAndOffset(t *testing.T) {
	t.Parallel()
	h := NewHistory()
	a := h.Clock()
	now := time.Now()
	b := h.Clock()
	if off := h.Offset(now); off < a || off > b {
		t.Errorf("Offset(now) = %v, want within [%v, %v]", off, a, b)
	}
	if a < 0 || b < a {
		t.Errorf("Clock() = %v then %v, want non-negative and non-decreasing", a, b)
	}
}

// TestLinearizableRegister records a register that is linearizable by
// construction (one mutex around one map) from many goroutines, using the
// real clock, and expects no stale read.
func TestLinearizableRegister(t *testing.T) {
	t.Parallel()
	type entry struct {
		version uint64
		deleted bool
	}
	var (
		mu   sync.Mutex
		data = make(map[string]entry)
		next = make(map[string]uint64)
	)
	h := NewHistory()
	const goroutines, opsEach, keys = 8, 3000, 16
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			inst := fmt.Sprintf("i%d", g%4)
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			for range opsEach {
				key := fmt.Sprintf("k%d", rng.IntN(keys))
				start := h.Clock()
				switch n := rng.IntN(10); {
				case n < 3: // write or delete
					mu.Lock()
					next[key]++
					v := next[key]
					data[key] = entry{version: v, deleted: n == 0}
					mu.Unlock()
					h.RecordWrite(WriteOp{Instance: inst, Key: key, Version: v, Delete: n == 0, Start: start, End: h.Clock()})
				default:
					mu.Lock()
					e, ok := data[key]
					mu.Unlock()
					found := ok && !e.deleted
					h.RecordRead(ReadOp{Instance: inst, Key: key, Version: e.version, Found: found, Start: start, End: h.Clock()})
				}
			}
		})
	}
	// Check while recording goes on must be safe (the race detector watches).
	for range 3 {
		_ = h.Check(CheckOptions{})
	}
	wg.Wait()
	r := h.Check(CheckOptions{})
	if r.Reads+r.Writes != goroutines*opsEach {
		t.Errorf("Reads+Writes = %d, want %d", r.Reads+r.Writes, goroutines*opsEach)
	}
	if r.StaleReads != 0 {
		t.Errorf("StaleReads = %d, want 0\n%v", r.StaleReads, r)
	}
	if r.Lag.Count == 0 {
		t.Errorf("Lag.Count = 0, want samples\n%v", r)
	}
	t.Log(r)
}

// TestLaggingReplica builds, with logical times, a primary and a replica
// that copies the primary only every 50ms. Replica reads are stale by less
// than 50ms, never more.
func TestLaggingReplica(t *testing.T) {
	t.Parallel()
	const (
		period   = 50 * time.Millisecond
		duration = 10 * time.Second
		keys     = 4
	)
	rng := rand.New(rand.NewPCG(7, 7))
	h := NewHistory()
	primary := make([]uint64, keys)  // current version per key
	snapshot := make([]uint64, keys) // the replica's copy
	lastSync := time.Duration(0)
	nextWrite := make([]time.Duration, keys)
	for k := range nextWrite {
		nextWrite[k] = time.Duration(rng.Int64N(int64(20 * time.Millisecond)))
	}
	// Step through time in 1ms ticks: writes land on their ack tick, the
	// replica syncs on period boundaries (after the tick's writes), and each
	// tick both instances read every key.
	for now := time.Duration(0); now < duration; now += time.Millisecond {
		for k := range keys {
			key := fmt.Sprintf("k%d", k)
			if now >= nextWrite[k] {
				primary[k]++
				h.RecordWrite(WriteOp{Instance: "primary", Key: key, Version: primary[k], Start: now - 300*time.Microsecond, End: now})
				nextWrite[k] = now + time.Millisecond + time.Duration(rng.Int64N(int64(15*time.Millisecond)))
			}
		}
		if now-lastSync >= period {
			copy(snapshot, primary)
			lastSync = now
		}
		for k := range keys {
			key := fmt.Sprintf("k%d", k)
			start, end := now+100*time.Microsecond, now+200*time.Microsecond
			h.RecordRead(ReadOp{Instance: "primary", Key: key, Version: primary[k], Found: primary[k] > 0, Start: start, End: end})
			h.RecordRead(ReadOp{Instance: "replica", Key: key, Version: snapshot[k], Found: snapshot[k] > 0, Start: start, End: end})
		}
	}

	r := h.Check(CheckOptions{})
	t.Log(r)
	if p := r.Instances["primary"]; p.StaleReads != 0 {
		t.Errorf("primary StaleReads = %d, want 0", p.StaleReads)
	}
	rep := r.Instances["replica"]
	if rep.StaleReads < rep.Reads/2 {
		t.Errorf("replica StaleReads = %d of %d reads, want most of them", rep.StaleReads, rep.Reads)
	}
	// A replica read at s saw everything acknowledged by the last sync T,
	// with s-T < period, so any newer write was acknowledged less than
	// period before s.
	if rep.Staleness.Max >= period || rep.Staleness.Max < period-5*time.Millisecond {
		t.Errorf("replica Staleness.Max = %v, want just under %v", rep.Staleness.Max, period)
	}
	if r.Violations != 0 {
		t.Errorf("Violations = %d at bound %v, want 0", r.Violations, r.Bound)
	}
	// The replica sees a write at the first sync after its ack (< period + 1
	// tick later) and reads at every tick.
	if rep.Lag.Max > period+time.Millisecond || rep.Lag.P50 == 0 {
		t.Errorf("replica Lag = %v, want 0 < p50 and max <= %v", rep.Lag, period+time.Millisecond)
	}
	if tight := h.Check(CheckOptions{Bound: 10 * time.Millisecond}); tight.Violations == 0 {
		t.Errorf("Violations at bound 10ms = 0, want some")
	}
}

// bruteForce computes a Report's counts and distributions straight from the
// definitions, in O(R·W), for comparison with Check.
func bruteForce(writes []WriteOp, reads []ReadOp, bound time.Duration) (stale, violations int, staleness, lag Distribution) {
	eff := func(r ReadOp) uint64 {
		if r.Found {
			return r.Version
		}
		var v uint64
		for _, w := range writes {
			if w.Key == r.Key && w.Delete && w.Start <= r.End {
				v = max(v, w.Version)
			}
		}
		return v
	}
	var ds, ls []time.Duration
	for _, r := range reads {
		v := eff(r)
		first, ok := time.Duration(0), false
		for _, w := range writes {
			if w.Key == r.Key && w.End < r.Start && w.Version > v && (!ok || w.End < first) {
				first, ok = w.End, true
			}
		}
		if ok {
			d := r.Start - first
			stale++
			ds = append(ds, d)
			if d > bound {
				violations++
			}
		}
	}
	for _, w := range writes {
		superseded := false
		for _, o := range writes {
			if o.Key == w.Key && o.End < w.End && o.Version > w.Version {
				superseded = true
			}
		}
		if superseded {
			continue
		}
		first := make(map[string]time.Duration) // instance -> earliest start of a read returning >= w.Version
		for _, r := range reads {
			if r.Key != w.Key || r.Instance == w.Instance || eff(r) < w.Version {
				continue
			}
			if f, ok := first[r.Instance]; !ok || r.Start < f {
				first[r.Instance] = r.Start
			}
		}
		for _, s := range first {
			ls = append(ls, max(0, s-w.End))
		}
	}
	return stale, violations, newDistribution(ds), newDistribution(ls)
}

// TestCheckMatchesBruteForce compares Check with a direct reading of the
// definitions on random histories with overlapping operations, deletes,
// not-found reads and versions acknowledged out of order.
func TestCheckMatchesBruteForce(t *testing.T) {
	t.Parallel()
	for seed := range uint64(40) {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			t.Parallel()
			rng := rand.New(rand.NewPCG(seed, 99))
			instances := []string{"a", "b", "c"}
			nkeys := 1 + rng.IntN(4)
			span := int64(3 * time.Second)
			var writes []WriteOp
			var reads []ReadOp
			h := NewHistory()
			for k := range nkeys {
				key := fmt.Sprintf("k%d", k)
				// Distinct versions per key, in random order of time.
				versions := rng.Perm(30)
				for _, v := range versions[:rng.IntN(len(versions))] {
					start := time.Duration(rng.Int64N(span))
					w := WriteOp{
						Instance: instances[rng.IntN(len(instances))], Key: key,
						Version: uint64(v + 1), Delete: rng.IntN(4) == 0,
						Start: start, End: start + time.Duration(rng.Int64N(int64(200*time.Millisecond))),
					}
					writes = append(writes, w)
					h.RecordWrite(w)
				}
				for range rng.IntN(60) {
					start := time.Duration(rng.Int64N(span))
					r := ReadOp{
						Instance: instances[rng.IntN(len(instances))], Key: key,
						Version: uint64(rng.IntN(32)), Found: rng.IntN(5) != 0,
						Start: start, End: start + time.Duration(rng.Int64N(int64(100*time.Millisecond))),
					}
					if !r.Found {
						r.Version = 0
					}
					reads = append(reads, r)
					h.RecordRead(r)
				}
			}
			bound := 500 * time.Millisecond
			stale, violations, staleness, lag := bruteForce(writes, reads, bound)
			r := h.Check(CheckOptions{Bound: bound})
			t.Logf("%d reads, %d writes: %d stale, %d violations, lag %v", len(reads), len(writes), stale, violations, lag)
			if r.Reads != len(reads) || r.Writes != len(writes) {
				t.Errorf("Check() reads, writes = %d, %d; want %d, %d", r.Reads, r.Writes, len(reads), len(writes))
			}
			if r.StaleReads != stale || r.Violations != violations {
				t.Errorf("Check() stale, violations = %d, %d; want %d, %d", r.StaleReads, r.Violations, stale, violations)
			}
			if r.Staleness != staleness {
				t.Errorf("Check() Staleness = %v, want %v", r.Staleness, staleness)
			}
			if r.Lag != lag {
				t.Errorf("Check() Lag = %v, want %v", r.Lag, lag)
			}
			for _, v := range r.Examples {
				if v.Staleness != v.Start-v.Newer.End || v.Newer.Version <= v.Version || v.Latest < v.Newer.Version {
					t.Errorf("inconsistent example %v", v)
				}
			}
		})
	}
}

// benchHistory records n operations on 10k keys from 8 instances, a fifth of
// them writes, with times that make some reads stale.
func benchHistory(n int) *History {
	const keys, instances = 10_000, 8
	rng := rand.New(rand.NewPCG(1, 2))
	h := NewHistory()
	names := make([]string, keys)
	for i := range names {
		names[i] = fmt.Sprintf("session:%d:node", i)
	}
	insts := []string{"i0", "i1", "i2", "i3", "i4", "i5", "i6", "i7"}
	version := make([]uint64, keys)
	now := time.Duration(0)
	for range n {
		now += time.Microsecond
		k := rng.IntN(keys)
		inst := insts[rng.IntN(instances)]
		if rng.IntN(5) == 0 {
			version[k]++
			h.RecordWrite(WriteOp{Instance: inst, Key: names[k], Version: version[k], Start: now, End: now + 50*time.Microsecond})
			continue
		}
		v := version[k]
		if v > 0 && rng.IntN(10) == 0 {
			v-- // a lagging read
		}
		h.RecordRead(ReadOp{Instance: inst, Key: names[k], Version: v, Found: v > 0, Start: now, End: now + 20*time.Microsecond})
	}
	return h
}

func BenchmarkCheck1M(b *testing.B) {
	h := benchHistory(1_000_000)
	b.ReportAllocs()
	for b.Loop() {
		r := h.Check(CheckOptions{})
		if r.Reads+r.Writes != 1_000_000 {
			b.Fatalf("Check() saw %d ops, want 1000000", r.Reads+r.Writes)
		}
	}
}

func BenchmarkRecordRead(b *testing.B) {
	h := NewHistory()
	keys := make([]string, 1024)
	for i := range keys {
		keys[i] = fmt.Sprintf("session:%d:node", i)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			start := h.Clock()
			h.RecordRead(ReadOp{Instance: "a", Key: keys[i%len(keys)], Version: 1, Found: true, Start: start, End: h.Clock()})
			i++
		}
	})
}

func TestMergeSorted(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		runs [][]time.Duration
		want []time.Duration
	}{
		{name: "none"},
		{name: "one", runs: [][]time.Duration{{1, 2, 3}}, want: []time.Duration{1, 2, 3}},
		{name: "empty runs", runs: [][]time.Duration{nil, {}, {4}}, want: []time.Duration{4}},
		{name: "three", runs: [][]time.Duration{{1, 4, 7}, {2, 2, 9}, {0, 8}}, want: []time.Duration{0, 1, 2, 2, 4, 7, 8, 9}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := mergeSorted(tt.runs); fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("mergeSorted(%v) = %v, want %v", tt.runs, got, tt.want)
			}
		})
	}
}
