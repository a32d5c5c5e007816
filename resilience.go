package tiercache

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/maypok86/otter/v2"
	"github.com/sony/gobreaker/v2"
)

// guard keeps the cache serving while Redis fails: a circuit breaker (gobreaker) around every L2
// call, a time budget per call, the writes made while Redis was unreachable (replayed with their
// versions on recovery), and a prober that finds Redis again with capped exponential backoff.
type guard struct {
	c  *Cache
	cb *gobreaker.TwoStepCircuitBreaker[struct{}]

	// state mirrors the breaker's state for calls that skip it (see l2doN): its gobreaker.State
	// in the low bits (stateMask) and above them a count of state changes, so that a call can
	// tell whether the breaker changed state while it ran. Written only by OnStateChange, which
	// runs under the breaker's lock. counted: a failure may be counted in the breaker's run of
	// consecutive failures (set after a failure is reported, cleared before a success is).
	// While the breaker is closed and counts no failure, a success would change nothing in it,
	// so calls skip it; they report failures, and the first success after one.
	state   atomic.Uint64
	counted atomic.Bool
	ticks   budgetTicks // the Done channels of calls' budgets (see budgetCtx)

	recovering atomic.Bool
	needFlush  atomic.Bool // the breaker closed after an outage: the next recover flushes L1 once
	outages    atomic.Uint64
	recoveries atomic.Uint64
	replayed   atomic.Uint64
	superseded atomic.Uint64 // replays Redis refused: it held a newer version
	dropped    atomic.Uint64 // remembered writes Redis rejected for good (WRONGTYPE, a script error)
	expired    atomic.Uint64 // remembered writes whose lifetime ended before Redis took them
	oomLogged  atomic.Bool   // the current recovery logged that Redis refuses replays for memory
	// Time spent degraded (see degradedFor): dmu guards degradedSince (since monoBase, while
	// the breaker is not closed; 0 otherwise) and degradedTotal (earlier outages).
	dmu           sync.Mutex
	degradedSince time.Duration
	degradedTotal time.Duration
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
	// Every L2 read looks in it, so it expires its entries itself, against their deadline and
	// the time the caller already read, as L1 does: otter's own expiry would cost a clock read
	// and its bookkeeping on every lookup (most of a lookup's cost). An expired entry stays
	// until evicted and is ignored.

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

// The layout of guard.state: the breaker's state below stateShift, the count of changes above.
const (
	stateShift = 2
	stateMask  = 1<<stateShift - 1
)

// knownKeys bounds guard.known (about 100 bytes per key).
const knownKeys = 1 << 14

// knownVersion is a version of a key seen in Redis, known until its deadline (Unix ns): as long
// as Redis keeps what was seen.
type knownVersion struct {
	v     uint64
	until int64
}

// liveAt reports whether k still holds at now (Unix ns).
func (k knownVersion) liveAt(now int64) bool { return k.until > now }

func newGuard(c *Cache) *guard {
	g := &guard{c: c, pending: map[string]*pendingWrite{}, wake: make(chan struct{}, 1), done: make(chan struct{})}
	g.oomPatience.Store(int64(oomPatienceDefault))
	g.ctx, g.cancel = context.WithCancel(context.Background())
	g.known = otter.Must(&otter.Options[string, knownVersion]{MaximumSize: knownKeys})
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
			g.state.Store((g.state.Load()>>stateShift+1)<<stateShift | uint64(to))
			switch to {
			case gobreaker.StateOpen:
				g.confirmedDown.Store(false)
				if from == gobreaker.StateClosed {
					g.outages.Add(1)
					g.dmu.Lock()
					g.degradedSince = max(time.Since(monoBase), 1)
					g.dmu.Unlock()
					c.cfg.Logger.Warn(prefix+"Redis unreachable; serving L1 and loaders, remembering writes", "namespace", c.cfg.Namespace)
				}
			case gobreaker.StateClosed:
				g.dmu.Lock()
				if g.degradedSince != 0 {
					g.degradedTotal += time.Since(monoBase) - g.degradedSince
					g.degradedSince = 0
				}
				g.dmu.Unlock()
				g.needFlush.Store(true)
				g.recovering.Store(true)
				c.cfg.Logger.Info(prefix+"Redis reachable again; recovering", "namespace", c.cfg.Namespace)
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

// degradedFor is the time the breaker has not been closed since New, the current outage
// included. It never decreases: both parts are read under dmu.
func (g *guard) degradedFor() time.Duration {
	g.dmu.Lock()
	defer g.dmu.Unlock()
	d := g.degradedTotal
	if g.degradedSince != 0 {
		d += time.Since(monoBase) - g.degradedSince
	}
	return d
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

// learn records that Redis held version v of key at now, for about life.
func (g *guard) learn(key string, v uint64, life time.Duration, now time.Time) {
	if v == 0 || life <= 0 {
		return
	}
	at := now.UnixNano()
	// Most reads see a version already known: a lookup settles them without the bucket lock
	// and write bookkeeping that Compute takes (which would also decline the update). It counts
	// as a use of the key for known's eviction policy, so keys read often stay known.
	if old, ok := g.known.GetIfPresent(key); ok && old.v >= v && old.liveAt(at) {
		return
	}
	g.known.Compute(key, func(old knownVersion, found bool) (knownVersion, otter.ComputeOp) {
		if found && old.v >= v && old.liveAt(at) {
			return old, otter.CancelOp
		}
		return knownVersion{v: v, until: at + int64(life)}, otter.WriteOp
	})
}

// knownVersion is the highest version of key this instance knows outside the pending writes:
// its L1 entry's and the last one seen in Redis.
func (c *Cache) knownVersion(key string, now time.Time) uint64 {
	var v uint64
	if e, ok := c.l1.Get(key); ok {
		v = e.Version
	}
	if k, ok := c.g.known.GetIfPresent(key); ok && k.liveAt(now.UnixNano()) {
		v = max(v, k.v)
	}
	return v
}
