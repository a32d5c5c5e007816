package tiercache

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/sony/gobreaker/v2"

	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/redisconfig"
)

// TestBreakerIgnoresCallerDeadline: a caller's own cancellation or deadline says nothing about
// Redis. However many such calls fail, and for however long, the breaker stays closed and
// L2Errors does not move; each caller gets its context's error.
func TestBreakerIgnoresCallerDeadline(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	c := newCache(t, srv, Options{Logger: quietLogger()})
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	expired, cancel2 := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel2()
	calls := 0
	// Long enough that a time window alone would not keep the breaker closed.
	for start := time.Now(); calls < 30 || time.Since(start) < 600*time.Millisecond; calls++ {
		ctx, what, want := expired, "expired", context.DeadlineExceeded
		switch calls % 8 {
		case 0:
			ctx, what, want = cancelled, "cancelled", context.Canceled
		case 7:
			// A deadline that ends while the command is on its way.
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(context.Background(), 50*time.Microsecond)
			defer cancel()
			what, want = "50µs deadline", context.DeadlineExceeded
		}
		key := fmt.Sprintf("k%d", calls)
		// The 50µs deadline may not end before Redis answers (a miss, then).
		if _, err := c.Get(ctx, key, SkipL1()); !errors.Is(err, want) && !(calls%8 == 7 && errors.Is(err, ErrNotFound)) {
			t.Fatalf("Get(%q) with a %s context after %d calls = %v, want %v (breaker %v)", key, what, calls, err, want, c.g.cb.State())
		}
	}
	if st := c.g.cb.State(); st != gobreaker.StateClosed {
		t.Errorf("breaker %v after %d calls whose callers gave up; want closed", st, calls)
	}
	if s := c.Stats(); s.Outages != 0 || s.L2Errors != 0 {
		t.Errorf("after %d calls whose callers gave up: Outages %d, L2Errors %d; want 0, 0", calls, s.Outages, s.L2Errors)
	}
	// Redis was healthy all along.
	if err := c.Set(context.Background(), "after", []byte("v")); err != nil {
		t.Errorf("Set after the cancelled calls: %v", err)
	}
}

// TestBreakerCountsExpiredBudget: a call whose L2 budget expired (Redis paused) counts against
// Redis even when its caller's deadline is generous, so the breaker opens.
func TestBreakerCountsExpiredBudget(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	c := newCache(t, srv, Options{Logger: quietLogger()})
	srv.Pause(t)
	defer srv.Resume(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	waitFor(t, "the breaker to open on a paused Redis", 30*time.Second, func() bool {
		_, err := c.Get(ctx, "k", SkipL1())
		if err != nil && !errors.Is(err, ErrUnavailable) {
			t.Fatalf("Get(k) with Redis paused = %v, want ErrUnavailable", err)
		}
		return c.Stats().Outages > 0
	})
}

// stallHook fails every command with a timeout while stalled: what a goroutine that was not
// scheduled before its deadline sees, and what a real Redis cannot be made to produce on demand
// for exactly the calls in flight.
type stallHook struct{ stalled atomic.Bool }

func (h *stallHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *stallHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if h.stalled.Load() && !connSetup(cmd) {
			return fmt.Errorf("read tcp: i/o timeout: %w", context.DeadlineExceeded)
		}
		return next(ctx, cmd)
	}
}
func (h *stallHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if h.stalled.Load() {
			return fmt.Errorf("read tcp: i/o timeout: %w", context.DeadlineExceeded)
		}
		return next(ctx, cmds)
	}
}

// TestBreakerIgnoresFailureBurst: a stall fails every call in flight at the same moment; then
// calls succeed again. However many calls the burst holds, it does not open the breaker. A
// failure that goes on (Redis really gone) still does.
func TestBreakerIgnoresFailureBurst(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	hook := &stallHook{}
	rdb := srv.Client(t)
	rdb.AddHook(hook)
	c := newCache(t, srv, Options{Redis: rdb, Logger: quietLogger()})
	ctx := context.Background()
	for round := range 5 {
		hook.stalled.Store(true)
		var wg sync.WaitGroup
		var failed atomic.Int32
		for i := range 20 {
			wg.Go(func() {
				if _, err := c.Get(ctx, fmt.Sprintf("k%d", i), SkipL1()); errors.Is(err, ErrUnavailable) {
					failed.Add(1)
				}
			})
		}
		wg.Wait()
		hook.stalled.Store(false)
		if failed.Load() == 0 {
			t.Fatalf("round %d: no call failed during the stall", round)
		}
		if _, err := c.Get(ctx, "after", SkipL1()); !errors.Is(err, ErrNotFound) {
			t.Fatalf("round %d: Get after the stall = %v, want ErrNotFound (breaker %v)", round, err, c.g.cb.State())
		}
	}
	if s := c.Stats(); s.Outages != 0 {
		t.Errorf("Outages = %d after 5 bursts of 20 simultaneous failures, want 0", s.Outages)
	}
	// A failure that lasts opens it.
	hook.stalled.Store(true)
	waitFor(t, "the breaker to open on a lasting failure", 30*time.Second, func() bool {
		_, _ = c.Get(ctx, "k", SkipL1())
		return c.Stats().Outages > 0
	})
}

const cpuBurnEnv = "TIERCACHE_TEST_CPU_BURN"

// TestCPUBurnChild is the body of the child process of TestBreakerHostBusy: it keeps busy
// goroutines (8 per core) until its stdin closes. It does nothing in a normal run.
func TestCPUBurnChild(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv(cpuBurnEnv))
	if n == 0 {
		t.Skip("child process of TestBreakerHostBusy")
	}
	runtime.GOMAXPROCS(n)
	var stop atomic.Bool
	for range n {
		go func() {
			x := uint64(1)
			for !stop.Load() {
				for range 1000 {
					x = x*6364136223846793005 + 1442695040888963407
				}
			}
			_ = x
		}()
	}
	fmt.Println("burning")
	_, _ = bufio.NewReader(os.Stdin).ReadString('\n') // EOF when the parent closes it or dies
	stop.Store(true)
}

// TestBreakerHostBusy: with both cores saturated by another process and Redis healthy, a cache
// with default options serving concurrent traffic never opens its breaker. It runs 3 s;
// TIERCACHE_CPU_SOAK=5m (any Go duration) runs it that long (docs/OPERATIONS.md).
func TestBreakerHostBusy(t *testing.T) {
	d := 3 * time.Second
	if v := os.Getenv("TIERCACHE_CPU_SOAK"); v != "" {
		var err error
		if d, err = time.ParseDuration(v); err != nil {
			t.Fatalf("TIERCACHE_CPU_SOAK=%q: %v", v, err)
		}
	}
	srv := redistest.Start(t)
	burners := 8 * runtime.NumCPU() // with 2 per core the old rule tripped only when the machine was loaded too
	cmd := exec.Command(os.Args[0], "-test.run=^TestCPUBurnChild$", "-test.v=false")
	cmd.Env = append(os.Environ(), cpuBurnEnv+"="+strconv.Itoa(burners))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		_ = cmd.Wait()
	})
	if line, err := bufio.NewReader(stdout).ReadString('\n'); err != nil || line != "burning\n" {
		t.Fatalf("CPU burner child said %q, %v", line, err)
	}

	rdb, err := redisconfig.NewClient(redisconfig.Config{Host: "127.0.0.1", Port: srv.Port()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rdb.Close() })
	o := Options{Redis: rdb, Logger: quietLogger()}
	if v := os.Getenv("TIERCACHE_CPU_SOAK_WINDOW"); v != "" { // for measuring streaks with another window
		if o.BreakerWindow, err = time.ParseDuration(v); err != nil {
			t.Fatalf("TIERCACHE_CPU_SOAK_WINDOW=%q: %v", v, err)
		}
	}
	c := newCache(t, srv, o)
	ctx := context.Background()
	load := func(_ context.Context, k string) ([]byte, error) { return []byte("v-" + k), nil }
	// The longest run of consecutive failures seen: how close the host came to opening.
	var longest atomic.Int64
	stopSampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stopSampling:
				return
			case <-tick.C:
				if s := int64(c.g.streak()); s > longest.Load() {
					longest.Store(s)
				}
			}
		}
	}()
	var ops, unavailable atomic.Int64
	var wg sync.WaitGroup
	end := time.Now().Add(d)
	for w := range 16 {
		wg.Go(func() {
			for i := 0; time.Now().Before(end); i++ {
				key := fmt.Sprintf("k%d", (i*16+w)%2000)
				var err error
				switch i % 4 {
				case 0:
					err = c.Set(ctx, key, []byte("s"))
				case 1:
					_, err = c.Get(ctx, key, SkipL1())
				default:
					_, err = c.GetOrLoad(ctx, key, load, SkipL1())
				}
				if errors.Is(err, ErrUnavailable) {
					unavailable.Add(1)
				}
				ops.Add(1)
			}
		})
	}
	wg.Wait()
	close(stopSampling)
	<-sampled
	s := c.Stats()
	t.Logf("%v with %d CPU burners on %d cores: %d operations, %d Redis calls over budget (L2Errors), %d ErrUnavailable, %d outages, longest failure streak %v (BreakerWindow %v)",
		d, burners, runtime.NumCPU(), ops.Load(), s.L2Errors, unavailable.Load(), s.Outages, time.Duration(longest.Load()).Round(time.Millisecond), c.cfg.BreakerWindow)
	if s.Outages != 0 {
		t.Errorf("the breaker opened %d times on a healthy Redis with a busy host, want never", s.Outages)
	}
}
