package l1

import (
	"fmt"
	"math"
	"sync/atomic"
	"testing"
	"time"
)

// fakeClock is a Clock that moves only when told.
type fakeClock struct{ ns atomic.Int64 }

func newFakeClock() *fakeClock {
	f := &fakeClock{}
	f.ns.Store(time.Unix(1e9, 0).UnixNano())
	return f
}

func (f *fakeClock) Now() time.Time          { return time.Unix(0, f.ns.Load()) }
func (f *fakeClock) Advance(d time.Duration) { f.ns.Add(int64(d)) }

// entry is an hour-long entry of val at version.
func entry(val string, version uint64) Entry {
	return Entry{Val: val, Version: version, Life: time.Hour, Size: len(val)}
}

// version returns the version of key's entry, if L1 holds one.
func (c *Cache) version(key string) (uint64, bool) {
	e, ok := c.Get(key)
	return e.Version, ok
}

// newCache returns a Cache of 1 MiB (no count bound unless cfg says) that is closed with the test.
func newCache(tb testing.TB, cfg Config) *Cache {
	tb.Helper()
	if cfg.MaxBytes == 0 {
		cfg.MaxBytes = 1 << 20
	}
	c, err := New(cfg)
	if err != nil {
		tb.Fatalf("New(%+v) = %v", cfg, err)
	}
	tb.Cleanup(c.Close)
	return c
}

// TestTicket drives the fill race's rules: what happens between a ticket and its landing decides
// whether the value enters L1, and whether what L1 held stays.
func TestTicket(t *testing.T) {
	t.Parallel()
	const key = "k"
	tests := []struct {
		name    string
		held    uint64         // version in L1 before the ticket is taken, 0 for none
		between func(c *Cache) // what happens after the ticket and before the landing
		land    uint64         // version that lands
		put     bool           // landed by Put (a local write) rather than Land (a read)
		want    uint64         // version L1 holds afterwards, 0 for none
	}{
		{name: "nothing in between", land: 5, want: 5},
		{name: "local evict refuses", between: func(c *Cache) { c.Evict(key) }, land: 5},
		{name: "local write refuses", between: func(c *Cache) { c.Put(key, c.Ticket(key), entry("w", 9)) }, held: 3, land: 5, want: 9},
		{name: "refused landing drops older entry", held: 3, between: func(c *Cache) { c.Evict("other"); c.Flush(func(string) bool { return false }) }, land: 5},
		{name: "flush refuses", between: func(c *Cache) { c.Flush(nil) }, land: 5},
		{name: "filtered flush refuses every ticket", between: func(c *Cache) { c.Flush(func(k string) bool { return k == "other" }) }, land: 5},
		{name: "announcement refuses older read", between: func(c *Cache) { c.Announce(key, 10) }, land: 5},
		{name: "announcement drops older entry", held: 3, between: func(c *Cache) { c.Announce(key, 10) }, land: 5},
		{name: "announcement admits read at its version", between: func(c *Cache) { c.Announce(key, 10) }, land: 10, want: 10},
		{name: "announcement admits newer read", between: func(c *Cache) { c.Announce(key, 10) }, land: 11, want: 11},
		{name: "announcement keeps newer entry", held: 12, between: func(c *Cache) { c.Announce(key, 10) }, land: 11, want: 12},
		{name: "any-version announcement refuses all", between: func(c *Cache) { c.Announce(key, math.MaxUint64) }, land: math.MaxUint64 - 1},
		{name: "newer entry kept", held: 7, land: 5, want: 7},
		{name: "newer entry kept by put", held: 7, land: 5, put: true, want: 7},
		{name: "put replaces older entry", held: 3, land: 5, put: true, want: 5},
		{name: "put after another local write refuses", held: 3, between: func(c *Cache) { c.Put(key, c.Ticket(key), entry("w", 4)) }, land: 5, put: true},
		{name: "put after announcement of newer refuses", between: func(c *Cache) { c.Announce(key, 10) }, land: 5, put: true},
		{name: "put after announcement of older lands", between: func(c *Cache) { c.Announce(key, 4) }, land: 5, put: true, want: 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := newCache(t, Config{})
			if tt.held != 0 {
				c.Land(key, c.Ticket(key), entry("held", tt.held))
				if v, ok := c.version(key); !ok || v != tt.held {
					t.Fatalf("setup: Get(%q) = version %d, %v; want %d", key, v, ok, tt.held)
				}
			}
			tk := c.Ticket(key)
			if tt.between != nil {
				tt.between(c)
			}
			if tt.put {
				c.Put(key, tk, entry("new", tt.land))
			} else {
				c.Land(key, tk, entry("new", tt.land))
			}
			v, ok := c.version(key)
			if tt.want == 0 && ok {
				t.Errorf("Get(%q) = version %d, want a miss", key, v)
			}
			if tt.want != 0 && (!ok || v != tt.want) {
				t.Errorf("Get(%q) = version %d, %v; want version %d", key, v, ok, tt.want)
			}
		})
	}
}

// TestAnyVersionDoesNotStick: an announcement for any version refuses the tickets of its time
// only; a later announcement of an older version than a reader read does not refuse it.
// TestZeroTicketRefused: the zero Ticket (a read that skips L1) never lands, and drops an older
// entry as any refused landing does.
func TestZeroTicketRefused(t *testing.T) {
	t.Parallel()
	c := newCache(t, Config{})
	c.Land("k", c.Ticket("k"), entry("old", 1))
	c.Land("k", Ticket{}, entry("new", 2))
	if v, ok := c.version("k"); ok {
		t.Errorf("after a landing with the zero Ticket L1 holds version %d, want nothing", v)
	}
}

func TestAnyVersionDoesNotStick(t *testing.T) {
	t.Parallel()
	c := newCache(t, Config{})
	c.Announce("k", math.MaxUint64)
	tk := c.Ticket("k")
	c.Announce("k", 5)
	c.Land("k", tk, entry("v", 7))
	if v, ok := c.version("k"); !ok || v != 7 {
		t.Errorf("Get(k) = version %d, %v; want 7 (read above the announced version 5)", v, ok)
	}
}

func TestTag(t *testing.T) {
	t.Parallel()
	c := newCache(t, Config{})
	a, b := c.Ticket("k").Tag("k"), c.Ticket("k").Tag("k")
	if a != b {
		t.Fatalf("Tag of two tickets with nothing between = %q, %q; want equal", a, b)
	}
	for _, move := range []func(){
		func() { c.Evict("k") },
		func() { c.Put("k", c.Ticket("k"), entry("v", 1)) },
		func() { c.Announce("k", 3) },
		func() { c.Flush(nil) },
	} {
		move()
		if b = c.Ticket("k").Tag("k"); a == b {
			t.Fatalf("Tag after the stripe moved = %q, same as before", b)
		}
		a = b
	}
}

// TestStorageOff: with MaxBytes < 0 nothing is stored, yet tickets are refused as with storage.
func TestStorageOff(t *testing.T) {
	t.Parallel()
	c := newCache(t, Config{MaxBytes: -1})
	tk := c.Ticket("k")
	c.Land("k", tk, entry("v", 1))
	if _, ok := c.Get("k"); ok || c.Len() != 0 || c.Weight() != 0 {
		t.Fatalf("storage off: Get hit or Len %d, Weight %d; want a miss and 0, 0", c.Len(), c.Weight())
	}
	before := tk.Tag("k")
	c.Evict("k")
	if after := c.Ticket("k").Tag("k"); after == before {
		t.Errorf("storage off: Tag after Evict = %q, unchanged; want the counters to move", after)
	}
	c.Put("k", c.Ticket("k"), entry("v", 2))
	c.Announce("k", 3)
	c.Flush(nil)
	c.CleanUp()
}

func TestValue(t *testing.T) { // not parallel: AllocsPerRun
	c := newCache(t, Config{})
	c.Land("k", c.Ticket("k"), entry("v", 1))
	if v, ok := Value[string](c, "k"); !ok || v != "v" {
		t.Errorf("Value[string](k) = %q, %v; want v, true", v, ok)
	}
	if v, ok := Value[int](c, "k"); ok {
		t.Errorf("Value[int](k) = %d, true; want a miss (stored as a string)", v)
	}
	if allocs := testing.AllocsPerRun(100, func() { Value[string](c, "k") }); allocs != 0 {
		t.Errorf("Value allocates %v times per hit, want 0", allocs)
	}
}

func TestExpiry(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	c := newCache(t, Config{Clock: clock})
	c.Land("k", c.Ticket("k"), Entry{Val: "v", Version: 1, Life: time.Second})
	c.Land("zero", c.Ticket("zero"), Entry{Val: "v", Version: 1})
	if _, ok := c.Get("zero"); ok {
		t.Error("Get of an entry landed with Life 0 hit, want nothing stored")
	}
	clock.Advance(999 * time.Millisecond)
	if _, ok := c.Get("k"); !ok {
		t.Fatal("Get before Life ran out missed")
	}
	if _, ok := c.Val("k"); !ok {
		t.Fatal("Val before Life ran out missed")
	}
	clock.Advance(time.Millisecond)
	if _, ok := c.Get("k"); ok {
		t.Error("Get once Life ran out hit, want a miss")
	}
	if _, ok := c.Val("k"); ok {
		t.Error("Val once Life ran out hit, want a miss")
	}
	if _, ok := c.Held("k"); ok {
		t.Error("Held an entry with no Keep past its Life, want nothing kept")
	}
}

// TestKeep: an entry past its Life is never served but is held, with its version, until its
// Keep ends; landing it again revalidates it; Sweep drops it once Keep has ended.
func TestKeep(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	c := newCache(t, Config{Clock: clock})
	c.Land("k", c.Ticket("k"), Entry{Val: "v", Version: 7, Life: time.Second, Keep: time.Minute, Size: 1})
	clock.Advance(2 * time.Second)
	if _, ok := c.Val("k"); ok {
		t.Fatal("Val served an entry past its Life")
	}
	e, ok := c.Held("k")
	if !ok || e.Version != 7 || e.Val != "v" || e.Life > 0 || e.Keep <= 0 {
		t.Fatalf("Held(k) = %+v, %v; want version 7, value v, Life <= 0 < Keep", e, ok)
	}
	tk := c.Ticket("k")
	c.Land("k", tk, Entry{Val: e.Val, Version: e.Version, Life: time.Second, Keep: e.Keep, Size: e.Size})
	if v, ok := c.Val("k"); !ok || v != "v" {
		t.Fatalf("Val after revalidation = %v, %v; want v, true", v, ok)
	}
	// A peer's write between the revalidation's ticket and its landing refuses it.
	clock.Advance(2 * time.Second)
	e, _ = c.Held("k")
	tk = c.Ticket("k")
	c.Announce("k", 8)
	c.Land("k", tk, Entry{Val: e.Val, Version: e.Version, Life: time.Second, Keep: e.Keep, Size: e.Size})
	if _, ok := c.Held("k"); ok {
		t.Fatal("an entry revalidated across a newer announcement is held, want it dropped")
	}
	c.Land("old", c.Ticket("old"), Entry{Val: "o", Version: 1, Life: time.Second, Keep: 10 * time.Second})
	c.Land("live", c.Ticket("live"), Entry{Val: "l", Version: 1, Life: time.Hour})
	clock.Advance(11 * time.Second)
	c.Sweep()
	c.CleanUp()
	if n := c.Len(); n != 1 {
		t.Errorf("Len after Sweep = %d, want 1 (the live entry)", n)
	}
	if _, ok := c.Get("live"); !ok {
		t.Error("Sweep dropped a live entry")
	}
}

// TestSweepStops checks Close stops the goroutines of the system clock.
func TestSweepStops(t *testing.T) {
	t.Parallel()
	c, err := New(Config{MaxBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	c.Land("k", c.Ticket("k"), Entry{Val: "v", Version: 1, Life: time.Hour})
	c.Close() // waits for the ticker and the sweep: a leak would hang the test
	if n := c.wall.Load(); n != 0 {
		t.Errorf("wall = %d after Close, want 0 (the precise time)", n)
	}
	if _, ok := c.Get("k"); ok {
		t.Error("Get hit after Close, want every entry dropped")
	}
}

func TestBounds(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		cfg        Config
		size       int
		maxEntries int
	}{
		// 100 entries of ~1 KiB weigh ~120 KiB: the count floor (1 MiB / 10) binds first.
		{name: "count floor", cfg: Config{MaxBytes: 1 << 20, MaxEntries: 10}, size: 1000, maxEntries: 10},
		// 1000 entries of ~1.2 KiB each into 100 KiB.
		{name: "bytes", cfg: Config{MaxBytes: 100 << 10}, size: 1000, maxEntries: 100 << 10 / 1000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var evicted atomic.Int64
			tt.cfg.OnEvict = func() { evicted.Add(1) }
			c := newCache(t, tt.cfg)
			const n = 1000
			for i := range n {
				k := fmt.Sprint(i)
				c.Land(k, c.Ticket(k), Entry{Val: i, Version: 1, Life: time.Hour, Size: tt.size})
			}
			c.CleanUp()
			if got := c.Len(); got > tt.maxEntries || got == 0 {
				t.Errorf("Len() = %d after %d landings, want 1..%d", got, n, tt.maxEntries)
			}
			if w := c.Weight(); w > uint64(tt.cfg.MaxBytes) {
				t.Errorf("Weight() = %d, over MaxBytes %d", w, tt.cfg.MaxBytes)
			}
			if got := evicted.Load(); got < int64(n-tt.maxEntries) {
				t.Errorf("OnEvict called %d times, want at least %d", got, n-tt.maxEntries)
			}
		})
	}
}

// TestFlushFilter: a filtered flush drops what the filter picks and keeps the rest.
func TestFlushFilter(t *testing.T) {
	t.Parallel()
	c := newCache(t, Config{})
	for _, k := range []string{"a/1", "a/2", "b/1"} {
		c.Land(k, c.Ticket(k), entry("v", 1))
	}
	c.Flush(func(k string) bool { return k[0] == 'a' })
	for k, want := range map[string]bool{"a/1": false, "a/2": false, "b/1": true} {
		if _, ok := c.Get(k); ok != want {
			t.Errorf("after Flush of a/*: Get(%q) hit = %v, want %v", k, ok, want)
		}
	}
}
