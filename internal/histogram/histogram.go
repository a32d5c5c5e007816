// Package histogram is a lock-free histogram of durations with fixed exponential buckets, for the
// cache's latency metrics. Recording is a few arithmetic instructions and two atomic adds; a
// Snapshot is a copy of the counts, read without stopping writers.
//
// Why not a dependency: the Prometheus client's histogram may not be imported by the library
// (its module graph stays free of client_golang), the OpenTelemetry SDK's aggregations are not
// exported as a standalone type, and the Go histograms that are (HdrHistogram, go-metrics,
// VictoriaMetrics/metrics) take a lock per observation or use bucket layouts that Prometheus's
// "le" buckets cannot carry.
package histogram

import (
	"math/bits"
	"sync/atomic"
	"time"
)

// Histogram counts durations in buckets whose upper bounds are first, 2·first, 4·first, …,
// 2^(n-1)·first, plus one bucket for longer ones. Its methods are safe for concurrent use; the
// zero value is not usable (see New).
type Histogram struct {
	first  time.Duration
	counts []atomic.Uint64 // n bounded buckets, then the overflow bucket
	sum    atomic.Int64    // nanoseconds
	bounds []float64       // upper bounds in seconds, shared by every Snapshot (never modified)
}

// New returns a histogram of n bounded buckets, the first ending at first. It panics when first
// is not positive or n is not in [1, 63] (a programmer's error: the layouts are constants).
func New(first time.Duration, n int) *Histogram {
	if first <= 0 || n < 1 || n > 63 {
		panic("histogram: first must be positive and n in [1, 63]")
	}
	h := &Histogram{first: first, counts: make([]atomic.Uint64, n+1), bounds: make([]float64, n)}
	for i := range h.bounds {
		h.bounds[i] = (first << i).Seconds()
	}
	return h
}

// Record counts one observation of d; a negative d counts as 0.
func (h *Histogram) Record(d time.Duration) {
	d = max(d, 0)
	h.counts[h.bucket(d)].Add(1)
	h.sum.Add(int64(d))
}

// bucket is the index of the smallest bound at or above d, or the overflow bucket: with
// q = ceil(d/first), the smallest i with q <= 2^i is the bit length of q-1.
func (h *Histogram) bucket(d time.Duration) int {
	if d <= 0 {
		return 0
	}
	q := (uint64(d) + uint64(h.first) - 1) / uint64(h.first)
	return min(bits.Len64(q-1), len(h.counts)-1)
}

// Bounds returns the buckets' upper bounds in seconds, ascending; the overflow bucket has none.
// The slice is shared: do not modify it.
func (h *Histogram) Bounds() []float64 { return h.bounds }

// Snapshot is a histogram's state at one moment.
type Snapshot struct {
	// Bounds are the upper bounds of the buckets in seconds, ascending (shared; do not modify).
	Bounds []float64
	// Counts[i] is the number of observations in bucket i: at most Bounds[i] and more than
	// Bounds[i-1]; the last, Counts[len(Bounds)], counts those above every bound.
	Counts []uint64
	// Count is the number of observations, the sum of Counts.
	Count uint64
	// Sum is the sum of the observations in seconds.
	Sum float64
}

// Snapshot copies the counts. Observations recorded while it reads may be in Sum and not yet
// in Counts, or the reverse; Count always equals the sum of Counts.
func (h *Histogram) Snapshot() Snapshot {
	s := Snapshot{Bounds: h.bounds, Counts: make([]uint64, len(h.counts))}
	for i := range h.counts {
		s.Counts[i] = h.counts[i].Load()
		s.Count += s.Counts[i]
	}
	s.Sum = time.Duration(h.sum.Load()).Seconds()
	return s
}
