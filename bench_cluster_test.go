package tiercache

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/benchpair"
	"github.com/tiercache/tiercache/internal/redistest"
)

// BenchmarkClusterVsSingle runs the same calls against a 3-master Redis Cluster (ours) and a
// single Redis (base), interleaved, each cache on a client configured as redisconfig builds it
// (ContextTimeoutEnabled), with the same 1000 keys of 1000 bytes. ours/base is the latency ratio
// Cluster ÷ single: what the Cluster client, its per-node pipelines and classic pub/sub's
// broadcast cost per call. On one 2-core machine the three masters share the cores with the
// client, so this shows the per-call cost, never the throughput a shard adds
// (docs/OPERATIONS.md, "Scaling", has the arithmetic).
//
// The invalidations sub-benchmark counts, per node, the messages a subscriber connected to that
// node receives while one instance writes: with classic pub/sub every node carries every message
// (msgs-per-node/write = 1 on each).
func BenchmarkClusterVsSingle(b *testing.B) {
	ctx := context.Background()
	cl := redistest.StartCluster(b, 3)
	srv := redistest.Start(b)
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cl.Addrs(), ContextTimeoutEnabled: true})
	b.Cleanup(func() { cc.Close() })
	so := srv.Options()
	so.ContextTimeoutEnabled = true
	sc := redis.NewClient(so)
	b.Cleanup(func() { sc.Close() })
	open := func(rdb redis.UniversalClient) *Cache {
		c := newCache(b, nil, Options{Redis: rdb, NoJitter: true, L2Timeout: time.Second, Logger: quietLogger()})
		waitFor(b, "subscribed", slack(10*time.Second), c.bp.up.Load)
		return c
	}
	onCluster, onSingle := open(cc), open(sc)
	open(cc) // a subscribed peer on each, so writes publish to a listener
	open(sc)
	keys := benchKeys("scale", benchL2Keys)
	items := make(map[string][]byte, len(keys))
	for i, k := range keys {
		items[k] = benchValue(i, benchL2Value)
	}
	for _, c := range []*Cache{onCluster, onSingle} {
		if err := c.SetMany(ctx, items); err != nil {
			b.Fatal(err)
		}
	}
	n := len(keys)
	get := func(c *Cache) func(int) error {
		return func(i int) error { _, err := c.Get(ctx, keys[i%n], SkipL1()); return err }
	}
	for _, g := range []int{1, 64} {
		b.Run(fmt.Sprintf("L2Hit/g=%d", g), func(b *testing.B) { benchpair.Run(b, g, 20, get(onCluster), get(onSingle)) })
	}
	batches := n / benchMany
	many := func(c *Cache) func(int) error {
		return func(i int) error {
			m, err := c.GetMany(ctx, keys[(i%batches)*benchMany:(i%batches+1)*benchMany], SkipL1())
			if err == nil && len(m) != benchMany {
				err = fmt.Errorf("GetMany returned %d of %d", len(m), benchMany)
			}
			return err
		}
	}
	b.Run("GetMany", func(b *testing.B) { benchpair.Run(b, 1, 2, many(onCluster), many(onSingle)) })
	set := func(c *Cache) func(int) error {
		return func(i int) error { return c.Set(ctx, keys[i%n], items[keys[i%n]]) }
	}
	b.Run("Set/g=8", func(b *testing.B) { benchpair.Run(b, 8, 20, set(onCluster), set(onSingle)) })

	b.Run("invalidations", func(b *testing.B) {
		var got [3]atomic.Int64
		for i, node := range cl.Nodes() {
			ps := node.Client(b).Subscribe(ctx, onCluster.bp.channel)
			b.Cleanup(func() { ps.Close() })
			if _, err := ps.Receive(ctx); err != nil { // the subscription's confirmation
				b.Fatal(err)
			}
			go func() {
				for range ps.Channel() {
					got[i].Add(1)
				}
			}()
		}
		b.ResetTimer()
		for i := range b.N {
			if err := onCluster.Set(ctx, keys[i%n], items[keys[i%n]]); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		waitFor(b, "every node's subscriber to have its messages", slack(10*time.Second), func() bool {
			for i := range got {
				if got[i].Load() < int64(b.N) {
					return false
				}
			}
			return true
		})
		for i := range got {
			b.ReportMetric(float64(got[i].Load())/float64(b.N), fmt.Sprintf("node%d-msgs/write", i))
		}
	})
}

// BenchmarkShardedSubscribe measures what sharded invalidations cost to set up: the time from
// New until an instance hears every master (16384 SSUBSCRIBEs over 3 connections), and the
// memory each subscribed instance adds to the masters (INFO used_memory summed, before and
// after). Each op is one instance opened and kept until the end.
func BenchmarkShardedSubscribe(b *testing.B) {
	cl := redistest.StartCluster(b, 3)
	used := func() int64 {
		var sum int64
		for _, n := range cl.Nodes() {
			info, _ := n.Do(b, "INFO", "memory").(string)
			for line := range strings.SplitSeq(info, "\n") {
				if v, ok := strings.CutPrefix(strings.TrimSpace(line), "used_memory:"); ok {
					m, _ := strconv.ParseInt(v, 10, 64)
					sum += m
				}
			}
		}
		return sum
	}
	before := used()
	b.ResetTimer()
	for range b.N {
		c := newCache(b, nil, Options{Redis: cl.Client(b), Logger: quietLogger(), ShardedPubSub: true})
		waitFor(b, "every shard subscribed", slack(30*time.Second), c.bp.vouched)
	}
	b.StopTimer()
	b.ReportMetric(float64(used()-before)/float64(b.N), "redis-B/instance")
}
