package tiercache

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/tiercache/tiercache/internal/corpus"
	"github.com/tiercache/tiercache/internal/redistest"
)

// revalidationRounds reads every key of c once per round, each round just past L1TTL (on clk),
// checks every value against want and returns the bytes srv sent meanwhile.
func revalidationRounds(t *testing.T, srv *redistest.Server, c *Cache, clk *fakeClock, want map[string][]byte, rounds int) int64 {
	t.Helper()
	ctx := context.Background()
	before := srv.NetOutputBytes(t)
	for range rounds {
		clk.Advance(c.cfg.L1TTL + time.Millisecond)
		for k, w := range want {
			v, err := c.Get(ctx, k)
			if err != nil || string(v) != string(w) {
				t.Fatalf("Get(%q) = %d bytes, %v; want the %d bytes written", k, len(v), err, len(w))
			}
		}
	}
	return srv.NetOutputBytes(t) - before
}

// TestRevalidationSavesTransfer reads unchanged 10 KiB chat contexts once per L1 lifetime, with
// revalidation on and off: Redis must send at least 5 times fewer bytes with it on (issue 12),
// and every read must still return the value.
func TestRevalidationSavesTransfer(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	clk := newFakeClock()
	o := Options{Clock: clk, TTL: time.Hour, L1TTL: time.Second, NoJitter: true}
	on := newCache(t, srv, o)
	o.NoRevalidate = true
	off := newCache(t, srv, o)
	ctx := context.Background()
	want := map[string][]byte{}
	for i := range 20 {
		k := fmt.Sprintf("ctx:%d", i)
		want[k] = corpus.ChatContext(10<<10, uint64(i))
		if err := on.Set(ctx, k, want[k]); err != nil {
			t.Fatal(err)
		}
	}
	// off's L1 starts empty: one round fills it; on's holds what it wrote.
	revalidationRounds(t, srv, off, clk, want, 1)
	const rounds = 5
	withOff := revalidationRounds(t, srv, off, clk, want, rounds)
	withOn := revalidationRounds(t, srv, on, clk, want, rounds)
	t.Logf("bytes sent by Redis for %d rounds of %d 10 KiB reads: revalidation on %d, off %d (%.1fx fewer)",
		rounds, len(want), withOn, withOff, float64(withOff)/float64(withOn))
	if withOn*5 > withOff {
		t.Errorf("revalidation on: Redis sent %d bytes, off: %d; want at least 5x fewer", withOn, withOff)
	}
	if got, wantN := on.Stats().Revalidated, uint64(rounds*len(want)); got != wantN {
		t.Errorf("on.Stats().Revalidated = %d, want %d", got, wantN)
	}
	if got := off.Stats().Revalidated; got != 0 {
		t.Errorf("off.Stats().Revalidated = %d with NoRevalidate, want 0", got)
	}
}

// TestRevalidationFindsChanges: an entry past its L1 lifetime whose key changed in Redis behind
// this instance's back (no invalidation reached it) is read whole, not revalidated; a deleted or
// expired one is a miss; a Redis outage during a revalidation is an error and the old copy is
// not served.
func TestRevalidationFindsChanges(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	clk := newFakeClock()
	c := newCache(t, srv, Options{Clock: clk, TTL: time.Hour, L1TTL: time.Second, NoJitter: true, Logger: quietLogger()})
	deaf := newCache(t, srv, Options{Clock: clk, noInvalidation: true}) // its writes announce nothing
	ctx := context.Background()
	for _, k := range []string{"changed", "deleted", "expiring", "same"} {
		if err := c.Set(ctx, k, []byte("old "+k), TTL(time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Set(ctx, "expiring", []byte("old expiring"), TTL(2*time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := deaf.Set(ctx, "changed", []byte("new changed")); err != nil {
		t.Fatal(err)
	}
	if err := deaf.Delete(ctx, "deleted"); err != nil {
		t.Fatal(err)
	}
	if v, ok := c.Peek("changed"); !ok || string(v) != "old changed" {
		t.Fatalf("Peek(changed) = %q, %v before L1TTL; want the old value (nothing announced the write)", v, ok)
	}
	clk.Advance(2*time.Second + time.Millisecond)
	if v, err := c.Get(ctx, "changed"); err != nil || string(v) != "new changed" {
		t.Errorf("Get(changed) = %q, %v past L1TTL; want the new value", v, err)
	}
	if v, err := c.Get(ctx, "deleted"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get(deleted) = %q, %v; want ErrNotFound", v, err)
	}
	if v, err := c.Get(ctx, "expiring"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get(expiring) = %q, %v past its TTL; want ErrNotFound", v, err)
	}
	if v, err := c.Get(ctx, "same"); err != nil || string(v) != "old same" {
		t.Errorf("Get(same) = %q, %v; want the value, revalidated", v, err)
	}
	if n := c.Stats().Revalidated; n != 1 {
		t.Errorf("Stats().Revalidated = %d, want 1 (only the unchanged key)", n)
	}
	if v, ok := c.Peek("changed"); !ok || string(v) != "new changed" {
		t.Errorf("Peek(changed) = %q, %v; want the new value landed in L1", v, ok)
	}

	clk.Advance(time.Second + time.Millisecond)
	resume := pauseRedis(t, srv)
	if v, err := c.Get(ctx, "same"); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Get(same) with Redis paused = %q, %v; want ErrUnavailable, not L1's expired copy", v, err)
	}
	resume()
	waitFor(t, "a revalidation once Redis is back", 10*time.Second, func() bool {
		clk.Advance(10 * time.Millisecond) // the breaker's clock
		v, err := c.Get(ctx, "same")
		return err == nil && string(v) == "old same"
	})
}

// TestRevalidationTyped: a typed value past its L1 lifetime is revalidated without decoding, and
// the copy served is the value L1 held; a view of another type never revalidates it.
func TestRevalidationTyped(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	clk := newFakeClock()
	c := newCache(t, srv, Options{Clock: clk, TTL: time.Hour, L1TTL: time.Second, NoJitter: true})
	decodes := 0
	users := Typed(c, countingCodec[benchUser]{JSON[benchUser](), &decodes})
	ctx := context.Background()
	u := benchUserFor(7)
	if err := users.Set(ctx, "u", u); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		clk.Advance(time.Second + time.Millisecond)
		got, err := users.Get(ctx, "u")
		if err != nil || got != u {
			t.Fatalf("Get(u) = %+v, %v; want %+v", got, err, u)
		}
	}
	if decodes != 0 || c.Stats().Revalidated != 3 {
		t.Errorf("decodes = %d, Revalidated = %d after 3 reads past L1TTL; want 0 and 3", decodes, c.Stats().Revalidated)
	}
	clk.Advance(time.Second + time.Millisecond)
	if _, err := Typed(c, JSON[string]()).Get(ctx, "u"); err == nil {
		t.Error("a string view read a benchUser entry, want a decoding error")
	}
	if n := c.Stats().Revalidated; n != 3 {
		t.Errorf("Revalidated = %d after a string view's read, want 3: L1's benchUser is no string", n)
	}
}

// countingCodec counts the Decode calls of the codec it wraps.
type countingCodec[V any] struct {
	Codec[V]
	n *int
}

func (c countingCodec[V]) Decode(b []byte) (V, error) {
	*c.n++
	return c.Codec.Decode(b)
}

// TestRevalidationGetMany: GetMany revalidates in its one round trip the keys whose L1 lifetime
// ended, reads the others whole, and finds what changed behind this instance's back.
func TestRevalidationGetMany(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	clk := newFakeClock()
	c := newCache(t, srv, Options{Clock: clk, TTL: time.Hour, L1TTL: time.Second, NoJitter: true})
	deaf := newCache(t, srv, Options{Clock: clk, noInvalidation: true})
	ctx := context.Background()
	want := map[string][]byte{}
	var keys []string
	for i := range 20 {
		k := fmt.Sprintf("ctx:%d", i)
		keys = append(keys, k)
		want[k] = corpus.ChatContext(10<<10, uint64(i))
		if err := c.Set(ctx, k, want[k]); err != nil {
			t.Fatal(err)
		}
	}
	// Not in c's L1: read whole in the same batch.
	if err := deaf.Set(ctx, "cold", []byte("cold")); err != nil {
		t.Fatal(err)
	}
	keys, want["cold"] = append(keys, "cold"), []byte("cold")
	clk.Advance(time.Second + time.Millisecond)
	before := srv.NetOutputBytes(t)
	got, err := c.GetMany(ctx, keys)
	sent := srv.NetOutputBytes(t) - before
	if err != nil || len(got) != len(want) {
		t.Fatalf("GetMany = %d values, %v; want %d", len(got), err, len(want))
	}
	for k, w := range want {
		if string(got[k]) != string(w) {
			t.Errorf("GetMany[%q] = %d bytes, want the %d written", k, len(got[k]), len(w))
		}
	}
	if n := c.Stats().Revalidated; n != 20 {
		t.Errorf("Revalidated = %d, want 20", n)
	}
	if sent > 8<<10 { // 20 headers, "cold", and one INFO reply of about 2 KiB
		t.Errorf("Redis sent %d bytes for a GetMany of 20 unchanged 10 KiB contexts, want headers only", sent)
	}

	if err := deaf.Set(ctx, "ctx:3", []byte("changed")); err != nil {
		t.Fatal(err)
	}
	if err := deaf.Delete(ctx, "ctx:4"); err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Second + time.Millisecond)
	got, err = c.GetMany(ctx, keys[:6])
	if err != nil || string(got["ctx:3"]) != "changed" || string(got["ctx:5"]) != string(want["ctx:5"]) {
		t.Fatalf("GetMany after changes: ctx:3 = %q, ctx:5 = %d bytes, %v; want the new ctx:3 and ctx:5 revalidated", got["ctx:3"], len(got["ctx:5"]), err)
	}
	if _, ok := got["ctx:4"]; ok {
		t.Error("GetMany returned ctx:4, deleted behind this instance's back")
	}
	if n := c.Stats().Revalidated; n != 24 {
		t.Errorf("Revalidated = %d, want 24 (20, then 4 unchanged of 6)", n)
	}

	// Plain reads before the first revalidation in the batch (the version list starts late).
	var plainFirst []string
	for i := range 5 {
		k := fmt.Sprintf("fresh:%d", i)
		if err := deaf.Set(ctx, k, []byte(k)); err != nil {
			t.Fatal(err)
		}
		plainFirst = append(plainFirst, k)
	}
	clk.Advance(time.Second + time.Millisecond)
	got, err = c.GetMany(ctx, append(plainFirst, "ctx:12", "fresh:0"))
	if err != nil || len(got) != 6 || string(got["ctx:12"]) != string(want["ctx:12"]) || string(got["fresh:4"]) != "fresh:4" {
		t.Fatalf("GetMany of 5 plain reads then a revalidation = %d values, %v; want 6", len(got), err)
	}
	if n := c.Stats().Revalidated; n != 25 {
		t.Errorf("Revalidated = %d, want 25", n)
	}

	// A script cache emptied (as by a restart) is reloaded, in the batch and for one key.
	srv.Do(t, "SCRIPT", "FLUSH")
	clk.Advance(time.Second + time.Millisecond)
	if got, err = c.GetMany(ctx, keys[5:10]); err != nil || len(got) != 5 {
		t.Fatalf("GetMany after SCRIPT FLUSH = %d values, %v; want 5", len(got), err)
	}
	srv.Do(t, "SCRIPT", "FLUSH")
	if v, err := c.Get(ctx, "ctx:11"); err != nil || string(v) != string(want["ctx:11"]) {
		t.Fatalf("Get after SCRIPT FLUSH = %d bytes, %v", len(v), err)
	}
	if n := c.Stats().Revalidated; n != 31 {
		t.Errorf("Revalidated = %d after the flushed script cache, want 31", n)
	}
}
