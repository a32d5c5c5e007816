package lock_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/tiercache/tiercache/internal/benchpair"
	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/lock"
)

// BenchmarkLockRelease measures one uncontended TryLock + Release on one
// Redis: two script round trips, a random value, the lease's watchdog and
// timers. Compare with BenchmarkBareSetNXDel from the same run.
func BenchmarkLockRelease(b *testing.B) {
	srv := redistest.Start(b)
	l := newLocker(b, lock.Options{}, srv.Client(b))
	ctx := context.Background()
	once := func() {
		le, err := l.TryLock(ctx, "bench")
		if err != nil {
			b.Fatal(err)
		}
		if err := le.Release(ctx); err != nil {
			b.Fatal(err)
		}
	}
	once() // load the scripts
	b.ReportAllocs()
	for b.Loop() {
		once()
	}
}

// BenchmarkBareSetNXDel is the baseline: a bare SET NX PX and a DEL, two
// round trips on the same kind of server, with no token, no ownership check
// and no watchdog.
func BenchmarkBareSetNXDel(b *testing.B) {
	srv := redistest.Start(b)
	c := srv.Client(b)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		ok, err := c.SetNX(ctx, "bare", "0123456789abcdef0123456789abcdef", 10*time.Second).Result()
		if err != nil || !ok {
			b.Fatalf("SetNX = %v, %v", ok, err)
		}
		if err := c.Del(ctx, "bare").Err(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPair interleaves TryLock+Release with the bare SET NX + DEL
// baseline on one Redis server and client (benchpair.Run), so both see the
// same load: ours/base is the figure docs/BENCHMARKS.md reports. Each side
// uses its own key, so neither finds the other's lock held.
func BenchmarkPair(b *testing.B) {
	srv := redistest.Start(b)
	c := srv.Client(b)
	l := newLocker(b, lock.Options{}, c)
	ctx := context.Background()
	ours := func(int) error {
		le, err := l.TryLock(ctx, "bench")
		if err != nil {
			return err
		}
		return le.Release(ctx)
	}
	bare := func(int) error {
		ok, err := c.SetNX(ctx, "bare", "0123456789abcdef0123456789abcdef", 10*time.Second).Result()
		if err != nil || !ok {
			return fmt.Errorf("SetNX = %v, %v", ok, err)
		}
		return c.Del(ctx, "bare").Err()
	}
	if err := ours(0); err != nil { // load the scripts
		b.Fatal(err)
	}
	b.Run("LockRelease-vs-SetNXDel", func(b *testing.B) { benchpair.Run(b, 1, 200, ours, bare) })
}
