package tiercache

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/redistest"
)

// fakeClock is a Clock that moves only when told to.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Now()} }

func (f *fakeClock) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.t
}

func (f *fakeClock) Advance(d time.Duration) {
	f.mu.Lock()
	f.t = f.t.Add(d)
	f.mu.Unlock()
}

// newCache returns a cache on its own client to srv (nil srv: L1-only), closed at cleanup.
func newCache(tb testing.TB, srv *redistest.Server, o Options) *Cache {
	tb.Helper()
	if srv != nil && o.Redis == nil {
		o.Redis = srv.Client(tb)
	}
	c, err := New(o)
	if err != nil {
		tb.Fatalf("New: %v", err)
	}
	tb.Cleanup(func() { c.Close() })
	if c.bp != nil {
		waitFor(tb, "the invalidation subscriber", 10*time.Second, c.bp.up.Load)
	}
	return c
}

// countingHook counts commands and pipelines sent to Redis.
type countingHook struct {
	cmds, pipelines atomic.Int64
	names           sync.Map // command name -> *atomic.Int64
}

func (h *countingHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *countingHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if connSetup(cmd) {
			return next(ctx, cmd)
		}
		h.cmds.Add(1)
		n, _ := h.names.LoadOrStore(cmd.Name(), new(atomic.Int64))
		n.(*atomic.Int64).Add(1)
		return next(ctx, cmd)
	}
}
func (h *countingHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if len(cmds) > 0 && connSetup(cmds[0]) {
			return next(ctx, cmds)
		}
		h.pipelines.Add(1)
		return next(ctx, cmds)
	}
}

// connSetup reports commands go-redis sends to set up a new connection; they are not ours.
func connSetup(cmd redis.Cmder) bool {
	switch cmd.Name() {
	case "hello", "client", "auth", "select":
		return true
	}
	return false
}

func (h *countingHook) count(name string) int64 {
	if n, ok := h.names.Load(name); ok {
		return n.(*atomic.Int64).Load()
	}
	return 0
}
func (h *countingHook) reset() {
	h.cmds.Store(0)
	h.pipelines.Store(0)
	h.names.Clear()
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(tb testing.TB, what string, d time.Duration, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// redisTime returns Redis's TIME, the clock the scripts' fences are read against.
func redisTime(tb testing.TB, rdb redis.UniversalClient) time.Time {
	tb.Helper()
	now, err := rdb.Time(context.Background()).Result()
	if err != nil {
		tb.Fatal(err)
	}
	return now
}

// pauseRedis SIGSTOPs srv and returns the function that resumes it; the test's cleanup resumes
// it too if the test ends first. Resuming twice is harmless.
func pauseRedis(tb testing.TB, srv *redistest.Server) (resume func()) {
	tb.Helper()
	srv.Pause(tb)
	var once sync.Once
	resume = func() { once.Do(func() { srv.Resume(tb) }) }
	tb.Cleanup(resume)
	return resume
}
