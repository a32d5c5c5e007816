package main

import (
	"sort"
	"sync"
	"time"

	hdrhistogram "github.com/HdrHistogram/hdrhistogram-go"
)

// The operations of a simulated user, as named in the summary and the JSON.
const (
	opSessionCreate = "session.create"
	opChat          = "chat"
	opEdit          = "node.edit"
	opContextRead   = "context.read"
	opSSEConnect    = "sse.connect"
	opProbeEdit     = "probe.edit"
)

// loadOps lists the operations in the order of the summary table.
var loadOps = []string{opSessionCreate, opChat, opEdit, opContextRead, opSSEConnect, opProbeEdit}

// newHist is a latency histogram in microseconds from 1 µs to 5 min at 3
// significant digits (about 0.1% error): a few tens of KiB however many
// samples, where storing every sample of 10,000 users would not do.
func newHist() *hdrhistogram.Histogram {
	return hdrhistogram.New(1, int64(5*time.Minute/time.Microsecond), 3)
}

func recordHist(h *hdrhistogram.Histogram, d time.Duration) {
	us := max(d.Microseconds(), 1)
	_ = h.RecordValue(min(us, h.HighestTrackableValue())) // beyond 5 min: counted as 5 min
}

// msAt is the q-th percentile (0-100) of h in milliseconds.
func msAt(h *hdrhistogram.Histogram, q float64) float64 { return float64(h.ValueAtQuantile(q)) / 1000 }

// recorder collects every operation's latency and errors: a histogram over
// the whole run and one for the current second, which the sampler takes
// every second for the time series. mu guards everything; an operation at a
// human rate, even for 10,000 users, takes it a few thousand times a second.
type recorder struct {
	mu      sync.Mutex
	ops     map[string]*opRecord
	errs    map[string]int64  // by kind
	samples map[string]string // kind: the first error of that kind, for the summary
}

type opRecord struct {
	all, sec *hdrhistogram.Histogram
	errors   int64
}

// opSecond is one operation's figures over one sampling interval.
type opSecond struct {
	Count    int64
	P50, P99 float64 // ms
}

func newRecorder() *recorder {
	r := &recorder{ops: map[string]*opRecord{}, errs: map[string]int64{}, samples: map[string]string{}}
	for _, op := range loadOps {
		r.ops[op] = &opRecord{all: newHist(), sec: newHist()}
	}
	return r
}

// ok records a successful op that took d.
func (r *recorder) ok(op string, d time.Duration) {
	r.mu.Lock()
	rec := r.ops[op]
	recordHist(rec.all, d)
	recordHist(rec.sec, d)
	r.mu.Unlock()
}

// fail records a failed op, counted by the kind of err.
func (r *recorder) fail(op string, err error) { r.failKind(op, errKind(err), err.Error()) }

func (r *recorder) failKind(op, kind, msg string) {
	r.mu.Lock()
	if rec := r.ops[op]; rec != nil {
		rec.errors++
	}
	r.errs[kind]++
	if _, ok := r.samples[kind]; !ok {
		r.samples[kind] = op + ": " + msg
	}
	r.mu.Unlock()
}

// second returns each operation's figures since the last call and starts
// the next interval.
func (r *recorder) second() map[string]opSecond {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]opSecond, len(r.ops))
	for op, rec := range r.ops {
		if n := rec.sec.TotalCount(); n > 0 {
			out[op] = opSecond{Count: n, P50: msAt(rec.sec, 50), P99: msAt(rec.sec, 99)}
		}
		rec.sec.Reset()
	}
	return out
}

// totals returns the requests and errors so far.
func (r *recorder) totals() (requests, errs int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rec := range r.ops {
		requests += rec.all.TotalCount() + rec.errors
	}
	for _, n := range r.errs {
		errs += n
	}
	return requests, errs
}

// summaries returns every operation's summary over the run of elapsed.
func (r *recorder) summaries(elapsed time.Duration) map[string]opSummary {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]opSummary{}
	for op, rec := range r.ops {
		s := opSummary{Count: rec.all.TotalCount(), Errors: rec.errors}
		if s.Count+s.Errors == 0 {
			continue
		}
		s.Throughput = float64(s.Count) / elapsed.Seconds()
		s.Latency = summarizeHist(rec.all)
		out[op] = s
	}
	return out
}

func summarizeHist(h *hdrhistogram.Histogram) latencyMS {
	if h.TotalCount() == 0 {
		return latencyMS{}
	}
	return latencyMS{P50: msAt(h, 50), P90: msAt(h, 90), P99: msAt(h, 99), Max: float64(h.Max()) / 1000, Mean: h.Mean() / 1000}
}

// errors returns the error counts by kind and one example of each.
func (r *recorder) errors() (map[string]int64, map[string]string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	counts := make(map[string]int64, len(r.errs))
	samples := make(map[string]string, len(r.samples))
	for k, v := range r.errs {
		counts[k] = v
	}
	for k, v := range r.samples {
		samples[k] = v
	}
	return counts, samples
}

// sortedKeys returns m's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
