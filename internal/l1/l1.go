// Package l1 is the cache's in-process tier: an otter cache of decoded values, and the stripe
// counters that keep a value read from Redis before a write from landing in L1 after it.
//
// A reader takes a [Ticket] for its key before it reads Redis and hands it to [Cache.Land] with
// what it read; a writer takes one before it sends its write and hands it to [Cache.Put] once
// Redis acknowledged it. [Cache.Evict], [Cache.Announce] (a peer's write) and [Cache.Flush] move
// the counters so that tickets taken earlier are refused. How long an entry is served, and how
// it expires, is this package's business: callers only say how long an entry may live.
package l1

import (
	"hash/maphash"
	"time"

	"github.com/maypok86/otter/v2"
)

// entryOverhead is what one entry costs beyond its key and value bytes: the Entry struct, the
// interface box of its value and otter's node and hash-table slot. It is added to every entry's
// weight so that Config.MaxBytes bounds real heap use (see the root package's
// TestL1HeapWithinBound).
const entryOverhead = 200

// Entry is one L1 value, held by value in otter's node so that a hit follows one pointer fewer.
// Entries are immutable once stored.
type Entry struct {
	Val     any           // the decoded value
	Version uint64        // the version in Redis (or the local version in L1-only mode)
	Life    time.Duration // how long L1 may serve it from when it is stored; <= 0 stores nothing
	Size    int           // bytes of its encoded value: with its key's, its weight against MaxBytes
}

// Clock is the time source of expiry. The root package's Clock satisfies it.
type Clock interface {
	Now() time.Time
}

// Config configures a [Cache].
type Config struct {
	// MaxBytes bounds the weight of the entries: key and value bytes plus a fixed overhead each.
	// Zero or less stores nothing (every Get misses) while the stripe counters still work.
	MaxBytes int64
	// MaxEntries, when positive, also bounds the number of entries.
	MaxEntries int
	// Clock is the time of expiry; nil is the system clock. Any other clock gets no background
	// sweep: its expired entries are dropped when read.
	Clock Clock
	// OnEvict, if set, is called once per entry dropped to respect the bounds (not for expiry or
	// invalidation). It runs inside otter's per-key lock: it must be short and must not call
	// back into the Cache.
	OnEvict func()
}

// Cache is the in-process tier. It is safe for concurrent use.
type Cache struct {
	// store is held by value (otter's Cache is one pointer) so that a hit follows as many
	// pointers as a bare *otter.Cache would. It is the zero value, and never used, unless on.
	store otter.Cache[string, Entry]
	on    bool
	seed  maphash.Seed
	// coarse is the clock of expiry with the system clock (nil with Config.Clock): see
	// CoarseResolution.
	coarse *otter.CoarseClock
	// stripes: see ticket.go.
	stripes [numStripes]stripe
}

// CoarseResolution is how often the clock of expiry reads the system time. A hit compares its
// entry's deadline with the time read last instead of reading the clock, which was about a tenth
// of a hit's cost; in exchange, an entry may be served up to CoarseResolution past its lifetime
// (and longer only while the process is so starved of CPU that the clock's goroutine, a timer
// like any other, runs late).
const CoarseResolution = time.Millisecond

// New creates a Cache. It returns otter's error, unwrapped, for a configuration otter refuses.
func New(cfg Config) (*Cache, error) {
	c := &Cache{seed: maphash.MakeSeed()}
	if cfg.MaxBytes <= 0 {
		return c, nil
	}
	weigh := func(key string, e Entry) uint32 {
		return uint32(min(len(key)+e.Size+entryOverhead, 1<<31))
	}
	oo := &otter.Options[string, Entry]{
		MaximumWeight: uint64(cfg.MaxBytes),
		Weigher:       weigh,
		ExpiryCalculator: otter.ExpiryWritingFunc(func(e otter.Entry[string, Entry]) time.Duration {
			return e.Value.Life
		}),
	}
	if onEvict := cfg.OnEvict; onEvict != nil {
		oo.OnAtomicDeletion = func(e otter.DeletionEvent[string, Entry]) {
			if e.Cause == otter.CauseOverflow {
				onEvict()
			}
		}
	}
	if cfg.Clock != nil {
		oo.Clock = OtterClock(cfg.Clock)
	} else {
		c.coarse = otter.NewCoarseClock(CoarseResolution)
		oo.Clock = c.coarse
	}
	if cfg.MaxEntries > 0 {
		// otter bounds by weight or by count, not both: a count bound is enforced through the
		// weigher by making each entry weigh at least MaxBytes/MaxEntries.
		floor := uint32(min(uint64(cfg.MaxBytes)/uint64(cfg.MaxEntries), 1<<31))
		oo.Weigher = func(key string, e Entry) uint32 { return max(weigh(key, e), floor) }
	}
	o, err := otter.New(oo)
	if err != nil {
		if c.coarse != nil {
			c.coarse.Stop()
		}
		return nil, err
	}
	c.store, c.on = *o, true
	return c, nil
}

// Get returns key's entry if L1 holds one that has not expired. It allocates nothing and takes
// no lock.
func (c *Cache) Get(key string) (e Entry, ok bool) {
	if c.on {
		e, ok = c.store.GetIfPresent(key)
	}
	return e, ok
}

// Value is the hit path: key's value if L1 holds it as a V, with one otter lookup and a type
// assertion, no allocation and no lock. An entry stored with another value type is a miss. (A
// method could not be generic; a wrapper around Get would cost the hit path one more call, as Get
// is too big to inline.)
func Value[V any](c *Cache, key string) (V, bool) {
	if c.on {
		if e, ok := c.store.GetIfPresent(key); ok {
			if v, ok := e.Val.(V); ok {
				return v, true
			}
		}
	}
	var zero V
	return zero, false
}

// Len returns the number of entries (an estimate: evictions may be pending; see CleanUp).
func (c *Cache) Len() int {
	if !c.on {
		return 0
	}
	return c.store.EstimatedSize()
}

// Weight returns the entries' total weight, in bytes (see Config.MaxBytes).
func (c *Cache) Weight() uint64 {
	if !c.on {
		return 0
	}
	return c.store.WeightedSize()
}

// CleanUp applies pending maintenance (evictions to respect the bounds) now, so that Len and
// Weight are exact. It is for tests; the cache does it on its own as it goes.
func (c *Cache) CleanUp() {
	if c.on {
		c.store.CleanUp()
	}
}

// Close drops every entry and stops otter's goroutines and the clock's. The Cache must not store
// anything afterwards; tickets and counters keep working.
func (c *Cache) Close() {
	if c.on {
		c.store.StopAllGoroutines()
		c.store.InvalidateAll()
	}
	if c.coarse != nil {
		c.coarse.Stop()
	}
}

// OtterClock adapts a Clock to otter's, for this package's store and for any other otter cache
// that must follow the same fake clock. It gets no ticker: expired entries are then dropped when
// read, not by a background sweep.
func OtterClock(c Clock) otter.Clock { return otterClock{c} }

type otterClock struct{ c Clock }

func (o otterClock) NowNano() int64                      { return o.c.Now().UnixNano() }
func (o otterClock) Tick(time.Duration) <-chan time.Time { return nil }
