package tiercache

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/redistest"
)

// TestKeySlot: keySlot is Redis Cluster's slot function (the specification's examples and
// CRC-16/XMODEM's check value), and every slot's tag hashes to that slot.
func TestKeySlot(t *testing.T) {
	if got := crc16("123456789"); got != 0x31C3 {
		t.Errorf("crc16(123456789) = %#x, want 0x31c3", got)
	}
	for key, want := range map[string]int{
		"foo": 12182, "bar": 5061, "{user1000}.following": keySlot("user1000"),
		"foo{}{bar}": keySlot("foo{}{bar}"), "foo{{bar}}": keySlot("{bar"), "foo{bar}{zap}": keySlot("bar"),
	} {
		if got := keySlot(key); got != want {
			t.Errorf("keySlot(%q) = %d, want %d", key, got, want)
		}
	}
	if keySlot("foo{}{bar}") != int(crc16("foo{}{bar}"))%clusterSlots {
		t.Errorf("an empty hash tag must hash the whole key")
	}
	for s := range clusterSlots {
		if got := keySlot(slotTag(s)); got != s {
			t.Fatalf("slotTag(%d) = %q, which hashes to %d", s, slotTag(s), got)
		}
	}
}

// spublishCalls reads how many SPUBLISH commands node ran (scripts' included).
func spublishCalls(t *testing.T, node *redistest.Server) int {
	t.Helper()
	info, _ := node.Do(t, "INFO", "commandstats").(string)
	for line := range strings.SplitSeq(info, "\n") {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), "cmdstat_spublish:calls="); ok {
			n, _ := strconv.Atoi(rest[:strings.IndexByte(rest, ',')])
			return n
		}
	}
	return 0
}

// shardedPair opens two caches with sharded invalidations on cl and waits until both hear
// every master.
func shardedPair(t *testing.T, cl *redistest.Cluster) (a, b *Cache) {
	t.Helper()
	open := func() *Cache {
		c := newCache(t, nil, Options{Redis: cl.Client(t), Logger: quietLogger(), ShardedPubSub: true, L1TTL: time.Minute})
		waitFor(t, "every shard subscribed", slack(10*time.Second), c.bp.vouched)
		return c
	}
	return open(), open()
}

// TestClusterShardedInvalidation: with ShardedPubSub a write's message is published only on the
// master of its key's slot (each master's SPUBLISH count grows by the writes of its own keys,
// where classic pub/sub forwards every message to every node), and peers hear it: single
// writes, fills and batches (whose one message stays on the classic channel).
func TestClusterShardedInvalidation(t *testing.T) {
	cl := redistest.ParallelCluster(t, 3)
	ctx := context.Background()
	a, b := shardedPair(t, cl)
	nodes := cl.Nodes()
	perNode := map[*redistest.Server]int{}
	var keys []string
	for i := range 30 {
		k := fmt.Sprintf("k%d", i)
		keys = append(keys, k)
		perNode[nodeOf(t, cl, a.redisKey(k))]++
	}
	if len(perNode) != 3 {
		t.Fatalf("the keys span %d nodes, want 3", len(perNode))
	}
	before := make([]int, len(nodes))
	for i, n := range nodes {
		before[i] = spublishCalls(t, n)
	}
	for _, k := range keys {
		if err := a.Set(ctx, k, []byte("v1")); err != nil {
			t.Fatal(err)
		}
	}
	for i, n := range nodes {
		if got := spublishCalls(t, n) - before[i]; got != perNode[n] {
			t.Errorf("node %s ran %d SPUBLISH for 30 writes, want %d (the writes of its own keys)", n.Addr(), got, perNode[n])
		}
	}
	for _, k := range keys {
		if v, err := b.Get(ctx, k); err != nil || string(v) != "v1" {
			t.Fatalf("b.Get(%s) = %q, %v; want v1", k, v, err)
		}
	}
	if err := a.Set(ctx, keys[0], []byte("v2")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "b to drop "+keys[0]+" (single write)", slack(5*time.Second), func() bool { _, ok := b.Peek(keys[0]); return !ok })
	items := map[string][]byte{}
	for _, k := range keys {
		items[k] = []byte("v3")
	}
	if err := a.SetMany(ctx, items); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "b to serve the batch's values", slack(5*time.Second), func() bool {
		got, err := b.GetMany(ctx, keys)
		if err != nil {
			return false
		}
		for _, k := range keys {
			if string(got[k]) != "v3" {
				return false
			}
		}
		return true
	})
	if s := b.Stats(); s.Gaps != 0 {
		t.Errorf("b counted %d gaps on a steady cluster, want 0", s.Gaps)
	}
}

// moveSlot moves slot, with its keys, from node from to node to, as redis-cli --cluster reshard
// does (IMPORTING, MIGRATING, MIGRATE, then NODE on every node).
func moveSlot(t *testing.T, cl *redistest.Cluster, slot int, from, to *redistest.Server) {
	t.Helper()
	id := func(n *redistest.Server) string { s, _ := n.Do(t, "CLUSTER", "MYID").(string); return s }
	fromID, toID := id(from), id(to)
	to.Do(t, "CLUSTER", "SETSLOT", slot, "IMPORTING", fromID)
	from.Do(t, "CLUSTER", "SETSLOT", slot, "MIGRATING", toID)
	for {
		keys, _ := from.Do(t, "CLUSTER", "GETKEYSINSLOT", slot, 100).([]any)
		if len(keys) == 0 {
			break
		}
		args := []any{"MIGRATE", "127.0.0.1", to.Port(), "", 0, 5000, "KEYS"}
		from.Do(t, append(args, keys...)...)
	}
	for _, n := range cl.Nodes() {
		n.Do(t, "CLUSTER", "SETSLOT", slot, "NODE", toID)
	}
}

// TestClusterShardedFollowsReshard: after a slot moves to another master, its writes' messages
// are published there, and the shard subscriptions follow (Redis unsubscribes the old owner's
// subscribers; the slot map changes): a peer hears the key's next write again.
func TestClusterShardedFollowsReshard(t *testing.T) {
	cl := redistest.ParallelCluster(t, 3)
	ctx := context.Background()
	a, b := shardedPair(t, cl)
	const k = "moving"
	rk := a.redisKey(k)
	from := nodeOf(t, cl, rk)
	to := cl.Nodes()[0]
	if to == from {
		to = cl.Nodes()[1]
	}
	if err := a.Set(ctx, k, []byte("v1")); err != nil {
		t.Fatal(err)
	}
	if v, err := b.Get(ctx, k); err != nil || string(v) != "v1" {
		v2, err2 := b.Get(ctx, k, SkipL1())
		raw, err3 := b.rdb.Get(ctx, rk).Result()
		t.Fatalf("b.Get = %q, %v; want v1 (again %q %v; raw %q %v; stats %+v)", v, err, v2, err2, raw, err3, b.Stats())
	}
	moveSlot(t, cl, keySlot(rk), from, to)
	for _, c := range []*Cache{a, b} {
		c.rdb.(*redis.ClusterClient).ReloadState(ctx)
	}
	// Once b hears every master again, it holds the key in L1 and a's next write must reach it
	// (or b would serve the old value for its minute in L1). A restart of the subscriptions in
	// between (a gap, which flushes L1) voids the round.
	for round := 2; ; round++ {
		if round > 10 {
			t.Fatal("every round was voided by a restart of the shard subscriptions")
		}
		waitFor(t, "b to hear every master again", slack(10*time.Second), b.bp.vouched)
		gaps := b.Stats().Gaps
		if _, err := b.Get(ctx, k); err != nil {
			t.Fatal(err)
		}
		v := fmt.Sprint("v", round)
		if err := a.Set(ctx, k, []byte(v)); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "b to serve "+v+" of the moved key", slack(5*time.Second), func() bool {
			got, err := b.Get(ctx, k)
			return err == nil && string(got) == v
		})
		if b.Stats().Gaps == gaps {
			break
		}
	}
	if s := b.Stats(); s.Gaps == 0 {
		t.Errorf("b counted no gap across the reshard: its shard subscriptions did not restart")
	}
}
