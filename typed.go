package tiercache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sync/singleflight"

	"github.com/tiercache/tiercache/internal/l1"
	"github.com/tiercache/tiercache/internal/wire"
)

// TypedCache is a typed view of a [Cache]: values of type V are encoded with a [Codec] for Redis
// and kept decoded in L1, so an L1 hit neither decodes nor allocates. It is safe for concurrent use.
// Create one per type and keep it: concurrent loads are deduplicated within one TypedCache.
//
// Values are shared: what Get returns may be returned to other callers and must not be modified,
// and a value must not be modified after it is passed to Set.
type TypedCache[V any] struct {
	c     *Cache
	codec Codec[V]
	id    wire.Codec
	sf    singleflight.Group

	refreshMu sync.Mutex        // guards refreshed
	refreshed map[string]uint64 // key -> the version whose eager refresh was started

	byPtr bool // L1 holds a *V, not a V (see box)
}

// Versioned may be implemented by loaded values that carry their own version (for example a
// database row version); fills then use it instead of an automatic one.
type Versioned interface {
	CacheVersion() uint64
}

// Typed returns a typed view of c that encodes values with codec. It panics if codec is nil or
// its ID is over 7 (programmer errors).
func Typed[V any](c *Cache, codec Codec[V]) *TypedCache[V] {
	if codec == nil {
		panic(prefix + "Typed with a nil codec")
	}
	if err := checkCodecID(codec.ID()); err != nil {
		panic(err)
	}
	t := &TypedCache[V]{c: c, codec: codec, id: wire.Codec(codec.ID())}
	switch reflect.TypeFor[V]().Kind() {
	case reflect.Pointer, reflect.UnsafePointer, reflect.Map, reflect.Chan, reflect.Func, reflect.Interface:
	default:
		t.byPtr = true
	}
	return t
}

// box is v as L1 holds it. A V that is not pointer-shaped (a struct, a slice, a string) is put
// in a heap box by the interface anyway; holding a *V instead costs the same one allocation per
// fill and lets a hit copy the value once, from the box into the caller's result, where the
// assertion of a non-pointer type in generic code copies it through temporaries (for a 72-byte
// struct, about a quarter of a typed hit). Pointer-shaped and interface values are held as they
// are.
func (t *TypedCache[V]) box(v V) any {
	if t.byPtr {
		return &v
	}
	return v
}

// unbox is the value of a, held by L1 (see box), if it is a V.
func (t *TypedCache[V]) unbox(a any) (v V, ok bool) {
	if t.byPtr {
		p, ok := a.(*V)
		if ok {
			v = *p
		}
		return v, ok
	}
	v, ok = a.(V)
	return v, ok
}

// Get returns key's value from L1, else from Redis, filling L1. A key neither tier holds gives
// ErrNotFound; a Redis failure is returned wrapped with the key.
func (t *TypedCache[V]) Get(ctx context.Context, key string, opts ...Option) (V, error) {
	c := t.c
	if len(opts) == 0 && !c.closed.Load() {
		if a, ok := c.l1.Val(key); ok {
			// unbox, written out: each branch returns its own copy, where a merged result
			// would be copied through temporaries (a quarter of a hit for a 72-byte struct).
			if t.byPtr {
				if p, ok := a.(*V); ok {
					c.st.l1Hits.inc()
					return *p, nil
				}
			} else if v, ok := a.(V); ok {
				c.st.l1Hits.inc()
				return v, nil
			}
		}
	}
	return t.getSlow(ctx, key, opts)
}

func (t *TypedCache[V]) getSlow(ctx context.Context, key string, opts []Option) (V, error) {
	var zero V
	if t.c.closed.Load() {
		return zero, ErrClosed
	}
	v, co, hit, err := t.readStart(key, opts)
	if err != nil || hit {
		return v, err
	}
	r, err := t.lookupL2(ctx, key, co)
	if err != nil {
		return zero, err
	}
	if !r.hit {
		return zero, ErrNotFound
	}
	return r.val, nil
}

// lookupL2 is the step after L1 of every single-key read. A write remembered during an outage
// answers first (a remembered delete as ErrNotFound); otherwise Redis is read and a live entry
// decoded and landed in L1 (r.hit). Errors are wrapped with the key; when Redis cannot be asked
// they match ErrUnavailable, and r.rk is "" (also in L1-only mode), which makes a later fill
// keep its value in L1 alone.
func (t *TypedCache[V]) lookupL2(ctx context.Context, key string, co callOptions) (read[V], error) {
	c := t.c
	tk := t.ticket(key, co) // before the pending writes are consulted: see newRead
	if v, found, ok := t.pendingValue(key); ok {
		if !found {
			return read[V]{key: key}, ErrNotFound
		}
		return read[V]{key: key, hit: true, pending: true, val: v}, nil
	}
	ctx, sp := c.l2span(ctx, spanGet, 1)
	r, err := t.newRead(ctx, key, tk)
	if err == nil && c.rdb != nil {
		var raw string
		var found bool
		if held, ok := t.candidate(key, co); ok {
			if raw, found, err = c.revalidateOne(ctx, r.rk, held.Version); err == nil && found && !t.revalidated(&r, raw, held, co, c.cfg.Clock.Now()) {
				t.decodeRead(ctx, &r, raw, co)
			}
		} else if raw, found, err = c.readOne(ctx, r.rk); err == nil && found {
			t.decodeRead(ctx, &r, raw, co)
		}
	}
	if err != nil || c.rdb == nil {
		r.rk = ""
		if err != nil {
			err = errorf("get %q: %w", key, err)
		}
		return r, sp.end(err)
	}
	if r.hit {
		c.st.l2Hits.Add(1)
	} else {
		c.st.l2Misses.Add(1)
	}
	sp.setBool(attrHit, r.hit)
	return r, sp.end(nil)
}

// Peek returns key's value if L1 holds it as a V. It never touches Redis.
func (t *TypedCache[V]) Peek(key string) (V, bool) {
	if t.c.closed.Load() {
		var zero V
		return zero, false
	}
	if a, ok := t.c.l1.Val(key); ok {
		return t.unbox(a)
	}
	var zero V
	return zero, false
}

// readStart is the beginning of the slow path of a single-key read (Get, GetOrLoad) once the fast
// path, taken when there are no options, missed L1: it resolves the options, checks the key and,
// with options, looks in L1 (hit says it answered). Without options the fast path has looked
// already, so only the miss is counted: one otter lookup per miss, not two.
func (t *TypedCache[V]) readStart(key string, opts []Option) (v V, co callOptions, hit bool, err error) {
	c := t.c
	if co, err = c.cfg.call(opts); err != nil {
		return v, co, false, err
	}
	if err = c.checkKey(key); err != nil {
		return v, co, false, err
	}
	if len(opts) == 0 {
		if c.cfg.l1Enabled {
			c.st.l1Misses.inc()
		}
		return v, co, false, nil
	}
	v, hit = t.peekL1(key, co)
	return v, co, hit, nil
}

// peekL1 is the L1 step of the slow paths; it counts the hit or miss.
func (t *TypedCache[V]) peekL1(key string, co callOptions) (V, bool) {
	var zero V
	if co.skipL1 || !t.c.cfg.l1Enabled {
		return zero, false
	}
	if v, ok := t.Peek(key); ok {
		t.c.st.l1Hits.inc()
		return v, true
	}
	t.c.st.l1Misses.inc()
	return zero, false
}

// pendingValue answers from a write remembered while Redis is unreachable: ok says there is one,
// found that it is a live value of type V (not a delete, nor a value whose lifetime has ended
// while it waited: it answers as the expired key it would be in Redis).
func (t *TypedCache[V]) pendingValue(key string) (v V, found, ok bool) {
	if t.c.g == nil {
		return v, false, false
	}
	p, ok := t.c.g.lookup(key)
	if !ok {
		return v, false, false
	}
	if !p.liveAt(t.c.cfg.Clock.Now()) {
		return v, false, true
	}
	v, found = p.val.(V)
	return v, found, true
}

// read tracks one key through a Redis read: its L1 ticket (taken before the read), the version
// it saw (for a fill's compare-and-set) and the decoded value.
type read[V any] struct {
	key, rk string
	ticket  l1.Ticket
	seen    int64 // -1 when absent or unreadable, else the stored version (tombstone or expired)
	seenVer uint64
	hit     bool
	pending bool // answered by a write remembered during an outage, not by Redis
	val     V
	// remaining is the logical lifetime left of a hit; stale is a value past its logical expiry
	// but within its fail-safe lifetime (hasStale), for GetOrLoad to fall back on.
	remaining time.Duration
	hasStale  bool
	stale     V
	// leaseWaited: GetOrLoad waited for another instance's fill (for its loader span).
	leaseWaited bool
}

// ticket is key's L1 ticket for a read, or the zero Ticket, which L1 refuses, when the read
// skips L1: nothing it reads lands there (every landing checks SkipL1 first), and a ticket is a
// load of a stripe that a batch pays per key.
func (t *TypedCache[V]) ticket(key string, co callOptions) l1.Ticket {
	if co.skipL1 {
		return l1.Ticket{}
	}
	return t.c.l1.Ticket(key)
}

// newRead starts a Redis read of key with tk, its L1 ticket, and finds its Redis key (which
// depends on its namespace's generation: a namespace bump in between refuses every ticket, and
// the read will not land). The caller takes tk before it consults the writes remembered during
// an outage: a write remembered after that check is applied after it too (remember, then evict
// or put, both of which refuse tk), so what the read brings from Redis cannot land in L1 past it.
func (t *TypedCache[V]) newRead(ctx context.Context, key string, tk l1.Ticket) (read[V], error) {
	r := read[V]{key: key, ticket: tk, seen: -1}
	var err error
	r.rk, err = t.c.entryKey(ctx, key)
	return r, err
}

// candidate returns key's L1 entry if a read of key should revalidate it rather than read the
// whole value: L1 keeps it, as a V, past its L1 lifetime (see l1.Cache.Held).
func (t *TypedCache[V]) candidate(key string, co callOptions) (l1.Entry, bool) {
	c := t.c
	if co.skipL1 || !c.cfg.l1Enabled || c.cfg.NoRevalidate {
		return l1.Entry{}, false
	}
	e, ok := c.l1.Held(key)
	if !ok || e.Life > 0 {
		return l1.Entry{}, false
	}
	if _, ok := t.unbox(e.Val); !ok {
		return l1.Entry{}, false
	}
	return e, true
}

// revalidated takes revalidateScript's reply for r, received at now, whose L1 entry held was a candidate: if Redis
// still holds held's version, raw is its header and r is answered by held's value, landed again
// for a new L1 lifetime; it reports false when raw is a whole value, for decodeRead.
func (t *TypedCache[V]) revalidated(r *read[V], raw string, held l1.Entry, co callOptions, now time.Time) bool {
	h, err := wire.ParseHeader(bytesOf(raw))
	if err != nil || h.Version != held.Version || h.Tombstone || h.Codec != t.id {
		return false
	}
	remaining, ok := t.admit(r, h, now)
	if !ok {
		return true // expired in Redis: a miss
	}
	v, _ := t.unbox(held.Val)
	t.accept(r, v, held.Val, h, remaining, co)
	if r.hit {
		t.c.st.revalidated.Add(1)
	}
	return true
}

// decodeRead decodes what Redis returned for r and, on a live entry, lands it in L1.
func (t *TypedCache[V]) decodeRead(ctx context.Context, r *read[V], raw string, co callOptions) {
	t.decodeReadAt(ctx, r, raw, co, t.c.cfg.Clock.Now())
}

// decodeReadAt is decodeRead at now, when the reply came (a batch reads the clock once).
func (t *TypedCache[V]) decodeReadAt(ctx context.Context, r *read[V], raw string, co callOptions, now time.Time) {
	c := t.c
	h, payload, err := c.dec.Decode(bytesOf(raw))
	if err == nil && !h.Tombstone && h.Codec != t.id {
		err = fmt.Errorf("stored with codec %d, read with codec %d", h.Codec, t.id)
	}
	if err != nil {
		c.corrupt(ctx, r.key, r.rk, raw, err)
		return
	}
	remaining, ok := t.admit(r, h, now)
	if !ok {
		return
	}
	v, err := t.codec.Decode(payload)
	if err != nil {
		c.corrupt(ctx, r.key, r.rk, raw, err)
		r.seen = -1
		return
	}
	t.accept(r, v, nil, h, remaining, co)
}

// admit records what Redis holds for r, whose envelope has header h: the version seen, and for
// the guard the version and how long Redis keeps it, as of now. It returns the logical lifetime left of the
// value, and whether there is a value to use: live, or past its logical expiry but within its
// fail-safe lifetime (remaining <= 0). A tombstone has none.
func (t *TypedCache[V]) admit(r *read[V], h wire.Header, now time.Time) (time.Duration, bool) {
	c := t.c
	r.seen, r.seenVer = 0, h.Version
	if c.g != nil {
		life := c.cfg.TombstoneTTL
		if !h.Tombstone {
			life = c.cfg.TTL
			if end := max(h.Expiry, h.FailSafeExpiry); end != 0 {
				life = time.UnixMilli(end).Sub(now)
			}
		}
		c.g.learn(r.key, h.Version, life, now) // writes made while Redis is unreachable are judged by it
	}
	if h.Tombstone {
		return 0, false
	}
	remaining := time.Duration(1<<63 - 1)
	if h.Expiry != 0 {
		remaining = time.UnixMilli(h.Expiry).Sub(now)
	}
	if remaining <= 0 && (h.FailSafeExpiry == 0 || time.UnixMilli(h.FailSafeExpiry).Before(now)) {
		return 0, false
	}
	return remaining, true
}

// accept answers r with v, the value of the envelope with header h (see admit), and lands a live
// one in L1 unless the call skips it. boxed is v as L1 holds it already (revalidated), or nil.
func (t *TypedCache[V]) accept(r *read[V], v V, boxed any, h wire.Header, remaining time.Duration, co callOptions) {
	if remaining <= 0 {
		r.hasStale, r.stale = true, v
		return
	}
	r.hit, r.val, r.remaining = true, v, remaining
	if co.skipL1 {
		return
	}
	if boxed == nil {
		boxed = t.box(v)
	}
	t.c.l1.Land(r.key, r.ticket, t.entry(boxed, h.Version, remaining, int(h.RawLen)))
}

// entry is the L1 entry of boxed (a value as box makes it), landing now, whose logical lifetime
// ends after remaining (see Cache.l1Life); size is its encoded length. Unless revalidation is
// off, L1 keeps it past its L1 lifetime, for revalidation, until its logical lifetime ends.
func (t *TypedCache[V]) entry(boxed any, version uint64, remaining time.Duration, size int) l1.Entry {
	e := l1.Entry{Val: boxed, Version: version, Life: t.c.l1Life(remaining), Size: size}
	if !t.c.cfg.NoRevalidate {
		e.Keep = remaining
	}
	return e
}

// bytesOf views s as bytes without copying. The result must never be written to; decoded []byte
// values that alias it are documented as read-only.
func bytesOf(s string) []byte { return unsafe.Slice(unsafe.StringData(s), len(s)) }

// Set writes v under key to Redis (unless Redis holds a newer version) and then to L1. After it
// returns nil, this instance never serves an older value of key. It returns ErrStaleVersion when
// Redis holds a newer version (the local copy is dropped), ErrTooLarge when the key or encoded
// value is over a limit (nothing is written), or the Redis error. While Redis is unreachable the
// write is judged against the highest version this instance knows for key (ErrStaleVersion as
// above, L1 then keeps the newer value), remembered and replayed later (docs/CONSISTENCY.md).
func (t *TypedCache[V]) Set(ctx context.Context, key string, v V, opts ...Option) error {
	ctx, sp := t.c.l2span(ctx, spanSet, 1)
	return sp.end(t.write(ctx, []writeItem[V]{{key: key, val: v}}, opts))
}

// Delete removes key from both tiers. Redis keeps a tombstone with the delete's version for
// TombstoneTTL so that a slower reader cannot fill the old value back.
func (t *TypedCache[V]) Delete(ctx context.Context, key string, opts ...Option) error {
	ctx, sp := t.c.l2span(ctx, spanDelete, 1)
	return sp.end(t.write(ctx, []writeItem[V]{{key: key, del: true}}, opts))
}

// SetMany writes all items in one Redis round trip (a pipeline). Every key and value is checked
// before anything is written. Per-key failures are joined into the returned error, each naming its
// key; keys that succeeded are written.
func (t *TypedCache[V]) SetMany(ctx context.Context, items map[string]V, opts ...Option) error {
	ws := make([]writeItem[V], 0, len(items))
	for k, v := range items {
		ws = append(ws, writeItem[V]{key: k, val: v})
	}
	ctx, sp := t.c.l2span(ctx, spanSetMany, len(ws))
	return sp.end(t.write(ctx, ws, opts))
}

// DeleteMany deletes keys in one Redis round trip, leaving tombstones.
func (t *TypedCache[V]) DeleteMany(ctx context.Context, keys []string, opts ...Option) error {
	ws := make([]writeItem[V], len(keys))
	for i, k := range keys {
		ws[i] = writeItem[V]{key: k, del: true}
	}
	ctx, sp := t.c.l2span(ctx, spanDeleteMany, len(ws))
	return sp.end(t.write(ctx, ws, opts))
}

type writeItem[V any] struct {
	key    string
	val    V
	del    bool
	size   int       // raw payload length
	ticket l1.Ticket // the key's ticket from before the write was sent (see l1.Cache.Put)
}

func (t *TypedCache[V]) write(ctx context.Context, items []writeItem[V], opts []Option) error {
	c := t.c
	if c.closed.Load() {
		return ErrClosed
	}
	co, err := c.cfg.call(opts)
	if err != nil {
		return err
	}
	now := c.cfg.Clock.Now()
	ttl := c.jitter(co.ttl)
	// Encode and check everything first: a bad item fails the call before anything is written.
	reqs := make([]writeReq, len(items))
	for i := range items {
		it := &items[i]
		if err := c.checkKey(it.key); err != nil {
			return errorf("write %q: %w", it.key, err)
		}
		if b, ok := any(it.val).([]byte); ok && !it.del {
			it.val = any(bytes.Clone(b)).(V) // L1 keeps its own copy of caller-owned bytes
		}
		payload, err := t.payload(it)
		if err != nil {
			return err
		}
		it.ticket = c.l1.Ticket(it.key)
		if c.rdb == nil {
			continue
		}
		req, saved, err := t.envelope(it, payload, co, now, ttl)
		if err == nil {
			req.rk, req.gen, err = c.entryKeyGen(ctx, it.key)
		}
		if err != nil {
			return err
		}
		reqs[i] = req
		c.st.saved.Add(uint64(saved))
	}
	if c.rdb == nil {
		for i := range items {
			v := co.version
			if v == 0 {
				v = c.nextLocalVersion(now)
			}
			t.apply(&items[i], co, ttl, v)
		}
		return nil
	}
	var tail tailFunc
	coalesce := c.bp != nil && len(reqs) == 1 && c.cfg.CoalesceWindow > 0
	switch {
	case c.bp == nil || coalesce:
	case len(reqs) == 1:
		// The header, and its sequence number, are taken when the script is sent (Cache.header).
		reqs[0].channel, reqs[0].sharded = c.bp.keyChannel(reqs[0].rk)
		reqs[0].key = items[0].key
	default:
		keys := make([]string, len(items))
		vers := make([]uint64, len(items))
		for i := range items {
			keys[i], vers[i] = items[i].key, co.version
		}
		tail = func() (string, string, uint64) {
			msg, seq := c.bp.batchMessage(keys, vers)
			return c.bp.channel, msg, seq
		}
	}
	res := c.execWrites(ctx, reqs, tail)
	if coalesce && res[0].err == nil && res[0].status != statusRefused {
		c.bp.enqueue(items[0].key, res[0].version)
	}
	var errs []error
	for i := range items {
		it := &items[i]
		switch r := res[i]; {
		case errors.Is(r.err, ErrUnavailable):
			// Degraded mode: judge the write by version as Redis would, remember it for the
			// replay and answer from L1 meanwhile.
			p := &pendingWrite{req: reqs[i], key: it.key, del: it.del, until: now.Add(ttl)}
			if !it.del {
				p.val = it.val
			}
			v, err := c.g.remember(p, co.version, c.knownVersion(it.key, now), now)
			switch {
			case errors.Is(err, errPendingSame):
				// Acknowledged, nothing changes: L1 keeps what was remembered first.
			case errors.Is(err, ErrStaleVersion):
				// As Redis would refuse it. L1 keeps the newer value this instance knows.
				c.st.staleRefused.Add(1)
				errs = append(errs, fmt.Errorf("%w: %q: version %d is known (Redis unreachable), write had %d", ErrStaleVersion, it.key, v, co.version))
			case err != nil:
				c.l1.Evict(it.key)
				errs = append(errs, errorf("write %q: %w", it.key, err))
			default:
				t.apply(it, co, ttl, v)
			}
		case r.err != nil:
			c.st.l2Errors.Add(1)
			c.l1.Evict(it.key)
			errs = append(errs, errorf("write %q: %w", it.key, r.err))
		case r.status == statusRefused:
			c.st.staleRefused.Add(1)
			c.g.learn(it.key, r.version, c.cfg.TombstoneTTL, now)
			c.l1.Evict(it.key)
			errs = append(errs, fmt.Errorf("%w: %q: Redis holds version %d, write had %d", ErrStaleVersion, it.key, r.version, co.version))
		default:
			c.g.learn(it.key, r.version, time.Duration(reqs[i].px)*time.Millisecond, now)
			c.g.forget(it.key, r.version) // a remembered older write must not answer reads
			t.apply(it, co, ttl, r.version)
		}
	}
	return errors.Join(errs...)
}

// apply makes an acknowledged write visible in L1 (or evicts for deletes and SkipL1).
func (t *TypedCache[V]) apply(it *writeItem[V], co callOptions, ttl time.Duration, version uint64) {
	c := t.c
	if it.del {
		c.st.deletes.Add(1)
		c.l1.Evict(it.key)
		return
	}
	c.st.sets.Add(1)
	if co.skipL1 {
		c.l1.Evict(it.key)
		return
	}
	c.l1.Put(it.key, it.ticket, t.entry(t.box(it.val), version, ttl, it.size))
}

// payload encodes the value of a write (nil for deletes), checks it against MaxDecodedLen and
// records its size, which is also its L1 weight.
func (t *TypedCache[V]) payload(it *writeItem[V]) ([]byte, error) {
	if it.del {
		return nil, nil
	}
	payload, err := t.codec.Encode(it.val)
	if err != nil {
		return nil, errorf("encode %q: %w", it.key, err)
	}
	if max := t.c.cfg.MaxDecodedLen; len(payload) > max {
		return nil, fmt.Errorf("%w: value of %q is %d bytes, over MaxDecodedLen %d", ErrTooLarge, it.key, len(payload), max)
	}
	it.size = len(payload)
	return payload, nil
}

// envelope builds the write request of one item: the envelope, compressed when it pays, checked
// against MaxValueLen.
func (t *TypedCache[V]) envelope(it *writeItem[V], payload []byte, co callOptions, now time.Time, ttl time.Duration) (writeReq, int, error) {
	c := t.c
	h := wire.Header{Codec: t.id, Version: co.version, Tombstone: it.del}
	life := ttl
	if it.del {
		life = c.cfg.TombstoneTTL
	} else {
		h.Expiry = now.Add(ttl).UnixMilli()
		if c.cfg.FailSafeMaxAge > 0 {
			life += c.cfg.FailSafeMaxAge
			h.FailSafeExpiry = now.Add(life).UnixMilli()
		}
	}
	env, saved := c.enc.Encode(nil, h, payload)
	if len(env) > c.cfg.MaxValueLen {
		return writeReq{}, 0, fmt.Errorf("%w: value of %q is %d bytes stored, over MaxValueLen %d", ErrTooLarge, it.key, len(env), c.cfg.MaxValueLen)
	}
	hi, lo := splitVersion(co.version)
	return writeReq{env: env, px: life.Milliseconds(), hi: hi, lo: lo}, saved, nil
}
