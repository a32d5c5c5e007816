package tiercache

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Sharded invalidations (Options.ShardedPubSub, Redis Cluster only). A write's message goes out
// with SPUBLISH, from inside the write script as before, on a channel of the written key's hash
// slot: "<namespace>:invalidate:{<tag>}", where <tag> is a short string chosen once per slot so
// that the channel hashes to that slot. Redis Cluster delivers a shard channel's messages only on
// the shard that owns its slot, so each master carries the messages of its own keys instead of
// every message of the namespace (classic pub/sub forwards every message to every node).
//
// Receiving: besides the classic subscription (which still carries batch, flush, generation and
// filler messages), one loop per master subscribes to the channels of the slots that master owns
// (runShards), on a connection of its own to that node; go-redis's own sharded subscriptions
// across several shards are not used (its issues 3133 and 3099). The messages of all loops feed
// one handler, so each origin keeps one sequence and a hole stays a gap (handle, under hmu). When
// a loop fails, Redis unsubscribes a loop from a slot that moved away (a reshard), a node stops
// answering pings, or the slot map the client holds changes (checked every shardCheck), every
// loop is stopped, the shards count as down (L1 entries capped as with the classic subscriber
// down) and they are subscribed again from the new map, after which L1 is flushed once.

// clusterSlots is the number of hash slots of a Redis Cluster.
const clusterSlots = 16384

// shardCheck is how often runShards compares the client's slot map with the one it subscribed by.
const shardCheck = time.Second

var (
	slotTagsOnce sync.Once
	slotTags     []string // slotTags[s] hashes to slot s
)

// slotTag returns the short string that hashes to slot s, found once per process: the base-36
// numbers in order, each kept for the first slot it hashes to (about 170,000 hashes for all
// slots, a few milliseconds).
func slotTag(s int) string {
	slotTagsOnce.Do(func() {
		slotTags = make([]string, clusterSlots)
		for i, left := uint64(0), clusterSlots; left > 0; i++ {
			t := strconv.FormatUint(i, 36)
			if sl := keySlot(t); slotTags[sl] == "" {
				slotTags[sl] = t
				left--
			}
		}
	})
	return slotTags[s]
}

// keySlot is the hash slot of a Redis key, as Redis Cluster computes it: CRC16 (XMODEM) of the
// hash tag (the bytes between the first '{' and the next '}', when not empty) or of the key.
func keySlot(key string) int {
	for i := 0; i < len(key); i++ {
		if key[i] == '{' {
			for j := i + 1; j < len(key); j++ {
				if key[j] == '}' {
					if j > i+1 {
						key = key[i+1 : j]
					}
					return int(crc16(key)) % clusterSlots
				}
			}
			break
		}
	}
	return int(crc16(key)) % clusterSlots
}

// crc16 is CRC-16/XMODEM (polynomial 0x1021, initial 0), the checksum of Redis Cluster's key
// slots (the Cluster specification's reference implementation, bit by bit).
func crc16(s string) uint16 {
	var crc uint16
	for i := 0; i < len(s); i++ {
		crc ^= uint16(s[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc
}

// shardChannel is the shard channel of the invalidations of slot s.
func (b *backplane) shardChannel(s int) string { return shardChannelOf(b.channel, s) }

// shardChannelOf is the shard channel of slot s beside the classic channel channel.
func shardChannelOf(channel string, s int) string { return channel + ":{" + slotTag(s) + "}" }

// keyChannel is the channel a write of Redis key rk publishes its message on, and whether it is
// a shard channel (SPUBLISH).
func (b *backplane) keyChannel(rk string) (string, bool) {
	if b.cc == nil {
		return b.channel, false
	}
	return b.shardChannel(keySlot(rk)), true
}

// shardMap groups the slots by the address of the master that owns them, as the cluster client
// sees it now, with that master's client.
type shardMap map[string]*shardNode

type shardNode struct {
	client *redis.Client
	slots  []int
}

func (b *backplane) shardMap(ctx context.Context) (shardMap, error) {
	m := shardMap{}
	for s := range clusterSlots {
		cl, err := b.cc.MasterForKey(ctx, slotTag(s))
		if err != nil {
			return nil, err
		}
		addr := cl.Options().Addr
		n := m[addr]
		if n == nil {
			n = &shardNode{client: cl}
			m[addr] = n
		}
		n.slots = append(n.slots, s)
	}
	return m, nil
}

// same reports whether m and o give every slot to the same address.
func (m shardMap) same(o shardMap) bool {
	if len(m) != len(o) {
		return false
	}
	for addr, n := range m {
		p := o[addr]
		if p == nil || len(p.slots) != len(n.slots) {
			return false
		}
		for i := range n.slots {
			if n.slots[i] != p.slots[i] {
				return false
			}
		}
	}
	return true
}

// errTopology ends the shard loops when the slot map changed.
var errTopology = errors.New(prefix + "sharded invalidations: the cluster's slot map changed")

// runShards keeps one subscription per master until stop, starting them all again (with
// capped exponential backoff and jitter) whenever one fails or the slot map changes.
func (b *backplane) runShards() {
	defer close(b.shardsDone)
	backoff := 10 * time.Millisecond
	for b.ctx.Err() == nil {
		err := b.shardRound()
		if b.ctx.Err() != nil {
			return
		}
		if errors.Is(err, errTopology) {
			backoff = 10 * time.Millisecond
		}
		b.markDown(&b.shardsUp, err)
		b.cc.ReloadState(b.ctx)
		if !b.pause(&backoff) {
			return
		}
	}
}

// shardRound subscribes every master to its slots' channels and returns why that ended.
func (b *backplane) shardRound() error {
	m, err := b.shardMap(b.ctx)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(b.ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	errc := make(chan error, len(m))
	ready := make(chan struct{}, len(m))
	for _, n := range m {
		wg.Go(func() { errc <- b.shardLoop(ctx, n, func() { ready <- struct{}{} }) })
	}
	tick := time.NewTicker(shardCheck)
	defer tick.Stop()
	for waiting := len(m); ; {
		select {
		case <-ready:
			if waiting--; waiting == 0 {
				b.markUp(&b.shardsUp)
			}
		case err := <-errc:
			return err
		case <-tick.C:
			now, err := b.shardMap(ctx)
			if err != nil {
				return err
			}
			if !now.same(m) {
				return errTopology
			}
		case <-b.ctx.Done():
			return b.ctx.Err()
		}
	}
}

// shardLoop subscribes one master to the channels of its slots and reads the subscription until
// it fails or ctx ends; up is called once every channel is confirmed.
func (b *backplane) shardLoop(ctx context.Context, n *shardNode, up func()) error {
	ps := n.client.Subscribe(ctx)
	b.mu.Lock()
	if ctx.Err() != nil {
		b.mu.Unlock()
		_ = ps.Close()
		return ctx.Err()
	}
	b.shardPS[ps] = struct{}{}
	b.mu.Unlock()
	stop := context.AfterFunc(ctx, func() { _ = ps.Close() })
	defer func() {
		stop()
		b.mu.Lock()
		delete(b.shardPS, ps)
		b.mu.Unlock()
		_ = ps.Close()
	}()
	// One SSUBSCRIBE per slot: a command may only name channels of one slot. go-redis writes
	// each without waiting for its confirmation; receive counts them.
	for _, s := range n.slots {
		if err := ps.SSubscribe(ctx, b.shardChannel(s)); err != nil {
			return err
		}
	}
	return b.receive(ps, subscription{kind: "ssubscribe", want: len(n.slots), up: up})
}
