package session

import (
	"testing"
	"time"
)

func TestLatencyRecorder(t *testing.T) {
	t.Parallel()
	var l LatencyRecorder
	for i := 1; i <= 1000; i++ {
		l.Record("op", time.Duration(i)*time.Microsecond)
	}
	s := l.Summaries()["op"]
	check := func(name string, got, want float64) {
		if got < want*0.99 || got > want*1.1 {
			t.Errorf("%s = %v, want about %v", name, got, want)
		}
	}
	if s.Count != 1000 {
		t.Errorf("count = %d", s.Count)
	}
	check("p50", s.P50, 500e-6)
	check("p90", s.P90, 900e-6)
	check("p99", s.P99, 990e-6)
	check("max", s.Max, 1000e-6)
	if got := (&LatencyRecorder{}).Summaries(); len(got) != 0 {
		t.Errorf("empty recorder = %v", got)
	}
}
