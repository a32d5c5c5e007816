package tiercache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/internal/wire"
)

func TestSetGetAcrossInstances(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	a := newCache(t, srv, Options{})
	b := newCache(t, srv, Options{})
	ctx := context.Background()

	if _, err := a.Get(ctx, "k"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get(missing) err = %v, want ErrNotFound", err)
	}
	if err := a.Set(ctx, "k", []byte("v1")); err != nil {
		t.Fatalf("Set: %v", err)
	}
	if got, ok := a.Peek("k"); !ok || string(got) != "v1" {
		t.Fatalf("Peek after Set = %q, %v; want v1 in L1", got, ok)
	}
	got, err := b.Get(ctx, "k")
	if err != nil || string(got) != "v1" {
		t.Fatalf("b.Get = %q, %v; want v1 from L2", got, err)
	}
	if s := b.Stats(); s.L2Hits != 1 || s.L1Misses != 1 {
		t.Errorf("b stats L2Hits=%d L1Misses=%d, want 1, 1", s.L2Hits, s.L1Misses)
	}
	if _, ok := b.Peek("k"); !ok {
		t.Errorf("b.Peek after L2 hit: not in L1")
	}
	if err := a.Delete(ctx, "k"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if _, err := a.Get(ctx, "k"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get after Delete err = %v, want ErrNotFound", err)
	}
	if _, err := b.Get(ctx, "k", SkipL1()); !errors.Is(err, ErrNotFound) {
		t.Fatalf("b.Get(SkipL1) after Delete err = %v, want ErrNotFound (tombstone)", err)
	}
}

func TestReadYourWrites(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	c := newCache(t, srv, Options{})
	other := newCache(t, srv, Options{})
	ctx := context.Background()
	// Readers keep filling L1 from L2 while the writer writes: after each acknowledged Set the
	// writer must never see an older value, whatever fills were in flight.
	var stop atomic.Bool
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				_, _ = c.Get(ctx, "ryw", SkipL1())
				_, _ = c.GetMany(ctx, []string{"ryw", "x"})
				_, _ = c.Get(ctx, "ryw")
			}
		}()
	}
	defer func() { stop.Store(true); wg.Wait() }()
	for i := range 500 {
		want := fmt.Sprintf("v%d", i)
		if i%2 == 0 {
			if err := c.Set(ctx, "ryw", []byte(want)); err != nil {
				t.Fatalf("Set: %v", err)
			}
		} else {
			if err := other.Set(ctx, "ryw", []byte(want)); err != nil {
				t.Fatalf("Set: %v", err)
			}
			if err := c.Set(ctx, "ryw", []byte(want)); err != nil {
				t.Fatalf("Set: %v", err)
			}
		}
		got, err := c.Get(ctx, "ryw")
		if err != nil || string(got) != want {
			t.Fatalf("round %d: Get after Set = %q, %v; want %q", i, got, err, want)
		}
		if i%10 == 0 {
			if err := c.Delete(ctx, "ryw"); err != nil {
				t.Fatalf("Delete: %v", err)
			}
			if got, err := c.Get(ctx, "ryw"); !errors.Is(err, ErrNotFound) {
				t.Fatalf("round %d: Get after Delete = %q, %v; want ErrNotFound", i, got, err)
			}
		}
	}
}

func TestCallerVersionsNeverRegress(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	c := newCache(t, srv, Options{})
	ctx := context.Background()
	if err := c.Set(ctx, "k", []byte("v5"), Version(5)); err != nil {
		t.Fatal(err)
	}
	err := c.Set(ctx, "k", []byte("v3"), Version(3))
	if !errors.Is(err, ErrStaleVersion) || !strings.Contains(err.Error(), "version 5") {
		t.Fatalf("Set(older) err = %v, want ErrStaleVersion naming version 5", err)
	}
	if err := c.Set(ctx, "k", []byte("v5"), Version(5)); err != nil {
		t.Fatalf("repeated Set with the same version (a retry) err = %v, want nil", err)
	}
	if got, err := c.Get(ctx, "k", SkipL1()); err != nil || string(got) != "v5" {
		t.Fatalf("Get = %q, %v; want v5", got, err)
	}
	// A caller version above 2^53 must compare exactly (Lua numbers are doubles).
	big := uint64(1)<<60 + 1
	if err := c.Set(ctx, "k", []byte("big"), Version(big)); err != nil {
		t.Fatal(err)
	}
	if err := c.Set(ctx, "k", []byte("big-1"), Version(big-1)); !errors.Is(err, ErrStaleVersion) {
		t.Fatalf("Set(2^60) err = %v, want ErrStaleVersion", err)
	}
	if v := storedVersion(t, srv, c, "k"); v != big {
		t.Fatalf("stored version = %d, want %d", v, big)
	}
}

// storedVersion reads the version of key's envelope straight from Redis (0 when absent).
func storedVersion(tb testing.TB, srv *redistest.Server, c *Cache, key string) uint64 {
	tb.Helper()
	raw, err := c.rdb.Get(context.Background(), c.redisKey(key)).Bytes()
	if err != nil {
		return 0
	}
	v, ok := wire.Version(raw)
	if !ok {
		tb.Fatalf("stored bytes of %q are not an envelope", key)
	}
	return v
}

func TestAutomaticVersionsSurviveDataLoss(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	c := newCache(t, srv, Options{})
	ctx := context.Background()
	var last uint64
	for i := range 50 {
		if err := c.Set(ctx, "k", []byte("x")); err != nil {
			t.Fatal(err)
		}
		v := storedVersion(t, srv, c, "k")
		if v <= last {
			t.Fatalf("write %d: version %d not above previous %d", i, v, last)
		}
		last = v
		if i == 25 {
			srv.Kill(t)
			srv.Restart(t) // the data is gone; the clock part keeps versions growing
			waitFor(t, "redis back", 10*time.Second, func() bool { return c.rdb.Ping(ctx).Err() == nil })
		}
	}
}

// versioned is a loaded value that carries a database version.
type versioned struct {
	V    uint64 `json:"v"`
	Body string `json:"body"`
}

func (v versioned) CacheVersion() uint64 { return v.V }

func TestConcurrentWritersAndFillersNeverRegress(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	ctx := context.Background()
	const keys, rounds = 8, 300
	// This test is about versions, not time budgets: with the default 50 ms, a loaded machine
	// (both cores busy) made Gets fail with ErrUnavailable.
	o := Options{L2Timeout: slack(time.Second)}
	insts := []*TypedCache[versioned]{
		Typed(newCache(t, srv, o), JSON[versioned]()),
		Typed(newCache(t, srv, o), JSON[versioned]()),
		Typed(newCache(t, srv, o), JSON[versioned]()),
	}
	var highest [keys]atomic.Uint64 // highest acknowledged caller version per key
	var wg sync.WaitGroup
	for w := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 7))
			tc := insts[w%len(insts)]
			for range rounds {
				k := r.IntN(keys)
				key := fmt.Sprintf("k%d", k)
				v := uint64(r.IntN(1000) + 1)
				switch r.IntN(3) {
				case 0: // a write with a version that may be older than what is stored
					err := tc.Set(ctx, key, versioned{V: v, Body: "w"}, Version(v))
					if err == nil {
						for {
							h := highest[k].Load()
							if v <= h || highest[k].CompareAndSwap(h, v) {
								break
							}
						}
					} else if !errors.Is(err, ErrStaleVersion) {
						t.Errorf("Set: %v", err)
						return
					}
				case 1: // a fill whose loader saw some version of the row
					tc.c.l1.Evict(key)
					_, err := tc.GetOrLoad(ctx, key, func(context.Context, string) (versioned, error) {
						return versioned{V: v, Body: "fill"}, nil
					}, SkipL1())
					if err != nil {
						t.Errorf("GetOrLoad: %v", err)
						return
					}
				default:
					if _, err := tc.Get(ctx, key); err != nil && !errors.Is(err, ErrNotFound) {
						t.Errorf("Get: %v", err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	for k := range keys {
		key := fmt.Sprintf("k%d", k)
		if got, want := storedVersion(t, srv, insts[0].c, key), highest[k].Load(); got < want {
			t.Errorf("%s: Redis holds version %d, below the highest acknowledged %d", key, got, want)
		}
	}
}

func TestTombstoneRefusesLateFill(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	ctx := context.Background()
	a := newCache(t, srv, Options{})
	b := newCache(t, srv, Options{})
	for _, tc := range []struct {
		name   string
		opts   []Option
		loaded []byte
	}{
		{name: "automatic version", loaded: []byte("old")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			loading, release := make(chan struct{}), make(chan struct{})
			done := make(chan error, 1)
			go func() {
				v, err := a.GetOrLoad(ctx, "k", func(context.Context, string) ([]byte, error) {
					close(loading)
					<-release // the loader read the old row before the delete below
					return tc.loaded, nil
				})
				if err == nil && !bytes.Equal(v, tc.loaded) {
					err = fmt.Errorf("GetOrLoad returned %q", v)
				}
				done <- err
			}()
			<-loading
			if err := b.Set(ctx, "k", []byte("new")); err != nil {
				t.Fatal(err)
			}
			if err := b.Delete(ctx, "k"); err != nil {
				t.Fatal(err)
			}
			close(release)
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			if got, err := b.Get(ctx, "k", SkipL1()); !errors.Is(err, ErrNotFound) {
				t.Fatalf("L2 after late fill = %q, %v; want ErrNotFound (fill refused by tombstone)", got, err)
			}
			if got, ok := a.Peek("k"); ok {
				t.Fatalf("late fill landed in L1: %q", got)
			}
			if s := a.Stats(); s.StaleRefused != 1 {
				t.Errorf("StaleRefused = %d, want 1", s.StaleRefused)
			}
		})
	}
	// A fill carrying a database version older than the delete's is refused too.
	tv := Typed(a, JSON[versioned]())
	if err := tv.Set(ctx, "row", versioned{V: 9}, Version(9)); err != nil {
		t.Fatal(err)
	}
	if err := tv.Delete(ctx, "row", Version(10)); err != nil {
		t.Fatal(err)
	}
	got, err := tv.GetOrLoad(ctx, "row", func(context.Context, string) (versioned, error) { return versioned{V: 9, Body: "late"}, nil })
	if err != nil || got.V != 9 {
		t.Fatalf("GetOrLoad = %+v, %v", got, err)
	}
	if v := storedVersion(t, srv, a, "row"); v != 10 {
		t.Fatalf("stored version after late versioned fill = %d, want the tombstone's 10", v)
	}
}

func TestGetOrLoadSingleflight(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	c := newCache(t, srv, Options{})
	tc := Typed(c, String())
	ctx := context.Background()
	var calls, started atomic.Int64
	const n = 100
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			started.Add(1)
			v, err := tc.GetOrLoad(ctx, "hot", func(context.Context, string) (string, error) {
				calls.Add(1)
				// Hold the flight open until every caller has arrived.
				waitFor(t, "all callers", 10*time.Second, func() bool { return started.Load() == n })
				return "loaded", nil
			})
			if err == nil && v != "loaded" {
				err = fmt.Errorf("got %q", v)
			}
			if err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if got := calls.Load(); got != 1 {
		t.Fatalf("loader ran %d times for %d concurrent callers, want 1", got, n)
	}
}

func TestGetOrLoadErrors(t *testing.T) {
	t.Parallel()
	c := newCache(t, nil, Options{})
	ctx := context.Background()
	boom := errors.New("boom")
	if _, err := c.GetOrLoad(ctx, "k", func(context.Context, string) ([]byte, error) { return nil, boom }); !errors.Is(err, boom) {
		t.Fatalf("err = %v, want the loader's error unchanged", err)
	}
	if _, err := c.GetOrLoad(ctx, "k", func(context.Context, string) ([]byte, error) { return nil, ErrNotFound }); !errors.Is(err, ErrNotFound) {
		t.Fatalf("err = %v, want ErrNotFound", err)
	}
	if s := c.Stats(); s.LoadErrors != 2 {
		t.Errorf("LoadErrors = %d, want 2", s.LoadErrors)
	}
}

func TestGetOrLoadManyRoundTrips(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	hook := &countingHook{}
	rdb := srv.Client(t)
	rdb.AddHook(hook)
	c := newCache(t, srv, Options{Redis: rdb})
	other := newCache(t, srv, Options{})
	ctx := context.Background()
	for i := range 3 { // in L1 (and L2)
		if err := c.Set(ctx, fmt.Sprintf("l1-%d", i), []byte("a")); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 3 { // in L2 only
		if err := other.Set(ctx, fmt.Sprintf("l2-%d", i), []byte("b")); err != nil {
			t.Fatal(err)
		}
	}
	keys := []string{"l1-0", "l1-1", "l1-2", "l2-0", "l2-1", "l2-2", "m0", "m1", "m2", "m3", "m0"}
	hook.reset()
	var loaderCalls int
	var asked []string
	got, err := c.GetOrLoadMany(ctx, keys, func(_ context.Context, miss []string) (map[string][]byte, error) {
		loaderCalls++
		asked = miss
		out := map[string][]byte{}
		for _, k := range miss {
			out[k] = []byte("loaded-" + k)
		}
		return out, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 10 || string(got["m2"]) != "loaded-m2" || string(got["l2-1"]) != "b" || string(got["l1-0"]) != "a" {
		t.Fatalf("GetOrLoadMany = %q", got)
	}
	if loaderCalls != 1 || len(asked) != 4 {
		t.Fatalf("loader called %d times with %q; want once with the 4 missing keys", loaderCalls, asked)
	}
	if n := hook.count("mget"); n != 1 || hook.cmds.Load() != 1 {
		t.Errorf("reads: %d MGET, %d single commands; want exactly one MGET", n, hook.cmds.Load())
	}
	if p := hook.pipelines.Load(); p != 1 {
		t.Errorf("fill pipelines = %d, want 1", p)
	}
	// Now everything is cached: no round trip at all.
	hook.reset()
	if _, err := c.GetOrLoadMany(ctx, keys, func(context.Context, []string) (map[string][]byte, error) {
		t.Error("loader called with everything cached")
		return nil, nil
	}); err != nil {
		t.Fatal(err)
	}
	if n := hook.cmds.Load() + hook.pipelines.Load(); n != 0 {
		t.Errorf("%d round trips with everything in L1, want 0", n)
	}
	// And the loaded values reached L2 for the other instance.
	if v, err := other.Get(ctx, "m3"); err != nil || string(v) != "loaded-m3" {
		t.Errorf("other.Get(m3) = %q, %v", v, err)
	}
}

func TestManyOperations(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	c := newCache(t, srv, Options{})
	other := newCache(t, srv, Options{})
	ctx := context.Background()
	items := map[string][]byte{}
	for i := range 50 {
		items[fmt.Sprintf("k%d", i)] = []byte(fmt.Sprint(i))
	}
	if err := c.SetMany(ctx, items); err != nil {
		t.Fatal(err)
	}
	keys := []string{"k0", "k49", "nope"}
	got, err := other.GetMany(ctx, keys)
	if err != nil || len(got) != 2 || string(got["k49"]) != "49" {
		t.Fatalf("GetMany = %q, %v", got, err)
	}
	if err := c.DeleteMany(ctx, []string{"k0", "k49"}); err != nil {
		t.Fatal(err)
	}
	got, err = other.GetMany(ctx, keys, SkipL1())
	if err != nil || len(got) != 0 {
		t.Fatalf("GetMany after DeleteMany = %q, %v; want none", got, err)
	}
	// One bad item fails the whole call before anything is written.
	bad := map[string][]byte{"fine": []byte("x"), strings.Repeat("k", 600): []byte("y")}
	if err := c.SetMany(ctx, bad); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("SetMany with an oversized key err = %v, want ErrTooLarge", err)
	}
	if _, err := other.Get(ctx, "fine"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("SetMany wrote part of a failed batch: Get(fine) err = %v", err)
	}
}

func TestLimits(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	c := newCache(t, srv, Options{MaxKeyLen: 16, MaxValueLen: 1024, CompressionThreshold: -1 + 2, Compression: CompressOff})
	ctx := context.Background()
	for _, tc := range []struct {
		name, key string
		val       []byte
		want      error
		limit     string
	}{
		{name: "empty key", key: "", val: []byte("x"), want: ErrInvalidKey},
		{name: "long key", key: strings.Repeat("k", 17), val: []byte("x"), want: ErrTooLarge, limit: "MaxKeyLen 16"},
		{name: "large value", key: "big", val: make([]byte, 2000), want: ErrTooLarge, limit: "MaxValueLen 1024"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := c.Set(ctx, tc.key, tc.val)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.limit) {
				t.Fatalf("Set err = %v, want %v naming %q", err, tc.want, tc.limit)
			}
			if n := c.rdb.DBSize(ctx).Val(); n != 0 {
				t.Fatalf("a refused write left %d keys in Redis", n)
			}
			if _, ok := c.Peek(tc.key); ok {
				t.Fatal("a refused write reached L1")
			}
		})
	}
}

func TestCorruptEntryIsAMiss(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	c := newCache(t, srv, Options{})
	ctx := context.Background()
	for i, raw := range []string{"garbage", "\xc1\x00", "\xc1\x3f" + strings.Repeat("\x00", 40)} {
		key := fmt.Sprintf("bad%d", i)
		if err := c.rdb.Set(ctx, c.redisKey(key), raw, 0).Err(); err != nil {
			t.Fatal(err)
		}
		if v, err := c.Get(ctx, key); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Get(%q over %q) = %q, %v; want ErrNotFound", key, raw, v, err)
		}
		if n := c.rdb.Exists(ctx, c.redisKey(key)).Val(); n != 0 {
			t.Fatalf("corrupt entry %q was not deleted", key)
		}
	}
	if s := c.Stats(); s.Corrupt != 3 {
		t.Fatalf("Corrupt = %d, want 3", s.Corrupt)
	}
	// A corrupt entry does not stop a load from filling the key.
	if err := c.rdb.Set(ctx, c.redisKey("k"), "junk", 0).Err(); err != nil {
		t.Fatal(err)
	}
	v, err := c.GetOrLoad(ctx, "k", func(context.Context, string) ([]byte, error) { return []byte("good"), nil })
	if err != nil || string(v) != "good" {
		t.Fatalf("GetOrLoad over corrupt = %q, %v", v, err)
	}
	if v, err := c.Get(ctx, "k", SkipL1()); err != nil || string(v) != "good" {
		t.Fatalf("L2 after fill over corrupt = %q, %v", v, err)
	}
}

func TestCodecMismatchIsAMiss(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	c := newCache(t, srv, Options{})
	ctx := context.Background()
	strs := Typed(c, String())
	if err := strs.Set(ctx, "k", "hello"); err != nil {
		t.Fatal(err)
	}
	ints := Typed(newCache(t, srv, Options{}), JSON[int]())
	if v, err := ints.Get(ctx, "k"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get with another codec = %v, %v; want ErrNotFound", v, err)
	}
}
