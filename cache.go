package tiercache

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/l1"
	"github.com/tiercache/tiercache/internal/wire"
	"github.com/tiercache/tiercache/lock"
)

// Cache is a two-tier cache: an in-process L1 (otter) in front of Redis (L2). It is safe for
// concurrent use. The byte methods on Cache store []byte values; [Typed] gives a typed view whose
// L1 holds decoded values.
type Cache struct {
	cfg config
	rdb redis.UniversalClient // nil in L1-only mode
	l1  *l1.Cache             // also when L1 stores nothing (L1MaxBytes < 0): its stripe counters still work
	enc *wire.Encoder
	dec *wire.Decoder
	st  counters

	localVersion atomic.Uint64 // last version handed out in L1-only mode

	bytes *TypedCache[[]byte]
	bp    *backplane // nil in L1-only mode
	g     *guard     // nil in L1-only mode
	// leases give one instance the load of a missing key (nil: L1-only, or LeaseTTL < 0).
	leases *lock.Locker
	// ownLeases holds lease names this instance may hold, until LeaseTTL (see mayHoldLease);
	// entries past it are swept at most once per LeaseTTL (leaseSwept, unix ns; see noteLease).
	ownLeases  sync.Map
	leaseSwept atomic.Int64
	gens       nsGens // generations of namespaces (see namespace.go)

	ctxDeadlines bool    // the client honours context deadlines itself (see l2do)
	tr           tracer  // zero without Options.TracerProvider (see trace.go)
	hist         hists   // latency distributions (see metrics.go)
	om           *meters // nil without Options.MeterProvider (see metrics.go)

	// bg tracks the goroutines the cache starts besides its long-lived loops: GetOrLoad flights,
	// loads finishing past SoftTimeout, eager refreshes, lease releases, breaker probes and
	// Redis calls left to finish past their budget; Close waits for them (see detach). life
	// ends when Close begins, and with it every loader's context (see loadContext).
	bg      tasks
	life    context.Context
	endLife context.CancelFunc

	closed        atomic.Bool
	closeOnce     sync.Once
	corruptLogged atomic.Bool
}

// New creates a Cache. It validates opts (errors start with "tiercache:") and applies defaults.
// With Redis configured it then checks, in a few round trips, that the Redis user may run every
// command on every key and channel the cache needs (ACL), and fails with an error naming each
// missing permission, or naming refused credentials (WRONGPASS) or a server TLS certificate the
// client does not trust. A Redis that refuses the connection, or does not answer within
// max(1 s, 20 x L2Timeout), is no error: New returns, the first calls report it, and the cache
// serves L1.
func New(opts Options) (*Cache, error) {
	cfg, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if err := checkRedis(cfg); err != nil {
		return nil, err
	}
	c := &Cache{cfg: cfg, rdb: cfg.Redis, dec: wire.NewDecoder(cfg.limits)}
	c.life, c.endLife = context.WithCancel(context.Background())
	c.ctxDeadlines = c.rdb != nil && honorsDeadlines(c.rdb)
	c.tr = newTracer(cfg.TracerProvider, cfg.Namespace)
	c.hist = newHists()
	if cfg.MeterProvider != nil {
		if c.om, err = newMeters(c, cfg.MeterProvider); err != nil {
			return nil, errorf("MeterProvider: %w", err)
		}
	}
	comp, threshold := wire.CompressZstd, cfg.CompressionThreshold
	switch cfg.Compression {
	case CompressS2:
		comp = wire.CompressS2
	case CompressOff:
		threshold = -1
	}
	if c.enc, err = wire.NewEncoder(comp, threshold); err != nil {
		return nil, errorf("compression: %w", err)
	}
	lc := l1.Config{MaxBytes: cfg.L1MaxBytes, MaxEntries: cfg.L1MaxEntries, OnEvict: func() { c.st.evictions.Add(1) }}
	if _, system := cfg.Clock.(systemClock); !system {
		lc.Clock = cfg.Clock
	}
	if c.l1, err = l1.New(lc); err != nil {
		return nil, errorf("L1: %w", err)
	}
	c.bytes = Typed(c, Bytes())
	if c.rdb != nil && cfg.LeaseTTL > 0 {
		c.leases, err = lock.New(lock.Options{
			Clients:     []redis.UniversalClient{c.rdb},
			Prefix:      leasePrefix(cfg.Namespace),
			TTL:         cfg.LeaseTTL,
			ExtendEvery: -1,
			Logger:      cfg.Logger,
		})
		if err != nil {
			return nil, errorf("lease: %w", err)
		}
	}
	if c.rdb != nil {
		c.g = newGuard(c)
		c.g.start()
		if !cfg.noInvalidation {
			c.bp = newBackplane(c)
			c.bp.start()
		}
	}
	if c.om != nil {
		if err := c.om.observe(c); err != nil {
			c.Close()
			return nil, errorf("MeterProvider: %w", err)
		}
	}
	return c, nil
}

// Close stops the cache's background work and drops L1. It cancels the contexts of loads still
// running (their callers get the loader's answer, or ErrClosed) and waits for them and the
// cache's other goroutines, up to LoadTimeout for loaders that ignore their context. It is
// idempotent; every call after the first returns ErrClosed, as do all other methods. It does not
// close the Redis client, which belongs to the caller.
func (c *Cache) Close() error {
	err := ErrClosed
	c.closeOnce.Do(func() {
		c.closed.Store(true)
		c.bg.close()
		c.endLife()
		if c.bp != nil {
			c.bp.stop()
		}
		if c.g != nil {
			c.g.stop()
		}
		if n := c.bg.wait(c.cfg.LoadTimeout); n > 0 {
			c.cfg.Logger.Warn(prefix+"Close gave up waiting for loaders that ignore their context", "namespace", c.cfg.Namespace, "running", n)
		}
		c.l1.Close()
		if c.om != nil && c.om.reg != nil {
			if uerr := c.om.reg.Unregister(); uerr != nil {
				c.cfg.Logger.Warn(prefix+"unregistering the metrics callback failed", "namespace", c.cfg.Namespace, "err", uerr)
			}
		}
		err = nil
	})
	return err
}

// tasks counts goroutines that Close waits for. Unlike a sync.WaitGroup it refuses new ones once
// closing, so no goroutine can start while (or after) Close waits. It is lock-free: flights
// register on the miss path of every GetOrLoad.
type tasks struct {
	n        atomic.Int64
	closing  atomic.Bool
	signaled atomic.Bool
	idle     chan struct{} // closed when n reaches 0 after closing
}

// add registers one goroutine; it reports false once Close has begun. (If Close read n before
// this increment, it set closing first, and this add sees it and backs out.)
func (t *tasks) add() bool {
	t.n.Add(1)
	if t.closing.Load() {
		t.done()
		return false
	}
	return true
}

func (t *tasks) done() {
	if t.n.Add(-1) == 0 && t.closing.Load() && t.signaled.CompareAndSwap(false, true) {
		close(t.idle)
	}
}

func (t *tasks) close() {
	t.idle = make(chan struct{})
	t.closing.Store(true)
}

// wait waits up to d for every registered goroutine to end and returns how many still run. It
// is called once, after close.
func (t *tasks) wait(d time.Duration) int {
	if t.n.Load() == 0 {
		return 0
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-t.idle:
	case <-tm.C:
	}
	return int(max(t.n.Load(), 0))
}

// detach returns a context for work that must outlive its caller: it keeps ctx's values (trace
// span, request-scoped data) but not its cancellation or deadline. release must be called when
// the work ends; Close waits for it. ok is false once the cache is closing, and then nothing may
// start. The work's Redis calls are bounded by their budgets; loader calls take loadContext,
// which Close cancels.
func (c *Cache) detach(ctx context.Context) (dctx context.Context, release func(), ok bool) {
	if !c.bg.add() {
		return nil, nil, false
	}
	return context.WithoutCancel(ctx), c.bg.done, true
}

// loadContext bounds one loader call: LoadTimeout, and Close.
func (c *Cache) loadContext(ctx context.Context) (context.Context, context.CancelFunc) {
	lctx, cancel := context.WithTimeout(ctx, c.cfg.LoadTimeout)
	stop := context.AfterFunc(c.life, cancel)
	return lctx, func() {
		stop()
		cancel()
	}
}

// goBackground runs fn in a goroutine on a detached context (see detach). It reports false, and
// does not run fn, once the cache is closing.
func (c *Cache) goBackground(ctx context.Context, fn func(ctx context.Context)) bool {
	dctx, release, ok := c.detach(ctx)
	if !ok {
		return false
	}
	go func() {
		defer release()
		fn(dctx)
	}()
	return true
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

// Namespace returns the cache's namespace (Options.Namespace, or its default).
func (c *Cache) Namespace() string { return c.cfg.Namespace }

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
		LoaderPanics:     c.st.loadPanics.Load(),
		Sets:             c.st.sets.Load(),
		Deletes:          c.st.deletes.Load(),
		StaleRefused:     c.st.staleRefused.Load(),
		Evictions:        c.st.evictions.Load(),
		CompressionSaved: c.st.saved.Load(),
		Corrupt:          c.st.corrupt.Load(),
	}
	s.StaleServed, s.LeaseWaits, s.Refreshes = c.st.staleServed.Load(), c.st.leaseWaits.Load(), c.st.refreshes.Load()
	s.Revalidated = c.st.revalidated.Load()
	if c.g != nil {
		s.Outages, s.Recoveries, s.Replayed = c.g.outages.Load(), c.g.recoveries.Load(), c.g.replayed.Load()
		s.PendingWrites = uint64(c.g.npending.Load())
		s.ReplaySuperseded, s.ReplayDropped, s.ReplayExpired = c.g.superseded.Load(), c.g.dropped.Load(), c.g.expired.Load()
		s.Degraded = c.g.degradedFor()
		s.Breaker = c.g.cb.State().String()
	}
	if c.leases != nil {
		s.Leases = c.leases.Stats().Acquired
	}
	if c.bp != nil {
		s.Subscribed = c.bp.vouched()
		s.InvalidationsSent = c.bp.sent.Load()
		s.InvalidationsReceived = c.bp.received.Load()
		s.InvalidationsCoalesced = c.bp.coalesced.Load()
		s.Gaps = c.bp.gaps.Load()
		s.Flushes = c.bp.flushes.Load()
		s.SequenceFillers = c.bp.fillers.Load()
	}
	s.L1Entries, s.L1Bytes = uint64(c.l1.Len()), c.l1.Weight()
	return s
}

// ttl returns d shortened by a random fraction up to Jitter.
func (c *Cache) jitter(d time.Duration) time.Duration {
	if c.cfg.Jitter == 0 {
		return d
	}
	return d - time.Duration(rand.Float64()*c.cfg.Jitter*float64(d))
}

// l1Life is how long L1 may serve an entry landing now whose logical lifetime ends after
// remaining; 0 keeps it out of L1.
func (c *Cache) l1Life(remaining time.Duration) time.Duration {
	life := min(c.cfg.l1Life, remaining)
	if c.bp != nil && (!c.bp.vouched() || c.bp.behind.Load() > 0) && !c.g.degraded() {
		// No invalidation can reach this instance (or they arrive late: see watchLag), yet
		// peers may be writing to Redis: keep the entry briefly, or not at all. (With Redis
		// unreachable nobody can write, and L1TTL bounds degraded mode.)
		if c.cfg.UnsubscribedL1TTL < 0 {
			return 0
		}
		life = min(life, c.cfg.UnsubscribedL1TTL)
	}
	return life
}

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
		c.cfg.Logger.Warn(prefix+"unreadable entry in Redis treated as a miss and deleted (logged once)",
			"key", key, "bytes", len(raw), "err", err)
	}
	_ = c.l2do(ctx, func(ctx context.Context) error { return deleteIfScript.Run(ctx, c.rdb, []string{rk}, raw).Err() })
}
