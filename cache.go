package tiercache

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/maypok86/otter/v2"
	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/wire"
)

// entryOverhead is what one L1 entry costs beyond its key and value bytes: the entry struct, the
// interface box of its value and otter's node and hash-table slot. It is added to every entry's
// weight so that L1MaxBytes bounds real heap use (see TestL1HeapWithinBound).
const entryOverhead = 200

// genStripes is the number of invalidation generation counters (see Cache.gens).
const genStripes = 4096

// Cache is a two-tier cache: an in-process L1 (otter) in front of Redis (L2). It is safe for
// concurrent use. The byte methods on Cache store []byte values; [Typed] gives a typed view whose
// L1 holds decoded values.
type Cache struct {
	cfg  config
	rdb  redis.UniversalClient // nil in L1-only mode
	l1   *otter.Cache[string, *entry]
	enc  *wire.Encoder
	dec  *wire.Decoder
	st   counters
	seed maphash.Seed

	// gens closes the L1 fill race. A reader snapshots the generation of its key's stripe before it
	// reads Redis, and its result lands in L1 only if the generation is unchanged when it lands
	// (checked inside otter's per-key Compute, so the check and the store are atomic with respect
	// to a writer's eviction). Every write, delete and invalidation bumps the stripe after Redis
	// has acknowledged it and before it touches L1. So a reader that read Redis before a write
	// finished either sees the bump and drops its result, or landed before the writer evicts it.
	// Stripes share counters between keys: a collision only costs a skipped L1 fill.
	gens [genStripes]atomic.Uint64

	localVersion atomic.Uint64 // last version handed out in L1-only mode

	bytes *TypedCache[[]byte]

	closed        atomic.Bool
	closeOnce     sync.Once
	corruptLogged atomic.Bool
}

// entry is an L1 value. Entries are immutable once stored.
type entry struct {
	val     any           // the decoded value: V of the TypedCache that stored it
	version uint64        // the version in Redis (or the local version in L1-only mode)
	life    time.Duration // how long L1 may serve it, fixed when it is stored
	weight  uint32
}

// New creates a Cache. It validates opts (errors start with "tiercache:"), applies defaults and
// does no I/O: when Redis is unreachable the first calls report it, and the cache still serves L1.
func New(opts Options) (*Cache, error) {
	cfg, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	c := &Cache{cfg: cfg, rdb: cfg.Redis, seed: maphash.MakeSeed(), dec: wire.NewDecoder(cfg.limits)}
	comp, threshold := wire.CompressZstd, cfg.CompressionThreshold
	switch cfg.Compression {
	case CompressS2:
		comp = wire.CompressS2
	case CompressOff:
		threshold = -1
	}
	if c.enc, err = wire.NewEncoder(comp, threshold); err != nil {
		return nil, fmt.Errorf("tiercache: compression: %w", err)
	}
	if cfg.l1Enabled {
		oo := &otter.Options[string, *entry]{
			MaximumWeight: uint64(cfg.L1MaxBytes),
			Weigher:       func(_ string, e *entry) uint32 { return e.weight },
			ExpiryCalculator: otter.ExpiryWritingFunc(func(e otter.Entry[string, *entry]) time.Duration {
				return e.Value.life
			}),
			OnAtomicDeletion: func(e otter.DeletionEvent[string, *entry]) {
				if e.Cause == otter.CauseOverflow {
					c.st.evictions.Add(1)
				}
			},
		}
		if _, system := cfg.Clock.(systemClock); !system {
			oo.Clock = otterClock{cfg.Clock}
		}
		if cfg.L1MaxEntries > 0 {
			// otter bounds by weight or by count, not both: a count bound is enforced through the
			// weigher by making each entry weigh at least MaxBytes/MaxEntries.
			floor := uint32(min(uint64(cfg.L1MaxBytes)/uint64(cfg.L1MaxEntries), 1<<31))
			oo.Weigher = func(_ string, e *entry) uint32 { return max(e.weight, floor) }
		}
		if c.l1, err = otter.New(oo); err != nil {
			return nil, fmt.Errorf("tiercache: L1: %w", err)
		}
	}
	c.bytes = Typed(c, Bytes())
	return c, nil
}

// Close stops the cache's background work and drops L1. It is idempotent; every call after the
// first returns ErrClosed, as do all other methods. It does not close the Redis client, which
// belongs to the caller.
func (c *Cache) Close() error {
	err := ErrClosed
	c.closeOnce.Do(func() {
		c.closed.Store(true)
		if c.l1 != nil {
			c.l1.StopAllGoroutines()
			c.l1.InvalidateAll()
		}
		err = nil
	})
	return err
}

// Get returns the value of key from L1, else from Redis (filling L1). It returns ErrNotFound
// when neither has it. The returned slice is shared with the cache: do not modify it.
func (c *Cache) Get(ctx context.Context, key string, opts ...Option) ([]byte, error) {
	return c.bytes.Get(ctx, key, opts...)
}

// Peek returns the value of key if L1 holds it, without touching Redis.
func (c *Cache) Peek(key string) ([]byte, bool) { return c.bytes.Peek(key) }

// Set writes value to Redis and then to L1 (write-through). See [TypedCache.Set].
func (c *Cache) Set(ctx context.Context, key string, value []byte, opts ...Option) error {
	return c.bytes.Set(ctx, key, value, opts...)
}

// Delete removes key from both tiers, leaving a versioned tombstone in Redis.
func (c *Cache) Delete(ctx context.Context, key string, opts ...Option) error {
	return c.bytes.Delete(ctx, key, opts...)
}

// GetOrLoad returns the cached value of key or loads it once however many callers ask at once.
func (c *Cache) GetOrLoad(ctx context.Context, key string, load func(context.Context, string) ([]byte, error), opts ...Option) ([]byte, error) {
	return c.bytes.GetOrLoad(ctx, key, load, opts...)
}

// GetMany returns the values of the keys that either tier holds. See [TypedCache.GetMany].
func (c *Cache) GetMany(ctx context.Context, keys []string, opts ...Option) (map[string][]byte, error) {
	return c.bytes.GetMany(ctx, keys, opts...)
}

// SetMany writes many values in one Redis round trip. See [TypedCache.SetMany].
func (c *Cache) SetMany(ctx context.Context, items map[string][]byte, opts ...Option) error {
	return c.bytes.SetMany(ctx, items, opts...)
}

// DeleteMany deletes many keys in one Redis round trip.
func (c *Cache) DeleteMany(ctx context.Context, keys []string, opts ...Option) error {
	return c.bytes.DeleteMany(ctx, keys, opts...)
}

// GetOrLoadMany is GetMany followed by one loader call for the keys neither tier has.
func (c *Cache) GetOrLoadMany(ctx context.Context, keys []string, load func(context.Context, []string) (map[string][]byte, error), opts ...Option) (map[string][]byte, error) {
	return c.bytes.GetOrLoadMany(ctx, keys, load, opts...)
}

// Stats returns a snapshot of the cache's counters.
func (c *Cache) Stats() Stats {
	s := Stats{
		L1Hits:           c.st.l1Hits.load(),
		L1Misses:         c.st.l1Misses.load(),
		L2Hits:           c.st.l2Hits.Load(),
		L2Misses:         c.st.l2Misses.Load(),
		L2Errors:         c.st.l2Errors.Load(),
		Loads:            c.st.loads.Load(),
		LoadErrors:       c.st.loadErrors.Load(),
		Sets:             c.st.sets.Load(),
		Deletes:          c.st.deletes.Load(),
		StaleRefused:     c.st.staleRefused.Load(),
		Evictions:        c.st.evictions.Load(),
		CompressionSaved: c.st.saved.Load(),
		Corrupt:          c.st.corrupt.Load(),
	}
	if c.l1 != nil {
		s.L1Entries = uint64(c.l1.EstimatedSize())
		s.L1Bytes = c.l1.WeightedSize()
	}
	return s
}

// stripe returns the generation stripe of key.
func (c *Cache) stripe(key string) *atomic.Uint64 {
	return &c.gens[maphash.String(c.seed, key)&(genStripes-1)]
}

// evict drops key from L1 after bumping its generation, so no fill that started earlier lands.
func (c *Cache) evict(key string) {
	c.stripe(key).Add(1)
	if c.l1 != nil {
		c.l1.Invalidate(key)
	}
}

// land stores e in L1 unless the key's generation moved since the reader's snapshot g0, or L1
// already holds a newer version. It runs inside otter's per-key lock.
func (c *Cache) land(key string, gen *atomic.Uint64, g0 uint64, e *entry) {
	if c.l1 == nil || e.life <= 0 {
		return
	}
	c.l1.Compute(key, func(old *entry, found bool) (*entry, otter.ComputeOp) {
		if gen.Load() != g0 || (found && old.version > e.version) {
			return old, otter.CancelOp
		}
		return e, otter.WriteOp
	})
}

// put stores a value the caller has just written: the generation is bumped first (so older
// in-flight fills are refused) and a newer version already in L1 is kept.
func (c *Cache) put(key string, e *entry) {
	gen := c.stripe(key)
	g0 := gen.Add(1)
	c.land(key, gen, g0, e)
}

// ttl returns d shortened by a random fraction up to Jitter.
func (c *Cache) jitter(d time.Duration) time.Duration {
	if c.cfg.Jitter == 0 {
		return d
	}
	return d - time.Duration(rand.Float64()*c.cfg.Jitter*float64(d))
}

// l1Life is how long L1 may serve an entry whose logical lifetime ends after remaining.
func (c *Cache) l1Life(remaining time.Duration) time.Duration { return min(c.cfg.l1Life, remaining) }

// nextLocalVersion hands out versions in L1-only mode with the same hybrid-clock layout as Redis:
// milliseconds shifted left by 20 bits, plus a counter, never going backwards.
func (c *Cache) nextLocalVersion(now time.Time) uint64 {
	for {
		last := c.localVersion.Load()
		v := max(uint64(now.UnixMilli())<<20, last+1)
		if c.localVersion.CompareAndSwap(last, v) {
			return v
		}
	}
}

func (c *Cache) checkKey(key string) error {
	if key == "" {
		return ErrInvalidKey
	}
	if len(key) > c.cfg.MaxKeyLen {
		return fmt.Errorf("%w: key of %d bytes exceeds MaxKeyLen %d", ErrTooLarge, len(key), c.cfg.MaxKeyLen)
	}
	return nil
}

// corrupt handles bytes in Redis that do not decode: counted, logged once per process, deleted if
// nobody has replaced them since, and reported to the caller as a miss.
func (c *Cache) corrupt(ctx context.Context, key, rk string, raw string, err error) {
	c.st.corrupt.Add(1)
	if c.corruptLogged.CompareAndSwap(false, true) {
		c.cfg.Logger.Warn("tiercache: unreadable entry in Redis treated as a miss and deleted (logged once)",
			"key", key, "bytes", len(raw), "err", err)
	}
	if derr := deleteIfScript.Run(ctx, c.rdb, []string{rk}, raw).Err(); derr != nil && !errors.Is(derr, redis.Nil) {
		c.st.l2Errors.Add(1)
	}
}
