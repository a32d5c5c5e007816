package tiercache

import (
	"context"
	"errors"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/redistest"
)

// goroutineStacks returns the stack of every goroutine now, by its "goroutine N" header.
func goroutineStacks() map[string]string {
	buf := make([]byte, 4<<20)
	buf = buf[:runtime.Stack(buf, true)]
	out := map[string]string{}
	for _, g := range strings.Split(string(buf), "\n\n") {
		head, _, _ := strings.Cut(g, " [")
		out[head] = g
	}
	return out
}

// ours reports whether a goroutine was started by the library (not by a test) or by what the
// library uses for its own work (singleflight, otter).
func ours(stack string) bool {
	_, created, ok := strings.Cut(stack, "\ncreated by ")
	if !ok {
		return false
	}
	fn, file, _ := strings.Cut(created, "\n")
	switch {
	case strings.Contains(file, "_test.go"):
		return false
	case strings.Contains(fn, "github.com/tiercache/tiercache"), strings.Contains(fn, "singleflight"),
		strings.Contains(fn, "maypok86/otter"):
		return true
	}
	return false
}

// checkNoLeak fails tb if goroutines of the library that were not in before still run shortly
// after Close returned (a second's grace for ones that have finished their work and are
// returning).
func checkNoLeak(tb testing.TB, before map[string]string) {
	tb.Helper()
	var leaked []string
	deadline := time.Now().Add(time.Second)
	for {
		leaked = leaked[:0]
		for id, s := range goroutineStacks() {
			if _, old := before[id]; !old && ours(s) {
				leaked = append(leaked, s)
			}
		}
		if len(leaked) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond) // a poll with a deadline, as in waitFor
	}
	if len(leaked) > 0 {
		tb.Errorf("%d goroutines outlived Close:\n%s", len(leaked), strings.Join(leaked, "\n\n"))
	}
}

// TestCloseLeavesNoGoroutines: after Close returns, none of the cache's goroutines runs, whatever
// was in progress: the backplane, a load callers were waiting for, a load past SoftTimeout, an
// eager refresh, a Redis call left to finish past its budget by a client without
// ContextTimeoutEnabled.
func TestCloseLeavesNoGoroutines(t *testing.T) {
	// Not parallel: the check looks at every goroutine of the process.
	srv := redistest.Start(t)
	ctx := context.Background()
	waitLoad := func(started chan<- struct{}) func(context.Context, string) ([]byte, error) {
		return func(ctx context.Context, _ string) ([]byte, error) {
			close(started)
			<-ctx.Done() // a well-behaved loader: it ends with its context
			return nil, ctx.Err()
		}
	}
	cases := []struct {
		name string
		opts Options
		run  func(t *testing.T, c *Cache, clock *fakeClock) (after func())
	}{
		{name: "L1 only", run: func(t *testing.T, c *Cache, _ *fakeClock) func() {
			_ = c.Set(ctx, "k", []byte("v"))
			return nil
		}},
		{name: "backplane", opts: Options{Redis: srv.Client(t)}, run: func(t *testing.T, c *Cache, _ *fakeClock) func() {
			if err := c.Set(ctx, "k", []byte("v")); err != nil {
				t.Fatal(err)
			}
			_, _ = c.Get(ctx, "k", SkipL1())
			return nil
		}},
		{name: "in-flight load", opts: Options{Redis: srv.Client(t)}, run: func(t *testing.T, c *Cache, _ *fakeClock) func() {
			started := make(chan struct{})
			done := make(chan error, 1)
			go func() {
				_, err := c.GetOrLoad(ctx, "loading", waitLoad(started))
				done <- err
			}()
			<-started
			return func() {
				select {
				case err := <-done:
					if err == nil {
						t.Error("GetOrLoad whose load Close cancelled returned no error")
					}
				case <-time.After(30 * time.Second):
					t.Error("GetOrLoad still waits for a load after Close")
				}
			}
		}},
		{name: "load past SoftTimeout", opts: Options{Redis: srv.Client(t), SoftTimeout: time.Millisecond}, run: func(t *testing.T, c *Cache, clock *fakeClock) func() {
			staleEntry(t, c, clock, "soft", "old")
			started := make(chan struct{})
			if _, err := c.GetOrLoad(ctx, "soft", waitLoad(started), SkipL1()); !errors.Is(err, ErrStale) {
				t.Fatalf("GetOrLoad past SoftTimeout = %v, want ErrStale", err)
			}
			<-started
			return nil
		}},
		{name: "eager refresh", opts: Options{Redis: srv.Client(t), EagerRefresh: 0.5, TTL: 10 * time.Second}, run: func(t *testing.T, c *Cache, clock *fakeClock) func() {
			if err := c.Set(ctx, "hot", []byte("v")); err != nil {
				t.Fatal(err)
			}
			clock.Advance(6 * time.Second)
			started := make(chan struct{})
			if _, err := c.GetOrLoad(ctx, "hot", waitLoad(started), SkipL1()); err != nil {
				t.Fatal(err)
			}
			<-started
			return nil
		}},
		{name: "Redis call past its budget", run: func(t *testing.T, c *Cache, _ *fakeClock) func() {
			if c.ctxDeadlines {
				t.Fatal("the client honours context deadlines; this case needs one that does not")
			}
			srv.Pause(t)
			if _, err := c.Get(ctx, "k", SkipL1()); !errors.Is(err, ErrUnavailable) {
				t.Errorf("Get with Redis paused = %v, want ErrUnavailable", err)
			}
			return func() { srv.Resume(t) }
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := goroutineStacks()
			o := tc.opts
			clock := newFakeClock()
			o.Clock, o.Logger, o.NoJitter = clock, quietLogger(), true
			if tc.name == "Redis call past its budget" {
				// go-redis's defaults: no ContextTimeoutEnabled, 3 s read timeout.
				rdb := redis.NewClient(srv.Options())
				t.Cleanup(func() { rdb.Close() })
				o.Redis = rdb
			}
			c, err := New(o)
			if err != nil {
				t.Fatal(err)
			}
			if c.bp != nil {
				waitFor(t, "the invalidation subscriber", 10*time.Second, c.bp.up.Load)
			}
			after := tc.run(t, c, clock)
			start := time.Now()
			if err := c.Close(); err != nil {
				t.Errorf("Close = %v", err)
			}
			t.Logf("Close took %v", time.Since(start))
			checkNoLeak(t, before)
			if after != nil {
				after()
			}
			if err := c.Close(); !errors.Is(err, ErrClosed) {
				t.Errorf("second Close = %v, want ErrClosed", err)
			}
		})
	}
}

// TestOwnLeasesExpire: lease names whose release never reached Redis are forgotten once their
// lease has expired, so the bookkeeping stays bounded however many such keys there are.
func TestOwnLeasesExpire(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	c := newCache(t, srv, Options{Logger: quietLogger()})
	past := time.Now().Add(-time.Second)
	for i := range 1000 {
		// What a load leaves behind when its lease release failed, a lease lifetime ago.
		c.ownLeases.Store(leaseName(DefaultNamespace, "gone"+string(rune('a'+i%26))+time.Duration(i).String()), past)
	}
	var loads atomic.Int32
	if _, err := c.GetOrLoad(context.Background(), "new", func(context.Context, string) ([]byte, error) {
		loads.Add(1)
		return []byte("v"), nil
	}); err != nil {
		t.Fatal(err)
	}
	n := 0
	c.ownLeases.Range(func(any, any) bool { n++; return true })
	if n > 1 {
		t.Errorf("%d lease names remembered after a load, want at most the new one (1000 had expired)", n)
	}
}
