package tiercache

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"math"
	mrand "math/rand/v2"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/maypok86/otter/v2"
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
// applies each peer's message by bumping the key's generation (so fills in flight are refused) and
// evicting L1 entries older than the message's version. Its own messages are skipped: a writer
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

	// peers and pending are touched only by the receiving goroutine.
	peers map[string]*peer

	// Fillers (see fill): fmu guards the sequence numbers waiting for one and fbusy, which says
	// a publishFillers goroutine runs; fwg waits for it in stop.
	fmu     sync.Mutex
	fseqs   []uint64
	fbusy   bool
	fwg     sync.WaitGroup
	fillers atomic.Uint64 // sequence numbers filled, for Stats

	// The coalescing window (Options.CoalesceWindow): qmu guards the writes waiting for it.
	qmu    sync.Mutex
	qkeys  []string
	qvers  []uint64
	qtimer *time.Timer
}

// peer tracks one origin's sequence numbers, and how late its messages arrive (see watchLag).
type peer struct {
	next    uint64               // the sequence number expected next
	pending map[uint64]time.Time // holes below the highest seen, with the time they opened
	seen    time.Time
	base    time.Duration // the lowest lag seen from it, creeping up slowly (clock skew, latency)
	baseAt  time.Time     // when base was last updated; zero before its first message
	behind  bool          // its messages arrive more than lagLimit later than base
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
	return &backplane{
		c:       c,
		rdb:     c.rdb,
		channel: c.cfg.Namespace + ":invalidate",
		origin:  hex.EncodeToString(id[:]),
		ctx:     ctx,
		cancel:  cancel,
		done:    make(chan struct{}),
		peers:   map[string]*peer{},
		lags:    make([]time.Duration, lagRing),
	}
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

func (b *backplane) start() { go b.run() }

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
	b.mu.Unlock()
	<-b.done
}

// run keeps a subscription alive until stop, reconnecting with capped exponential backoff and
// jitter.
func (b *backplane) run() {
	defer close(b.done)
	backoff := 10 * time.Millisecond
	for b.ctx.Err() == nil {
		ps := b.rdb.Subscribe(b.ctx)
		b.mu.Lock()
		if b.ctx.Err() != nil {
			b.mu.Unlock()
			_ = ps.Close()
			return
		}
		b.ps = ps
		b.mu.Unlock()
		err := ps.Subscribe(b.ctx, b.channel)
		if err == nil {
			backoff = 10 * time.Millisecond
			err = b.receive(ps)
		}
		b.mu.Lock()
		b.ps = nil
		b.mu.Unlock()
		_ = ps.Close()
		if b.ctx.Err() != nil {
			return
		}
		b.setDown(err)
		t := time.NewTimer(backoff/2 + time.Duration(mrand.Int64N(int64(backoff/2)+1)))
		select {
		case <-t.C:
		case <-b.ctx.Done():
			t.Stop()
			return
		}
		backoff = min(2*backoff, 250*time.Millisecond)
	}
}

// receive reads one subscription until it fails. It returns the reason.
func (b *backplane) receive(ps *redis.PubSub) error {
	hb := b.c.cfg.Heartbeat
	var pingSent time.Time
	subscribed := false
	for {
		msg, err := ps.ReceiveTimeout(b.ctx, hb)
		now := time.Now()
		b.closeExpiredHoles(now)
		if err != nil {
			if b.ctx.Err() != nil {
				return b.ctx.Err()
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				if !pingSent.IsZero() && now.Sub(pingSent) >= 2*hb {
					return errors.New("tiercache: invalidation subscriber: no answer to ping")
				}
				if pingSent.IsZero() {
					if err := ps.Ping(b.ctx); err != nil {
						return err
					}
					pingSent = now
				}
				continue
			}
			return err
		}
		pingSent = time.Time{}
		b.lastMsg.Store(now.UnixNano())
		switch m := msg.(type) {
		case *redis.Subscription:
			if m.Kind != "subscribe" {
				continue
			}
			if subscribed { // go-redis reconnected and resubscribed on its own
				b.resubscribes.Add(1)
				b.gap()
			}
			subscribed = true
			b.setUp()
		case *redis.Message:
			if b.up.Load() {
				b.handle(m.Payload, now)
			}
		}
	}
}

// setUp marks the subscription live. Entries that entered L1 while it was down were not covered
// by invalidations, and messages may have been missed, so L1 is flushed and peers' sequences
// start afresh.
func (b *backplane) setUp() {
	b.c.flushL1()
	b.flushes.Add(1)
	b.forgetPeers()
	b.up.Store(true)
}

// setDown marks the subscription lost. If Redis still answers, peers can write and this instance
// would not hear of it: flush now. If it does not, keep L1 (degraded mode); setUp flushes later.
func (b *backplane) setDown(reason error) {
	if !b.up.Swap(false) {
		return
	}
	ctx, cancel := context.WithTimeout(b.ctx, 100*time.Millisecond)
	defer cancel()
	if b.rdb.Ping(ctx).Err() == nil {
		b.c.flushL1()
		b.flushes.Add(1)
	}
	b.gaps.Add(1)
	b.c.cfg.Logger.Warn("tiercache: invalidation subscriber lost; L1 entries are capped until it is back", "err", reason)
}

// gap counts a gap and flushes L1.
func (b *backplane) gap() {
	b.c.flushL1()
	b.flushes.Add(1)
	b.gaps.Add(1)
}

// handle applies one message. Unparseable messages are counted as gaps: something was lost.
func (b *backplane) handle(payload string, now time.Time) {
	origin, rest, ok1 := strings.Cut(payload, " ")
	seqS, rest, ok2 := strings.Cut(rest, " ")
	tsS, body, ok3 := strings.Cut(rest, " ")
	seq, err1 := strconv.ParseUint(seqS, 10, 64)
	ts, err2 := strconv.ParseInt(tsS, 10, 64)
	if !ok1 || !ok2 || !ok3 || err1 != nil || err2 != nil || body == "" {
		b.gap()
		return
	}
	if origin == b.origin {
		return
	}
	b.received.Add(1)
	b.track(origin, seq, now)
	b.watchLag(origin, now, now.Sub(time.Unix(0, ts)))
	switch body[0] {
	case 'n':
		return
	case 'f':
		b.flushes.Add(1)
		b.c.flushL1()
	case 'g':
		f := strings.SplitN(body, " ", 3)
		g, err := strconv.ParseUint(f[min(1, len(f)-1)], 10, 64)
		if len(f) != 3 || err != nil || b.c.cfg.NamespaceOf == nil {
			if len(f) != 3 || err != nil {
				b.gap()
			}
			return
		}
		b.c.applyGen(f[2], g)
	case 'k':
		f := strings.SplitN(body, " ", 4)
		if len(f) != 4 {
			b.gap()
			return
		}
		v, ok := parseHalves(f[1], f[2])
		if !ok {
			b.gap()
			return
		}
		b.c.invalidateOlder(f[3], v)
	case 'm':
		if !b.applyBatch(body[min(2, len(body)):]) {
			b.gap()
			return
		}
	default:
		b.gap()
		return
	}
	b.recordLag(now.Sub(time.Unix(0, ts)))
}

// applyBatch applies "<high> <low> <len>:<key>" entries, concatenated.
func (b *backplane) applyBatch(s string) bool {
	for s != "" {
		hiS, rest, ok1 := strings.Cut(s, " ")
		loS, rest, ok2 := strings.Cut(rest, " ")
		nS, rest, ok3 := strings.Cut(rest, ":")
		n, err := strconv.Atoi(nS)
		v, ok := parseHalves(hiS, loS)
		if !ok1 || !ok2 || !ok3 || err != nil || !ok || n < 0 || n > len(rest) {
			return false
		}
		b.c.invalidateOlder(rest[:n], v)
		s = rest[n:]
	}
	return true
}

func parseHalves(hiS, loS string) (uint64, bool) {
	hi, err1 := strconv.ParseUint(hiS, 10, 32)
	lo, err2 := strconv.ParseUint(loS, 10, 32)
	return hi<<32 | lo, err1 == nil && err2 == nil
}

// track follows origin's sequence. A hole may be reordering between the origin's pooled
// connections, so it is given gapGrace to fill before it counts as a gap.
func (b *backplane) track(origin string, seq uint64, now time.Time) {
	p := b.peers[origin]
	if p == nil {
		b.peers[origin] = &peer{next: seq + 1, pending: map[uint64]time.Time{}, seen: now}
		return
	}
	p.seen = now
	switch {
	case seq == p.next:
		p.next++
		for {
			if _, ok := p.pending[p.next]; !ok {
				break
			}
			delete(p.pending, p.next)
			p.next++
		}
		// Holes below next that are still open stay pending.
	case seq > p.next:
		if seq-p.next > maxHoles || len(p.pending)+int(seq-p.next) > maxHoles {
			clear(p.pending)
			p.next = seq + 1
			b.gap()
			return
		}
		for s := p.next; s < seq; s++ {
			p.pending[s] = now
		}
		p.next = seq + 1
	default:
		delete(p.pending, seq) // a late arrival fills its hole; otherwise a retried duplicate
	}
}

// watchLag keeps the staleness bound when this instance falls behind its peers' messages. A
// message is applied lag after its origin stamped it; an invalidation applied late leaves the
// old value in L1 meanwhile, and a subscriber that cannot keep up (a host so busy that this
// goroutine waits its turn for long, a backlog after a pause) falls further behind with every
// message. Lag is judged against each peer's base, the lowest lag seen from it (which absorbs the
// skew between the hosts' clocks and the usual latency). When a peer's messages arrive more than
// lagLimit later than its base, L1 is no longer vouched for: it is flushed (once, when the first
// peer falls behind) and entries stored until every peer is back within lagLimit/2 live at most
// UnsubscribedL1TTL, as while unsubscribed.
func (b *backplane) watchLag(origin string, now time.Time, lag time.Duration) {
	p := b.peers[origin]
	if p == nil {
		return
	}
	if p.baseAt.IsZero() {
		p.base = lag
	} else {
		// base creeps up 10 ms a second, so a clock that moved is followed.
		p.base = min(p.base+now.Sub(p.baseAt)/100, lag)
	}
	p.baseAt = now
	switch excess := lag - p.base; {
	case !p.behind && excess > lagLimit:
		p.behind = true
		if b.behind.Add(1) == 1 {
			b.c.flushL1()
			b.flushes.Add(1)
			b.lagFlushes.Add(1)
			b.c.cfg.Logger.Debug("tiercache: invalidations arrive late; L1 flushed and capped until they catch up", "lag", lag, "usual", p.base)
		}
	case p.behind && excess < lagLimit/2:
		p.behind = false
		b.behind.Add(-1)
	}
}

// forgetPeers drops every peer's state (a new subscription starts every sequence afresh).
func (b *backplane) forgetPeers() {
	clear(b.peers)
	b.behind.Store(0)
}

// closeExpiredHoles counts holes that stayed open past gapGrace, and forgets idle peers.
func (b *backplane) closeExpiredHoles(now time.Time) {
	expired := false
	for origin, p := range b.peers {
		for s, opened := range p.pending {
			if now.Sub(opened) >= gapGrace {
				delete(p.pending, s)
				expired = true
			}
		}
		if len(p.pending) == 0 && now.Sub(p.seen) > peerIdle {
			if p.behind {
				b.behind.Add(-1)
			}
			delete(b.peers, origin)
		}
	}
	if expired {
		b.gap()
	}
}

func (b *backplane) recordLag(d time.Duration) {
	b.lagMu.Lock()
	b.lags[b.lagN%lagRing] = max(d, 0)
	b.lagN++
	b.lagMu.Unlock()
}

// lagPercentiles returns p50 and p99 of the recent propagation lags (zero without samples).
func (b *backplane) lagPercentiles() (p50, p99 time.Duration, n int) {
	b.lagMu.Lock()
	n = min(b.lagN, lagRing)
	s := slices.Clone(b.lags[:n])
	b.lagMu.Unlock()
	if n == 0 {
		return 0, 0, 0
	}
	slices.Sort(s)
	return s[(n-1)*50/100], s[(n-1)*99/100], n
}

// invalidateOlder applies a peer's write: fills in flight are refused (generation bump) and an L1
// entry older than version is dropped.
func (c *Cache) invalidateOlder(key string, version uint64) {
	if version == math.MaxUint64 { // a batch write with automatic versions: any version
		c.stripe(key).hard.Add(1)
	} else {
		c.stripe(key).announce(version)
	}
	if c.l1 == nil {
		return
	}
	c.l1.ComputeIfPresent(key, func(old entry) (entry, otter.ComputeOp) {
		if old.version < version {
			return old, otter.InvalidateOp
		}
		return old, otter.CancelOp
	})
}

// flushL1 drops every L1 entry and refuses every fill in flight. Namespace generations are
// synced again too: a flush follows a gap, which may have swallowed a generation's message.
func (c *Cache) flushL1() {
	c.gens.resync()
	c.dropL1(nil)
}

// dropL1 refuses every fill in flight (all stripes' hard counters move) and drops the L1 entries
// for which drop reports true, or all of them when drop is nil. Every whole-L1 operation goes
// through it: flushes, namespace bumps and the recovery after an outage.
func (c *Cache) dropL1(drop func(key string) bool) {
	for i := range c.stripes {
		c.stripes[i].hard.Add(1)
	}
	switch {
	case c.l1 == nil:
	case drop == nil:
		c.l1.InvalidateAll()
	default:
		for k := range c.l1.Keys() {
			if drop(k) {
				c.l1.Invalidate(k)
			}
		}
	}
}
