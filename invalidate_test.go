package tiercache

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tiercache/tiercache/internal/redistest"
)

func TestInvalidationReachesPeers(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	a, b := peersSharing(t, srv, "k", "v1")
	ctx := context.Background()
	if err := a.Set(ctx, "k", []byte("v2")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "b to drop v1 from L1", 2*time.Second, func() bool { _, ok := b.Peek("k"); return !ok })
	if v, err := b.Get(ctx, "k"); err != nil || string(v) != "v2" {
		t.Fatalf("b.Get after invalidation = %q, %v; want v2", v, err)
	}
	// Deletes invalidate too.
	if err := a.Delete(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "b to drop v2 after the delete", 2*time.Second, func() bool { _, ok := b.Peek("k"); return !ok })

	// Batches send one coalesced message.
	items := map[string][]byte{}
	for i := range 20 {
		items[fmt.Sprint("m", i)] = []byte("old")
	}
	if err := a.SetMany(ctx, items); err != nil {
		t.Fatal(err)
	}
	keys := make([]string, 0, len(items))
	for k := range items {
		keys = append(keys, k)
	}
	if got, err := b.GetMany(ctx, keys); err != nil || len(got) != 20 {
		t.Fatalf("b.GetMany = %d values, %v", len(got), err)
	}
	sentBefore := a.Stats().InvalidationsSent
	for k := range items {
		items[k] = []byte("new")
	}
	if err := a.SetMany(ctx, items); err != nil {
		t.Fatal(err)
	}
	if n := a.Stats().InvalidationsSent - sentBefore; n != 1 {
		t.Errorf("SetMany of 20 keys sent %d messages, want 1", n)
	}
	waitFor(t, "b to drop the batch", 2*time.Second, func() bool {
		for _, k := range keys {
			if _, ok := b.Peek(k); ok {
				return false
			}
		}
		return true
	})
	// A writer ignores its own messages; b applied a's.
	if s := a.Stats(); s.InvalidationsReceived != 0 {
		t.Errorf("a received %d of its own messages", s.InvalidationsReceived)
	}
	if s := b.Stats(); s.InvalidationsReceived == 0 || s.Gaps != 0 {
		t.Errorf("b received %d messages with %d gaps; want some and none", s.InvalidationsReceived, s.Gaps)
	}
	h := b.Health(ctx)
	if h.Subscriber == nil || !h.Subscriber.Up || h.Subscriber.LagSamples == 0 {
		t.Errorf("b health subscriber = %+v, want up with lag samples", h.Subscriber)
	}
}

func TestHugeBatchBecomesNamespaceFlush(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	a, b := peersSharing(t, srv, "bystander", "x")
	ctx := context.Background()
	items := map[string][]byte{}
	for i := range 3000 { // 3000 keys of ~40 bytes: over the message size limit
		items[fmt.Sprintf("%s-%d", strings.Repeat("k", 30), i)] = []byte("v")
	}
	flushes := b.Stats().Flushes
	if err := a.SetMany(ctx, items); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "b to flush its L1", 2*time.Second, func() bool { return b.Stats().Flushes > flushes })
	if _, ok := b.Peek("bystander"); ok {
		t.Fatal("b kept an entry through a namespace flush")
	}
}

func TestSubscriberLossIsAGap(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	a, b := peersSharing(t, srv, "k", "v1")
	ctx := context.Background()
	for round := 1; round <= 3; round++ {
		srv.Do(t, "CLIENT", "KILL", "TYPE", "pubsub")
		waitFor(t, "both to count the gap", 5*time.Second, func() bool {
			return a.Stats().Gaps >= uint64(round) && b.Stats().Gaps >= uint64(round)
		})
		if _, ok := b.Peek("k"); ok {
			t.Fatalf("round %d: b kept L1 through a lost subscription", round)
		}
		waitFor(t, "both to resubscribe", 5*time.Second, func() bool { return a.bp.up.Load() && b.bp.up.Load() })
		if _, err := b.Get(ctx, "k"); err != nil {
			t.Fatal(err)
		}
	}
	// Invalidation works again after the reconnects.
	if err := a.Set(ctx, "k", []byte("v2")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "b to drop v1", 2*time.Second, func() bool { _, ok := b.Peek("k"); return !ok })
}

func TestSequenceGapFlushes(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	b := newCache(t, srv, Options{})
	ctx := context.Background()
	if err := b.Set(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	ch := b.bp.channel
	pub := func(msg string) {
		t.Helper()
		if err := b.rdb.Publish(ctx, ch, msg).Err(); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Now().UnixNano()
	pub(fmt.Sprintf("peer 1 %d n", now))
	pub(fmt.Sprintf("peer 3 %d n", now)) // 2 is missing...
	pub(fmt.Sprintf("peer 2 %d n", now)) // ...until it arrives late: no gap
	pub(fmt.Sprintf("peer 4 %d n", now))
	waitFor(t, "4 messages applied", 2*time.Second, func() bool { return b.Stats().InvalidationsReceived == 4 })
	if g := b.Stats().Gaps; g != 0 {
		t.Fatalf("reordered messages counted %d gaps, want 0", g)
	}
	if _, ok := b.Peek("k"); !ok {
		t.Fatal("L1 flushed without a gap")
	}
	pub(fmt.Sprintf("peer 7 %d n", now)) // 5 and 6 never come
	waitFor(t, "the hole to count as a gap", 3*time.Second, func() bool { return b.Stats().Gaps == 1 })
	if _, ok := b.Peek("k"); ok {
		t.Fatal("a sequence gap did not flush L1")
	}
	// A message that cannot be parsed means something was lost as well.
	if err := b.Set(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	pub("garbage")
	waitFor(t, "garbage to count as a gap", 3*time.Second, func() bool { return b.Stats().Gaps == 2 })
	if _, ok := b.Peek("k"); ok {
		t.Fatal("an unreadable message did not flush L1")
	}
}

// TestLateInvalidationsFlushL1: when peers' messages arrive much later than they usually do
// (this instance's subscriber fell behind: a host too busy to run it, a backlog), the old values
// their invalidations should have removed would sit in L1 past the staleness bound. The instance
// flushes L1 once and caps new entries at UnsubscribedL1TTL until the messages catch up. A peer
// whose clock is simply off (a constant lag) changes nothing. (Found by scripts/soak seed
// 424242: reads stale by 1.0-2.0 s on a saturated host, outside fault windows.)
func TestLateInvalidationsFlushL1(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	clk := newFakeClock()
	b := newCache(t, srv, Options{Clock: clk, UnsubscribedL1TTL: time.Second})
	ctx := context.Background()
	// pub publishes a message of origin stamped age ago, then one of an on-time "barrier" peer:
	// once the barrier is counted, the message before it has been applied.
	sent := 0
	pub := func(origin string, seq int, age time.Duration) {
		t.Helper()
		for _, m := range []string{
			fmt.Sprintf("%s %d %d n", origin, seq, time.Now().Add(-age).UnixNano()),
			fmt.Sprintf("barrier %d %d n", seq, time.Now().UnixNano()),
		} {
			if err := b.rdb.Publish(ctx, b.bp.channel, m).Err(); err != nil {
				t.Fatal(err)
			}
			sent++
		}
		waitFor(t, "the message applied", slack(5*time.Second), func() bool { return b.Stats().InvalidationsReceived >= uint64(sent) })
	}
	set := func(v string) {
		t.Helper()
		if err := b.Set(ctx, "k", []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	set("v1")
	// A skewed peer: its messages always look 10 s old. That is its usual lag, not a backlog.
	pub("skewed", 1, 10*time.Second)
	pub("skewed", 2, 10*time.Second)
	if _, ok := b.Peek("k"); !ok {
		t.Fatal("L1 flushed for a peer whose clock is merely off")
	}
	pub("skewed", 3, 12*time.Second) // 2 s later than usual: behind
	if _, ok := b.Peek("k"); ok {
		t.Error("L1 kept its entries although invalidations arrive 2 s late")
	}
	if sub := b.Health(ctx).Subscriber; !sub.Behind || sub.LagFlushes != 1 {
		t.Errorf("Subscriber.Behind = %v, LagFlushes = %d; want true, 1", sub.Behind, sub.LagFlushes)
	}
	set("v2")
	clk.Advance(1500 * time.Millisecond)
	if _, ok := b.Peek("k"); ok {
		t.Error("an entry stored while behind outlived UnsubscribedL1TTL")
	}
	pub("skewed", 4, 10*time.Second) // caught up
	if sub := b.Health(ctx).Subscriber; sub.Behind {
		t.Error("Subscriber.Behind stayed true once messages arrived on time again")
	}
	set("v3")
	clk.Advance(1500 * time.Millisecond)
	if v, ok := b.Peek("k"); !ok || string(v) != "v3" {
		t.Errorf("Peek after catching up = %q, %v; want v3 kept for L1TTL", v, ok)
	}
}

func TestUnsubscribedEntriesAreCapped(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	clk := newFakeClock()
	c := newCache(t, srv, Options{Clock: clk, UnsubscribedL1TTL: time.Second})
	ctx := context.Background()
	c.bp.up.Store(false) // as if the subscriber had just been lost
	if err := c.Set(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	clk.Advance(1500 * time.Millisecond)
	if _, ok := c.Peek("k"); ok {
		t.Fatal("an entry stored while unsubscribed outlived UnsubscribedL1TTL")
	}
	bypass := newCache(t, srv, Options{UnsubscribedL1TTL: -1})
	bypass.bp.up.Store(false)
	if err := bypass.Set(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	if _, ok := bypass.Peek("k"); ok {
		t.Fatal("L1 used while unsubscribed with UnsubscribedL1TTL < 0")
	}
}

func TestCoalesceWindow(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	a := newCache(t, srv, Options{CoalesceWindow: 20 * time.Millisecond})
	b := newCache(t, srv, Options{})
	ctx := context.Background()
	keys := make([]string, 40)
	for i := range keys {
		keys[i] = fmt.Sprint("c", i)
		if err := a.Set(ctx, keys[i], []byte("old")); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := b.GetMany(ctx, keys); err != nil || len(got) != len(keys) {
		t.Fatalf("b.GetMany = %d, %v", len(got), err)
	}
	sent := a.Stats().InvalidationsSent
	var wg sync.WaitGroup
	for _, k := range keys {
		wg.Go(func() {
			if err := a.Set(ctx, k, []byte("new")); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	waitFor(t, "b to drop every old value", 2*time.Second, func() bool {
		for _, k := range keys {
			if v, ok := b.Peek(k); ok && string(v) == "old" {
				return false
			}
		}
		return true
	})
	for _, k := range keys {
		if v, err := b.Get(ctx, k); err != nil || string(v) != "new" {
			t.Fatalf("b.Get(%q) = %q, %v", k, v, err)
		}
	}
	if n := a.Stats().InvalidationsSent - sent; n == 0 || n > 10 {
		t.Errorf("40 concurrent writes in a 20ms window sent %d messages, want between 1 and 10", n)
	}
	if g := b.Stats().Gaps; g != 0 {
		t.Errorf("coalesced messages counted %d gaps", g)
	}
}

// peersSharing returns two caches on srv where a wrote key = val and b has read it, so b holds it
// in L1.
func peersSharing(t *testing.T, srv *redistest.Server, key, val string) (a, b *Cache) {
	t.Helper()
	a = newCache(t, srv, Options{})
	b = newCache(t, srv, Options{})
	ctx := context.Background()
	if err := a.Set(ctx, key, []byte(val)); err != nil {
		t.Fatal(err)
	}
	if v, err := b.Get(ctx, key); err != nil || string(v) != val {
		t.Fatalf("b.Get(%q) = %q, %v; want %q", key, v, err, val)
	}
	return a, b
}
