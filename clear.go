package tiercache

import (
	"context"
	"strings"
	"sync/atomic"

	"github.com/redis/go-redis/v9"
)

// Clear removes every entry and tombstone of the cache from Redis (SCAN and UNLINK in batches, on
// every master of a Cluster; never FLUSHDB or FLUSHALL), flushes this instance's L1 and tells
// every peer to flush theirs. It removes only keys laid out as the cache's entries,
// "<namespace>:{<key>}" and "<namespace>:{<key>}:g<generation>" (see isEntryKey): not the keys of
// another cache whose namespace starts with this one ("app:v2" when this is "app"), not namespace
// generations, stampede leases or anything else stored under the namespace (contextd's event
// streams and their tokens). Writes that run concurrently with Clear may survive it. It returns the
// number of Redis keys removed.
func (c *Cache) Clear(ctx context.Context) (int64, error) {
	if c.closed.Load() {
		return 0, ErrClosed
	}
	c.flushL1()
	if c.rdb == nil {
		return 0, nil
	}
	ctx, sp := c.span(ctx, spanClear, 0)
	var removed atomic.Int64 // masters are scanned concurrently
	match := globEscape(c.cfg.Namespace) + ":{*"
	scan := func(ctx context.Context, node redis.Cmdable) error {
		iter := node.Scan(ctx, 0, match, 1000).Iterator()
		batch := make([]string, 0, 1000)
		unlink := func() error {
			if len(batch) == 0 {
				return nil
			}
			// One UNLINK per key: on a Cluster node the keys of one batch span many slots.
			pipe := node.Pipeline()
			for _, k := range batch {
				pipe.Unlink(ctx, k)
			}
			cmds, err := pipe.Exec(ctx)
			for _, cmd := range cmds {
				removed.Add(cmd.(*redis.IntCmd).Val())
			}
			batch = batch[:0]
			return err
		}
		for iter.Next(ctx) {
			if !c.isEntryKey(iter.Val()) {
				continue
			}
			if batch = append(batch, iter.Val()); len(batch) == cap(batch) {
				if err := unlink(); err != nil {
					return err
				}
			}
		}
		if err := iter.Err(); err != nil {
			return err
		}
		return unlink()
	}
	var err error
	if cc, ok := c.rdb.(*redis.ClusterClient); ok {
		err = cc.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error { return scan(ctx, node) })
	} else {
		err = scan(ctx, c.rdb)
	}
	if err == nil && c.bp != nil {
		err = c.bp.publishFlush(ctx)
	}
	c.flushL1() // again: fills that read Redis during the scan must not land
	sp.setInt(attrRemoved, removed.Load())
	if err != nil {
		return removed.Load(), sp.end(errorf("clear: %w", err))
	}
	return removed.Load(), sp.end(nil)
}

// isEntryKey reports whether rk is laid out as one of the cache's entries (see redisKey and
// entryKey): "<namespace>:{<escaped key>}", optionally followed by ":g<generation>". An escaped
// key never holds a brace, so the first '}' ends the hash tag.
func (c *Cache) isEntryKey(rk string) bool {
	rest, ok := strings.CutPrefix(rk, c.cfg.Namespace+":{")
	if !ok {
		return false
	}
	tag, suffix, ok := strings.Cut(rest, "}")
	if !ok || tag == "" || strings.Contains(tag, "{") {
		return false
	}
	if suffix == "" {
		return true
	}
	gen, ok := strings.CutPrefix(suffix, ":g")
	if !ok || gen == "" {
		return false
	}
	for _, r := range gen {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}

// globEscape quotes the characters SCAN's MATCH pattern treats specially.
func globEscape(s string) string {
	if !strings.ContainsAny(s, `*?[]\^`) {
		return s
	}
	var sb strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`*?[]\^`, r) {
			sb.WriteByte('\\')
		}
		sb.WriteRune(r)
	}
	return sb.String()
}
