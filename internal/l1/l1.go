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
	"sync"
	"sync/atomic"
	"time"

	"github.com/maypok86/otter/v2"
)

// entryOverhead is what one entry costs beyond its key and value bytes: the slot, the interface
// box of its value and otter's node and hash-table slot. It is added to every entry's weight so
// that Config.MaxBytes bounds real heap use (see the root package's TestL1HeapWithinBound).
const entryOverhead = 200

// Entry is one L1 value as callers store and read it. Entries are immutable once stored.
type Entry struct {
	Val     any    // the decoded value
	Version uint64 // the version in Redis (or the local version in L1-only mode)
	// Life is how long L1 may serve the entry from when it is stored; <= 0 stores nothing. In
	// what Get and Held return, it is the time left to serve it (<= 0 once it has ended).
	Life time.Duration
	// Keep is how long from when it is stored L1 may keep the entry once its Life has ended, as a
	// revalidation candidate that is never served until revalidated (see Held): the value's
	// logical lifetime in Redis. Less than Life keeps it for Life. Held returns the time left.
	Keep time.Duration
	Size int // bytes of its encoded value: with its key's, its weight against MaxBytes
}

// slot is what otter holds per key, by value in its node so that a hit follows one pointer fewer:
// an Entry whose lifetimes are deadlines on the clock of expiry, in Unix nanoseconds.
type slot struct {
	val         any
	version     uint64
	serve, keep int64
	size        int
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
	// sweep: entries past their Keep are dropped by Sweep (and CleanUp) or overwritten.
	Clock Clock
	// OnEvict, if set, is called once per entry dropped to respect the bounds (not for expiry or
	// invalidation). It runs inside otter's per-key lock: it must be short and must not call
	// back into the Cache.
	OnEvict func()
}

// Cache is the in-process tier. It is safe for concurrent use.
//
// Expiry is the Cache's own, not otter's: a slot carries its deadlines, and a hit compares them
// with the time the ticker read last. An otter cache with expiry records every read in its
// read buffer and checks the node's deadline through an interface, about a third of a hit's
// cost; without it, otter records reads only once the cache is half full, when its eviction
// policy needs them. Entries past their serving deadline stay, unserved, until their keeping
// deadline (revalidation candidates: see Held); the sweep drops them after that.
type Cache struct {
	// store is held by value (otter's Cache is one pointer) so that a hit follows as many
	// pointers as a bare *otter.Cache would. It is the zero value, and never used, unless on.
	store otter.Cache[string, slot]
	on    bool
	seed  maphash.Seed
	// wall is the clock of expiry with the system clock: the Unix time in nanoseconds as the
	// ticker read it last (see CoarseResolution), 0 with Config.Clock (clock) or once closed.
	wall  atomic.Int64
	clock Clock
	stop  chan struct{}  // closed by Close: ends the ticker and the sweep
	done  sync.WaitGroup // the ticker's and the sweep's goroutines
	// stripes: see ticket.go.
	stripes [numStripes]stripe
}

// CoarseResolution is how often the clock of expiry reads the system time. A hit compares its
// entry's deadline with the time read last instead of reading the clock, which was about a tenth
// of a hit's cost; in exchange, an entry may be served up to CoarseResolution past its lifetime
// (and longer only while the process is so starved of CPU that the clock's goroutine, a timer
// like any other, runs late).
const CoarseResolution = time.Millisecond

// SweepInterval is how often, with the system clock, the Cache drops the entries whose keeping
// deadline has passed. Each sweep visits every entry once.
const SweepInterval = 10 * time.Second

// New creates a Cache. It returns otter's error, unwrapped, for a configuration otter refuses.
func New(cfg Config) (*Cache, error) {
	c := &Cache{seed: maphash.MakeSeed()}
	if cfg.MaxBytes <= 0 {
		return c, nil
	}
	weigh := func(key string, s slot) uint32 {
		return uint32(min(len(key)+s.size+entryOverhead, 1<<31))
	}
	oo := &otter.Options[string, slot]{MaximumWeight: uint64(cfg.MaxBytes), Weigher: weigh}
	if onEvict := cfg.OnEvict; onEvict != nil {
		oo.OnAtomicDeletion = func(e otter.DeletionEvent[string, slot]) {
			if e.Cause == otter.CauseOverflow {
				onEvict()
			}
		}
	}
	if cfg.MaxEntries > 0 {
		// otter bounds by weight or by count, not both: a count bound is enforced through the
		// weigher by making each entry weigh at least MaxBytes/MaxEntries.
		floor := uint32(min(uint64(cfg.MaxBytes)/uint64(cfg.MaxEntries), 1<<31))
		oo.Weigher = func(key string, s slot) uint32 { return max(weigh(key, s), floor) }
	}
	o, err := otter.New(oo)
	if err != nil {
		return nil, err
	}
	c.store, c.on = *o, true
	if cfg.Clock != nil {
		c.clock = cfg.Clock
		return c, nil
	}
	c.wall.Store(time.Now().UnixNano())
	c.stop = make(chan struct{})
	c.done.Go(func() { c.every(CoarseResolution, func() { c.wall.Store(time.Now().UnixNano()) }) })
	c.done.Go(func() { c.every(SweepInterval, c.Sweep) })
	return c, nil
}

// now is the time of expiry, in Unix nanoseconds: one atomic load with the system clock, small
// enough to inline into the hit path (otter's CoarseClock, an equal load behind a call that does
// not inline, was a tenth of a hit).
func (c *Cache) now() int64 {
	if n := c.wall.Load(); n != 0 {
		return n
	}
	return c.clockNow()
}

func (c *Cache) clockNow() int64 {
	if c.clock != nil {
		return c.clock.Now().UnixNano()
	}
	return time.Now().UnixNano() // closed
}

// every runs f every d until Close: the ticker of wall, and the sweep.
func (c *Cache) every(d time.Duration, f func()) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
			f()
		}
	}
}

// Get returns key's entry if L1 holds one it may serve now. It allocates nothing and takes no
// lock.
func (c *Cache) Get(key string) (Entry, bool) {
	if e, ok := c.Held(key); ok && e.Life > 0 {
		return e, true
	}
	return Entry{}, false
}

// Held returns key's entry if L1 holds one, whether it may still serve it (e.Life > 0) or keeps
// it past its life as a revalidation candidate: a caller that finds Redis still holds e.Version
// may Land it again with a new life. It allocates nothing and takes no lock.
func (c *Cache) Held(key string) (Entry, bool) {
	if !c.on {
		return Entry{}, false
	}
	s, ok := c.store.GetIfPresent(key)
	if !ok {
		return Entry{}, false
	}
	now := c.now()
	if s.keep <= now {
		return Entry{}, false
	}
	return Entry{Val: s.val, Version: s.version, Life: time.Duration(s.serve - now), Keep: time.Duration(s.keep - now), Size: s.size}, true
}

// Val is the hit path: key's value if L1 may serve it now, with one otter lookup and one read of
// the ticker's clock, no allocation and no lock. The caller asserts its type: a value of another
// type is a miss. (Not generic: a generic function runs with a dictionary, which costs the hit
// path more than the caller's own assertion, and does not inline.)
func (c *Cache) Val(key string) (any, bool) {
	if c.on {
		if s, ok := c.store.GetIfPresent(key); ok && s.serve > c.now() {
			return s.val, true
		}
	}
	return nil, false
}

// Value is key's value if L1 holds it as a V and may serve it now (see Val).
func Value[V any](c *Cache, key string) (V, bool) {
	v, ok := c.Val(key)
	if ok {
		v, ok := v.(V)
		return v, ok
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

// CleanUp applies pending maintenance now (a sweep, and the evictions that respect the bounds),
// so that Len and Weight are exact. It is for tests; the cache does it on its own as it goes.
func (c *Cache) CleanUp() {
	if c.on {
		c.Sweep()
		c.store.CleanUp()
	}
}

// Sweep drops the entries whose keeping deadline has passed. With the system clock it runs every
// SweepInterval on its own.
func (c *Cache) Sweep() {
	if !c.on {
		return
	}
	now := c.now()
	for k, s := range c.store.All() {
		if s.keep > now {
			continue
		}
		c.store.ComputeIfPresent(k, func(s slot) (slot, otter.ComputeOp) {
			if s.keep > now {
				return s, otter.CancelOp // landed again meanwhile
			}
			return s, otter.InvalidateOp
		})
	}
}

// Close drops every entry and stops otter's goroutines, the ticker's and the sweep's. The Cache
// must not store anything afterwards; tickets and counters keep working. It must be called once.
func (c *Cache) Close() {
	if c.stop != nil {
		close(c.stop)
		c.done.Wait()
		c.wall.Store(0) // the precise time from now on
	}
	if c.on {
		c.store.StopAllGoroutines()
		c.store.InvalidateAll()
	}
}

// OtterClock adapts a Clock to otter's, for this package's store and for any other otter cache
// that must follow the same fake clock. It gets no ticker: expired entries are then dropped when
// read, not by a background sweep.
func OtterClock(c Clock) otter.Clock { return otterClock{c} }

type otterClock struct{ c Clock }

func (o otterClock) NowNano() int64                      { return o.c.Now().UnixNano() }
func (o otterClock) Tick(time.Duration) <-chan time.Time { return nil }
