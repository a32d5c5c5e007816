package histogram

import (
	"math"
	"sync"
	"testing"
	"time"
)

func TestBuckets(t *testing.T) {
	h := New(10*time.Microsecond, 4) // bounds 10, 20, 40, 80 µs, then overflow
	tests := []struct {
		name string
		d    time.Duration
		want int
	}{
		{"negative", -time.Second, 0},
		{"zero", 0, 0},
		{"1ns", 1, 0},
		{"first bound", 10 * time.Microsecond, 0},
		{"just above first", 10*time.Microsecond + 1, 1},
		{"second bound", 20 * time.Microsecond, 1},
		{"third", 30 * time.Microsecond, 2},
		{"fourth bound", 80 * time.Microsecond, 3},
		{"overflow", 80*time.Microsecond + 1, 4},
		{"far overflow", time.Hour, 4},
		{"max", math.MaxInt64, 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := h.bucket(tt.d); got != tt.want {
				t.Errorf("bucket(%v) = %d, want %d", tt.d, got, tt.want)
			}
		})
	}
}

func TestSnapshot(t *testing.T) {
	h := New(time.Millisecond, 3) // 1, 2, 4 ms
	for _, d := range []time.Duration{-1, 500 * time.Microsecond, time.Millisecond, 3 * time.Millisecond, time.Second} {
		h.Record(d)
	}
	s := h.Snapshot()
	wantBounds := []float64{0.001, 0.002, 0.004}
	for i, b := range wantBounds {
		if s.Bounds[i] != b {
			t.Errorf("Bounds[%d] = %v, want %v", i, s.Bounds[i], b)
		}
	}
	wantCounts := []uint64{3, 0, 1, 1}
	if len(s.Counts) != len(wantCounts) {
		t.Fatalf("len(Counts) = %d, want %d", len(s.Counts), len(wantCounts))
	}
	for i, c := range wantCounts {
		if s.Counts[i] != c {
			t.Errorf("Counts[%d] = %d, want %d", i, s.Counts[i], c)
		}
	}
	if s.Count != 5 {
		t.Errorf("Count = %d, want 5", s.Count)
	}
	if want := 1.0045; math.Abs(s.Sum-want) > 1e-9 {
		t.Errorf("Sum = %v, want %v (negative observations count as 0)", s.Sum, want)
	}
}

func TestConcurrent(t *testing.T) {
	h := New(time.Microsecond, 20)
	const goroutines, each = 8, 1000
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for i := range each {
				h.Record(time.Duration(g*each+i) * time.Microsecond)
			}
		})
	}
	// Snapshots taken while writers run stay internally consistent.
	for range 100 {
		s := h.Snapshot()
		var n uint64
		for _, c := range s.Counts {
			n += c
		}
		if n != s.Count {
			t.Fatalf("Count = %d, sum of Counts = %d", s.Count, n)
		}
	}
	wg.Wait()
	if s := h.Snapshot(); s.Count != goroutines*each {
		t.Errorf("Count = %d, want %d", s.Count, goroutines*each)
	}
}

func TestNewPanicsOnBadLayout(t *testing.T) {
	for _, tt := range []struct {
		name  string
		first time.Duration
		n     int
	}{{"zero first", 0, 3}, {"no buckets", time.Millisecond, 0}, {"too many", time.Nanosecond, 64}} {
		t.Run(tt.name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Errorf("New(%v, %d) did not panic", tt.first, tt.n)
				}
			}()
			New(tt.first, tt.n)
		})
	}
}

func BenchmarkRecord(b *testing.B) {
	h := New(10*time.Microsecond, 20)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		d := time.Duration(0)
		for pb.Next() {
			h.Record(d)
			d += 997
		}
	})
}
