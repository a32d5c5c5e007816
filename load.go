package tiercache

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"runtime/debug"
	"time"

	"github.com/tiercache/tiercache/internal/l1"
	"github.com/tiercache/tiercache/lock"
)

// GetOrLoad returns key's value from L1 or Redis, or calls load once for all concurrent callers of
// this TypedCache that miss the same key (the flight re-checks both tiers before loading); across
// instances a short Redis lease lets one load while the others wait up to LeaseWait for its fill.
// The loaded value fills Redis, unless a write landed there since the miss was seen, and then L1.
//
// The flight belongs to no caller: it runs with the first caller's values (trace span) but not
// its cancellation or deadline, load is bounded by LoadTimeout, and Close cancels it. Each caller
// waits on its own ctx and gets its context's error when that ends first; the flight goes on for
// the others and still fills the cache. A load that panics is an error matching
// ErrLoaderPanicked for every caller of the flight (counted in Stats.LoaderPanics and
// LoadErrors, logged with its stack); the process goes on. With Redis unreachable it goes
// straight to load.
//
// When load fails, or runs past SoftTimeout, and Redis holds the entry past its logical expiry
// but within FailSafeMaxAge, the stale value is returned together with an error matching
// ErrStale (and wrapping the loader's error). Otherwise load's errors, ErrNotFound included, are
// returned unchanged.
func (t *TypedCache[V]) GetOrLoad(ctx context.Context, key string, load func(context.Context, string) (V, error), opts ...Option) (V, error) {
	c := t.c
	var zero V
	if c.closed.Load() {
		return zero, ErrClosed
	}
	if len(opts) == 0 { // the hit path, as in Get (a shared function would not inline)
		if a, ok := c.l1.Val(key); ok {
			if v, ok := t.unbox(a); ok {
				c.st.l1Hits.inc()
				return v, nil
			}
		}
	}
	v, co, hit, err := t.readStart(key, opts)
	if err != nil || hit {
		return v, err
	}
	ctx, sp := c.span(ctx, spanGetOrLoad, 1)
	// The flight is keyed by the key's ticket: a caller that starts after a write or an
	// invalidation of the key must not join a flight that began before it, or it would get the
	// value from before the write.
	ch := t.sf.DoChan(c.l1.Ticket(key).Tag(key), func() (v any, err error) {
		fctx, release, ok := c.detach(ctx)
		if !ok {
			return zero, ErrClosed
		}
		defer release()
		// A panic outside the loader (which callLoader already turns into an error) must not
		// reach singleflight either: DoChan re-panics it in a goroutine nobody can recover.
		defer func() {
			if p := recover(); p != nil {
				v, err = zero, c.loaderPanic(key, p)
			}
		}()
		return t.loadOne(fctx, key, load, co)
	})
	select {
	case r := <-ch:
		sp.setBool(attrShared, r.Shared)
		if r.Err != nil && !errors.Is(r.Err, ErrStale) {
			return zero, sp.end(r.Err)
		}
		return r.Val.(V), sp.end(r.Err)
	case <-ctx.Done():
		return zero, sp.end(ctx.Err())
	}
}

// loadOne is the body of one flight: L1, Redis, then the loader and a fill of both tiers.
func (t *TypedCache[V]) loadOne(ctx context.Context, key string, load func(context.Context, string) (V, error), co callOptions) (V, error) {
	c := t.c
	var zero V
	// Re-check L1 inside the flight: a flight that just ended may have filled it.
	if v, ok := t.Peek(key); ok && !co.skipL1 {
		return v, nil
	}
	r, err := t.lookupL2(ctx, key, co)
	switch {
	case errors.Is(err, ErrUnavailable):
		// Degraded: straight to the loader, and keep the value in L1 alone; one timeout per
		// operation is the budget.
	case err != nil:
		return zero, err
	case r.hit:
		if !r.pending {
			t.maybeRefresh(ctx, &r, load, co)
		}
		return r.val, nil
	}
	reachable := r.rk != ""
	if name := leaseName(c.cfg.Namespace, key); reachable && c.leases != nil && !c.mayHoldLease(name) {
		// The lease counts as ours from the attempt until we know otherwise: an acquire that
		// timed out may still land, and a lease whose fill or release does not reach Redis
		// outlives the flight. Either way our next load of this key must not wait LeaseWait
		// for a fill only we could make.
		c.noteLease(name, time.Now().Add(c.cfg.LeaseTTL))
		var lease *lock.Lease
		err := c.l2do(ctx, func(ctx context.Context) error {
			l, err := c.leases.TryLock(ctx, name)
			lease = l
			return err
		})
		if err != nil && (!errors.Is(err, ErrUnavailable) || errors.Is(err, errRefused)) {
			c.ownLeases.Delete(name) // refused, by the holder or by the breaker: not ours
		}
		switch {
		case err == nil:
			// Released in the background within the L2 budget: the flight's callers must not
			// wait on Redis for it (the lease expires after LeaseTTL anyway).
			defer c.goBackground(ctx, func(ctx context.Context) {
				err := c.l2do(ctx, func(ctx context.Context) error { return lease.Release(ctx) })
				if err == nil || errors.Is(err, lock.ErrNotHeld) {
					c.ownLeases.Delete(name)
				}
			})
		case errors.Is(err, lock.ErrNotLocked):
			// Another instance is loading: wait for its fill, then load ourselves.
			if v, ok := t.awaitFill(ctx, &r, co); ok {
				return v, nil
			}
		}
	}
	return t.runLoader(ctx, &r, load, co)
}

// runLoader calls load for r's key under LoadTimeout, answering with r's fail-safe value when the
// load fails or passes SoftTimeout, and fills both tiers with what it loaded.
func (t *TypedCache[V]) runLoader(ctx context.Context, r *read[V], load func(context.Context, string) (V, error), co callOptions) (V, error) {
	c := t.c
	key := r.key
	type result struct {
		v   V
		err error
	}
	lbg, sp := c.span(ctx, spanLoad, 1)
	sp.setBool(attrLeaseWaited, r.leaseWaited)
	call := func(ctx context.Context) result {
		lctx, cancel := c.loadContext(ctx)
		defer cancel()
		v, err := callLoader(c, lctx, key, load)
		return result{v, err}
	}
	var res result
	if r.hasStale && c.cfg.SoftTimeout > 0 {
		// The load runs in a goroutine of its own (ctx, the flight's, ends with the flight);
		// when the flight stops waiting at SoftTimeout, that goroutine finishes it: counters,
		// span and the fill.
		dctx, release, ok := c.detach(lbg)
		if !ok {
			return r.stale, ErrClosed
		}
		resc := make(chan result, 1)
		late := make(chan bool, 1) // true: the flight answered with the stale value
		rr := *r
		go func() {
			defer release()
			res := call(dctx)
			resc <- res
			if !<-late {
				return
			}
			sp.end(res.err)
			if res.err == nil {
				c.st.loads.Add(1)
				t.fill(dctx, []read[V]{rr}, map[string]V{key: res.v}, co)
			} else {
				c.st.loadErrors.Add(1)
			}
		}()
		soft := time.NewTimer(c.cfg.SoftTimeout)
		select {
		case res = <-resc:
			soft.Stop()
			late <- false
		case <-soft.C:
			late <- true
			sp.softTimeout()
			c.st.staleServed.Add(1)
			return r.stale, fmt.Errorf("%w: %q: the load passed SoftTimeout %v and goes on in the background", ErrStale, key, c.cfg.SoftTimeout)
		}
	} else {
		res = call(lbg)
	}
	sp.endLoad(res.err, r.hasStale)
	if res.err != nil {
		c.st.loadErrors.Add(1)
		if r.hasStale && !errors.Is(res.err, ErrNotFound) {
			c.st.staleServed.Add(1)
			return r.stale, fmt.Errorf("%w: %q: %w", ErrStale, key, res.err)
		}
		return res.v, res.err
	}
	c.st.loads.Add(1)
	t.fill(ctx, []read[V]{*r}, map[string]V{key: res.v}, co)
	return res.v, nil
}

// awaitFill polls Redis for the value another instance is loading under the lease, for up to
// LeaseWait.
func (t *TypedCache[V]) awaitFill(ctx context.Context, r *read[V], co callOptions) (V, bool) {
	c := t.c
	c.st.leaseWaits.Add(1)
	r.leaseWaited = true
	deadline := time.Now().Add(c.cfg.LeaseWait)
	wait := 2 * time.Millisecond
	for time.Now().Before(deadline) && !c.closed.Load() {
		tm := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			tm.Stop()
			return r.val, false
		case <-tm.C:
		}
		raw, found, err := c.readOne(ctx, r.rk)
		if err != nil {
			return r.val, false
		}
		if found {
			t.decodeRead(ctx, r, raw, co)
			if r.hit {
				c.st.l2Hits.Add(1)
				return r.val, true
			}
		}
		wait = min(2*wait, 50*time.Millisecond)
	}
	return r.val, false
}

// maybeRefresh reloads a hot entry in the background, once, when less than EagerRefresh of its
// TTL remains. The refreshed value goes to Redis with the same compare-and-set as a miss's fill,
// against the version r saw: if anything was written since (an application Set, a delete), the
// refresh is refused and the newer write stays. When it lands, its invalidation is published so
// peers drop the old version, and it enters this instance's L1 under r's ticket.
func (t *TypedCache[V]) maybeRefresh(ctx context.Context, r *read[V], load func(context.Context, string) (V, error), co callOptions) {
	c := t.c
	if c.cfg.EagerRefresh <= 0 || r.remaining > time.Duration(c.cfg.EagerRefresh*float64(co.ttl)) {
		return
	}
	if !t.claimRefresh(r.key, r.seenVer) {
		return
	}
	rr := *r
	rr.hit, rr.val = false, *new(V) // only what the fill needs: key, Redis key, seen version, ticket
	key := r.key
	c.goBackground(ctx, func(ctx context.Context) {
		ctx, sp := c.span(ctx, spanRefresh, 1)
		lctx, cancel := c.loadContext(ctx)
		v, err := callLoader(c, lctx, key, load)
		cancel()
		if err != nil {
			c.st.loadErrors.Add(1)
			sp.end(err)
			return
		}
		c.st.loads.Add(1)
		c.st.refreshes.Add(1)
		fco := co
		fco.announce = true
		t.fill(ctx, []read[V]{rr}, map[string]V{key: v}, fco)
		sp.end(nil)
	})
}

// claimRefresh reports whether the caller should refresh key, read at version v: only one
// refresh per version. A marker stays after the refresh, so a read that still saw the old version
// (it raced the refresh's write) does not start a second one.
func (t *TypedCache[V]) claimRefresh(key string, v uint64) bool {
	t.refreshMu.Lock()
	defer t.refreshMu.Unlock()
	if prev, ok := t.refreshed[key]; ok && prev >= v {
		return false
	}
	if t.refreshed == nil || len(t.refreshed) >= maxRefreshMarks {
		t.refreshed = map[string]uint64{}
	}
	t.refreshed[key] = v
	return true
}

// maxRefreshMarks bounds the refresh markers; past it they are forgotten (at worst a key is
// refreshed twice).
const maxRefreshMarks = 10_000

// callLoader calls load, turning a panic into an error matching ErrLoaderPanicked, and records
// its duration (metrics.go).
func callLoader[K, R any](c *Cache, ctx context.Context, k K, load func(context.Context, K) (R, error)) (res R, err error) {
	start := time.Now()
	defer func() {
		c.observeLoad(ctx, time.Since(start))
		if p := recover(); p != nil {
			var zero R
			res, err = zero, c.loaderPanic(k, p)
		}
	}()
	return load(ctx, k)
}

// loaderPanic counts and logs a recovered panic and returns the error its callers get.
func (c *Cache) loaderPanic(k any, p any) error {
	c.st.loadPanics.Add(1)
	c.cfg.Logger.Error(prefix+"loader panicked", "namespace", c.cfg.Namespace, "keys", k, "panic", p, "stack", string(debug.Stack()))
	return fmt.Errorf("%w: %v: %v", ErrLoaderPanicked, k, p)
}

// noteLease records that this instance may hold lease name until until. It also sweeps entries
// past their time, at most once per LeaseTTL, so names whose release never reached Redis do not
// stay forever: the map holds at most the leases taken in the last two LeaseTTLs.
func (c *Cache) noteLease(name string, until time.Time) {
	c.ownLeases.Store(name, until)
	now := time.Now()
	last := c.leaseSwept.Load()
	if now.UnixNano()-last < int64(c.cfg.LeaseTTL) || !c.leaseSwept.CompareAndSwap(last, now.UnixNano()) {
		return
	}
	c.ownLeases.Range(func(k, v any) bool {
		if !now.Before(v.(time.Time)) {
			c.ownLeases.CompareAndDelete(k, v)
		}
		return true
	})
}

// mayHoldLease reports whether this instance may hold the lease name: it took it and has not seen
// its release succeed, or an acquire of it timed out (and may have landed). Waiting for "another
// instance" would then only wait for ourselves.
func (c *Cache) mayHoldLease(name string) bool {
	until, ok := c.ownLeases.Load(name)
	if !ok {
		return false
	}
	if time.Now().Before(until.(time.Time)) {
		return true
	}
	c.ownLeases.Delete(name)
	return false
}

// leaseName turns a key into a lock name the lock package accepts (keys may hold any byte).
func leaseName(namespace, key string) string {
	h := fnv.New128a()
	h.Write([]byte(key))
	return namespace + "-" + hex.EncodeToString(h.Sum(nil))
}

// fill stores loaded values in Redis with a compare-and-set against the version each read saw,
// then in L1 under the read's ticket. Fill failures are counted, never returned: the
// caller has its value either way.
func (t *TypedCache[V]) fill(ctx context.Context, reads []read[V], loaded map[string]V, co callOptions) {
	c := t.c
	now := c.cfg.Clock.Now()
	ttl := c.jitter(co.ttl)
	// landLocal keeps a loaded value in L1 alone: in L1-only mode, or while Redis is unreachable
	// (degraded mode: L1TTL bounds it, and recovery flushes it).
	landLocal := func(r *read[V], it writeItem[V]) {
		if co.skipL1 {
			return
		}
		if it.size == 0 {
			if _, err := t.payload(&it); err != nil {
				return
			}
		}
		// The L1 version must be comparable with what peers announce: the value's own version,
		// else (degraded) 0 so that any invalidation drops it; in L1-only mode, a local one.
		var v uint64
		if vv, ok := any(it.val).(Versioned); ok {
			v = vv.CacheVersion()
		} else if c.rdb == nil {
			v = c.nextLocalVersion(now)
		}
		c.l1.Land(r.key, r.ticket, t.entry(t.box(it.val), v, ttl, it.size))
	}
	var reqs []writeReq
	var items []writeItem[V]
	var rs []*read[V]
	for i := range reads {
		r := &reads[i]
		v, ok := loaded[r.key]
		if !ok {
			continue
		}
		it := writeItem[V]{key: r.key, val: v}
		if c.rdb == nil || r.rk == "" {
			landLocal(r, it)
			continue
		}
		fco := co
		fco.version = 0
		if vv, ok := any(v).(Versioned); ok {
			fco.version = vv.CacheVersion()
		}
		payload, err := t.payload(&it)
		var req writeReq
		var saved int
		if err == nil {
			req, saved, err = t.envelope(&it, payload, fco, now, ttl)
		}
		if err != nil {
			c.cfg.Logger.Debug(prefix+"loaded value not cached", "key", r.key, "err", err)
			continue
		}
		req.rk, req.fill, req.ehi, req.elo = r.rk, true, -1, -1
		if r.seen >= 0 {
			req.ehi, req.elo = splitVersion(r.seenVer)
		}
		if co.announce && c.bp != nil {
			req.channel, req.sharded = c.bp.keyChannel(req.rk)
			req.key = r.key
		}
		c.st.saved.Add(uint64(saved))
		reqs, items, rs = append(reqs, req), append(items, it), append(rs, r)
	}
	if len(reqs) == 0 {
		return
	}
	for i, res := range c.execWrites(ctx, reqs, nil) {
		switch {
		case errors.Is(res.err, ErrUnavailable):
			landLocal(rs[i], items[i])
		case res.err != nil:
			c.st.l2Errors.Add(1)
		case res.status == statusRefused:
			c.st.staleRefused.Add(1)
		case !co.skipL1:
			c.l1.Land(rs[i].key, rs[i].ticket, t.entry(t.box(items[i].val), res.version, ttl, items[i].size))
		}
	}
}

// GetMany returns the values of keys found in L1 or, for the rest, in Redis with one round trip.
// Keys neither tier holds are absent from the map. On a Redis failure it returns what L1 had and
// the error.
func (t *TypedCache[V]) GetMany(ctx context.Context, keys []string, opts ...Option) (map[string]V, error) {
	out, _, err := t.getMany(ctx, keys, opts)
	return out, err
}

// getMany also returns the reads of the keys still missing, for GetOrLoadMany's fill.
func (t *TypedCache[V]) getMany(ctx context.Context, keys []string, opts []Option) (map[string]V, []read[V], error) {
	c := t.c
	if c.closed.Load() {
		return nil, nil, ErrClosed
	}
	co, err := c.cfg.call(opts)
	if err != nil {
		return nil, nil, err
	}
	out := make(map[string]V, len(keys))
	var miss []read[V] // sized for the rest of keys at the first miss
	var unavailable error
	seen := newKeySet(keys)
	var held map[int]l1.Entry // miss index -> the L1 entry to revalidate (candidate)
	var vers []uint64         // per miss, the version to revalidate, 0 for a plain read; nil for none
	bk := batchKeys{c: c}
	for i, k := range keys {
		if err := c.checkKey(k); err != nil {
			return nil, nil, errorf("get %q: %w", k, err)
		}
		if !seen.add(i) {
			continue
		}
		if v, ok := t.peekL1(k, co); ok {
			out[k] = v
			continue
		}
		tk := t.ticket(k, co) // before the pending writes are consulted: see newRead
		if v, found, ok := t.pendingValue(k); ok {
			if found {
				out[k] = v
			}
			continue
		}
		if miss == nil {
			miss = make([]read[V], 0, len(keys)-i)
		}
		if e, ok := t.candidate(k, co); ok { // see TypedCache.lookupL2
			if held == nil {
				held = make(map[int]l1.Entry)
				vers = make([]uint64, len(miss), len(miss)+len(keys)-i)
			}
			held[len(miss)] = e
		}
		if vers != nil {
			vers = append(vers, held[len(miss)].Version) // 0: a plain read
		}
		// newRead, with the batch's Redis keys built together.
		rk, err := bk.entryKey(ctx, k)
		if err != nil && !errors.Is(err, ErrUnavailable) {
			return out, nil, err
		}
		if err != nil {
			unavailable = err
		}
		miss = append(miss, read[V]{key: k, rk: rk, ticket: tk, seen: -1})
	}
	if unavailable != nil {
		return out, miss, errorf("get %d keys: %w", len(miss), unavailable)
	}
	if len(miss) == 0 || c.rdb == nil {
		return out, miss, nil
	}
	rks := make([]string, len(miss))
	for i := range miss {
		rks[i] = miss[i].rk
	}
	ctx, sp := c.span(ctx, spanGetMany, len(rks))
	vals, err := c.readMany(ctx, rks, vers)
	if err != nil {
		return out, miss, sp.end(errorf("get %d keys: %w", len(rks), err))
	}
	now := c.cfg.Clock.Now() // one clock read for the batch, as for one key
	still := miss[:0]
	for i := range miss {
		r := &miss[i]
		if raw, ok := vals[i].(string); ok {
			if e, cand := held[i]; !cand || !t.revalidated(r, raw, e, co, now) {
				t.decodeReadAt(ctx, r, raw, co, now)
			}
		}
		if r.hit {
			out[r.key] = r.val
			continue
		}
		still = append(still, *r)
	}
	// Counted per key, added once per batch.
	c.st.l2Hits.Add(uint64(len(miss) - len(still)))
	c.st.l2Misses.Add(uint64(len(still)))
	sp.setInt(attrHits, int64(len(miss)-len(still)))
	return out, still, sp.end(nil)
}

// GetOrLoadMany returns the values of keys from L1, then Redis (one round trip), then one call of
// load for the keys still missing, whose results fill both tiers (one more round trip). Keys load
// does not return are absent from the map. Duplicate keys are looked up once. Unlike GetOrLoad,
// concurrent calls are not deduplicated against each other.
//
// load runs with ctx's values but not its cancellation, bounded by LoadTimeout, and Close
// cancels it. When ctx ends first, the call returns what the tiers had and ctx's error, and the
// load goes on to fill the cache. A panicking load is an error matching ErrLoaderPanicked.
func (t *TypedCache[V]) GetOrLoadMany(ctx context.Context, keys []string, load func(context.Context, []string) (map[string]V, error), opts ...Option) (map[string]V, error) {
	out, miss, err := t.getMany(ctx, keys, opts)
	if (err != nil && !errors.Is(err, ErrUnavailable)) || len(miss) == 0 {
		return out, err
	}
	c := t.c
	co, _ := c.cfg.call(opts)
	want := make([]string, len(miss))
	for i := range miss {
		want[i] = miss[i].key
	}
	type result struct {
		loaded map[string]V
		err    error
	}
	resc := make(chan result, 1)
	if !c.goBackground(ctx, func(bctx context.Context) {
		lctx, sp := c.span(bctx, spanLoadMany, len(want))
		lctx, cancel := c.loadContext(lctx)
		loaded, err := callLoader(c, lctx, want, load)
		cancel()
		sp.setInt(attrLoaded, int64(len(loaded)))
		sp.end(err)
		if err != nil {
			c.st.loadErrors.Add(1)
			resc <- result{err: err}
			return
		}
		c.st.loads.Add(1)
		t.fill(bctx, miss, loaded, co)
		resc <- result{loaded: loaded}
	}) {
		return out, ErrClosed
	}
	select {
	case r := <-resc:
		if r.err != nil {
			return out, r.err
		}
		for k, v := range r.loaded {
			out[k] = v
		}
		return out, nil
	case <-ctx.Done():
		return out, ctx.Err()
	}
}
