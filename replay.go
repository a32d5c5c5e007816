package tiercache

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// The outage replay: writes acknowledged while Redis was unreachable are remembered
// (guard.remember), answer this instance's reads (guard.lookup), and are written back with their
// versions when Redis answers again (guard.recover), with their invalidations.

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
		c.l1.Flush(func(k string) bool { return !keep[k] })
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
				c.l1.Evict(k) // what L1 holds of it has expired too, or is older
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
					c.cfg.Logger.Warn(prefix+"Redis refuses remembered writes for memory (OOM); keeping them for reads of this instance and retrying for up to 30 s",
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
					c.l1.Evict(p.key)
				}
				continue
			case r.status == statusRefused:
				g.superseded.Add(1) // someone wrote a newer version meanwhile
				if current {
					c.l1.Evict(p.key)
				}
			case p.auto && current:
				c.l1.Evict(p.key) // L1 has this instance's local version, not the one Redis assigned
			}
			g.learn(p.key, r.version, time.Duration(p.req.px)*time.Millisecond, now)
			g.replayed.Add(1)
			replayed++
		}
		g.mu.Unlock()
		if rejected > 0 {
			c.cfg.Logger.Warn(prefix+"Redis rejected remembered writes for good; dropped them",
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
				c.l1.Evict(p.key)
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
