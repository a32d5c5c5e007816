package tiercache

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/cachetest"
	"github.com/tiercache/tiercache/internal/redistest"
)

var longCoherence = flag.Bool("coherence.long", false, "run the coherence workloads with 1M operations")

// row is a database row as the coherence workloads cache it: its version is the database's.
type row struct {
	V uint64 `json:"v"`
}

func (r row) CacheVersion() uint64 { return r.V }

// rowDB is the store of record of the workloads: a version per key, bumped on every write;
// deleted rows keep their version.
type rowDB struct {
	mu      sync.Mutex
	version map[string]uint64
	deleted map[string]bool
}

func (d *rowDB) bump(key string, del bool) uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.version[key]++
	d.deleted[key] = del
	return d.version[key]
}

func (d *rowDB) load(_ context.Context, key string) (row, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if v, ok := d.version[key]; ok && !d.deleted[key] {
		return row{V: v}, nil
	}
	return row{}, ErrNotFound
}

type workload struct {
	ops       int           // at least this many operations in all
	minTime   time.Duration // and at least this long
	instances int
	workers   int // per instance
	keys      int
	opts      Options
	// client, when set, gives each instance its own Redis client (instead of srv's).
	client func(tb testing.TB) redis.UniversalClient
	// during runs alongside the workload: faults. With untilDuring the workload runs until it
	// returns (and at least ops and minTime); otherwise it is cancelled when the workload ends.
	during      func(ctx context.Context, rs *runState)
	untilDuring bool
	// outage, when set, marks the windows in which Redis is unreachable: reads that overlap one
	// are not held to the 1 s bound, since the contract bounds staleness so only while Redis is
	// reachable; they are judged against the writes acknowledged before their window began, with
	// the degraded bound L1TTL + 1 s (degraded mode answers from L1 for up to L1TTL), as the
	// fault suite's checker judges them (internal/soak). Writes are always recorded, so reads
	// after a window must see what was written during it.
	outage *outages
	// lost, when set, is asked after the run which acknowledged writes a failover lost
	// (asynchronous replication): they are counted and left out of the check.
	lost func(cachetest.WriteOp) bool
}

// runState is what a workload's during function may use: the instances and the history's clock.
type runState struct {
	caches []*Cache
	views  []*TypedCache[row]
	h      *cachetest.History
}

// outages marks the windows in which Redis is unreachable: epoch is odd while one is open.
type outages struct {
	epoch  atomic.Int64
	mu     sync.Mutex
	starts []time.Time // when each window opened
}

// begin opens a window; end closes it.
func (o *outages) begin() {
	o.mu.Lock()
	o.starts = append(o.starts, time.Now())
	o.mu.Unlock()
	o.epoch.Add(1)
}

func (o *outages) end() { o.epoch.Add(1) }

// reachable reports whether no outage window touched [e0, now]; e0 is the epoch at the start.
func (w workload) reachable(e0 int64) bool {
	if w.outage == nil {
		return true
	}
	return e0%2 == 0 && w.outage.epoch.Load() == e0
}

func (w workload) epoch() int64 {
	if w.outage == nil {
		return 0
	}
	return w.outage.epoch.Load()
}

// result is what a workload run found.
type result struct {
	rep      cachetest.Report // reads while Redis was reachable, against the 1 s bound
	degraded cachetest.Report // reads inside outage windows, against L1TTL + 1 s (zero without outages)
	lost     int              // acknowledged writes w.lost said a failover lost
	caches   []*Cache
}

// run drives instances through a Zipf-distributed read/write/delete mix against one Redis (srv,
// or the clients w.client makes) and returns what the history checker found.
func (w workload) run(t *testing.T, srv *redistest.Server) result {
	t.Helper()
	db := &rowDB{version: map[string]uint64{}, deleted: map[string]bool{}}
	h := cachetest.NewHistory()
	// Writes are kept until the end when w.lost may drop some, and reads inside outage windows
	// are kept for the degraded check.
	var mu sync.Mutex
	var writes []cachetest.WriteOp
	var windowReads [][]cachetest.ReadOp // by window
	recordWrite := func(op cachetest.WriteOp) {
		if w.lost == nil && w.outage == nil {
			h.RecordWrite(op)
			return
		}
		mu.Lock()
		writes = append(writes, op)
		mu.Unlock()
	}
	recordRead := func(op cachetest.ReadOp, e0 int64) {
		if w.reachable(e0) {
			h.RecordRead(op)
			return
		}
		k := int(e0 / 2) // the first window the read touched
		mu.Lock()
		for len(windowReads) <= k {
			windowReads = append(windowReads, nil)
		}
		windowReads[k] = append(windowReads[k], op)
		mu.Unlock()
	}
	var caches []*Cache
	var views []*TypedCache[row]
	for range w.instances {
		o := w.opts
		if o.L2Timeout == 0 {
			// These workloads test coherence, not degraded mode: under -race on two shared cores
			// Redis calls often pass the 50 ms default budget, and each would send the instance
			// into degraded mode, whose staleness bound is L1TTL, not 1 s.
			o.L2Timeout = time.Second
		}
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
		if w.client != nil {
			o.Redis = w.client(t)
		}
		c := newCache(t, srv, o)
		caches = append(caches, c)
		views = append(views, Typed(c, JSON[row]()))
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var done atomic.Int64
	start := time.Now()
	var wg sync.WaitGroup
	var faults sync.WaitGroup
	var duringDone atomic.Bool
	if w.during != nil {
		faults.Add(1)
		go func() {
			defer faults.Done()
			defer duringDone.Store(true)
			w.during(ctx, &runState{caches: caches, views: views, h: h})
		}()
	}
	var failures atomic.Int64
	for i, view := range views {
		inst := fmt.Sprint("i", i)
		for g := range w.workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := mrand.New(mrand.NewSource(int64(i*100 + g)))
				zipf := mrand.NewZipf(r, 1.1, 1, uint64(w.keys-1))
				for done.Load() < int64(w.ops) || time.Since(start) < w.minTime || (w.untilDuring && !duringDone.Load()) {
					done.Add(1)
					key := fmt.Sprint("row:", zipf.Uint64())
					opStart, e0 := h.Clock(), w.epoch()
					switch p := r.Intn(100); {
					case p < 20: // write: the database commits, then the cache follows
						v := db.bump(key, false)
						if err := view.Set(ctx, key, row{V: v}, Version(v)); err == nil {
							recordWrite(cachetest.WriteOp{Instance: inst, Key: key, Version: v, Start: opStart, End: h.Clock()})
						} else if !errors.Is(err, ErrStaleVersion) {
							failures.Add(1)
						}
					case p < 23:
						v := db.bump(key, true)
						if err := view.Delete(ctx, key, Version(v)); err == nil {
							recordWrite(cachetest.WriteOp{Instance: inst, Key: key, Version: v, Delete: true, Start: opStart, End: h.Clock()})
						} else if !errors.Is(err, ErrStaleVersion) {
							failures.Add(1)
						}
					default:
						got, err := view.GetOrLoad(ctx, key, db.load)
						switch {
						case err == nil:
							recordRead(cachetest.ReadOp{Instance: inst, Key: key, Version: got.V, Found: true, Start: opStart, End: h.Clock()}, e0)
						case errors.Is(err, ErrNotFound):
							recordRead(cachetest.ReadOp{Instance: inst, Key: key, Start: opStart, End: h.Clock()}, e0)
						case !w.reachable(e0):
						default:
							failures.Add(1)
						}
					}
				}
			}()
		}
	}
	wg.Wait()
	cancel()
	faults.Wait()
	res := result{caches: caches}
	kept := writes[:0]
	for _, op := range writes {
		if w.lost != nil && w.lost(op) {
			res.lost++
			continue
		}
		kept = append(kept, op)
		h.RecordWrite(op)
	}
	res.rep = h.Check(cachetest.CheckOptions{Bound: time.Second})
	t.Logf("%d operations in %v (%d failed while Redis was unreachable)\n%s", done.Load(), time.Since(start).Round(time.Millisecond), failures.Load(), res.rep)
	if w.outage != nil {
		res.degraded = w.checkWindows(t, h, kept, windowReads)
	}
	for i, c := range caches {
		s := c.Stats()
		t.Logf("instance i%d: L1 hits %d, L2 hits %d, loads %d, invalidations sent %d received %d, gaps %d, flushes %d, outages %d, recoveries %d, replayed %d",
			i, s.L1Hits, s.L2Hits, s.Loads, s.InvalidationsSent, s.InvalidationsReceived, s.Gaps, s.Flushes, s.Outages, s.Recoveries, s.Replayed)
	}
	return res
}

// checkWindows judges the reads of each outage window against the writes acknowledged before
// the window began, with the degraded bound L1TTL + 1 s, and returns the sum of the reports.
func (w workload) checkWindows(t *testing.T, h *cachetest.History, writes []cachetest.WriteOp, reads [][]cachetest.ReadOp) cachetest.Report {
	t.Helper()
	l1TTL := w.opts.L1TTL
	if l1TTL == 0 {
		l1TTL = DefaultL1TTL
	}
	bound := l1TTL + time.Second
	w.outage.mu.Lock()
	starts := slices.Clone(w.outage.starts)
	w.outage.mu.Unlock()
	deletes := map[string][]cachetest.WriteOp{}
	for _, op := range writes {
		if op.Delete {
			deletes[op.Key] = append(deletes[op.Key], op)
		}
	}
	sum := cachetest.Report{Bound: bound}
	for k, rs := range reads {
		if len(rs) == 0 {
			continue
		}
		began := h.Offset(starts[k])
		hk := cachetest.NewHistory()
		for _, op := range writes {
			if op.End < began {
				hk.RecordWrite(op)
			}
		}
		for _, op := range rs {
			if !op.Found {
				// A not-found read returned the newest delete that began before it ended, also
				// one acknowledged inside the window, which hk does not hold: the read is then
				// as fresh as that delete's version (internal/soak's checker reads it so).
				for _, d := range deletes[op.Key] {
					if d.Start < op.End && d.Version > op.Version {
						op.Found, op.Version = true, d.Version
					}
				}
			}
			hk.RecordRead(op)
		}
		rep := hk.Check(cachetest.CheckOptions{Bound: bound})
		t.Logf("outage window %d (from %v): reads inside it against the writes acknowledged before it, bound %v:\n%s", k, began.Round(time.Millisecond), bound, rep)
		sum.Reads += rep.Reads
		sum.StaleReads += rep.StaleReads
		sum.Violations += rep.Violations
		sum.Examples = append(sum.Examples, rep.Examples...)
		sum.Staleness.Max = max(sum.Staleness.Max, rep.Staleness.Max)
	}
	return sum
}

func (w workload) scaled() workload {
	if *longCoherence {
		w.ops = 1_000_000
	}
	if testing.Short() {
		w.ops /= 10
	}
	return w
}

func TestCoherenceAcrossInstances(t *testing.T) {
	srv := redistest.Start(t)
	rep := workload{ops: 100_000, instances: 3, workers: 4, keys: 1000}.scaled().run(t, srv).rep
	if rep.Violations != 0 {
		t.Fatalf("%d reads stale by more than 1s: %v", rep.Violations, rep.Err())
	}
	if rep.Reads == 0 || rep.Writes == 0 {
		t.Fatalf("the workload recorded %d reads and %d writes", rep.Reads, rep.Writes)
	}
}

// TestCheckerSeesStalenessWithoutInvalidation proves the checker and the backplane both matter:
// an instance holds v1 in L1 while another writes v2 and then keeps reading for 1.2 s. With the
// backplane off the checker must report reads stale by more than 1 s; with it on, none.
func TestCheckerSeesStalenessWithoutInvalidation(t *testing.T) {
	for _, tc := range []struct {
		name           string
		noInvalidation bool
		wantViolations bool
	}{
		{name: "backplane off", noInvalidation: true, wantViolations: true},
		{name: "backplane on", noInvalidation: false, wantViolations: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := redistest.Start(t)
			o := Options{noInvalidation: tc.noInvalidation, L1TTL: time.Minute, L2Timeout: time.Second}
			a := Typed(newCache(t, srv, o), JSON[row]())
			b := Typed(newCache(t, srv, o), JSON[row]())
			ctx := context.Background()
			h := cachetest.NewHistory()
			write := func(v uint64) time.Duration {
				start := h.Clock()
				if err := a.Set(ctx, "k", row{V: v}, Version(v)); err != nil {
					t.Fatal(err)
				}
				end := h.Clock()
				h.RecordWrite(cachetest.WriteOp{Instance: "a", Key: "k", Version: v, Start: start, End: end})
				return end
			}
			read := func() {
				start := h.Clock()
				got, err := b.Get(ctx, "k")
				if err != nil {
					t.Fatal(err)
				}
				h.RecordRead(cachetest.ReadOp{Instance: "b", Key: "k", Version: got.V, Found: true, Start: start, End: h.Clock()})
			}
			write(1)
			read() // b now holds v1 in L1
			acked := write(2)
			for h.Clock() < acked+1200*time.Millisecond {
				read()
				time.Sleep(10 * time.Millisecond) // pacing the reader, not waiting for a condition
			}
			rep := h.Check(cachetest.CheckOptions{Bound: time.Second})
			t.Logf("%s", rep)
			if got := rep.Violations > 0; got != tc.wantViolations {
				t.Fatalf("violations = %d, want them: %v", rep.Violations, tc.wantViolations)
			}
		})
	}
}

func TestCoherenceUnderFaults(t *testing.T) {
	srv := redistest.Start(t)
	var kills, restarts, pauses atomic.Int64
	var outage outages
	// An outage window lasts from the fault until recovery can be expected: the breaker's next
	// trial, the replay of writes remembered meanwhile and the resubscription (docs/OPERATIONS.md).
	const recoveryGrace = time.Second
	w := workload{ops: 100_000, minTime: 9 * time.Second, instances: 3, workers: 4, keys: 1000, outage: &outage,
		during: func(ctx context.Context, _ *runState) {
			step := func(d time.Duration) bool {
				select {
				case <-ctx.Done():
					return false
				case <-time.After(d):
					return true
				}
			}
			for i := 0; ; i++ {
				if !step(1500 * time.Millisecond) {
					return
				}
				switch i {
				case 2: // a restart that loses every key
					outage.begin()
					srv.Kill(t)
					srv.Restart(t)
					step(recoveryGrace)
					outage.end()
					restarts.Add(1)
				case 4: // a 2 s freeze
					outage.begin()
					srv.Pause(t)
					step(2 * time.Second)
					srv.Resume(t)
					step(recoveryGrace)
					outage.end()
					pauses.Add(1)
				default:
					srv.Do(t, "CLIENT", "KILL", "TYPE", "pubsub")
					kills.Add(1)
				}
			}
		}}.scaled()
	res := w.run(t, srv)
	rep, caches := res.rep, res.caches
	t.Logf("faults: %d pub/sub kills, %d restarts, %d pauses", kills.Load(), restarts.Load(), pauses.Load())
	if rep.Violations != 0 {
		t.Fatalf("%d reads stale by more than 1s: %v", rep.Violations, rep.Err())
	}
	if res.degraded.Violations != 0 {
		t.Fatalf("%d reads inside outage windows stale by more than %v: %v", res.degraded.Violations, res.degraded.Bound, res.degraded.Err())
	}
	wantGaps := uint64(kills.Load() + restarts.Load())
	for i, c := range caches {
		if g := c.Stats().Gaps; g < wantGaps {
			t.Errorf("instance %d counted %d gaps, want at least %d (one per lost subscription)", i, g, wantGaps)
		}
	}
}
