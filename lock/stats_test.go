package lock_test

import (
	"context"
	"errors"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/lock"
)

// Stats counts each attempt by its outcome: taken, refused for another owner, failed for the
// server; and leases lost before their release.
func TestStats(t *testing.T) {
	t.Parallel()
	_, c, l := single(t, lock.Options{ExtendEvery: -1})
	ctx := context.Background()
	if got := l.Stats(); got != (lock.Stats{}) {
		t.Fatalf("Stats() of a new Locker = %+v, want zero", got)
	}
	le, err := l.TryLock(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := l.TryLock(ctx, "a"); !errors.Is(err, lock.ErrNotLocked) {
			t.Fatalf("TryLock(a) while held = %v, want ErrNotLocked", err)
		}
	}
	// An attempt cut short by its context counts in none.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := l.TryLock(cctx, "b"); !errors.Is(err, lock.ErrNotLocked) {
		t.Fatalf("TryLock(b) with a cancelled ctx = %v, want ErrNotLocked", err)
	}
	// A lease whose extension is refused is lost.
	c.Set(ctx, l.LockKey("a"), "someone-else", 0)
	if err := le.Extend(ctx); !errors.Is(err, lock.ErrNotHeld) {
		t.Fatalf("Extend() of a stolen lease = %v, want ErrNotHeld", err)
	}
	if got, want := l.Stats(), (lock.Stats{Acquired: 1, Busy: 2, Lost: 1}); got != want {
		t.Errorf("Stats() = %+v, want %+v", got, want)
	}

	// A server that is down fails the attempt.
	srv := redistest.Start(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr(), MaxRetries: -1})
	t.Cleanup(func() { rdb.Close() })
	down := newLocker(t, lock.Options{}, rdb)
	srv.Kill(t)
	if _, err := down.TryLock(ctx, "down"); err == nil {
		t.Fatal("TryLock with Redis down succeeded")
	}
	if got, want := down.Stats(), (lock.Stats{Failed: 1}); got != want {
		t.Errorf("Stats() after a failed attempt = %+v, want %+v", got, want)
	}
}
