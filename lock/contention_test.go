package lock_test

import (
	"context"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/lock"
)

type interval struct {
	start, end time.Duration // on one monotonic clock: time.Since(epoch)
	token      uint64
}

// TestContention runs 8 goroutines in each of 3 clients (3 connections pools,
// 3 Lockers) against one server, 10k acquisitions in all (2k with -short),
// incrementing a shared counter under the lock. The counter is read and
// written with two separate atomic operations, so any overlap of holders
// would lose increments without the race detector flagging the test itself.
// Every hold is recorded as an interval on one monotonic clock; sorted by
// start, each must begin after the previous one ended, and tokens must rise
// in the same order.
func TestContention(t *testing.T) {
	const clients, perClient = 3, 8
	total := 10000
	if testing.Short() {
		total = 2000
	}
	srv := redistest.Start(t)
	var lockers []*lock.Locker
	for range clients {
		c := redis.NewClient(&redis.Options{Addr: srv.Addr(), PoolSize: perClient + 2})
		t.Cleanup(func() { c.Close() })
		lockers = append(lockers, newLocker(t, lock.Options{
			TTL:      2 * time.Second,
			RetryMin: 50 * time.Microsecond,
			RetryMax: time.Millisecond,
		}, c))
	}
	base := runtime.NumGoroutine()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	epoch := time.Now()
	var (
		claimed atomic.Int64
		counter atomic.Int64
		inside  atomic.Int32
		overlap atomic.Int32
		wg      sync.WaitGroup
		mu      sync.Mutex
		all     []interval
	)
	for i := range clients * perClient {
		l := lockers[i%clients]
		wg.Go(func() {
			var mine []interval
			defer func() { mu.Lock(); all = append(all, mine...); mu.Unlock() }()
			for claimed.Add(1) <= int64(total) {
				le, err := l.Lock(ctx, "counter")
				if err != nil {
					t.Errorf("Lock(counter) = %v", err)
					return
				}
				iv := interval{start: time.Since(epoch), token: le.Token()}
				if inside.Add(1) != 1 {
					overlap.Add(1)
				}
				counter.Store(counter.Load() + 1) // not atomic as a whole: on purpose
				inside.Add(-1)
				iv.end = time.Since(epoch)
				mine = append(mine, iv)
				if err := le.Release(ctx); err != nil {
					t.Errorf("Release() = %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(epoch)

	if got := counter.Load(); got != int64(total) {
		t.Errorf("counter = %d, want %d", got, total)
	}
	if n := overlap.Load(); n != 0 {
		t.Errorf("%d acquisitions found another holder inside", n)
	}
	if len(all) != total {
		t.Fatalf("recorded %d intervals, want %d", len(all), total)
	}
	slices.SortFunc(all, func(a, b interval) int { return int(a.start - b.start) })
	for i := 1; i < len(all); i++ {
		p, c := all[i-1], all[i]
		if c.start <= p.end {
			t.Fatalf("hold %d [%v, %v] overlaps hold %d [%v, %v]", i, c.start, c.end, i-1, p.start, p.end)
		}
		if c.token <= p.token {
			t.Fatalf("hold %d has token %d after token %d", i, c.token, p.token)
		}
	}
	t.Logf("%d acquisitions by %d goroutines in %v (%.0f/s)", total, clients*perClient, elapsed, float64(total)/elapsed.Seconds())
	checkNoLeaks(t, base)
}
