package tiercache

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/tiercache/tiercache/internal/redistest"
)

func TestL1OnlyMode(t *testing.T) {
	t.Parallel()
	c := newCache(t, nil, Options{})
	ctx := context.Background()
	if err := c.Set(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	if v, err := c.Get(ctx, "k"); err != nil || string(v) != "v" {
		t.Fatalf("Get = %q, %v", v, err)
	}
	if err := c.SetMany(ctx, map[string][]byte{"a": []byte("1"), "b": []byte("2")}); err != nil {
		t.Fatal(err)
	}
	got, err := c.GetMany(ctx, []string{"a", "b", "zz"})
	if err != nil || len(got) != 2 {
		t.Fatalf("GetMany = %q, %v", got, err)
	}
	loads := 0
	load := func(context.Context, string) ([]byte, error) { loads++; return []byte("L"), nil }
	for range 3 {
		if v, err := c.GetOrLoad(ctx, "lazy", load); err != nil || string(v) != "L" {
			t.Fatalf("GetOrLoad = %q, %v", v, err)
		}
	}
	if loads != 1 {
		t.Fatalf("loader ran %d times, want 1 (L1 keeps the value)", loads)
	}
	if err := c.DeleteMany(ctx, []string{"a", "k"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(ctx, "k"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get after Delete err = %v", err)
	}
	h := c.Health(ctx)
	if h.State != StateL1Only {
		t.Fatalf("Health state = %q, want %q", h.State, StateL1Only)
	}
}

func TestL1OnlyEntriesLiveForTTL(t *testing.T) {
	t.Parallel()
	clk := newFakeClock()
	c := newCache(t, nil, Options{Clock: clk, TTL: time.Minute, L1TTL: time.Second})
	ctx := context.Background()
	if err := c.Set(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	clk.Advance(30 * time.Second) // past L1TTL: without Redis, TTL governs
	if _, ok := c.Peek("k"); !ok {
		t.Fatal("L1-only entry expired at L1TTL, want it to live for TTL")
	}
	clk.Advance(31 * time.Second)
	if _, ok := c.Peek("k"); ok {
		t.Fatal("L1-only entry outlived TTL")
	}
}

func TestTTLExpiryBothTiers(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	clk := newFakeClock()
	c := newCache(t, srv, Options{Clock: clk, TTL: time.Hour, L1TTL: 5 * time.Second, NoJitter: true})
	other := newCache(t, srv, Options{Clock: clk, NoJitter: true})
	ctx := context.Background()
	if err := c.Set(ctx, "k", []byte("v"), TTL(time.Minute)); err != nil {
		t.Fatal(err)
	}
	clk.Advance(4 * time.Second)
	if _, ok := c.Peek("k"); !ok {
		t.Fatal("L1 entry gone before L1TTL")
	}
	clk.Advance(2 * time.Second)
	if _, ok := c.Peek("k"); ok {
		t.Fatal("L1 entry served past L1TTL")
	}
	if v, err := c.Get(ctx, "k"); err != nil || string(v) != "v" {
		t.Fatalf("Get after L1 expiry = %q, %v; want a refill from L2", v, err)
	}
	// The envelope's logical expiry ends the entry for every instance even while Redis keeps it.
	clk.Advance(time.Minute)
	if v, err := other.Get(ctx, "k"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get past the logical expiry = %q, %v; want ErrNotFound", v, err)
	}
	// An L1 entry never outlives its logical expiry either.
	if err := c.Set(ctx, "short", []byte("v"), TTL(2*time.Second)); err != nil {
		t.Fatal(err)
	}
	clk.Advance(3 * time.Second)
	if _, ok := c.Peek("short"); ok {
		t.Fatal("L1 served an entry past its TTL, which was shorter than L1TTL")
	}
}

func TestRedisExpiresEntries(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	c := newCache(t, srv, Options{NoJitter: true, FailSafeMaxAge: -1})
	ctx := context.Background()
	if err := c.Set(ctx, "k", []byte("v"), TTL(50*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if ttl := c.rdb.PTTL(ctx, c.redisKey("k")).Val(); ttl <= 0 || ttl > 50*time.Millisecond {
		t.Fatalf("PTTL = %v, want (0, 50ms]", ttl)
	}
	waitFor(t, "Redis to expire the entry", 5*time.Second, func() bool {
		return c.rdb.Exists(ctx, c.redisKey("k")).Val() == 0
	})
	// Tombstones expire after TombstoneTTL.
	if err := c.Delete(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	if ttl := c.rdb.PTTL(ctx, c.redisKey("k")).Val(); ttl <= 0 || ttl > DefaultTombstoneTTL {
		t.Fatalf("tombstone PTTL = %v, want (0, %v]", ttl, DefaultTombstoneTTL)
	}
}

func TestJitterShortensTTL(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	c := newCache(t, srv, Options{Jitter: 0.5, FailSafeMaxAge: -1})
	ctx := context.Background()
	seen := map[time.Duration]bool{}
	for i := range 20 {
		k := fmt.Sprint(i)
		if err := c.Set(ctx, k, []byte("v"), TTL(time.Hour)); err != nil {
			t.Fatal(err)
		}
		ttl := c.rdb.PTTL(ctx, c.redisKey(k)).Val()
		if ttl > time.Hour || ttl < 30*time.Minute-time.Second {
			t.Fatalf("PTTL %v outside [30m, 1h]", ttl)
		}
		seen[ttl.Truncate(time.Second)] = true
	}
	if len(seen) < 2 {
		t.Fatalf("20 jittered TTLs took %d distinct values", len(seen))
	}
}

func TestL1ByteBound(t *testing.T) {
	t.Parallel()
	const bound = 1 << 20
	c := newCache(t, nil, Options{L1MaxBytes: bound})
	ctx := context.Background()
	val := make([]byte, 1000)
	for i := range 10_000 { // ~10 MiB written into a 1 MiB L1
		if err := c.Set(ctx, fmt.Sprintf("key-%d", i), val); err != nil {
			t.Fatal(err)
		}
	}
	c.l1.CleanUp()
	s := c.Stats()
	if s.L1Bytes > bound {
		t.Fatalf("L1Bytes = %d over the bound %d", s.L1Bytes, bound)
	}
	if s.Evictions == 0 || s.L1Entries == 0 {
		t.Fatalf("Evictions = %d, L1Entries = %d; want evictions and a non-empty L1", s.Evictions, s.L1Entries)
	}
}

func TestL1EntryBound(t *testing.T) {
	t.Parallel()
	c := newCache(t, nil, Options{L1MaxEntries: 100})
	ctx := context.Background()
	for i := range 1000 {
		if err := c.Set(ctx, fmt.Sprint(i), []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	c.l1.CleanUp()
	if n := c.Stats().L1Entries; n > 100 {
		t.Fatalf("L1Entries = %d over L1MaxEntries 100", n)
	}
}

// TestL1HeapWithinBound fills a 64 MiB L1 well past full and checks the Go heap stays within
// 1.3x the bound, which is what internal/l1's entryOverhead is calibrated for.
func TestL1HeapWithinBound(t *testing.T) {
	if testing.Short() || raceEnabled {
		t.Skip("fills 64 MiB; heap figures are only meaningful without -race (scripts/test runs it so)")
	}
	const bound = 64 << 20
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	c, err := New(Options{L1MaxBytes: bound})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	for _, size := range []int{100, 1000, 4000} {
		for i := range 3 * bound / (size + 32) {
			if err := c.Set(ctx, fmt.Sprintf("k%d-%d", size, i), make([]byte, size)); err != nil {
				t.Fatal(err)
			}
		}
		c.l1.CleanUp()
		runtime.GC()
		var after runtime.MemStats
		runtime.ReadMemStats(&after)
		heap := after.HeapAlloc - before.HeapAlloc
		ratio := float64(heap) / bound
		t.Logf("values of %d bytes: L1 holds %d entries, %d weighted bytes; heap %.1f MiB = %.2fx the bound",
			size, c.Stats().L1Entries, c.Stats().L1Bytes, float64(heap)/(1<<20), ratio)
		if ratio > 1.3 {
			t.Errorf("values of %d bytes: heap is %.2fx the L1 bound, want <= 1.3x", size, ratio)
		}
	}
}

func TestL1HitDoesNotAllocate(t *testing.T) {
	c := newCache(t, nil, Options{})
	ctx := context.Background()
	type user struct {
		ID   int
		Name string
	}
	users := Typed(c, JSON[user]())
	if err := users.Set(ctx, "u", user{1, "ann"}); err != nil {
		t.Fatal(err)
	}
	if err := c.Set(ctx, "b", []byte("bytes")); err != nil {
		t.Fatal(err)
	}
	if n := testing.AllocsPerRun(1000, func() { _, _ = users.Get(ctx, "u") }); n != 0 {
		t.Errorf("typed L1 hit allocates %v times, want 0", n)
	}
	if n := testing.AllocsPerRun(1000, func() { _, _ = c.Get(ctx, "b") }); n != 0 {
		t.Errorf("byte L1 hit allocates %v times, want 0", n)
	}
	if n := testing.AllocsPerRun(1000, func() {
		_, _ = users.GetOrLoad(ctx, "u", func(context.Context, string) (user, error) { return user{}, nil })
	}); n != 0 {
		t.Errorf("GetOrLoad L1 hit allocates %v times, want 0", n)
	}
}

func TestSetKeepsItsOwnCopy(t *testing.T) {
	t.Parallel()
	c := newCache(t, nil, Options{})
	ctx := context.Background()
	b := []byte("original")
	if err := c.Set(ctx, "k", b); err != nil {
		t.Fatal(err)
	}
	copy(b, "mutated!")
	if v, _ := c.Get(ctx, "k"); string(v) != "original" {
		t.Fatalf("Get after the caller reused its slice = %q, want original", v)
	}
}

func TestCloseIsIdempotentAndFinal(t *testing.T) {
	srv := redistest.Start(t)
	before := runtime.NumGoroutine()
	c, err := New(Options{Redis: srv.Client(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := c.Set(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("first Close = %v", err)
	}
	if err := c.Close(); !errors.Is(err, ErrClosed) {
		t.Fatalf("second Close = %v, want ErrClosed", err)
	}
	if _, err := c.Get(ctx, "k"); !errors.Is(err, ErrClosed) {
		t.Fatalf("Get after Close = %v, want ErrClosed", err)
	}
	if err := c.Set(ctx, "k", nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("Set after Close = %v, want ErrClosed", err)
	}
	if _, err := c.GetMany(ctx, []string{"k"}); !errors.Is(err, ErrClosed) {
		t.Fatalf("GetMany after Close = %v, want ErrClosed", err)
	}
	waitFor(t, "goroutines to return to the baseline", 5*time.Second, func() bool {
		return runtime.NumGoroutine() <= before
	})
}

func TestNewValidates(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		o    Options
		want string
	}{
		{"namespace with brace", Options{Namespace: "a{b"}, "Namespace"},
		{"L1TTL over TTL", Options{TTL: time.Second, L1TTL: time.Minute}, "L1TTL"},
		{"negative TTL", Options{TTL: -time.Second}, "TTL"},
		{"jitter out of range", Options{Jitter: 0.9}, "Jitter"},
		{"negative entries", Options{L1MaxEntries: -1}, "L1MaxEntries"},
		{"unknown compression", Options{Compression: 9}, "Compression"},
		{"negative limit", Options{MaxValueLen: -1}, "MaxValueLen"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.o)
			if err == nil || !strings.HasPrefix(err.Error(), "tiercache: ") || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New(%+v) err = %v, want a tiercache: error naming %s", tc.o, err, tc.want)
			}
		})
	}
}
