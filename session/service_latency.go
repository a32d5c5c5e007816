package session

import (
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// LatencySummary is the distribution of one operation's durations since
// start-up. Percentiles are upper bounds of log-spaced buckets (about 9%
// wide), in seconds.
type LatencySummary struct {
	Count uint64  `json:"count"`
	P50   float64 `json:"p50_seconds"`
	P90   float64 `json:"p90_seconds"`
	P99   float64 `json:"p99_seconds"`
	Max   float64 `json:"max_seconds"`
}

// Histogram geometry: bucket i holds durations up to minLatency·2^(i/8).
const (
	minLatency      = time.Microsecond
	bucketsPerOctet = 8
	latencyBuckets  = 28 * bucketsPerOctet // 1 µs .. about 270 s
)

// histogram is a lock-free log-bucket histogram: recording is one atomic add
// on a bucket plus one on the max.
type histogram struct {
	buckets [latencyBuckets + 1]atomic.Uint64 // the last one catches everything larger
	max     atomic.Int64
}

func bucketOf(d time.Duration) int {
	if d <= minLatency {
		return 0
	}
	i := int(math.Ceil(math.Log2(float64(d)/float64(minLatency)) * bucketsPerOctet))
	return min(i, latencyBuckets)
}

func bucketBound(i int) float64 {
	return minLatency.Seconds() * math.Exp2(float64(i)/bucketsPerOctet)
}

func (h *histogram) record(d time.Duration) {
	h.buckets[bucketOf(d)].Add(1)
	for {
		m := h.max.Load()
		if int64(d) <= m || h.max.CompareAndSwap(m, int64(d)) {
			return
		}
	}
}

func (h *histogram) summary() LatencySummary {
	var counts [latencyBuckets + 1]uint64
	var total uint64
	for i := range counts {
		counts[i] = h.buckets[i].Load()
		total += counts[i]
	}
	s := LatencySummary{Count: total, Max: time.Duration(h.max.Load()).Seconds()}
	if total == 0 {
		return s
	}
	q := func(p float64) float64 {
		rank := uint64(math.Ceil(p * float64(total)))
		var c uint64
		for i, n := range counts {
			c += n
			if c >= rank {
				return min(bucketBound(i), s.Max)
			}
		}
		return s.Max
	}
	s.P50, s.P90, s.P99 = q(0.50), q(0.90), q(0.99)
	return s
}

// latencySet holds one histogram per operation name.
type latencySet struct {
	m sync.Map // op -> *histogram
}

// since records the time since start for op; use as defer s.latency.since(op, time.Now()).
func (l *latencySet) since(op string, start time.Time) {
	l.record(op, time.Since(start))
}

// record adds one duration of op, creating its histogram on first use.
func (l *latencySet) record(op string, d time.Duration) {
	h, ok := l.m.Load(op)
	if !ok {
		h, _ = l.m.LoadOrStore(op, new(histogram))
	}
	h.(*histogram).record(d)
}

func (l *latencySet) summaries() map[string]LatencySummary {
	out := make(map[string]LatencySummary)
	l.m.Range(func(k, v any) bool {
		out[k.(string)] = v.(*histogram).summary()
		return true
	})
	return out
}

// LatencyRecorder keeps a latency distribution per operation name; the zero
// value is ready to use and it is safe for concurrent use. Recording is
// lock-free after an operation's first use.
type LatencyRecorder struct{ set latencySet }

// Record adds one duration of op.
func (l *LatencyRecorder) Record(op string, d time.Duration) { l.set.record(op, d) }

// Summaries returns each operation's distribution.
func (l *LatencyRecorder) Summaries() map[string]LatencySummary { return l.set.summaries() }
