package tiercache

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/sony/gobreaker/v2"

	"github.com/tiercache/tiercache/internal/redistest"
)

// TestBreakerQuietOnHealthyRedis: successes on a healthy Redis skip the breaker (it sees no
// request at all), yet failures are counted as before, a success ends their run, and the count
// still opens the breaker.
func TestBreakerQuietOnHealthyRedis(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	c := newCache(t, srv, Options{Logger: quietLogger(), BreakerFailures: 5})
	ctx := context.Background()
	ok := func(context.Context) error { return nil }
	// Not a timeout: no probe is needed, the count alone opens (see ReadyToTrip).
	fail := func(context.Context) error { return redis.ErrClosed }
	run := func(n int, fn func(context.Context) error) {
		t.Helper()
		for range n {
			err := c.l2do(ctx, fn)
			if (err != nil) != (fn(ctx) != nil) {
				t.Fatalf("l2do = %v with the breaker %v", err, c.g.cb.State())
			}
		}
	}
	run(100, ok)
	if n := c.g.cb.Counts(); n.Requests != 0 {
		t.Errorf("after 100 successes on a healthy Redis the breaker saw %d requests, want 0 (quiet)", n.Requests)
	}
	run(4, fail)
	if n := c.g.cb.Counts(); n.ConsecutiveFailures != 4 || !c.g.counted.Load() {
		t.Errorf("after 4 failures: ConsecutiveFailures %d, counted %v; want 4, true", n.ConsecutiveFailures, c.g.counted.Load())
	}
	run(1, ok)
	if n := c.g.cb.Counts(); n.ConsecutiveFailures != 0 || c.g.counted.Load() {
		t.Errorf("after a success: ConsecutiveFailures %d, counted %v; want 0, false", n.ConsecutiveFailures, c.g.counted.Load())
	}
	run(4, fail)
	if st := c.g.cb.State(); st != gobreaker.StateClosed {
		t.Fatalf("breaker %v after 4 failures that followed a success, want closed", st)
	}
	if err := c.l2do(ctx, fail); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("fifth failure: l2do = %v, want ErrUnavailable", err)
	}
	if st := c.g.cb.State(); st == gobreaker.StateClosed {
		t.Errorf("breaker closed after 5 consecutive failures, want open")
	}
	if s := c.Stats(); s.Outages != 1 || s.L2Errors != 9 {
		t.Errorf("Outages %d, L2Errors %d; want 1, 9", s.Outages, s.L2Errors)
	}
}

// TestL2ReadersConcurrentHealthy: 64 goroutines reading from Redis with L1 skipped, on a healthy
// Redis, get every value and no error, and the breaker stays closed: a call's budget (whose Done
// channel is shared, see budgetCtx) never ends before its time. Both client configurations: the
// budget on the socket, and the budget enforced by l2do.
func TestL2ReadersConcurrentHealthy(t *testing.T) {
	t.Parallel()
	for _, ctxDeadlines := range []bool{true, false} {
		t.Run(fmt.Sprintf("ContextTimeoutEnabled=%v", ctxDeadlines), func(t *testing.T) {
			t.Parallel()
			srv := redistest.Start(t)
			o := srv.Options()
			o.ContextTimeoutEnabled = ctxDeadlines
			rdb := redis.NewClient(o)
			t.Cleanup(func() { rdb.Close() })
			// A budget no healthy call on a loaded machine comes near: this checks that
			// nothing fails early, not how fast Redis is.
			c := newCache(t, srv, Options{Redis: rdb, L2Timeout: 5 * time.Second, Logger: quietLogger()})
			ctx := context.Background()
			const keys = 200
			items := map[string][]byte{}
			for i := range keys {
				items[fmt.Sprintf("k%d", i)] = []byte(fmt.Sprintf("v%d", i))
			}
			if err := c.SetMany(ctx, items); err != nil {
				t.Fatal(err)
			}
			var wg sync.WaitGroup
			errs := make(chan error, 64)
			for w := range 64 {
				wg.Go(func() {
					for i := range 100 {
						k := fmt.Sprintf("k%d", (w*100+i)%keys)
						v, err := c.Get(ctx, k, SkipL1())
						if err == nil && string(v) != string(items[k]) {
							err = fmt.Errorf("Get(%q) = %q, want %q", k, v, items[k])
						}
						if err != nil {
							errs <- err
							return
						}
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			if st := c.g.cb.State(); st != gobreaker.StateClosed {
				t.Errorf("breaker %v after 6400 reads of a healthy Redis, want closed", st)
			}
			if s := c.Stats(); s.L2Errors != 0 || s.Outages != 0 || s.L2Hits != 6400 {
				t.Errorf("L2Errors %d, Outages %d, L2Hits %d; want 0, 0, 6400", s.L2Errors, s.Outages, s.L2Hits)
			}
		})
	}
}

// TestBudgetContext: a budget's context keeps its parent's values, reports the exact deadline,
// is not done before it and is done (DeadlineExceeded) soon after; a parent that can be
// cancelled gets a context that ends with it.
func TestBudgetContext(t *testing.T) {
	t.Parallel()
	var b budgetTicks
	type key struct{}
	parent := context.WithValue(context.Background(), key{}, "v")
	start := time.Now()
	ctx, cancel := b.withBudget(parent, start, 30*time.Millisecond)
	defer cancel()
	if _, ok := ctx.(*budgetCtx); !ok {
		t.Fatalf("withBudget of an uncancellable parent = %T, want *budgetCtx", ctx)
	}
	if d, ok := ctx.Deadline(); !ok || !d.Equal(start.Add(30*time.Millisecond)) {
		t.Errorf("Deadline() = %v, %v; want %v, true", d, ok, start.Add(30*time.Millisecond))
	}
	if v := ctx.Value(key{}); v != "v" {
		t.Errorf("Value = %v, want the parent's v", v)
	}
	if err := ctx.Err(); err != nil && time.Since(start) < 30*time.Millisecond {
		t.Errorf("Err() = %v before the deadline, want nil", err)
	}
	<-ctx.Done()
	if el := time.Since(start); el < 30*time.Millisecond {
		t.Errorf("Done after %v, before the 30ms budget", el)
	}
	if err := ctx.Err(); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Err() after Done = %v, want DeadlineExceeded", err)
	}
	// Calls whose budgets end in the same millisecond share one channel.
	c1, _ := b.withBudget(parent, start.Add(time.Hour), time.Second)
	c2, _ := b.withBudget(parent, start.Add(time.Hour), time.Second)
	if c1.Done() != c2.Done() {
		t.Errorf("two budgets ending at the same instant got different Done channels")
	}

	pctx, pcancel := context.WithCancel(context.Background())
	ctx, cancel = b.withBudget(pctx, time.Now(), time.Hour)
	defer cancel()
	pcancel()
	select {
	case <-ctx.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("a budget's context did not end with its cancelled parent")
	}
	if err := ctx.Err(); !errors.Is(err, context.Canceled) {
		t.Errorf("Err() after the parent's cancel = %v, want Canceled", err)
	}
}
