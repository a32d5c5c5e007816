package tiercache

import (
	"context"
	"errors"
	mrand "math/rand/v2"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// The invalidation receiver: one goroutine owns the pub/sub connection (backplane.run and
// receive), applies peers' messages (handle, applyBatch, l1.Cache.Announce), tracks each origin's sequence for
// gaps (track) and how late its messages arrive (watchLag). The backplane itself, and the
// publishing side, are in invalidate.go.

// peer tracks one origin's sequence numbers, and how late its messages arrive (see watchLag).
type peer struct {
	next    uint64               // the sequence number expected next
	pending map[uint64]time.Time // holes below the highest seen, with the time they opened
	seen    time.Time
	base    time.Duration // the lowest lag seen from it, creeping up slowly (clock skew, latency)
	baseAt  time.Time     // when base was last updated; zero before its first message
	behind  bool          // its messages arrive more than lagLimit later than base
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
			err = b.receive(ps, subscription{kind: "subscribe", want: 1, up: func() { b.markUp(&b.up) }})
		}
		b.mu.Lock()
		b.ps = nil
		b.mu.Unlock()
		_ = ps.Close()
		if b.ctx.Err() != nil {
			return
		}
		b.markDown(&b.up, err)
		if !b.pause(&backoff) {
			return
		}
	}
}

// pause waits *backoff, with jitter, before a subscription is tried again, then doubles it up to
// 250 ms. It returns false when the backplane stops meanwhile.
func (b *backplane) pause(backoff *time.Duration) bool {
	t := time.NewTimer(*backoff/2 + time.Duration(mrand.Int64N(int64(*backoff/2)+1)))
	defer t.Stop()
	select {
	case <-t.C:
	case <-b.ctx.Done():
		return false
	}
	*backoff = min(2**backoff, 250*time.Millisecond)
	return true
}

// subscription says what receive waits for: want confirmations of kind ("subscribe" for the
// classic channel, "ssubscribe" for a shard's channels), after which it calls up and applies
// messages. A confirmation after that is go-redis resubscribing on its own after a reconnect:
// for the classic subscription a gap, for a shard's the end of the loop (runShards starts them
// all again); so is Redis unsubscribing a shard's channel (its slot moved).
type subscription struct {
	kind string
	want int
	up   func()
}

// receive reads one subscription until it fails. It returns the reason.
func (b *backplane) receive(ps *redis.PubSub, sub subscription) error {
	hb := b.c.cfg.Heartbeat
	var pingSent time.Time
	confirmed := 0
	for {
		msg, err := ps.ReceiveTimeout(b.ctx, hb)
		now := time.Now()
		b.hmu.Lock()
		b.closeExpiredHoles(now)
		b.hmu.Unlock()
		if err != nil {
			if b.ctx.Err() != nil {
				return b.ctx.Err()
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				if !pingSent.IsZero() && now.Sub(pingSent) >= 2*hb {
					return errors.New(prefix + "invalidation subscriber: no answer to ping")
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
			switch {
			case m.Kind == "sunsubscribe":
				return errors.New(prefix + "sharded invalidations: Redis unsubscribed " + m.Channel + " (its slot moved)")
			case m.Kind != sub.kind:
				continue
			case confirmed < sub.want:
				if confirmed++; confirmed == sub.want {
					sub.up()
				}
			case sub.kind == "subscribe": // go-redis reconnected and resubscribed on its own
				b.resubscribes.Add(1)
				b.gap()
			default:
				b.resubscribes.Add(1)
				return errors.New(prefix + "sharded invalidations: resubscribed after a reconnect")
			}
		case *redis.Message:
			if confirmed == sub.want {
				b.hmu.Lock()
				b.handle(m.Payload, now)
				b.hmu.Unlock()
			}
		}
	}
}

// markUp marks a subscription live (live: the classic one's up, or shardsUp for every
// master's). Entries that entered L1 while it was down were not covered by invalidations, and
// messages may have been missed, so L1 is flushed and peers' sequences start afresh.
func (b *backplane) markUp(live *atomic.Bool) {
	b.c.flushL1()
	b.flushes.Add(1)
	b.hmu.Lock()
	b.forgetPeers()
	b.hmu.Unlock()
	live.Store(true)
}

// markDown marks a subscription lost for reason (see lost), once.
func (b *backplane) markDown(live *atomic.Bool, reason error) {
	if live.Swap(false) {
		b.lost(reason)
	}
}

// lost handles a subscription lost for reason: L1 is flushed if Redis still answers (peers can
// write and this instance would not hear of it); if it does not, L1 is kept (degraded mode),
// and the subscription's return flushes it later.
func (b *backplane) lost(reason error) {
	ctx, cancel := context.WithTimeout(b.ctx, 100*time.Millisecond)
	defer cancel()
	if b.rdb.Ping(ctx).Err() == nil {
		b.c.flushL1()
		b.flushes.Add(1)
	}
	b.gaps.Add(1)
	b.c.cfg.Logger.Warn(prefix+"invalidation subscriber lost; L1 entries are capped until it is back", "err", reason)
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
		b.c.l1.Announce(f[3], v)
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
		b.c.l1.Announce(rest[:n], v) // automatic versions (math.MaxUint64): any version
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
			b.c.cfg.Logger.Debug(prefix+"invalidations arrive late; L1 flushed and capped until they catch up", "lag", lag, "usual", p.base)
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

// recordLag records the lag of one applied message (receive time minus the origin's stamp: a
// negative value, from clocks apart, counts as 0) for Health's percentiles and the metrics.
func (b *backplane) recordLag(d time.Duration) {
	b.c.observeLag(d)
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
