package tiercache

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"math"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// The invalidation backplane keeps every instance's L1 coherent with Redis.
//
// Publishing: every acknowledged single-key write publishes, from inside the write script, one
// message "<origin> <seq> <unix-nanos> k <high> <low> <key>" on the namespace's channel; a
// refused write publishes "<origin> <seq> <unix-nanos> n" so the origin's sequence stays without
// holes. A batch write publishes one coalesced message "m" listing every key with its version
// (high = low = 4294967295 for automatic versions, meaning "drop whatever you hold") at the end of
// the same pipeline; a batch whose message would exceed maxMessageBytes publishes "f" instead,
// which flushes every peer's L1 for the namespace. Fills publish nothing.
//
// Receiving: one goroutine owns a pub/sub connection and reads it with a loop of its own (never
// go-redis's Channel helper, which may drop messages), pinging it after heartbeat of silence. It
// applies each peer's message by announcing its version to L1 (so fills in flight that read an
// older version are refused) and evicting L1 entries older than it. Its own messages are skipped: a writer
// updates its own L1 synchronously.
//
// Gaps are never silent. The connection failing, a ping unanswered for two heartbeats, go-redis
// resubscribing on its own, or a hole in an origin's sequence that stays open for gapGrace (it
// may be reordering between a peer's pooled connections) all count a gap and flush L1. While
// the subscriber is down, new L1 entries live at most UnsubscribedL1TTL (or L1 is bypassed when
// it is negative). When the subscriber goes down and Redis itself does not answer either, L1 is
// kept (degraded mode, bounded by L1TTL, since nobody can write to Redis either) and flushed when
// the subscription is back.
type backplane struct {
	c       *Cache
	rdb     redis.UniversalClient
	channel string
	origin  string
	seq     atomic.Uint64

	up      atomic.Bool
	lastMsg atomic.Int64 // unix nanos of the last message or pong

	sent, received, gaps, flushes, resubscribes atomic.Uint64

	lagMu sync.Mutex
	lags  []time.Duration // ring of recent propagation lags
	// behind counts the peers whose messages arrive late (see watchLag); lagFlushes the
	// flushes that caused.
	behind     atomic.Int64
	lagFlushes atomic.Uint64
	lagN       int

	mu     sync.Mutex
	ps     *redis.PubSub // the live subscription, closed by stop
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}

	// peers is touched by the receiving goroutines under hmu (handle, closeExpiredHoles,
	// forgetPeers): the classic subscription's and, with sharded invalidations, each shard's.
	hmu   sync.Mutex
	peers map[string]*peer

	// Sharded invalidations (shard.go): cc is the cluster client, nil when they are off;
	// shardsUp says every master's subscription is confirmed; shardPS holds the live ones for
	// stop, under mu.
	cc         *redis.ClusterClient
	shardsUp   atomic.Bool
	shardPS    map[*redis.PubSub]struct{}
	shardsDone chan struct{}

	// Fillers (see fill): fmu guards the sequence numbers waiting for one and fbusy, which says
	// a publishFillers goroutine runs; fwg waits for it in stop.
	fmu     sync.Mutex
	fseqs   []uint64
	fbusy   bool
	fwg     sync.WaitGroup
	fillers atomic.Uint64 // sequence numbers filled, for Stats
	// coalesced counts messages saved by batchMessage: n-1 for a message of n keys.
	coalesced atomic.Uint64

	// The coalescing window (Options.CoalesceWindow): qmu guards the writes waiting for it.
	qmu    sync.Mutex
	qkeys  []string
	qvers  []uint64
	qtimer *time.Timer
}

const (
	autoVersionHalf = math.MaxUint32 // high and low half of "any version" in batch messages
	maxMessageBytes = 64 << 10       // a larger batch message becomes a namespace flush
	gapGrace        = 250 * time.Millisecond
	// lagLimit is how much later than usual (its base) a peer's messages may be applied before
	// this instance's L1 is no longer vouched for (see watchLag).
	lagLimit = 250 * time.Millisecond
	maxHoles = 1024
	lagRing  = 4096
	peerIdle = 10 * time.Minute
)

func newBackplane(c *Cache) *backplane {
	var id [8]byte
	_, _ = rand.Read(id[:])
	ctx, cancel := context.WithCancel(context.Background())
	b := &backplane{
		c:       c,
		rdb:     c.rdb,
		channel: invalidationChannel(c.cfg.Namespace),
		origin:  hex.EncodeToString(id[:]),
		ctx:     ctx,
		cancel:  cancel,
		done:    make(chan struct{}),
		peers:   map[string]*peer{},
		lags:    make([]time.Duration, lagRing),
	}
	if cc, ok := c.rdb.(*redis.ClusterClient); ok && c.cfg.ShardedPubSub {
		b.cc, b.shardPS, b.shardsDone = cc, map[*redis.PubSub]struct{}{}, make(chan struct{})
	}
	return b
}

// vouched reports whether every subscription is live, so that L1 hears of every write: the
// classic one and, with sharded invalidations, every master's.
func (b *backplane) vouched() bool {
	return b.up.Load() && (b.cc == nil || b.shardsUp.Load())
}

// header starts a message with this instance's origin, its next sequence number and the time.
// Take it only when the message is about to be sent (see Cache.header); a message that then may
// not have gone out must give its number to fill.
func (b *backplane) header() string {
	h, _ := b.headerSeq()
	return h
}

// headerSeq is header and the sequence number it took.
func (b *backplane) headerSeq() (string, uint64) {
	b.sent.Add(1)
	seq := b.seq.Add(1)
	return b.headerFor(seq), seq
}

func (b *backplane) headerFor(seq uint64) string {
	var buf [64]byte
	out := append(buf[:0], b.origin...)
	out = append(out, ' ')
	out = strconv.AppendUint(out, seq, 10)
	out = append(out, ' ')
	out = strconv.AppendInt(out, time.Now().UnixNano(), 10)
	out = append(out, ' ')
	return string(out)
}

// fill publishes "<origin> <seq> <ts> n" for a sequence number whose message may not have been
// published (its call failed, or its script returned an error), so that peers do not count a gap
// for a message that does not exist. If the original did go out, peers drop the filler as a
// duplicate. Fillers are published in the background, retried with backoff until they go out or
// the cache closes; past maxHoles waiting the oldest are given up (peers then count a gap, which
// is the safe answer).
func (b *backplane) fill(seq uint64) {
	b.fmu.Lock()
	defer b.fmu.Unlock()
	if b.ctx.Err() != nil {
		return // closing: peers learn of the gap from our silence
	}
	if len(b.fseqs) >= maxHoles {
		b.fseqs = b.fseqs[1:]
	}
	b.fseqs = append(b.fseqs, seq)
	b.fillers.Add(1)
	if !b.fbusy {
		b.fbusy = true
		b.fwg.Add(1)
		go b.publishFillers()
	}
}

// publishFillers runs while fillers wait; one at a time (fbusy).
func (b *backplane) publishFillers() {
	defer b.fwg.Done()
	backoff := 5 * time.Millisecond
	for {
		b.fmu.Lock()
		seqs := b.fseqs
		b.fseqs = nil
		if len(seqs) == 0 || b.ctx.Err() != nil {
			b.fbusy = false
			b.fmu.Unlock()
			return
		}
		b.fmu.Unlock()
		err := b.c.l2doN(b.ctx, len(seqs), func(ctx context.Context) error {
			pipe := b.rdb.Pipeline()
			for _, s := range seqs {
				pipe.Publish(ctx, b.channel, b.headerFor(s)+"n")
			}
			_, err := pipe.Exec(ctx)
			return err
		})
		if err == nil {
			backoff = 5 * time.Millisecond
			continue
		}
		b.fmu.Lock()
		b.fseqs = append(seqs, b.fseqs...)
		if over := len(b.fseqs) - maxHoles; over > 0 {
			b.fseqs = b.fseqs[over:]
		}
		b.fmu.Unlock()
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-b.ctx.Done():
			t.Stop()
		}
		backoff = min(2*backoff, 250*time.Millisecond)
	}
}

// batchMessage coalesces invalidations into one message: versions[i] is keys[i]'s version, or 0
// for "any version" (automatic versions a batch did not learn); nil versions means all 0. It
// takes a sequence number: call it only when the message is about to be sent.
func (b *backplane) batchMessage(keys []string, versions []uint64) (string, uint64) {
	var sb strings.Builder
	h, seq := b.headerSeq()
	if len(keys) > 1 {
		b.coalesced.Add(uint64(len(keys) - 1))
	}
	sb.WriteString(h)
	size := 0
	for _, k := range keys {
		size += len(k) + 24
	}
	if size > maxMessageBytes {
		sb.WriteString("f")
		return sb.String(), seq
	}
	sb.Grow(size + 2)
	sb.WriteString("m ")
	for i, k := range keys {
		hi, lo := uint64(autoVersionHalf), uint64(autoVersionHalf)
		if versions != nil && versions[i] != 0 {
			hi, lo = versions[i]>>32, versions[i]&math.MaxUint32
		}
		sb.WriteString(strconv.FormatUint(hi, 10))
		sb.WriteByte(' ')
		sb.WriteString(strconv.FormatUint(lo, 10))
		sb.WriteByte(' ')
		sb.WriteString(strconv.Itoa(len(k)))
		sb.WriteByte(':')
		sb.WriteString(k)
	}
	return sb.String(), seq
}

// enqueue adds an acknowledged single write to the coalescing window (Options.CoalesceWindow):
// the first write of a window arms a timer; when it fires, every write of the window goes out as
// one message.
func (b *backplane) enqueue(key string, version uint64) {
	b.qmu.Lock()
	b.qkeys = append(b.qkeys, key)
	b.qvers = append(b.qvers, version)
	if len(b.qkeys) == 1 {
		b.qtimer = time.AfterFunc(b.c.cfg.CoalesceWindow, b.flushQueue)
	}
	b.qmu.Unlock()
}

// flushQueue publishes the window's writes as one message. A publish that fails is retried
// within the L2 budget; if Redis stays unreachable the peers learn of the gap when their own
// subscriptions fail, and L1TTL bounds what they serve meanwhile.
func (b *backplane) flushQueue() {
	b.qmu.Lock()
	keys, vers := b.qkeys, b.qvers
	b.qkeys, b.qvers = nil, nil
	b.qmu.Unlock()
	if len(keys) == 0 {
		return
	}
	for range 3 {
		// The message, and its sequence number, are made when it is sent: a try the breaker
		// refuses takes none, and one that may not have gone out is filled.
		if b.c.l2do(b.ctx, func(ctx context.Context) error {
			msg, seq := b.batchMessage(keys, vers)
			err := b.rdb.Publish(ctx, b.channel, msg).Err()
			if err != nil {
				b.fill(seq)
			}
			return err
		}) == nil {
			return
		}
	}
}

// publishFlush asks every peer to flush its L1 for the namespace, through the breaker within the
// L2 budget. Its sequence number is taken when it is sent and filled if it may not have gone out.
func (b *backplane) publishFlush(ctx context.Context) error {
	return b.c.l2do(ctx, func(ctx context.Context) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		h, seq := b.headerSeq()
		err := b.rdb.Publish(ctx, b.channel, h+"f").Err()
		if err != nil {
			b.fill(seq)
		}
		return err
	})
}

func (b *backplane) start() {
	go b.run()
	if b.cc != nil {
		go b.runShards()
	}
}

func (b *backplane) stop() {
	b.qmu.Lock()
	if b.qtimer != nil && b.qtimer.Stop() {
		b.qmu.Unlock()
		b.flushQueue() // announce what the window still held
	} else {
		b.qmu.Unlock()
	}
	b.cancel()
	b.fmu.Lock() // fill checks ctx under fmu: no filler goroutine starts after this
	b.fmu.Unlock()
	b.fwg.Wait()
	b.mu.Lock()
	if b.ps != nil {
		_ = b.ps.Close()
	}
	for ps := range b.shardPS {
		_ = ps.Close()
	}
	b.mu.Unlock()
	<-b.done
	if b.shardsDone != nil {
		<-b.shardsDone
	}
}

// flushL1 drops every L1 entry and refuses every fill in flight. Namespace generations are
// synced again too: a flush follows a gap, which may have swallowed a generation's message.
func (c *Cache) flushL1() {
	c.gens.resync()
	c.l1.Flush(nil)
}
