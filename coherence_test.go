package tiercache

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand"
	"sync"
	"sync/atomic"
	"testing"
	"time"

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
	during    func(ctx context.Context) // runs alongside the workload: faults
	// outage, when set, marks the windows in which Redis is unreachable (odd values): reads that
	// overlap one are not checked, since the contract bounds staleness only while Redis is
	// reachable (degraded mode answers from L1 for up to L1TTL). Writes are always recorded, so
	// reads after a window must see what was written during it.
	outage *atomic.Int64
}

// reachable reports whether no outage window touched [e0, now]; e0 is the epoch at the start.
func (w workload) reachable(e0 int64) bool {
	if w.outage == nil {
		return true
	}
	return e0%2 == 0 && w.outage.Load() == e0
}

func (w workload) epoch() int64 {
	if w.outage == nil {
		return 0
	}
	return w.outage.Load()
}

// run drives instances through a Zipf-distributed read/write/delete mix against one Redis and
// returns the history checker's report.
func (w workload) run(t *testing.T, srv *redistest.Server) (cachetest.Report, []*Cache) {
	t.Helper()
	db := &rowDB{version: map[string]uint64{}, deleted: map[string]bool{}}
	h := cachetest.NewHistory()
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
	if w.during != nil {
		faults.Add(1)
		go func() { defer faults.Done(); w.during(ctx) }()
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
				for done.Load() < int64(w.ops) || time.Since(start) < w.minTime {
					done.Add(1)
					key := fmt.Sprint("row:", zipf.Uint64())
					opStart, e0 := h.Clock(), w.epoch()
					switch p := r.Intn(100); {
					case p < 20: // write: the database commits, then the cache follows
						v := db.bump(key, false)
						if err := view.Set(ctx, key, row{V: v}, Version(v)); err == nil {
							h.RecordWrite(cachetest.WriteOp{Instance: inst, Key: key, Version: v, Start: opStart, End: h.Clock()})
						} else if !errors.Is(err, ErrStaleVersion) {
							failures.Add(1)
						}
					case p < 23:
						v := db.bump(key, true)
						if err := view.Delete(ctx, key, Version(v)); err == nil {
							h.RecordWrite(cachetest.WriteOp{Instance: inst, Key: key, Version: v, Delete: true, Start: opStart, End: h.Clock()})
						} else if !errors.Is(err, ErrStaleVersion) {
							failures.Add(1)
						}
					default:
						got, err := view.GetOrLoad(ctx, key, db.load)
						switch {
						case !w.reachable(e0):
						case err == nil:
							h.RecordRead(cachetest.ReadOp{Instance: inst, Key: key, Version: got.V, Found: true, Start: opStart, End: h.Clock()})
						case errors.Is(err, ErrNotFound):
							h.RecordRead(cachetest.ReadOp{Instance: inst, Key: key, Start: opStart, End: h.Clock()})
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
	rep := h.Check(cachetest.CheckOptions{Bound: time.Second})
	t.Logf("%d operations in %v (%d failed while Redis was unreachable)\n%s", done.Load(), time.Since(start).Round(time.Millisecond), failures.Load(), rep)
	for i, c := range caches {
		s := c.Stats()
		t.Logf("instance i%d: L1 hits %d, L2 hits %d, loads %d, invalidations sent %d received %d, gaps %d, flushes %d",
			i, s.L1Hits, s.L2Hits, s.Loads, s.InvalidationsSent, s.InvalidationsReceived, s.Gaps, s.Flushes)
	}
	return rep, caches
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
	rep, _ := workload{ops: 100_000, instances: 3, workers: 4, keys: 1000}.scaled().run(t, srv)
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
	var outage atomic.Int64
	// An outage window lasts from the fault until recovery can be expected: the breaker's next
	// trial, the replay of writes remembered meanwhile and the resubscription (docs/OPERATIONS.md).
	const recoveryGrace = time.Second
	w := workload{ops: 100_000, minTime: 9 * time.Second, instances: 3, workers: 4, keys: 1000, outage: &outage,
		during: func(ctx context.Context) {
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
					outage.Add(1)
					srv.Kill(t)
					srv.Restart(t)
					step(recoveryGrace)
					outage.Add(1)
					restarts.Add(1)
				case 4: // a 2 s freeze
					outage.Add(1)
					srv.Pause(t)
					step(2 * time.Second)
					srv.Resume(t)
					step(recoveryGrace)
					outage.Add(1)
					pauses.Add(1)
				default:
					srv.Do(t, "CLIENT", "KILL", "TYPE", "pubsub")
					kills.Add(1)
				}
			}
		}}.scaled()
	rep, caches := w.run(t, srv)
	t.Logf("faults: %d pub/sub kills, %d restarts, %d pauses", kills.Load(), restarts.Load(), pauses.Load())
	if rep.Violations != 0 {
		t.Fatalf("%d reads stale by more than 1s: %v", rep.Violations, rep.Err())
	}
	wantGaps := uint64(kills.Load() + restarts.Load())
	for i, c := range caches {
		if g := c.Stats().Gaps; g < wantGaps {
			t.Errorf("instance %d counted %d gaps, want at least %d (one per lost subscription)", i, g, wantGaps)
		}
	}
}
