package cachetest

import (
	"cmp"
	"container/heap"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultBound is the staleness bound of the consistency contract: while
// Redis is reachable no instance serves a value stale by more than 1s.
const DefaultBound = time.Second

// DefaultMaxExamples is how many violations a Report lists by default.
const DefaultMaxExamples = 10

// CheckOptions configure History.Check. The zero value checks against
// DefaultBound and lists DefaultMaxExamples violations.
type CheckOptions struct {
	// Bound is the staleness a read may have before it counts as a
	// violation: reads stale by more than Bound are violations. Zero or
	// negative means DefaultBound. Report.StaleReads counts every stale
	// read whatever the bound, for a strict check.
	Bound time.Duration

	// MaxExamples is how many violations, the most stale first, to list in
	// Report.Examples. Zero means DefaultMaxExamples; negative means none.
	MaxExamples int
}

func (o CheckOptions) withDefaults() CheckOptions {
	if o.Bound <= 0 {
		o.Bound = DefaultBound
	}
	if o.MaxExamples == 0 {
		o.MaxExamples = DefaultMaxExamples
	}
	if o.MaxExamples < 0 {
		o.MaxExamples = 0
	}
	return o
}

// Violation describes one read stale by more than the bound.
type Violation struct {
	Key      string
	Instance string // the instance that read
	Found    bool
	// Version is the version the read returned; for a not-found read, the
	// version of the newest tombstone it could have seen (0 if none).
	Version   uint64
	Start     time.Duration // when the read began
	End       time.Duration // when the read returned
	Staleness time.Duration // Start minus Newer.End

	// Newer is the earliest acknowledged write with a version greater than
	// Version; its acknowledgement (Newer.End) is what makes the read stale.
	Newer WriteOp
	// Latest is the highest version acknowledged before the read began.
	Latest uint64
}

// String describes the violation on one line.
func (v Violation) String() string {
	got := fmt.Sprintf("v%d", v.Version)
	if !v.Found {
		got = fmt.Sprintf("not found (tombstone v%d)", v.Version)
		if v.Version == 0 {
			got = "not found"
		}
	}
	newer := fmt.Sprintf("v%d", v.Newer.Version)
	if v.Newer.Delete {
		newer = fmt.Sprintf("delete v%d", v.Newer.Version)
	}
	return fmt.Sprintf("key %q on %s: read [%v, %v] returned %s, stale by %v: %s by %s acknowledged at %v (latest acknowledged v%d)",
		v.Key, v.Instance, v.Start, v.End, got, v.Staleness, newer, v.Newer.Instance, v.Newer.End, v.Latest)
}

// InstanceReport is the part of a Report that concerns one instance.
type InstanceReport struct {
	Reads, Writes int
	StaleReads    int          // reads by this instance stale by more than 0
	Violations    int          // reads by this instance stale by more than the bound
	Staleness     Distribution // of this instance's stale reads
	Lag           Distribution // propagation lag of other instances' writes to this one
}

// Report is the result of History.Check.
type Report struct {
	Bound         time.Duration // the bound checked against
	Reads, Writes int
	Keys          int

	StaleReads int // reads stale by more than 0
	Violations int // reads stale by more than Bound

	// Staleness is the distribution, over stale reads, of how long before
	// the read began a newer version had been acknowledged.
	Staleness Distribution
	// Lag is the distribution, over (write, other instance) pairs, of the
	// time from the write's acknowledgement to that instance's first read
	// returning the written version or a newer one. See the package
	// documentation for its exact definition.
	Lag Distribution

	// Instances breaks the figures down by instance name.
	Instances map[string]InstanceReport

	// Examples lists up to CheckOptions.MaxExamples violations, the most
	// stale first (ties by key, instance and start).
	Examples []Violation
}

// Err returns nil if the report has no violations, and otherwise an error
// that names their number and the worst one.
func (r Report) Err() error {
	if r.Violations == 0 {
		return nil
	}
	msg := fmt.Sprintf("cachetest: %d of %d reads stale by more than %v (max staleness %v)",
		r.Violations, r.Reads, r.Bound, r.Staleness.Max)
	if len(r.Examples) > 0 {
		msg += "; worst: " + r.Examples[0].String()
	}
	return errors.New(msg)
}

// String returns a multi-line human summary, suitable for t.Log.
func (r Report) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d reads, %d writes, %d keys, %d instances; bound %v\n",
		r.Reads, r.Writes, r.Keys, len(r.Instances), r.Bound)
	fmt.Fprintf(&b, "stale reads: %d, violations (stale by > %v): %d\n", r.StaleReads, r.Bound, r.Violations)
	fmt.Fprintf(&b, "staleness: %v\n", r.Staleness)
	fmt.Fprintf(&b, "propagation lag: %v\n", r.Lag)
	names := make([]string, 0, len(r.Instances))
	for name := range r.Instances {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		in := r.Instances[name]
		fmt.Fprintf(&b, "instance %s: %d reads, %d writes, %d stale, %d violations; staleness %v; lag %v\n",
			name, in.Reads, in.Writes, in.StaleReads, in.Violations, in.Staleness, in.Lag)
	}
	if len(r.Examples) > 0 {
		fmt.Fprintf(&b, "worst %d of %d violations:\n", len(r.Examples), r.Violations)
		for _, v := range r.Examples {
			fmt.Fprintf(&b, "  %v\n", v)
		}
	}
	return strings.TrimSuffix(b.String(), "\n")
}

// Check judges every read recorded so far against the acknowledged writes of
// the same key, as defined in the package documentation. It may run while
// other goroutines keep recording; operations recorded after Check started
// may or may not be included, so call it after the load has stopped.
//
// Staleness takes O((R+W) log(R+W)) time for R reads and W writes; lag adds
// one binary search per write and per other instance that read its key.
// Check uses all available CPUs: each shard of keys is checked
// independently. A million operations take about half a second on 2 cores.
func (h *History) Check(opts CheckOptions) Report {
	opts = opts.withDefaults()
	shards := h.snapshot()
	results := make([]shardResult, len(shards))

	var next atomic.Int32
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), len(shards)) {
		wg.Go(func() {
			var c checker
			var buf []op // the shard's ops, contiguous
			c.opts = opts
			for {
				i := int(next.Add(1)) - 1
				if i >= len(shards) {
					return
				}
				buf = buf[:0]
				for _, chunk := range shards[i] {
					buf = append(buf, chunk...)
				}
				results[i] = c.checkShard(buf)
			}
		})
	}
	wg.Wait()
	return merge(opts, results)
}

// instAcc accumulates the figures of one instance.
type instAcc struct {
	reads, writes, stale, violations int
	staleness, lag                   []time.Duration
}

// shardResult is what checking one shard produced.
type shardResult struct {
	reads, writes, keys int
	inst                map[string]*instAcc
	examples            []Violation
}

func merge(opts CheckOptions, results []shardResult) Report {
	r := Report{Bound: opts.Bound, Instances: make(map[string]InstanceReport)}
	all := make(map[string]*instAcc)
	for _, sr := range results {
		r.Reads += sr.reads
		r.Writes += sr.writes
		r.Keys += sr.keys
		for name, a := range sr.inst {
			m := all[name]
			if m == nil {
				all[name] = a
				continue
			}
			m.reads += a.reads
			m.writes += a.writes
			m.stale += a.stale
			m.violations += a.violations
			m.staleness = append(m.staleness, a.staleness...)
			m.lag = append(m.lag, a.lag...)
		}
		r.Examples = append(r.Examples, sr.examples...)
	}
	// Sort each instance's samples in parallel, then merge the sorted runs
	// for the totals instead of sorting everything again.
	var wg sync.WaitGroup
	sem := make(chan struct{}, runtime.GOMAXPROCS(0))
	for _, a := range all {
		for _, s := range [][]time.Duration{a.staleness, a.lag} {
			sem <- struct{}{}
			wg.Go(func() {
				slices.Sort(s)
				<-sem
			})
		}
	}
	wg.Wait()
	var staleness, lag [][]time.Duration
	for name, a := range all {
		r.StaleReads += a.stale
		r.Violations += a.violations
		staleness = append(staleness, a.staleness)
		lag = append(lag, a.lag)
		r.Instances[name] = InstanceReport{
			Reads: a.reads, Writes: a.writes, StaleReads: a.stale, Violations: a.violations,
			Staleness: summarize(a.staleness), Lag: summarize(a.lag),
		}
	}
	r.Staleness = summarize(mergeSorted(staleness))
	r.Lag = summarize(mergeSorted(lag))
	slices.SortFunc(r.Examples, compareSeverity)
	if len(r.Examples) > opts.MaxExamples {
		r.Examples = r.Examples[:opts.MaxExamples]
	}
	if len(r.Examples) == 0 {
		r.Examples = nil
	}
	return r
}

// compareSeverity orders violations most stale first, then by key,
// instance, start and version, so that the examples kept are deterministic.
func compareSeverity(a, b Violation) int {
	return cmp.Or(
		cmp.Compare(b.Staleness, a.Staleness),
		strings.Compare(a.Key, b.Key),
		strings.Compare(a.Instance, b.Instance),
		cmp.Compare(a.Start, b.Start),
		cmp.Compare(a.End, b.End),
		cmp.Compare(a.Version, b.Version),
	)
}

// exampleHeap keeps the most severe violations seen so far; its root is the
// least severe of them, the one to drop when a more severe one arrives.
type exampleHeap []Violation

func (h exampleHeap) Len() int           { return len(h) }
func (h exampleHeap) Less(i, j int) bool { return compareSeverity(h[i], h[j]) > 0 }
func (h exampleHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *exampleHeap) Push(x any)        { *h = append(*h, x.(Violation)) }
func (h *exampleHeap) Pop() any {
	old := *h
	v := old[len(old)-1]
	*h = old[:len(old)-1]
	return v
}

// checker checks shards one key at a time. Its slices are scratch space
// reused across keys to keep allocation proportional to the largest key.
type checker struct {
	opts CheckOptions
	ops  []op
	res  shardResult

	writes []int32  // the key's writes, by acknowledgement time then version
	wmax   []uint64 // wmax[i] = max version of writes[:i+1]
	dels   []int32  // the key's deletes, by start time
	dmax   []uint64 // dmax[i] = max version of dels[:i+1]
	reads  []int32  // the key's reads, by instance then start time
	eff    []uint64 // eff[i] = version returned by reads[i], tombstones resolved
	rmax   []uint64 // rmax[i] = max of eff over reads[g:i+1], g the start of i's instance group
}

func (c *checker) acc(instance string) *instAcc {
	a := c.res.inst[instance]
	if a == nil {
		a = new(instAcc)
		c.res.inst[instance] = a
	}
	return a
}

func (c *checker) checkShard(ops []op) shardResult {
	c.ops = ops
	c.res = shardResult{inst: make(map[string]*instAcc)}
	if len(ops) == 0 {
		return c.res
	}

	// Group op indices by key with a counting sort: one map lookup per op.
	ids := make(map[string]int32)
	keyOf := make([]int32, len(ops))
	var counts []int32
	for i := range ops {
		id, ok := ids[ops[i].key]
		if !ok {
			id = int32(len(counts))
			ids[ops[i].key] = id
			counts = append(counts, 0)
		}
		keyOf[i] = id
		counts[id]++
	}
	starts := make([]int32, len(counts)+1)
	for id, n := range counts {
		starts[id+1] = starts[id] + n
	}
	order := make([]int32, len(ops))
	fill := slices.Clone(starts[:len(counts)])
	for i, id := range keyOf {
		order[fill[id]] = int32(i)
		fill[id]++
	}

	c.res.keys = len(counts)
	for id := range counts {
		c.checkKey(order[starts[id]:starts[id+1]])
	}
	return c.res // examples are in heap order; merge sorts them
}

// checkKey checks the reads of one key; group holds the indices of all of
// the key's ops.
func (c *checker) checkKey(group []int32) {
	ops := c.ops
	c.writes, c.dels, c.reads = c.writes[:0], c.dels[:0], c.reads[:0]
	for _, i := range group {
		o := &ops[i]
		switch {
		case o.kind == kindDelete:
			c.dels = append(c.dels, i)
			fallthrough
		case o.kind == kindWrite:
			c.writes = append(c.writes, i)
			c.acc(o.instance).writes++
		default:
			c.reads = append(c.reads, i)
		}
	}
	c.res.writes += len(c.writes)
	c.res.reads += len(c.reads)

	// Writes by acknowledgement time, with a running max of versions: the
	// first index whose running max exceeds v is the earliest acknowledged
	// write newer than v, so one binary search answers "since when has a
	// version newer than v been acknowledged?".
	slices.SortFunc(c.writes, func(a, b int32) int {
		return cmp.Or(cmp.Compare(ops[a].end, ops[b].end), cmp.Compare(ops[a].version, ops[b].version))
	})
	c.wmax = runningMax(c.wmax[:0], ops, c.writes)

	// Deletes by start time, for resolving not-found reads: the tombstones a
	// read could have seen are those of deletes that started before it ended.
	slices.SortFunc(c.dels, func(a, b int32) int { return cmp.Compare(ops[a].start, ops[b].start) })
	c.dmax = runningMax(c.dmax[:0], ops, c.dels)

	slices.SortFunc(c.reads, func(a, b int32) int {
		return cmp.Or(strings.Compare(ops[a].instance, ops[b].instance), cmp.Compare(ops[a].start, ops[b].start))
	})
	c.eff = c.eff[:0]
	for _, ri := range c.reads {
		r := &ops[ri]
		v := r.version
		if r.kind == kindReadMissing {
			v = 0
			if j := sort.Search(len(c.dels), func(j int) bool { return ops[c.dels[j]].start > r.end }); j > 0 {
				v = c.dmax[j-1]
			}
		}
		c.eff = append(c.eff, v)
		c.judge(r, v)
	}
	c.lag()
}

// runningMax appends to dst the running maximum of the versions of ops[idx].
func runningMax(dst []uint64, ops []op, idx []int32) []uint64 {
	var m uint64
	for _, i := range idx {
		m = max(m, ops[i].version)
		dst = append(dst, m)
	}
	return dst
}

// judge decides whether read r, which returned version v, was stale.
func (c *checker) judge(r *op, v uint64) {
	ops := c.ops
	a := c.acc(r.instance)
	a.reads++
	i := sort.Search(len(c.wmax), func(i int) bool { return c.wmax[i] > v })
	// Only writes acknowledged before the read began count; one acknowledged
	// later was concurrent with the read, which may order before it.
	if i == len(c.wmax) || ops[c.writes[i]].end >= r.start {
		return
	}
	newer := &ops[c.writes[i]]
	d := r.start - newer.end
	a.stale++
	a.staleness = append(a.staleness, d)
	if d <= c.opts.Bound {
		return
	}
	a.violations++
	if c.opts.MaxExamples == 0 {
		return
	}
	k := sort.Search(len(c.writes), func(k int) bool { return ops[c.writes[k]].end >= r.start }) // k > i
	ex := Violation{
		Key: r.key, Instance: r.instance, Found: r.kind == kindReadFound, Version: v,
		Start: r.start, End: r.end, Staleness: d,
		Newer: newer.writeOp(), Latest: c.wmax[k-1],
	}
	h := (*exampleHeap)(&c.res.examples)
	if h.Len() < c.opts.MaxExamples {
		heap.Push(h, ex)
	} else if compareSeverity(ex, (*h)[0]) < 0 {
		(*h)[0] = ex
		heap.Fix(h, 0)
	}
}

// lag measures, for every write that raised the key's acknowledged version
// and every other instance that read the key, the time until that instance's
// first read returning the written version or newer.
func (c *checker) lag() {
	ops := c.ops
	if len(c.writes) == 0 || len(c.reads) == 0 {
		return
	}
	c.rmax = c.rmax[:0]
	for g := 0; g < len(c.reads); {
		inst := ops[c.reads[g]].instance
		e := g
		var m uint64
		for e < len(c.reads) && ops[c.reads[e]].instance == inst {
			m = max(m, c.eff[e])
			c.rmax = append(c.rmax, m)
			e++
		}
		reads, rmax := c.reads[g:e], c.rmax[g:e]
		a := c.acc(inst)
		for wi, w := range c.writes {
			o := &ops[w]
			// A write whose version was already surpassed when it was
			// acknowledged has nothing to propagate.
			if o.instance == inst || (wi > 0 && o.version <= c.wmax[wi-1]) {
				continue
			}
			j := sort.Search(len(rmax), func(j int) bool { return rmax[j] >= o.version })
			if j == len(rmax) {
				continue
			}
			a.lag = append(a.lag, max(0, ops[reads[j]].start-o.end))
		}
		g = e
	}
}
