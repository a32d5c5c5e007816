// Package benchpair runs two operations interleaved within one benchmark, so that a figure
// reported as a ratio against a baseline sees the same machine load on both sides.
package benchpair

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Run runs ours and base b.N times each, spread over g goroutines that alternate between the
// two in chunks of chunk operations (swapping which goes first every chunk), and reports each
// side's mean latency and their ratio. On a noisy machine this is a fairer comparison than two
// separate benchmarks: both sides see the same load, interleaved at millisecond granularity.
// With g > 1, the ratio of mean latencies at equal concurrency is the inverse throughput ratio.
func Run(b *testing.B, g, chunk int, ours, base func(i int) error) {
	b.Helper()
	var next, oursNs, baseNs atomic.Int64
	var wg sync.WaitGroup
	var failed atomic.Bool
	run := func(op func(int) error, i, n int, total *atomic.Int64) bool {
		t0 := time.Now()
		for j := range n {
			if err := op(i + j); err != nil {
				if failed.CompareAndSwap(false, true) {
					b.Error(err)
				}
				return false
			}
		}
		total.Add(int64(time.Since(t0)))
		return true
	}
	b.ResetTimer()
	for w := range g {
		wg.Go(func() {
			i := w * 7919
			for c := 0; ; c++ {
				end := next.Add(int64(chunk))
				n := chunk - max(0, int(end-int64(b.N)))
				if n <= 0 {
					return
				}
				first, second, ft, st := ours, base, &oursNs, &baseNs
				if c%2 == 1 {
					first, second, ft, st = base, ours, &baseNs, &oursNs
				}
				if !run(first, i, n, ft) || !run(second, i, n, st) {
					return
				}
				i += n
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(float64(oursNs.Load())/float64(b.N), "ours-ns/op")
	b.ReportMetric(float64(baseNs.Load())/float64(b.N), "base-ns/op")
	b.ReportMetric(float64(oursNs.Load())/float64(baseNs.Load()), "ours/base")
}
