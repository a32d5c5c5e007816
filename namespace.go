package tiercache

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

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
// message; after a gap they are forgotten and reloaded.

// maxKnownGens bounds the cached generations; past it they are forgotten and reloaded on use.
const maxKnownGens = 100_000

type nsGens struct {
	mu sync.RWMutex
	m  map[string]uint64
}

func (g *nsGens) get(ns string) (uint64, bool) {
	g.mu.RLock()
	v, ok := g.m[ns]
	g.mu.RUnlock()
	return v, ok
}

// raise max-merges a generation and returns the one now known.
func (g *nsGens) raise(ns string, v uint64) uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.m == nil || len(g.m) >= maxKnownGens {
		g.m = map[string]uint64{}
	}
	if cur := g.m[ns]; cur > v {
		return cur
	}
	g.m[ns] = v
	return v
}

func (g *nsGens) forget() {
	g.mu.Lock()
	g.m = nil
	g.mu.Unlock()
}

var bumpScript = redis.NewScript(`
local t = redis.call('TIME')
local g = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if g <= cur then g = cur + 1 end
redis.call('SET', KEYS[1], string.format('%d', g), 'PX', ARGV[4])
if ARGV[1] ~= '' then redis.call('PUBLISH', ARGV[1], ARGV[2] .. 'g ' .. string.format('%d', g) .. ' ' .. ARGV[3]) end
return g
`)

// genKey is where a namespace's generation lives in Redis.
func (c *Cache) genKey(ns string) string {
	return c.cfg.Namespace + ":gen:{" + rediskey.Escape(ns) + "}"
}

// genLife keeps a generation longer than any entry written under it can live.
func (c *Cache) genLife() time.Duration { return max(2*c.cfg.TTL, 24*time.Hour) }

// entryKey is the Redis key of key: redisKey plus the generation of its namespace, if any.
func (c *Cache) entryKey(ctx context.Context, key string) (string, error) {
	rk := c.redisKey(key)
	if c.cfg.NamespaceOf == nil {
		return rk, nil
	}
	ns := c.cfg.NamespaceOf(key)
	if ns == "" {
		return rk, nil
	}
	g, err := c.nsGen(ctx, ns)
	if err != nil || g == 0 {
		return rk, err
	}
	return rk + ":g" + strconv.FormatUint(g, 10), nil
}

// nsGen returns the generation of ns, loading it from Redis the first time.
func (c *Cache) nsGen(ctx context.Context, ns string) (uint64, error) {
	if g, ok := c.gens.get(ns); ok || c.rdb == nil {
		return g, nil
	}
	var s string
	err := c.l2do(ctx, func(ctx context.Context) error {
		var err error
		s, err = c.rdb.Get(ctx, c.genKey(ns)).Result()
		return err
	})
	if errors.Is(err, redis.Nil) {
		s, err = "0", nil
	}
	if err != nil {
		return 0, fmt.Errorf("tiercache: generation of namespace %q: %w", ns, err)
	}
	g, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("tiercache: generation of namespace %q is %q: %w", ns, s, err)
	}
	return c.gens.raise(ns, g), nil
}

// InvalidateNamespace makes every entry whose Options.NamespaceOf is ns unreachable, in Redis and
// in every instance's L1, with one small script in Redis. Writes to the namespace that run
// concurrently may be lost with it. It fails if Options.NamespaceOf is not set.
func (c *Cache) InvalidateNamespace(ctx context.Context, ns string) error {
	if c.closed.Load() {
		return ErrClosed
	}
	if c.cfg.NamespaceOf == nil {
		return errors.New("tiercache: InvalidateNamespace needs Options.NamespaceOf")
	}
	if ns == "" {
		return fmt.Errorf("%w: empty namespace", ErrInvalidKey)
	}
	var g uint64
	if c.rdb == nil {
		cur, _ := c.gens.get(ns)
		g = max(cur+1, uint64(c.cfg.Clock.Now().UnixMilli()))
	} else {
		channel, header := "", ""
		if c.bp != nil {
			channel, header = c.bp.channel, c.bp.header()
		}
		var v int64
		ctx, sp := c.span(ctx, spanInvalidateNamespace, 0)
		err := c.l2do(ctx, func(ctx context.Context) error {
			var err error
			v, err = bumpScript.Run(ctx, c.rdb, []string{c.genKey(ns)}, channel, header, ns, c.genLife().Milliseconds()).Int64()
			return err
		})
		if err != nil {
			return sp.end(fmt.Errorf("tiercache: invalidate namespace %q: %w", ns, err))
		}
		sp.end(nil)
		g = uint64(v)
	}
	c.applyGen(ns, g)
	return nil
}

// applyGen raises ns's generation and drops its L1 entries. Every stripe's hard counter is bumped
// first: fills in flight may have read the namespace's old keys.
func (c *Cache) applyGen(ns string, g uint64) {
	c.gens.raise(ns, g)
	c.dropL1(func(k string) bool { return c.cfg.NamespaceOf(k) == ns })
}
