package tiercache

// Benchmarks of the hot paths, each next to the baseline it is judged against (issue 2, DESIGN.md
// section 6). Pairs share a parent name so one -bench regexp runs both sides interleaved, e.g.
//
//	go test -run '^$' -bench 'L1Hit' -benchtime 1s -count 6 .
//
// and benchstat (or docs/BENCHMARKS.md) turns them into ratios ours / baseline. Results and the
// commands that made them are recorded in docs/BENCHMARKS.md.

import (
	"bytes"
	"context"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/maypok86/otter/v2"
	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/benchpair"
	"github.com/tiercache/tiercache/internal/redistest"
)

// benchUser is the small struct the L1 benchmarks store (about 100 bytes of JSON).
type benchUser struct {
	ID      int64
	Name    string
	Email   string
	Plan    string
	Credits int64
	Active  bool
}

const (
	benchL1Keys  = 10_000 // keys cycled by the L1 benchmarks
	benchL2Keys  = 1_000  // keys cycled by the L2 benchmarks
	benchL2Value = 1_000  // bytes per L2 value: below the 1 KiB compression threshold, stored raw
	benchMany    = 100    // keys per GetMany
)

// Sinks keep the compiler from dropping benchmarked calls.
var (
	sinkUser  benchUser
	sinkPtr   *benchUser
	sinkBytes []byte
	sinkStr   string
	sinkMap   map[string][]byte
)

func benchKeys(prefix string, n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("%s:%d", prefix, i)
	}
	return keys
}

func benchUserFor(i int) benchUser {
	return benchUser{ID: int64(i), Name: fmt.Sprintf("user %d", i), Email: fmt.Sprintf("u%d@example.com", i), Plan: "pro", Credits: int64(i * 7), Active: i%2 == 0}
}

// benchValue returns n deterministic bytes, distinct per i.
func benchValue(i, n int) []byte {
	b := bytes.Repeat([]byte("chat-context "), n/13+1)[:n]
	copy(b, fmt.Sprintf("%08d", i))
	return b
}

// l1Bench holds an L1-only cache and a raw otter cache filled with the same keys and values.
type l1Bench struct {
	keys  []string
	users *TypedCache[benchUser]
	ptrs  *TypedCache[*benchUser] // the same values held by pointer
	c     *Cache                  // its byte view holds benchValue(i, 100) under the same keys
	raw   *otter.Cache[string, benchUser]
	rawP  *otter.Cache[string, *benchUser]
}

func newL1Bench(b *testing.B) *l1Bench {
	b.Helper()
	ctx := context.Background()
	// L1-only: entries live for TTL, so nothing expires during a long run. Same keys, two caches:
	// one for the typed view and one for the byte view (a key holds one type).
	typed := newCache(b, nil, Options{TTL: time.Hour})
	byteCache := newCache(b, nil, Options{TTL: time.Hour})
	ptrCache := newCache(b, nil, Options{TTL: time.Hour})
	lb := &l1Bench{keys: benchKeys("user", benchL1Keys), users: Typed(typed, JSON[benchUser]()),
		ptrs: Typed(ptrCache, JSON[*benchUser]()), c: byteCache}
	// The baseline is raw otter: a size bound and nothing else, no expiry (which costs a clock
	// read and a comparison on every hit). It is the floor an L1 built on otter can reach.
	raw, err := otter.New(&otter.Options[string, benchUser]{MaximumSize: 4 * benchL1Keys})
	if err != nil {
		b.Fatal(err)
	}
	rawP, err := otter.New(&otter.Options[string, *benchUser]{MaximumSize: 4 * benchL1Keys})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { raw.StopAllGoroutines(); rawP.StopAllGoroutines() })
	lb.raw, lb.rawP = raw, rawP
	for i, k := range lb.keys {
		u := benchUserFor(i)
		if err := lb.users.Set(ctx, k, u); err != nil {
			b.Fatal(err)
		}
		if err := byteCache.Set(ctx, k, benchValue(i, 100)); err != nil {
			b.Fatal(err)
		}
		if err := lb.ptrs.Set(ctx, k, &u); err != nil {
			b.Fatal(err)
		}
		raw.Set(k, u)
		rawP.Set(k, &u)
	}
	// Every key must be an L1 hit on both sides, or the comparison is meaningless.
	for _, k := range lb.keys {
		if _, ok := lb.users.Peek(k); !ok {
			b.Fatalf("typed L1 lost %q", k)
		}
		if _, ok := byteCache.Peek(k); !ok {
			b.Fatalf("byte L1 lost %q", k)
		}
		if _, ok := lb.ptrs.Peek(k); !ok {
			b.Fatalf("pointer L1 lost %q", k)
		}
		if _, ok := raw.GetIfPresent(k); !ok {
			b.Fatalf("otter lost %q", k)
		}
		if _, ok := rawP.GetIfPresent(k); !ok {
			b.Fatalf("pointer otter lost %q", k)
		}
	}
	return lb
}

// BenchmarkL1Hit is the single-goroutine latency of an L1 hit: the typed Get, the byte Get, a
// GetOrLoad that hits, and raw otter GetIfPresent (the baseline) over the same 10k keys.
// Targets: typed Get within 1.5x otter's ns/op, 0 allocs/op.
func BenchmarkL1Hit(b *testing.B) {
	lb := newL1Bench(b)
	ctx := context.Background()
	n := len(lb.keys)
	b.Run("tiercache", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			u, err := lb.users.Get(ctx, lb.keys[i%n])
			if err != nil {
				b.Fatal(err)
			}
			sinkUser = u
			i++
		}
	})
	b.Run("bytes", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			v, err := lb.c.Get(ctx, lb.keys[i%n])
			if err != nil {
				b.Fatal(err)
			}
			sinkBytes = v
			i++
		}
	})
	b.Run("getorload", func(b *testing.B) {
		load := func(context.Context, string) (benchUser, error) {
			b.Fatal("loader called on an L1 hit")
			return benchUser{}, nil
		}
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			u, err := lb.users.GetOrLoad(ctx, lb.keys[i%n], load)
			if err != nil {
				b.Fatal(err)
			}
			sinkUser = u
			i++
		}
	})
	b.Run("otter", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			u, ok := lb.raw.GetIfPresent(lb.keys[i%n])
			if !ok {
				b.Fatal("otter miss")
			}
			sinkUser = u
			i++
		}
	})
	b.Run("tiercache-ptr", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			u, err := lb.ptrs.Get(ctx, lb.keys[i%n])
			if err != nil {
				b.Fatal(err)
			}
			sinkPtr = u
			i++
		}
	})
	b.Run("otter-ptr", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			u, ok := lb.rawP.GetIfPresent(lb.keys[i%n])
			if !ok {
				b.Fatal("otter miss")
			}
			sinkPtr = u
			i++
		}
	})
}

// BenchmarkL1HitParallel is L1-hit throughput under b.RunParallel (GOMAXPROCS goroutines), each
// goroutine cycling the keys from its own offset. Target: tiercache ns/op at most 1/0.7 of
// otter's (throughput ≥ 0.7x), 0 allocs/op.
func BenchmarkL1HitParallel(b *testing.B) {
	lb := newL1Bench(b)
	ctx := context.Background()
	n := len(lb.keys)
	var offset atomic.Uint32
	start := func() int { return int(offset.Add(7919)) % n }
	b.Run("tiercache", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			var u benchUser
			for i := start(); pb.Next(); i++ {
				var err error
				if u, err = lb.users.Get(ctx, lb.keys[i%n]); err != nil {
					b.Error(err)
					return
				}
			}
			_ = u
		})
	})
	b.Run("bytes", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for i := start(); pb.Next(); i++ {
				if _, err := lb.c.Get(ctx, lb.keys[i%n]); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
	b.Run("otter", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			var u benchUser
			for i := start(); pb.Next(); i++ {
				var ok bool
				if u, ok = lb.raw.GetIfPresent(lb.keys[i%n]); !ok {
					b.Error("otter miss")
					return
				}
			}
			_ = u
		})
	})
	b.Run("tiercache-ptr", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for i := start(); pb.Next(); i++ {
				if _, err := lb.ptrs.Get(ctx, lb.keys[i%n]); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
	b.Run("otter-ptr", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for i := start(); pb.Next(); i++ {
				if _, ok := lb.rawP.GetIfPresent(lb.keys[i%n]); !ok {
					b.Error("otter miss")
					return
				}
			}
		})
	})
}

// l2Bench is a cache on a fresh redis-server holding benchL2Keys values of benchL2Value bytes.
// Both sides of every L2 comparison use its one client (the same pool).
type l2Bench struct {
	c    *Cache
	rdb  *redis.Client
	keys []string // user keys
	rks  []string // their Redis keys: the raw baseline GETs exactly the stored envelopes
	raw  [][]byte // the stored envelopes, for the raw SET baseline
}

func newL2Bench(b *testing.B) *l2Bench {
	b.Helper()
	srv := redistest.Start(b)
	// The configuration docs/OPERATIONS.md recommends (and redisconfig.NewClient builds): the cache's
	// per-call budget reaches the socket, so no goroutine per call is needed to enforce it. Both
	// sides share this client. The budget is generous: this measures throughput, and on a loaded
	// two-core machine a 50 ms budget turns scheduling delays into failures.
	o := srv.Options()
	o.ContextTimeoutEnabled = true
	rdb := redis.NewClient(o)
	b.Cleanup(func() { rdb.Close() })
	c := newCache(b, srv, Options{Redis: rdb, NoJitter: true, L2Timeout: time.Second})
	ctx := context.Background()
	lb := &l2Bench{c: c, rdb: rdb, keys: benchKeys("ctx", benchL2Keys)}
	items := make(map[string][]byte, len(lb.keys))
	for i, k := range lb.keys {
		items[k] = benchValue(i, benchL2Value)
	}
	if err := c.SetMany(ctx, items); err != nil {
		b.Fatal(err)
	}
	for _, k := range lb.keys {
		rk := c.redisKey(k)
		env, err := rdb.Get(ctx, rk).Bytes()
		if err != nil {
			b.Fatal(err)
		}
		if len(env) <= benchL2Value {
			b.Fatalf("envelope of %q is %d bytes, want a raw (uncompressed) envelope", k, len(env))
		}
		lb.rks, lb.raw = append(lb.rks, rk), append(lb.raw, env)
	}
	return lb
}

// runG runs op b.N times in total spread over g goroutines; op gets the goroutine's running index.
func runG(b *testing.B, g int, op func(i int) error) {
	b.Helper()
	var next atomic.Int64
	var wg sync.WaitGroup
	var failed atomic.Bool
	b.ResetTimer()
	for w := range g {
		wg.Go(func() {
			i := w * 7919
			for next.Add(1) <= int64(b.N) {
				if err := op(i); err != nil {
					if failed.CompareAndSwap(false, true) {
						b.Error(err)
					}
					return
				}
				i++
			}
		})
	}
	wg.Wait()
	b.StopTimer()
}

// BenchmarkL2Hit is a Redis hit with L1 skipped (byte Get with SkipL1: GET, envelope decode, no
// L1 fill) against a raw go-redis GET of the same key, hence the same bytes, on the same client,
// with 1, 8 and 64 goroutines. Target: tiercache throughput ≥ 0.85x redis (ns/op ≤ 1.18x).
func BenchmarkL2Hit(b *testing.B) {
	lb := newL2Bench(b)
	ctx := context.Background()
	n := len(lb.keys)
	for _, g := range []int{1, 8, 64} {
		b.Run(fmt.Sprintf("g=%d", g), func(b *testing.B) {
			b.Run("tiercache", func(b *testing.B) {
				b.ReportAllocs()
				runG(b, g, func(i int) error {
					v, err := lb.c.Get(ctx, lb.keys[i%n], SkipL1())
					if err == nil && len(v) != benchL2Value {
						err = fmt.Errorf("got %d bytes", len(v))
					}
					return err
				})
			})
			b.Run("redis", func(b *testing.B) {
				b.ReportAllocs()
				runG(b, g, func(i int) error {
					v, err := lb.rdb.Get(ctx, lb.rks[i%n]).Result()
					if err == nil && len(v) != len(lb.raw[i%n]) {
						err = fmt.Errorf("got %d bytes", len(v))
					}
					return err
				})
			})
		})
	}
	if st := lb.c.Stats(); st.L1Hits != 0 {
		b.Fatalf("SkipL1 reads hit L1 %d times", st.L1Hits)
	}
}

// BenchmarkGetMany reads 100 keys from Redis (L1 skipped) with one GetMany (one MGET) against 100
// sequential Gets. One op is all 100 keys. Target: many at least 5x faster than single.
func BenchmarkGetMany(b *testing.B) {
	lb := newL2Bench(b)
	ctx := context.Background()
	batches := make([][]string, len(lb.keys)/benchMany)
	for i := range batches {
		batches[i] = lb.keys[i*benchMany : (i+1)*benchMany]
	}
	b.Run("many", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			m, err := lb.c.GetMany(ctx, batches[i%len(batches)], SkipL1())
			if err != nil {
				b.Fatal(err)
			}
			if len(m) != benchMany {
				b.Fatalf("GetMany returned %d of %d", len(m), benchMany)
			}
			sinkMap = m
			i++
		}
	})
	b.Run("single", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			for _, k := range batches[i%len(batches)] {
				v, err := lb.c.Get(ctx, k, SkipL1())
				if err != nil {
					b.Fatal(err)
				}
				sinkBytes = v
			}
			i++
		}
	})
}

// BenchmarkSet is a byte Set (encode, EVALSHA of the versioned write script, L1 store) against a
// raw SET ... PX of the same envelope bytes, single goroutine. For information: no target.
func BenchmarkSet(b *testing.B) {
	lb := newL2Bench(b)
	ctx := context.Background()
	n := len(lb.keys)
	vals := make([][]byte, n)
	rawKeys := make([]string, n)
	for i := range vals {
		vals[i] = benchValue(i, benchL2Value)
		rawKeys[i] = "raw:" + lb.rks[i]
	}
	b.Run("tiercache", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if err := lb.c.Set(ctx, lb.keys[i%n], vals[i%n]); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
	b.Run("redis", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if err := lb.rdb.Set(ctx, rawKeys[i%n], lb.raw[i%n], DefaultTTL).Err(); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
}

// BenchmarkPair measures the same pairs as the benchmarks above, interleaved within one
// benchmark by benchpair.Run: ours/base is the latency ratio (the inverse of the throughput ratio).
// It is the figure docs/BENCHMARKS.md reports; the separate benchmarks give absolute numbers and
// allocations.
func BenchmarkPair(b *testing.B) {
	ctx := context.Background()
	b.Run("L1Hit", func(b *testing.B) {
		lb := newL1Bench(b)
		n := len(lb.keys)
		typed := func(i int) error { u, err := lb.users.Get(ctx, lb.keys[i%n]); sinkUser = u; return err }
		bytesGet := func(i int) error { v, err := lb.c.Get(ctx, lb.keys[i%n]); sinkBytes = v; return err }
		ptr := func(i int) error { u, err := lb.ptrs.Get(ctx, lb.keys[i%n]); sinkPtr = u; return err }
		otterGet := func(i int) error {
			u, ok := lb.raw.GetIfPresent(lb.keys[i%n])
			if !ok {
				return fmt.Errorf("otter miss")
			}
			sinkUser = u
			return nil
		}
		otterPtr := func(i int) error {
			u, ok := lb.rawP.GetIfPresent(lb.keys[i%n])
			if !ok {
				return fmt.Errorf("otter miss")
			}
			sinkPtr = u
			return nil
		}
		// The harness floor: the loop and the key lookup both sides pay, with no cache call. Its
		// ns/op (ours-ns/op of floor-vs-otter) is what no cache can go below here.
		floor := func(i int) error { sinkStr = lb.keys[i%n]; return nil }
		for _, g := range []int{1, runtime.GOMAXPROCS(0)} {
			b.Run(fmt.Sprintf("g=%d/floor-vs-otter", g), func(b *testing.B) { benchpair.Run(b, g, 1000, floor, otterGet) })
			b.Run(fmt.Sprintf("g=%d/typed-vs-otter", g), func(b *testing.B) { benchpair.Run(b, g, 1000, typed, otterGet) })
			b.Run(fmt.Sprintf("g=%d/bytes-vs-otter", g), func(b *testing.B) { benchpair.Run(b, g, 1000, bytesGet, otterGet) })
			b.Run(fmt.Sprintf("g=%d/ptr-vs-otterptr", g), func(b *testing.B) { benchpair.Run(b, g, 1000, ptr, otterPtr) })
		}
	})
	b.Run("L2Hit", func(b *testing.B) {
		lb := newL2Bench(b)
		n := len(lb.keys)
		ours := func(i int) error { v, err := lb.c.Get(ctx, lb.keys[i%n], SkipL1()); sinkBytes = v; return err }
		base := func(i int) error { v, err := lb.rdb.Get(ctx, lb.rks[i%n]).Result(); sinkStr = v; return err }
		for _, g := range []int{1, 8, 64} {
			b.Run(fmt.Sprintf("g=%d", g), func(b *testing.B) { benchpair.Run(b, g, 20, ours, base) })
		}
	})
	b.Run("GetMany", func(b *testing.B) {
		lb := newL2Bench(b)
		batches := len(lb.keys) / benchMany
		single := func(i int) error {
			for _, k := range lb.keys[(i%batches)*benchMany : (i%batches+1)*benchMany] {
				if _, err := lb.c.Get(ctx, k, SkipL1()); err != nil {
					return err
				}
			}
			return nil
		}
		many := func(i int) error {
			m, err := lb.c.GetMany(ctx, lb.keys[(i%batches)*benchMany:(i%batches+1)*benchMany], SkipL1())
			if err == nil && len(m) != benchMany {
				err = fmt.Errorf("GetMany returned %d of %d", len(m), benchMany)
			}
			return err
		}
		// The same 100 keys' Redis keys, for one raw MGET of exactly the stored envelopes.
		rks := make([][]string, batches)
		for i := range rks {
			rks[i] = lb.rks[i*benchMany : (i+1)*benchMany]
		}
		mget := func(i int) error {
			vs, err := lb.rdb.MGet(ctx, rks[i%batches]...).Result()
			if err == nil && len(vs) != benchMany {
				err = fmt.Errorf("MGET returned %d of %d", len(vs), benchMany)
			}
			return err
		}
		// ours/base here is single/many: how many times faster GetMany is.
		b.Run("single-vs-many", func(b *testing.B) { benchpair.Run(b, 1, 2, single, many) })
		// GetMany against the raw command it sends: our per-key work (keys, decode, result map).
		b.Run("many-vs-mget", func(b *testing.B) { benchpair.Run(b, 1, 2, many, mget) })
	})
}
