package cachetest

import (
	"fmt"
	"slices"
	"time"
)

// Distribution summarises a set of durations. Percentiles use the
// nearest-rank method: P90 is the smallest sample that is at least as large
// as 90% of the samples. All fields are zero when Count is zero.
type Distribution struct {
	Count int
	P50   time.Duration
	P90   time.Duration
	P99   time.Duration
	Max   time.Duration
}

// newDistribution summarises samples, sorting them in place.
func newDistribution(samples []time.Duration) Distribution {
	slices.Sort(samples)
	return summarize(samples)
}

// summarize summarises sorted samples.
func summarize(samples []time.Duration) Distribution {
	n := len(samples)
	if n == 0 {
		return Distribution{}
	}
	rank := func(p int) time.Duration {
		return samples[(n*p+99)/100-1] // ceil(n*p/100)-th smallest
	}
	return Distribution{Count: n, P50: rank(50), P90: rank(90), P99: rank(99), Max: samples[n-1]}
}

// String returns a one-line summary such as "n=120 p50=2ms p90=5ms p99=9ms
// max=12ms", or "n=0".
func (d Distribution) String() string {
	if d.Count == 0 {
		return "n=0"
	}
	return fmt.Sprintf("n=%d p50=%v p90=%v p99=%v max=%v", d.Count, d.P50, d.P90, d.P99, d.Max)
}

// mergeSorted merges sorted runs into one sorted slice, pairwise, in
// O(n log k) for n samples in k runs. It may reuse the runs' memory.
func mergeSorted(runs [][]time.Duration) []time.Duration {
	if len(runs) == 0 {
		return nil
	}
	for len(runs) > 1 {
		next := runs[:0:0]
		for i := 0; i < len(runs); i += 2 {
			if i+1 == len(runs) {
				next = append(next, runs[i])
				break
			}
			a, b := runs[i], runs[i+1]
			m := make([]time.Duration, 0, len(a)+len(b))
			for len(a) > 0 && len(b) > 0 {
				if a[0] <= b[0] {
					m, a = append(m, a[0]), a[1:]
				} else {
					m, b = append(m, b[0]), b[1:]
				}
			}
			m = append(append(m, a...), b...)
			next = append(next, m)
		}
		runs = next
	}
	return runs[0]
}
