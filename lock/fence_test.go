package lock_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/lock"
)

// TestPausedHolderIsFenced simulates a holder whose extensions stop (a paused
// process: its Locker never auto-extends). Its lease context must end while
// the key still lives in Redis; a new holder then gets a larger token; the
// old holder's fenced write is refused and the new holder's write stands.
func TestPausedHolderIsFenced(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	c := srv.Client(t)
	// A large drift margin (20% of TTL) makes "context ends before the key
	// expires" observable without depending on scheduler latency.
	paused := newLocker(t, lock.Options{TTL: 500 * time.Millisecond, Drift: 0.2, ExtendEvery: -1}, srv.Client(t))
	next := newLocker(t, lock.Options{TTL: 500 * time.Millisecond, RetryMin: time.Millisecond, RetryMax: 5 * time.Millisecond}, srv.Client(t))
	ctx := context.Background()
	const res = "report"
	key := paused.Fence().Key(res, "body")

	old, err := paused.TryLock(ctx, res)
	if err != nil {
		t.Fatal(err)
	}
	if err := paused.FencedSet(ctx, res, old.Token(), key, []byte("old-1"), 0); err != nil {
		t.Fatalf("FencedSet by the holder = %v", err)
	}

	select {
	case <-old.Context().Done():
	case <-time.After(5 * time.Second):
		t.Fatal("lease context not done after its validity")
	}
	// The lease ended locally before it ended in Redis.
	if pttl := c.PTTL(ctx, paused.LockKey(res)).Val(); pttl <= 0 {
		t.Errorf("PTTL(lock) = %v when the lease context ended, want > 0", pttl)
	}
	if cause := context.Cause(old.Context()); !errors.Is(cause, lock.ErrExpired) {
		t.Errorf("Cause = %v, want ErrExpired", cause)
	}
	if time.Now().After(old.Validity().Add(time.Second)) {
		t.Errorf("context ended long after Validity %v", old.Validity())
	}

	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	cur, err := next.Lock(wctx, res)
	if err != nil {
		t.Fatalf("Lock by the successor = %v", err)
	}
	defer cur.Release(ctx)
	if cur.Token() <= old.Token() {
		t.Fatalf("successor token %d, want > %d", cur.Token(), old.Token())
	}
	if err := next.FencedSet(ctx, res, cur.Token(), key, []byte("new"), time.Minute); err != nil {
		t.Fatalf("FencedSet by the successor = %v", err)
	}

	// The paused holder wakes up and writes with its old token.
	err = paused.FencedSet(ctx, res, old.Token(), key, []byte("old-2"), 0)
	if !errors.Is(err, lock.ErrFenced) {
		t.Fatalf("FencedSet with the old token = %v, want ErrFenced", err)
	}
	for _, want := range []string{fmt.Sprint(old.Token()), fmt.Sprint(cur.Token()), `"report"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
	if got := c.Get(ctx, key).Val(); got != "new" {
		t.Errorf("value = %q, want the successor's %q", got, "new")
	}
	if pttl := c.PTTL(ctx, key).Val(); pttl <= 0 {
		t.Errorf("PTTL(data) = %v, want the successor's ttl", pttl)
	}
	if seen, err := next.Fence().Seen(ctx, res); err != nil || seen != cur.Token() {
		t.Errorf("Seen = %d, %v, want %d", seen, err, cur.Token())
	}
	// Equal tokens pass: the holder may write again.
	if err := next.FencedSet(ctx, res, cur.Token(), key, []byte("new-2"), 0); err != nil {
		t.Errorf("second FencedSet with the same token = %v", err)
	}
	if err := old.Release(ctx); !errors.Is(err, lock.ErrNotHeld) {
		t.Errorf("Release by the paused holder = %v, want ErrNotHeld", err)
	}
	if err := cur.Extend(ctx); err != nil {
		t.Errorf("successor's lease disturbed by the old holder's Release: %v", err)
	}
}

func TestNewFence(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	f := lock.NewFence(srv.Client(t), "")
	ctx := context.Background()
	if err := f.Set(ctx, "r", 7, f.Key("r", "x"), []byte("v"), 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Set(ctx, "r", 6, f.Key("r", "x"), []byte("w"), 0); !errors.Is(err, lock.ErrFenced) {
		t.Errorf("Set with token 6 after 7 = %v, want ErrFenced", err)
	}
	if got := srv.Do(t, "GET", lock.DefaultPrefix+"{r}:data:x"); got != "v" {
		t.Errorf("GET = %v, want v", got)
	}
}
