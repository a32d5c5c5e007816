package tiercache

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/tiercache/tiercache/internal/rediskey"
)

// Namespace generations: InvalidateNamespace drops every entry of a namespace (for example one
// chat session's) on every instance with O(1) work in Redis. A key's namespace is given by
// Options.NamespaceOf. Each namespace has a generation, a hybrid-clock number kept in Redis under
// "<ns>:gen:{<namespace>}" and cached by every instance; it is part of the Redis key of every
// entry in the namespace ("<ns>:{<key>}:g<generation>"), so bumping it makes the old entries
// unreachable at once (they expire on their own). The bump script publishes "g <generation>
// <namespace>"; receivers raise their cached generation and drop the namespace's L1 entries.
// Cached generations only grow (max-merge), so a slow load of the old value cannot win over the
// message; after a gap they are synced again with Redis at their next use (see nsGens.resync).
//
// Redis must not forget a generation while an instance still uses it, or a restarting instance
// would read 0 and use other Redis keys than its long-lived peers. So a cached generation is
// trusted for genRecheck only; then the next use syncs it with syncGenScript, which extends the
// key's life to genLife (> genRecheck) and, if Redis lost the key (eviction), writes back the
// generation this instance knows. A generation key therefore outlives its last use by genLife,
// and every instance using it has synced within genRecheck, when the key had genLife left.

// maxKnownGens bounds the cached generations; past it they are forgotten and reloaded on use.
const maxKnownGens = 100_000

type nsGens struct {
	mu sync.RWMutex
	m  map[string]knownGen
}

// knownGen is a cached generation and when it was last read from or written to Redis.
type knownGen struct {
	g      uint64
	synced time.Time
}

func (g *nsGens) get(ns string) (knownGen, bool) {
	g.mu.RLock()
	v, ok := g.m[ns]
	g.mu.RUnlock()
	return v, ok
}

// raise max-merges a generation seen in Redis at synced and returns the one now known.
func (g *nsGens) raise(ns string, v uint64, synced time.Time) uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.m == nil || len(g.m) >= maxKnownGens {
		g.m = map[string]knownGen{}
	}
	cur := g.m[ns]
	cur.g = max(cur.g, v)
	if synced.After(cur.synced) {
		cur.synced = synced
	}
	g.m[ns] = cur
	return cur.g
}

// resync marks every cached generation due for a sync with Redis at its next use, keeping the
// generation itself: a gap may have swallowed a bump's message (the sync finds the higher
// generation in Redis), but Redis may also have lost the key (a restart with no persistence),
// and an instance that forgot what it knew would then read 0 and use other Redis keys than the
// ones its acknowledged writes went to. The sync max-merges the two and writes back what Redis
// lost.
func (g *nsGens) resync() {
	g.mu.Lock()
	for ns, v := range g.m {
		v.synced = time.Time{}
		g.m[ns] = v
	}
	g.mu.Unlock()
}

// genKey is where a namespace's generation lives in Redis.
func (c *Cache) genKey(ns string) string {
	return c.cfg.Namespace + ":gen:{" + rediskey.Escape(ns) + "}"
}

// genLife keeps a generation longer than any entry written under it can live (its TTL plus
// fail-safe time), and far longer than genRecheck.
func (c *Cache) genLife() time.Duration {
	return max(2*(c.cfg.TTL+max(c.cfg.FailSafeMaxAge, 0)), 24*time.Hour)
}

// genRecheck is how long an instance trusts a cached generation before syncing it again.
func (c *Cache) genRecheck() time.Duration { return min(c.cfg.TTL, c.genLife()/4) }

// entryKey is the Redis key of key: redisKey plus the generation of its namespace, if any.
func (c *Cache) entryKey(ctx context.Context, key string) (string, error) {
	rk, _, err := c.entryKeyGen(ctx, key)
	return rk, err
}

// entryKeyGen is entryKey, also returning the generation the key was built with (0: none).
func (c *Cache) entryKeyGen(ctx context.Context, key string) (string, uint64, error) {
	ns := c.namespaceOf(key)
	if ns == "" {
		return c.redisKey(key), 0, nil
	}
	g, err := c.nsGen(ctx, ns)
	if err != nil {
		return "", 0, err
	}
	return c.genEntryKey(key, g), g, nil
}

// namespaceOf is key's namespace, "" for none (or no Options.NamespaceOf).
func (c *Cache) namespaceOf(key string) string {
	if c.cfg.NamespaceOf == nil {
		return ""
	}
	return c.cfg.NamespaceOf(key)
}

// batchKeys builds the Redis keys of one batch read: entryKey for each, with the keys cut from
// shared chunks and each namespace's generation looked up once per batch (as if all the keys
// were looked up at once). A failed lookup is not remembered: the next key of its namespace
// asks again, as entryKey would.
type batchKeys struct {
	c      *Cache
	chunks keyChunks
	ns     string // the namespace looked up last (when looked), and its generation
	looked bool
	gen    uint64
}

func (b *batchKeys) entryKey(ctx context.Context, key string) (string, error) {
	c := b.c
	ns := c.namespaceOf(key)
	if ns == "" {
		return b.chunks.entryKey(c.cfg.Namespace, key, 0), nil
	}
	if !b.looked || ns != b.ns {
		g, err := c.nsGen(ctx, ns)
		if err != nil {
			return "", err
		}
		b.ns, b.gen, b.looked = ns, g, true
	}
	return b.chunks.entryKey(c.cfg.Namespace, key, b.gen), nil
}

// nsGen returns the generation of ns, syncing it with Redis the first time and then once per
// genRecheck (see syncGenScript), and at every use while the invalidation subscriber is down: a
// cached generation is only as current as the messages heard since it was synced, and while
// nothing can be heard a peer's bump would go unnoticed for up to genRecheck, every write of the
// namespace meanwhile landing in a dead generation (lost to everyone, this instance included once
// it syncs). A failed first sync returns its error; a failed re-sync keeps the generation
// already known.
func (c *Cache) nsGen(ctx context.Context, ns string) (uint64, error) {
	return c.nsGenSync(ctx, ns, false)
}

// nsGenSync is nsGen; strict, it syncs with Redis whenever it can be asked, and a failed sync
// returns its error (the replay must not write under a generation it could not check: see
// guard.retarget).
func (c *Cache) nsGenSync(ctx context.Context, ns string, strict bool) (uint64, error) {
	known, ok := c.gens.get(ns)
	if c.rdb == nil {
		return known.g, nil
	}
	now := c.cfg.Clock.Now()
	if ok && !strict && now.Sub(known.synced) < c.genRecheck() && (c.bp == nil || c.bp.vouched()) {
		return known.g, nil
	}
	var g uint64
	err := c.l2do(ctx, func(ctx context.Context) error {
		v, err := syncGenScript.Run(ctx, c.rdb, []string{c.genKey(ns)}, strconv.FormatUint(known.g, 10), c.genLife().Milliseconds()).Int64()
		g = uint64(v)
		return err
	})
	if err != nil {
		if ok && !strict {
			// Redis cannot be asked now: the generation this instance knows is still the best
			// answer (a bump it missed reaches it as a message or at the next sync), and failing
			// here would turn every read and write of the namespace into an error while degraded.
			return known.g, nil
		}
		return 0, errorf("generation of namespace %q: %w", ns, err)
	}
	return c.gens.raise(ns, g, now), nil
}

// InvalidateNamespace makes every entry whose Options.NamespaceOf is ns unreachable, in Redis and
// in every instance's L1, with one small script in Redis. Writes to the namespace that run
// concurrently may be lost with it. It fails if Options.NamespaceOf is not set. A call that
// fails (ErrUnavailable: its budget ran out) either bumped the generation before it failed or
// never will: the script carries a fence, so it cannot run later and invalidate writes made
// after the caller saw the failure.
func (c *Cache) InvalidateNamespace(ctx context.Context, ns string) error {
	if c.closed.Load() {
		return ErrClosed
	}
	if c.cfg.NamespaceOf == nil {
		return errors.New(prefix + "InvalidateNamespace needs Options.NamespaceOf")
	}
	if ns == "" {
		return fmt.Errorf("%w: empty namespace", ErrInvalidKey)
	}
	var g uint64
	if c.rdb == nil {
		cur, _ := c.gens.get(ns)
		g = max(cur.g+1, uint64(c.cfg.Clock.Now().UnixMilli()))
	} else {
		var v int64
		ctx, sp := c.span(ctx, spanInvalidateNamespace, 0)
		err := c.l2do(ctx, func(ctx context.Context) error {
			if err := ctx.Err(); err != nil {
				return err // nothing sent: take no sequence number
			}
			// The header, and its sequence number, are taken only when the script is sent; a
			// call that then may not have run gets a filler, so peers count no gap for it.
			channel, header, seq := "", "", uint64(0)
			if c.bp != nil {
				channel = c.bp.channel
				header, seq = c.bp.headerSeq()
			}
			var err error
			v, err = bumpScript.Run(ctx, c.rdb, []string{c.genKey(ns)}, channel, header, ns, c.genLife().Milliseconds(), c.fence(ctx)).Int64()
			if err != nil && c.bp != nil {
				c.bp.fill(seq)
			}
			if err == nil && v == 0 {
				// Ran past its fence (this instance's estimate of Redis TIME lagged): nothing
				// changed, and the script published the filler itself.
				return errBumpFenced
			}
			return err
		})
		if err != nil {
			return sp.end(errorf("invalidate namespace %q: %w", ns, err))
		}
		sp.end(nil)
		g = uint64(v)
	}
	c.applyGen(ns, g)
	return nil
}

// applyGen raises ns's generation and drops its L1 entries. Every fill in flight is refused first
// (l1.Cache.Flush): it may have read the namespace's old keys.
//
// g comes from the bump script, which has just given the key a full genLife: it counts as synced.
func (c *Cache) applyGen(ns string, g uint64) {
	c.gens.raise(ns, g, c.cfg.Clock.Now())
	c.l1.Flush(func(k string) bool { return c.cfg.NamespaceOf(k) == ns })
}
