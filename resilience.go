package tiercache

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/maypok86/otter/v2"
	"github.com/redis/go-redis/v9"
	"github.com/sony/gobreaker/v2"
)

// guard keeps the cache serving while Redis fails: a circuit breaker (gobreaker) around every L2
// call, a time budget per call, the writes made while Redis was unreachable (replayed with their
// versions on recovery), and a prober that finds Redis again with capped exponential backoff.
type guard struct {
	c  *Cache
	cb *gobreaker.TwoStepCircuitBreaker[struct{}]

	recovering atomic.Bool
	needFlush  atomic.Bool // the breaker closed after an outage: the next recover flushes L1 once
	outages    atomic.Uint64
	recoveries atomic.Uint64
	replayed   atomic.Uint64
	superseded atomic.Uint64 // replays Redis refused: it held a newer version
	dropped    atomic.Uint64 // remembered writes Redis rejected for good (WRONGTYPE, a script error)
	expired    atomic.Uint64 // remembered writes whose lifetime ended before Redis took them
	oomLogged  atomic.Bool   // the current recovery logged that Redis refuses replays for memory
	// oomPatience is how long a remembered write is retried while Redis refuses it for memory
	// (OOM) before it is dropped as rejected for good (oomPatienceDefault; tests shorten it).
	oomPatience atomic.Int64
	// failingSince is when the current run of consecutive Redis failures began (unix ns), 0
	// after a success; ReadyToTrip needs the run to span BreakerWindow.
	failingSince atomic.Int64
	// confirming: a confirmDown probe runs; confirmedDown: it, or a failure that was not a
	// timeout, found Redis unreachable (until the breaker opens or a call succeeds).
	confirming, confirmedDown atomic.Bool

	// pending holds, per key, the remembered write with the highest version (see remember). mu
	// guards it and lastAuto; npending mirrors its size so read paths can skip the lock when it
	// is empty.
	mu       sync.Mutex
	pending  map[string]*pendingWrite
	npending atomic.Int64
	lastAuto uint64 // the last automatic version remember handed out

	// known holds the last version this instance saw in Redis per key (acknowledged writes,
	// refusals, reads, tombstones), for as long as Redis keeps what was seen, up to knownKeys
	// keys: writes made while Redis is unreachable are judged against it (see remember).
	known *otter.Cache[string, knownVersion]

	// The last Redis TIME seen (every write script reports it) and when, on this process's
	// monotonic clock: automatic versions made while Redis is unreachable carry it forward, so the
	// host's wall clock never orders them against versions Redis made. timeMu guards both.
	timeMu  sync.Mutex
	redisMs int64 // 0: never seen
	redisAt time.Time

	wake   chan struct{}
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
}

// knownKeys bounds guard.known (about 100 bytes per key).
const knownKeys = 1 << 14

type knownVersion struct {
	v    uint64
	life time.Duration
}

// pendingWrite is a write accepted while Redis was unreachable: its request carries an explicit
// version taken when it was accepted, so a replay never replaces anything written since; auto
// says the version is Redis's to assign at the replay (no Redis time had been seen to carry
// forward), and version is then only this instance's local one.
type pendingWrite struct {
	req     writeReq
	key     string
	val     any // the value for reads of this instance until the replay; nil for deletes
	del     bool
	version uint64
	auto    bool
	at      int64     // Redis TIME (ms) when it was accepted, as estimated by redisNow; 0 unknown
	until   time.Time // a value's logical expiry (Options.Clock): reads find it only before
	expires time.Time // when Redis would have dropped the value (fail-safe included) or tombstone
	// oomSince is when Redis first refused its replay for memory (zero: never); guarded by mu.
	oomSince time.Time
}

// oomPatienceDefault is how long a replay Redis refuses for memory is retried: longer than the
// moments a cache under maxmemory noeviction spends full until keys expire, short enough that a
// Redis left full for good (a misconfiguration) does not keep the cache recovering for an hour.
const oomPatienceDefault = 30 * time.Second

// expiredAt reports whether the write's lifetime in Redis has ended by now: Redis would no
// longer hold it, so it is not replayed.
func (p *pendingWrite) expiredAt(now time.Time) bool { return !now.Before(p.expires) }

// liveAt reports whether a read at now finds the write's value, as it would in Redis: a value
// before its logical expiry (past it, only GetOrLoad's fail-safe would use it, from Redis).
func (p *pendingWrite) liveAt(now time.Time) bool { return !p.del && now.Before(p.until) }

func newGuard(c *Cache) *guard {
	g := &guard{c: c, pending: map[string]*pendingWrite{}, wake: make(chan struct{}, 1), done: make(chan struct{})}
	g.oomPatience.Store(int64(oomPatienceDefault))
	g.ctx, g.cancel = context.WithCancel(context.Background())
	ko := &otter.Options[string, knownVersion]{
		MaximumSize: knownKeys,
		ExpiryCalculator: otter.ExpiryWritingFunc(func(e otter.Entry[string, knownVersion]) time.Duration {
			return e.Value.life
		}),
	}
	if _, system := c.cfg.Clock.(systemClock); !system {
		ko.Clock = otterClock{c.cfg.Clock}
	}
	g.known = otter.Must(ko)
	g.cb = gobreaker.NewTwoStepCircuitBreaker[struct{}](gobreaker.Settings{
		Name:        c.cfg.Namespace,
		MaxRequests: 1,
		Timeout:     c.cfg.BreakerOpenFor,
		// Opening takes BreakerFailures consecutive failures that also span BreakerWindow, and
		// then a confirming probe that Redis does not answer either (see confirmDown): a host
		// too busy to run our goroutines (or Redis) in time fails every call in flight at once,
		// sometimes for a second, yet answers a probe that may wait longer; a Redis that is
		// down does not.
		// Failures that are not timeouts (refused, reset, LOADING...) need no confirmation: a
		// busy host does not produce them. Nor does a streak while the client holds no
		// connection at all: go-redis retries refused dials until the budget ends, so a killed
		// Redis looks like timeouts, but a busy host keeps its connections (or dials new ones).
		ReadyToTrip: func(n gobreaker.Counts) bool {
			switch {
			case n.ConsecutiveFailures < uint32(c.cfg.BreakerFailures):
				return false
			case g.confirmedDown.Load():
				return true
			case g.streak() < c.cfg.BreakerWindow:
				return false
			case g.noConnections():
				return true
			}
			g.confirmDown()
			return false
		},
		IsExcluded: func(err error) bool { return errors.Is(err, errCallerEnded) },
		OnStateChange: func(_ string, from, to gobreaker.State) {
			// Runs under the breaker's lock: no breaker calls here.
			switch to {
			case gobreaker.StateOpen:
				g.confirmedDown.Store(false)
				if from == gobreaker.StateClosed {
					g.outages.Add(1)
					c.cfg.Logger.Warn("tiercache: Redis unreachable; serving L1 and loaders, remembering writes", "namespace", c.cfg.Namespace)
				}
			case gobreaker.StateClosed:
				g.needFlush.Store(true)
				g.recovering.Store(true)
				c.cfg.Logger.Info("tiercache: Redis reachable again; recovering", "namespace", c.cfg.Namespace)
			}
			g.poke()
		},
	})
	return g
}

func (g *guard) poke() {
	select {
	case g.wake <- struct{}{}:
	default:
	}
}

func (g *guard) start() { go g.run() }

func (g *guard) stop() {
	g.cancel()
	<-g.done
	g.known.StopAllGoroutines()
}

// degraded reports whether L2 is being avoided now.
func (g *guard) degraded() bool { return g.cb.State() != gobreaker.StateClosed }

// run probes Redis while the breaker is not closed (its probe is the half-open trial request)
// and runs the recovery once it closes: flush what L1 can no longer vouch for, replay the
// remembered writes.
func (g *guard) run() {
	defer close(g.done)
	backoff := 25 * time.Millisecond
	for {
		if g.cb.State() == gobreaker.StateClosed {
			if g.recovering.Load() || g.npending.Load() > 0 {
				if g.recover() {
					backoff = 25 * time.Millisecond
					continue
				}
			} else {
				backoff = 25 * time.Millisecond
				select {
				case <-g.wake:
					continue
				case <-g.ctx.Done():
					return
				}
			}
		} else {
			// The trial call asks for Redis TIME: an instance that started with Redis down
			// learns the clock its replays will be judged by.
			_ = g.c.l2do(g.ctx, func(ctx context.Context) error {
				t, err := g.c.rdb.Time(ctx).Result()
				if err == nil {
					g.observeTime(t.UnixMilli())
				}
				return err
			})
		}
		t := time.NewTimer(backoff/2 + rand.N(backoff/2+1))
		select {
		case <-t.C:
		case <-g.wake:
			t.Stop()
		case <-g.ctx.Done():
			t.Stop()
			return
		}
		backoff = min(2*backoff, g.c.cfg.BreakerOpenFor)
	}
}

// recover, after an outage, flushes L1 once but for the keys written during it (their local
// entries are newer than anything Redis has until the replay); then it replays the remembered
// writes in batches, each with its coalesced invalidation. A replay that failed because Redis was
// unavailable again, or refused it for memory (OOM under maxmemory noeviction, which passes as
// keys expire or memory is added; for up to oomPatience), is kept for the next call, and keeps
// answering this instance's reads meanwhile; a remembered write whose lifetime ends first is
// dropped as expired. One that Redis rejected for good (an error reply such as WRONGTYPE or a
// script error, or OOM past oomPatience) is counted, logged and dropped. So recovery always
// ends. It reports whether everything was replayed.
func (g *guard) recover() bool {
	c := g.c
	ctx, sp := c.span(g.ctx, spanRecover, 0)
	var replayed int64  // by this call, for its span
	var replayErr error // the first replay error, for its span
	defer func() { sp.setInt(attrReplayed, replayed); sp.end(replayErr) }()
	flush := g.needFlush.Swap(false) // after an outage; a write that merely timed out needs none
	sp.setBool(attrFlushed, flush)
	if flush {
		g.mu.Lock()
		keep := make(map[string]bool, len(g.pending))
		for k := range g.pending {
			keep[k] = true
		}
		g.mu.Unlock()
		c.gens.resync() // generations may have moved while nothing could be heard
		c.dropL1(func(k string) bool { return !keep[k] })
	}
	gens := map[string]uint64{} // namespace generations synced by this call
	for {
		now := c.cfg.Clock.Now()
		g.mu.Lock()
		batch := make([]*pendingWrite, 0, 256)
		for k, p := range g.pending {
			if p.expiredAt(now) {
				delete(g.pending, k)
				g.npending.Add(-1)
				g.expired.Add(1)
				c.evict(k) // what L1 holds of it has expired too, or is older
				continue
			}
			if batch = append(batch, p); len(batch) == cap(batch) {
				break
			}
		}
		g.mu.Unlock()
		if len(batch) == 0 {
			break
		}
		batch, err := g.retarget(ctx, batch, gens)
		if err != nil {
			replayErr = cmp.Or(replayErr, err)
			return false
		}
		if len(batch) == 0 {
			continue // every one of them died with its namespace's generation
		}
		reqs := make([]writeReq, len(batch))
		keys := make([]string, len(batch))
		vers := make([]uint64, len(batch))
		for i, p := range batch {
			reqs[i], keys[i], vers[i] = p.req, p.key, p.version
			if p.auto {
				vers[i] = 0 // Redis assigns it: "any version"
			}
		}
		var tail tailFunc
		if c.bp != nil {
			tail = func() (string, string, uint64) {
				msg, seq := c.bp.batchMessage(keys, vers)
				return c.bp.channel, msg, seq
			}
		}
		res := c.execWrites(ctx, reqs, tail)
		failed := false
		var rejected int
		var firstRejected error
		g.mu.Lock()
		for i, p := range batch {
			r := res[i]
			retry := r.err != nil && !rejectedForGood(r.err)
			if isOOM(r.err) {
				if p.oomSince.IsZero() {
					p.oomSince = now
				}
				retry = now.Sub(p.oomSince) < time.Duration(g.oomPatience.Load())
				if retry && g.oomLogged.CompareAndSwap(false, true) {
					c.cfg.Logger.Warn("tiercache: Redis refuses remembered writes for memory (OOM); keeping them for reads of this instance and retrying for up to 30 s",
						"namespace", c.cfg.Namespace, "key", p.key)
				}
			}
			if retry {
				failed = true
				replayErr = cmp.Or(replayErr, r.err)
				continue
			}
			current := g.pending[p.key] == p // not superseded while replaying
			if current {
				delete(g.pending, p.key)
				g.npending.Add(-1)
			}
			switch {
			case r.err != nil:
				// Redis answered, and will answer the same again: retrying would keep the cache
				// recovering forever. The acknowledged write is lost; L1 must not keep serving
				// what Redis never got.
				g.dropped.Add(1)
				rejected++
				firstRejected = cmp.Or(firstRejected, fmt.Errorf("%q: %w", p.key, r.err))
				if current {
					c.evict(p.key)
				}
				continue
			case r.status == statusRefused:
				g.superseded.Add(1) // someone wrote a newer version meanwhile
				if current {
					c.evict(p.key)
				}
			case p.auto && current:
				c.evict(p.key) // L1 has this instance's local version, not the one Redis assigned
			}
			g.learn(p.key, r.version, time.Duration(p.req.px)*time.Millisecond)
			g.replayed.Add(1)
			replayed++
		}
		g.mu.Unlock()
		if rejected > 0 {
			c.cfg.Logger.Warn("tiercache: Redis rejected remembered writes for good; dropped them",
				"namespace", c.cfg.Namespace, "dropped", rejected, "first", firstRejected)
		}
		if failed {
			return false
		}
	}
	g.oomLogged.Store(false)
	if g.recovering.CompareAndSwap(true, false) {
		g.recoveries.Add(1)
	}
	return true
}

// retarget points each remembered write at the current generation of its namespace, or drops it
// if that generation outdates it. A write is remembered under the generation its instance knew,
// and while Redis was unreachable for this instance a peer may have bumped it
// (InvalidateNamespace): replayed as it is, the write would land in a dead generation, where no
// reader looks, so an acknowledged write made after the bump would be lost. So the generation is
// synced with Redis first (strictly: a write is never replayed under a generation that could not
// be checked; the error ends this recovery attempt), and when it moved past the write's:
//   - a write accepted after the bump (p.at, its Redis TIME as this instance estimated it, is
//     above the generation, which is the bump's Redis TIME in ms) is replayed under the current
//     generation. The estimate lags Redis's clock by up to a reply's latency, never leads it, so a
//     write is moved only if it truly followed the bump;
//   - a write accepted before the bump (or with it, within the estimate's error) was invalidated
//     by it: it is dropped as superseded (Stats.ReplaySuperseded) and its key evicted from L1, as
//     the peers' L1 entries were when the bump's message reached them;
//   - a write accepted before this instance ever saw Redis TIME (p.at == 0) cannot be placed in
//     time; like its automatic version, it is taken as made at the replay and moved.
//
// gens holds the generations this recovery already synced.
func (g *guard) retarget(ctx context.Context, batch []*pendingWrite, gens map[string]uint64) ([]*pendingWrite, error) {
	c := g.c
	live := batch[:0]
	for _, p := range batch {
		ns := c.namespaceOf(p.key)
		if ns == "" {
			live = append(live, p)
			continue
		}
		cur, ok := gens[ns]
		if !ok {
			var err error
			if cur, err = c.nsGenSync(ctx, ns, true); err != nil {
				return nil, err
			}
			gens[ns] = cur
		}
		if cur <= p.req.gen {
			live = append(live, p)
			continue
		}
		g.mu.Lock()
		current := g.pending[p.key] == p
		if p.at != 0 && uint64(p.at) <= cur {
			if current {
				delete(g.pending, p.key)
				g.npending.Add(-1)
				g.superseded.Add(1)
				c.evict(p.key)
			}
			g.mu.Unlock()
			continue
		}
		p.req.rk, p.req.gen = c.genEntryKey(p.key, cur), cur
		g.mu.Unlock()
		live = append(live, p)
	}
	return live, nil
}

// rejectedForGood reports a replay error that retrying cannot fix: an error reply from Redis
// (WRONGTYPE, a script error; OOM too, which recover nonetheless retries for oomPatience), as
// opposed to Redis being unreachable, slow, loading, read-only during a failover or busy.
func rejectedForGood(err error) bool {
	if errors.Is(err, ErrUnavailable) || errors.Is(err, context.Canceled) || transportFailure(err) {
		return false
	}
	var re redis.Error
	if !errors.As(err, &re) {
		return false
	}
	for _, transient := range []string{"READONLY", "BUSY", "NOSCRIPT", "NOREPLICAS", "MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN", "LOADING", "MASTERDOWN"} {
		if strings.HasPrefix(re.Error(), transient) {
			return false
		}
	}
	return true
}

// isOOM reports Redis refusing a write for memory (maxmemory with noeviction).
func isOOM(err error) bool {
	var re redis.Error
	return errors.As(err, &re) && strings.HasPrefix(re.Error(), "OOM")
}

// observeTime records a Redis TIME reading (in milliseconds) taken about now.
func (g *guard) observeTime(ms int64) {
	now := time.Now()
	g.timeMu.Lock()
	if g.redisMs == 0 || ms >= g.redisMs+now.Sub(g.redisAt).Milliseconds() {
		g.redisMs, g.redisAt = ms, now
	}
	g.timeMu.Unlock()
}

// redisNow estimates Redis TIME now: the last reading plus the time elapsed since on this
// process's monotonic clock. ok is false when no reading was ever taken.
func (g *guard) redisNow() (ms int64, ok bool) {
	g.timeMu.Lock()
	defer g.timeMu.Unlock()
	if g.redisMs == 0 {
		return 0, false
	}
	return g.redisMs + time.Since(g.redisAt).Milliseconds(), true
}

// learn records that Redis held version v of key, for about life.
func (g *guard) learn(key string, v uint64, life time.Duration) {
	if v == 0 || life <= 0 {
		return
	}
	g.known.Compute(key, func(old knownVersion, found bool) (knownVersion, otter.ComputeOp) {
		if found && old.v >= v {
			return old, otter.CancelOp
		}
		return knownVersion{v: v, life: life}, otter.WriteOp
	})
}

// knownVersion is the highest version of key this instance knows outside the pending writes:
// its L1 entry's and the last one seen in Redis.
func (c *Cache) knownVersion(key string) uint64 {
	var v uint64
	if c.l1 != nil {
		if e, ok := c.l1.GetIfPresent(key); ok {
			v = e.version
		}
	}
	if k, ok := c.g.known.GetIfPresent(key); ok {
		v = max(v, k.v)
	}
	return v
}

// remember accepts a write while Redis is unreachable, judged by version as Redis would judge it:
// against the highest version this instance knows for the key (known: L1 and the versions seen in
// Redis; and the write already remembered for it). A caller version below that fails with
// ErrStaleVersion and changes nothing; the very version already remembered returns
// errPendingSame. An automatic version is the last Redis TIME seen carried forward on the
// monotonic clock, above everything known; before any Redis TIME was seen, Redis assigns it at
// the replay (p.auto) and now is used for the local one. It returns the version, and fails with
// ErrUnavailable when the pending set is full.
func (g *guard) remember(p *pendingWrite, callerVersion, known uint64, now time.Time) (uint64, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	cur, exists := g.pending[p.key]
	if exists {
		known = max(known, cur.version)
	}
	switch {
	case callerVersion != 0 && callerVersion < known:
		return known, ErrStaleVersion
	case callerVersion != 0 && exists && cur.version == callerVersion && !cur.auto:
		return callerVersion, errPendingSame
	case callerVersion != 0:
		p.version = callerVersion
	default:
		// A write that timed out may still run in Redis, with a version from Redis's clock; its
		// fence (see writeScript) lies at or before redisNow now that its budget is spent, so if
		// it runs at all, it runs below this version.
		if ms, ok := g.redisNow(); ok {
			p.version = max(uint64(ms)<<20, known+1, g.lastAuto+1)
			g.lastAuto = p.version
		} else {
			p.auto = true
			p.version = max(g.c.nextLocalVersion(now), known+1)
		}
	}
	if !exists && len(g.pending) >= g.c.cfg.MaxPendingWrites {
		return 0, fmt.Errorf("%w: %d writes already wait for Redis (MaxPendingWrites)", ErrUnavailable, len(g.pending))
	}
	// A copy: the timed-out call may still be sending the original buffer.
	p.req.env = append([]byte(nil), p.req.env...)
	if !p.auto {
		binary.BigEndian.PutUint64(p.req.env[2:10], p.version)
		p.req.hi, p.req.lo = splitVersion(p.version)
	}
	p.req.channel = "" // replays publish one coalesced message per batch
	p.at, _ = g.redisNow()
	p.expires = now.Add(time.Duration(p.req.px) * time.Millisecond)
	if !exists {
		g.npending.Add(1)
	}
	g.pending[p.key] = p
	g.poke() // replay as soon as Redis answers: the write is invisible to peers until then
	return p.version, nil
}

// forget drops the pending write of key if a write that reached Redis with version v supersedes
// it. A pending write with a higher version stays: a slower write of an older version may
// succeed after a newer one was remembered, and dropping the newer one would lose it.
func (g *guard) forget(key string, v uint64) {
	if g.npending.Load() == 0 {
		return
	}
	g.mu.Lock()
	if p, ok := g.pending[key]; ok && p.version <= v {
		delete(g.pending, key)
		g.npending.Add(-1)
	}
	g.mu.Unlock()
}

// lookup returns the pending write of key, if any.
func (g *guard) lookup(key string) (*pendingWrite, bool) {
	if g.npending.Load() == 0 {
		return nil, false
	}
	g.mu.Lock()
	p, ok := g.pending[key]
	g.mu.Unlock()
	return p, ok
}

// l2do runs one Redis operation through the breaker within the L2 budget. A server's error reply
// (and redis.Nil) is an answer and counts as success; transport errors and timeouts count as
// failures and come back wrapped in ErrUnavailable, as does a refusal by the open breaker. When
// the caller's own context ends first (it cancels, or its deadline is earlier than the budget's),
// the caller gets its context's error and nothing is counted against Redis.
func (c *Cache) l2do(ctx context.Context, fn func(ctx context.Context) error) error {
	return c.l2doN(ctx, 1, fn)
}

// l2doN is l2do for a call carrying n commands (a pipeline): its budget grows by 1% of L2Timeout
// per command beyond the first.
func (c *Cache) l2doN(ctx context.Context, n int, fn func(ctx context.Context) error) error {
	done, err := c.g.cb.Allow()
	if err != nil {
		return fmt.Errorf("%w: circuit breaker: %w", ErrUnavailable, errRefused)
	}
	budget := c.cfg.L2Timeout + time.Duration(max(n-1, 0))*c.cfg.L2Timeout/100
	start := time.Now()
	cctx, cancel := context.WithTimeout(ctx, budget)
	if c.ctxDeadlines {
		err = fn(cctx)
	} else {
		// The client ignores context deadlines on its sockets (ContextTimeoutEnabled is off), so
		// the budget is enforced here: the call is left to finish on its own, bounded by the
		// client's read timeout (Close waits for it). fn must hand its results out only through
		// variables the caller reads after a nil error.
		if !c.bg.add() {
			cancel()
			done(errCallerEnded)
			return ErrClosed
		}
		ch := make(chan error, 1)
		go func() {
			defer c.bg.done()
			ch <- fn(cctx)
		}()
		select {
		case err = <-ch:
		case <-cctx.Done():
			err = cctx.Err()
		}
	}
	cancel()
	if err != nil && callerEnded(ctx, start.Add(budget)) {
		// Neither a failure nor a success: a cancelled call must not reset a streak either.
		done(errCallerEnded)
		return ctx.Err()
	}
	if !transportFailure(err) {
		// Read before writing: every call passes here, and a store would bounce the cache line.
		if c.g.failingSince.Load() != 0 {
			c.g.failingSince.Store(0)
		}
		if c.g.confirmedDown.Load() {
			c.g.confirmedDown.Store(false)
		}
		done(nil)
		return err
	}
	c.g.failingSince.CompareAndSwap(0, start.UnixNano())
	if !isTimeout(err) {
		c.g.confirmedDown.Store(true) // Redis refused or dropped us: no probe needed
	}
	done(err)
	c.st.l2Errors.Add(1)
	return fmt.Errorf("%w: %w", ErrUnavailable, err)
}

// callerEnded reports whether a failed call was ended by its caller rather than by Redis: the
// caller cancelled, or its deadline came no later than the call's own budget (which ends at
// budgetEnd). A call whose budget expired first counts against Redis even if the caller's
// deadline has passed too by now.
func callerEnded(ctx context.Context, budgetEnd time.Time) bool {
	if ctx.Err() == nil {
		return false
	}
	d, ok := ctx.Deadline()
	return !ok || !errors.Is(ctx.Err(), context.DeadlineExceeded) || !d.After(budgetEnd)
}

// confirmWait is how long confirmDown's probe waits for Redis: longer than the scheduling stalls
// measured on a saturated host (see docs/OPERATIONS.md), short enough that a real outage opens
// the breaker within about a second and a half.
func (c *Cache) confirmWait() time.Duration { return max(time.Second, 20*c.cfg.L2Timeout) }

// confirmDown starts, unless one runs, a probe that decides whether a failure streak is Redis's:
// a PING through the breaker with confirmWait to answer. An answer (any reply) is a success,
// which resets the streak and the breaker's count; no answer marks Redis down and reports the
// failure, and ReadyToTrip then opens the breaker. It runs under the breaker's lock (from
// ReadyToTrip), so it only starts a goroutine.
func (g *guard) confirmDown() {
	if !g.confirming.CompareAndSwap(false, true) {
		return
	}
	c := g.c
	if !c.bg.add() {
		g.confirming.Store(false)
		return
	}
	go func() {
		defer c.bg.done()
		defer g.confirming.Store(false)
		ctx := g.ctx // ends when Close stops the guard
		done, err := g.cb.Allow()
		if err != nil {
			return // opened meanwhile
		}
		pctx, cancel := context.WithTimeout(ctx, c.confirmWait())
		err = c.rdb.Ping(pctx).Err()
		cancel()
		switch {
		case ctx.Err() != nil:
			done(errCallerEnded) // closing
		case !transportFailure(err):
			g.failingSince.Store(0)
			done(nil)
		default:
			g.confirmedDown.Store(true)
			done(err)
		}
	}()
}

// noConnections reports whether the client has no connection to Redis open.
func (g *guard) noConnections() bool {
	ps := g.c.rdb.PoolStats()
	return ps != nil && ps.TotalConns == 0
}

// streak is how long the current run of consecutive Redis failures has lasted, measured from
// the start of its first call.
func (g *guard) streak() time.Duration {
	since := g.failingSince.Load()
	if since == 0 {
		return 0
	}
	return time.Since(time.Unix(0, since))
}

// honorsDeadlines reports whether rdb applies context deadlines to its socket reads and writes.
func honorsDeadlines(rdb redis.UniversalClient) bool {
	switch r := rdb.(type) {
	case *redis.Client:
		return r.Options().ContextTimeoutEnabled
	case *redis.ClusterClient:
		return r.Options().ContextTimeoutEnabled
	case *redis.Ring:
		return r.Options().ContextTimeoutEnabled
	}
	return false
}

// isTimeout reports failures that only say no answer came in time, which a busy host produces
// as well as a Redis that is gone (see confirmDown).
func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, redis.ErrPoolTimeout) ||
		(errors.As(err, &ne) && ne.Timeout())
}

// transportFailure reports errors that say nothing came back from Redis in time.
func transportFailure(err error) bool {
	if err == nil || errors.Is(err, redis.Nil) {
		return false
	}
	var re redis.Error
	if errors.As(err, &re) {
		msg := re.Error()
		// Replies that mean the server cannot serve now.
		return strings.HasPrefix(msg, "LOADING") || strings.HasPrefix(msg, "MASTERDOWN") ||
			strings.HasPrefix(msg, "CLUSTERDOWN") || strings.HasPrefix(msg, "TRYAGAIN")
	}
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, redis.ErrClosed) ||
		errors.Is(err, redis.ErrPoolTimeout) || strings.Contains(err.Error(), "connection") || strings.Contains(err.Error(), "EOF")
}
