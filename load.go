package tiercache

import (
	"context"
	"fmt"
)

// GetOrLoad returns key's value from L1 or Redis, or calls load once for all concurrent callers of
// this TypedCache that miss the same key (the flight re-checks both tiers before loading). The
// loaded value fills Redis, unless a write landed there since the miss was seen, and then L1.
// load runs with the caller's values but not its cancellation, bounded by LoadTimeout; a caller
// whose ctx ends stops waiting. load may return ErrNotFound; its errors are returned unchanged.
func (t *TypedCache[V]) GetOrLoad(ctx context.Context, key string, load func(context.Context, string) (V, error), opts ...Option) (V, error) {
	c := t.c
	var zero V
	if c.closed.Load() {
		return zero, ErrClosed
	}
	if len(opts) == 0 && c.l1 != nil {
		if e, ok := c.l1.GetIfPresent(key); ok {
			if v, ok := e.val.(V); ok {
				c.st.l1Hits.inc()
				return v, nil
			}
		}
	}
	co, err := c.cfg.call(opts)
	if err != nil {
		return zero, err
	}
	if err := c.checkKey(key); err != nil {
		return zero, err
	}
	if v, ok := t.peekL1(key, co); ok {
		return v, nil
	}
	ch := t.sf.DoChan(key, func() (any, error) {
		return t.loadOne(ctx, key, load, co)
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return zero, r.Err
		}
		return r.Val.(V), nil
	case <-ctx.Done():
		return zero, ctx.Err()
	}
}

// loadOne is the body of one flight: L1, Redis, then the loader and a fill of both tiers.
func (t *TypedCache[V]) loadOne(ctx context.Context, key string, load func(context.Context, string) (V, error), co callOptions) (V, error) {
	c := t.c
	// Re-check L1 inside the flight: a flight that just ended may have filled it.
	if v, ok := t.Peek(key); ok && !co.skipL1 {
		return v, nil
	}
	r := t.newRead(key)
	if c.rdb != nil {
		raw, found, err := c.readOne(ctx, r.rk)
		if err != nil {
			return r.val, fmt.Errorf("tiercache: get %q: %w", key, err)
		}
		if found {
			t.decodeRead(ctx, &r, raw, co)
		}
		if r.hit {
			c.st.l2Hits.Add(1)
			return r.val, nil
		}
		c.st.l2Misses.Add(1)
	}
	lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.LoadTimeout)
	v, err := load(lctx, key)
	cancel()
	if err != nil {
		c.st.loadErrors.Add(1)
		return v, err
	}
	c.st.loads.Add(1)
	t.fill(ctx, []read[V]{r}, map[string]V{key: v}, co)
	return v, nil
}

// fill stores loaded values in Redis with a compare-and-set against the version each read saw,
// then in L1 under the read's generation snapshot. Fill failures are counted, never returned: the
// caller has its value either way.
func (t *TypedCache[V]) fill(ctx context.Context, reads []read[V], loaded map[string]V, co callOptions) {
	c := t.c
	now := c.cfg.Clock.Now()
	ttl := c.jitter(co.ttl)
	if c.rdb == nil {
		for _, r := range reads {
			v, ok := loaded[r.key]
			if !ok || co.skipL1 {
				continue
			}
			it := writeItem[V]{key: r.key, val: v}
			if _, err := t.payload(&it); err == nil {
				c.land(r.key, r.snap, t.entry(v, c.nextLocalVersion(now), c.l1Life(ttl), r.key, it.size))
			}
		}
		return
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
			c.cfg.Logger.Debug("tiercache: loaded value not cached", "key", r.key, "err", err)
			continue
		}
		req.fill, req.ehi, req.elo = true, -1, -1
		if r.seen >= 0 {
			req.ehi, req.elo = splitVersion(r.seenVer)
		}
		c.st.saved.Add(uint64(saved))
		reqs, items, rs = append(reqs, req), append(items, it), append(rs, r)
	}
	if len(reqs) == 0 {
		return
	}
	for i, res := range c.execWrites(ctx, reqs, nil) {
		switch {
		case res.err != nil:
			c.st.l2Errors.Add(1)
		case res.status == statusRefused:
			c.st.staleRefused.Add(1)
		case !co.skipL1:
			c.land(rs[i].key, rs[i].snap, t.entry(items[i].val, res.version, c.l1Life(ttl), items[i].key, items[i].size))
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
	var miss []read[V]
	seen := make(map[string]struct{}, len(keys))
	for _, k := range keys {
		if err := c.checkKey(k); err != nil {
			return nil, nil, fmt.Errorf("tiercache: get %q: %w", k, err)
		}
		if _, dup := seen[k]; dup {
			continue
		}
		seen[k] = struct{}{}
		if v, ok := t.peekL1(k, co); ok {
			out[k] = v
			continue
		}
		miss = append(miss, t.newRead(k))
	}
	if len(miss) == 0 || c.rdb == nil {
		return out, miss, nil
	}
	rks := make([]string, len(miss))
	for i := range miss {
		rks[i] = miss[i].rk
	}
	vals, found, err := c.readMany(ctx, rks)
	if err != nil {
		return out, miss, fmt.Errorf("tiercache: get %d keys: %w", len(rks), err)
	}
	still := miss[:0]
	for i := range miss {
		r := &miss[i]
		if found[i] {
			t.decodeRead(ctx, r, vals[i], co)
		}
		if r.hit {
			c.st.l2Hits.Add(1)
			out[r.key] = r.val
			continue
		}
		c.st.l2Misses.Add(1)
		still = append(still, *r)
	}
	return out, still, nil
}

// GetOrLoadMany returns the values of keys from L1, then Redis (one round trip), then one call of
// load for the keys still missing, whose results fill both tiers (one more round trip). Keys load
// does not return are absent from the map. Duplicate keys are looked up once. Unlike GetOrLoad,
// concurrent calls are not deduplicated against each other.
func (t *TypedCache[V]) GetOrLoadMany(ctx context.Context, keys []string, load func(context.Context, []string) (map[string]V, error), opts ...Option) (map[string]V, error) {
	out, miss, err := t.getMany(ctx, keys, opts)
	if err != nil || len(miss) == 0 {
		return out, err
	}
	co, _ := t.c.cfg.call(opts)
	want := make([]string, len(miss))
	for i := range miss {
		want[i] = miss[i].key
	}
	lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), t.c.cfg.LoadTimeout)
	loaded, err := load(lctx, want)
	cancel()
	if err != nil {
		t.c.st.loadErrors.Add(1)
		return out, err
	}
	t.c.st.loads.Add(1)
	for k, v := range loaded {
		out[k] = v
	}
	t.fill(ctx, miss, loaded, co)
	return out, nil
}
