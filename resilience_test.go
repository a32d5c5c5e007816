package tiercache

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/faultproxy"
	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/lock"
)

// opMargin is what an operation may take beyond its L2 budget during an outage: scheduling,
// a fast loader and the fill. Race instrumentation on two shared cores slows everything.
func opMargin() time.Duration {
	if raceEnabled {
		return 600 * time.Millisecond
	}
	return 150 * time.Millisecond
}

// slack widens a deadline under -race.
func slack(d time.Duration) time.Duration {
	if raceEnabled {
		return 2 * d
	}
	return d
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// faultClient returns a go-redis client to addr with short socket timeouts and one retry, so that
// timeouts (and not only refused connections) are exercised. It is closed at cleanup.
func faultClient(tb testing.TB, srv *redistest.Server, addr string) *redis.Client {
	tb.Helper()
	o := srv.Options()
	if addr != "" {
		o.Addr = addr
	}
	o.DialTimeout, o.ReadTimeout, o.WriteTimeout = 100*time.Millisecond, 100*time.Millisecond, 100*time.Millisecond
	o.MaxRetries = 1
	rdb := redis.NewClient(o)
	h := &slowHook{max: map[string]time.Duration{}, hits: map[string]int{}}
	rdb.AddHook(h)
	slowHooks.Store(rdb, h)
	tb.Cleanup(func() { rdb.Close() })
	return rdb
}

// slowHook records the slowest Redis commands of fault clients, to explain slow operations.
type slowHook struct {
	mu   sync.Mutex
	max  map[string]time.Duration // command name (with its deadline state) -> slowest call
	hits map[string]int
}

var slowHooks sync.Map // *redis.Client -> *slowHook

func slowReport(rdb redis.UniversalClient) string {
	if h, ok := slowHooks.Load(rdb); ok {
		return h.(*slowHook).report()
	}
	return "(no hook)"
}

func (h *slowHook) note(name string, ctx context.Context, d time.Duration) {
	if _, ok := ctx.Deadline(); ok {
		name += " (deadline)"
	} else {
		name += " (no deadline)"
	}
	h.mu.Lock()
	if d > h.max[name] {
		h.max[name] = d
	}
	if d > 100*time.Millisecond {
		h.hits[name]++
	}
	h.mu.Unlock()
}

func (h *slowHook) report() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := ""
	for k, v := range h.max {
		s += fmt.Sprintf("%s: max %v, %d calls over 100ms; ", k, v.Round(time.Millisecond), h.hits[k])
	}
	return s
}

func (h *slowHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *slowHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		start := time.Now()
		err := next(ctx, cmd)
		h.note(cmd.Name(), ctx, time.Since(start))
		return err
	}
}
func (h *slowHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		start := time.Now()
		err := next(ctx, cmds)
		h.note("pipeline", ctx, time.Since(start))
		return err
	}
}

// newRowDB returns a store of record holding version 1 of every key.
func newRowDB(keys ...[]string) *rowDB {
	db := &rowDB{version: map[string]uint64{}, deleted: map[string]bool{}}
	for _, ks := range keys {
		for _, k := range ks {
			db.version[k] = 1
		}
	}
	return db
}

func keyRange(prefix string, n int) []string {
	ks := make([]string, n)
	for i := range ks {
		ks[i] = fmt.Sprint(prefix, i)
	}
	return ks
}

// traffic drives one instance with GetOrLoad of many keys (loaded from a rowDB) and Get of keys
// warmed into L1, records the slowest operation and counts failures.
type traffic struct {
	rows *TypedCache[row]
	db   *rowDB
	hot  []string // warmed into L1 (and Redis) before the fault
	cold []string // GetOrLoad keys, most missing from both tiers

	strictGet atomic.Bool // count Get failures of hot keys (while L1 must answer)
	ops       atomic.Int64
	loadFails atomic.Int64
	getFails  atomic.Int64
	lastErr   atomic.Value // error

	mu      sync.Mutex
	maxOp   time.Duration
	maxDesc string

	stop chan struct{}
	wg   sync.WaitGroup
}

func newTraffic(c *Cache, nhot, ncold int) *traffic {
	tr := &traffic{rows: Typed(c, JSON[row]()), hot: keyRange("hot:", nhot), cold: keyRange("cold:", ncold), stop: make(chan struct{})}
	tr.db = newRowDB(tr.hot, tr.cold)
	return tr
}

// warm loads the hot keys into both tiers.
func (tr *traffic) warm(tb testing.TB) {
	tb.Helper()
	for _, k := range tr.hot {
		if _, err := tr.rows.GetOrLoad(context.Background(), k, tr.db.load); err != nil {
			tb.Fatalf("GetOrLoad(%q) while warming: %v", k, err)
		}
		if _, ok := tr.rows.Peek(k); !ok {
			tb.Fatalf("Peek(%q) after warming: not in L1", k)
		}
	}
}

func (tr *traffic) record(d time.Duration, what string) {
	tr.mu.Lock()
	if d > tr.maxOp {
		tr.maxOp, tr.maxDesc = d, what
	}
	tr.mu.Unlock()
}

// takeMax returns the slowest operation since the last call and resets it.
func (tr *traffic) takeMax() (time.Duration, string) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	d, s := tr.maxOp, tr.maxDesc
	tr.maxOp, tr.maxDesc = 0, ""
	return d, s
}

// start runs workers goroutines, each pacing itself to about one operation per millisecond.
func (tr *traffic) start(workers int) {
	for w := range workers {
		tr.wg.Add(1)
		go func() {
			defer tr.wg.Done()
			r := mrand.New(mrand.NewPCG(uint64(w), 7))
			tick := time.NewTicker(time.Millisecond)
			defer tick.Stop()
			ctx := context.Background()
			for {
				select {
				case <-tr.stop:
					return
				case <-tick.C:
				}
				tr.ops.Add(1)
				if r.IntN(2) == 0 {
					k := tr.hot[r.IntN(len(tr.hot))]
					strict := tr.strictGet.Load()
					start := time.Now()
					_, err := tr.rows.Get(ctx, k)
					tr.record(time.Since(start), "Get "+k)
					if err != nil && strict && tr.strictGet.Load() {
						tr.getFails.Add(1)
						tr.lastErr.Store(fmt.Errorf("Get(%q): %w", k, err))
					}
					continue
				}
				k := tr.cold[r.IntN(len(tr.cold))]
				start := time.Now()
				got, err := tr.rows.GetOrLoad(ctx, k, tr.db.load)
				tr.record(time.Since(start), "GetOrLoad "+k)
				if err != nil || got.V != 1 {
					tr.loadFails.Add(1)
					tr.lastErr.Store(fmt.Errorf("GetOrLoad(%q) = %v, %v", k, got, err))
				}
			}
		}()
	}
}

func (tr *traffic) halt() {
	close(tr.stop)
	tr.wg.Wait()
}

// outage describes one fault for outageUnderLoad.
type outage struct {
	name   string
	client func(tb testing.TB, srv *redistest.Server) redis.UniversalClient // the instance under test
	fault  func(tb testing.TB)
	heal   func(tb testing.TB)
	hold   time.Duration // how long the fault lasts
}

// outageUnderLoad runs traffic against instance A through the fault and checks the bounds of
// section 4: no read fails, no operation waits past the L2 budget plus a margin, health turns
// degraded within 1s, and after the fault L2 use resumes within 2s and health returns to
// healthy by itself. Instance B, on its own healthy client, writes the probe that A must see.
func outageUnderLoad(t *testing.T, srv *redistest.Server, o outage) {
	ctx := context.Background()
	rdbA := o.client(t, srv)
	a := newCache(t, srv, Options{Redis: rdbA, Logger: quietLogger(), L1TTL: time.Minute})
	b := newCache(t, srv, Options{Logger: quietLogger()})
	tr := newTraffic(a, 20, 2000)
	tr.warm(t)
	tr.strictGet.Store(true)
	tr.start(4)
	stopped := false
	defer func() {
		if !stopped {
			tr.halt()
		}
	}()

	// Healthy traffic first, so the figures below compare with something.
	waitFor(t, "healthy traffic", 5*time.Second, func() bool { return tr.ops.Load() > 200 })
	healthyMax, healthyDesc := tr.takeMax()
	if h := a.Health(ctx); h.State != StateHealthy {
		t.Fatalf("Health before the fault = %q (%s), want %q", h.State, h.RedisError, StateHealthy)
	}
	budget := a.cfg.L2Timeout + opMargin()

	o.fault(t)
	faultAt := time.Now()
	var toDegraded time.Duration
	waitFor(t, "Health degraded", slack(time.Second)+time.Second, func() bool {
		if a.Health(ctx).State == StateDegraded {
			toDegraded = time.Since(faultAt)
			return true
		}
		return false
	})
	if toDegraded > time.Second {
		t.Errorf("Health became degraded %v after the fault, want within 1s", toDegraded)
	}
	opsAtFault := tr.ops.Load()
	// Hold the fault while the traffic runs: a timer, not a wait for anything to settle.
	if rest := o.hold - time.Since(faultAt); rest > 0 {
		<-time.After(rest)
	}
	if hs := a.Health(ctx); hs.State != StateDegraded || hs.Breaker == "closed" {
		t.Errorf("Health at the end of the fault = %q, breaker %q; want degraded, breaker not closed", hs.State, hs.Breaker)
	}
	opsDuringFault := tr.ops.Load() - opsAtFault
	tr.strictGet.Store(false) // recovery flushes L1: hot keys may now miss (and after a kill, Redis lost them)
	faultMax, faultDesc := tr.takeMax()
	outages := a.Stats().Outages

	o.heal(t)
	healAt := time.Now()
	// L2 use resumes: a value written by B after the fault becomes visible to A from Redis.
	var toL2 time.Duration
	probe := fmt.Sprint("probe-", o.name)
	l2HitsBefore := a.Stats().L2Hits
	for i := 0; ; i++ {
		want := row{V: uint64(i + 1)}
		bRows := Typed(b, JSON[row]())
		if err := bRows.Set(ctx, probe, want, Version(want.V)); err == nil {
			if got, err := tr.rows.Get(ctx, probe, SkipL1()); err == nil && got == want {
				toL2 = time.Since(healAt)
				break
			}
		}
		if time.Since(healAt) > slack(2*time.Second)+time.Second {
			t.Fatalf("L2 use did not resume within %v of the end of the fault (%s): Health %+v", time.Since(healAt), o.name, a.Health(ctx))
		}
		// poll
		<-time.After(5 * time.Millisecond)
	}
	if toL2 > 2*time.Second {
		t.Errorf("L2 use resumed %v after the fault ended, want within 2s", toL2)
	}
	if a.Stats().L2Hits <= l2HitsBefore {
		t.Errorf("Stats().L2Hits did not grow after recovery (%d)", l2HitsBefore)
	}
	var toHealthy time.Duration
	waitFor(t, "Health healthy again", slack(5*time.Second), func() bool {
		if a.Health(ctx).State == StateHealthy {
			toHealthy = time.Since(healAt)
			return true
		}
		return false
	})
	// Traffic after recovery must also work.
	opsAtHeal := tr.ops.Load()
	waitFor(t, "traffic after recovery", 5*time.Second, func() bool { return tr.ops.Load() > opsAtHeal+200 })
	tr.halt()
	stopped = true
	recoveryMax, recoveryDesc := tr.takeMax()

	s := a.Stats()
	t.Logf("%s: %d ops (%d during the fault); max op healthy %v (%s), during the fault %v (%s), after %v (%s); budget %v",
		o.name, tr.ops.Load(), opsDuringFault, healthyMax, healthyDesc, faultMax, faultDesc, recoveryMax, recoveryDesc, budget)
	t.Logf("%s: degraded after %v; L2 use resumed %v after the fault ended, healthy after %v; outages %d, recoveries %d, L2 errors %d, loads %d",
		o.name, toDegraded.Round(time.Millisecond), toL2.Round(time.Millisecond), toHealthy.Round(time.Millisecond), s.Outages, s.Recoveries, s.L2Errors, s.Loads)

	t.Logf("%s: slowest Redis commands of A: %s", o.name, slowReport(rdbA))
	if n := tr.loadFails.Load(); n != 0 {
		t.Errorf("%d GetOrLoad calls failed, want 0; last: %v", n, tr.lastErr.Load())
	}
	if n := tr.getFails.Load(); n != 0 {
		t.Errorf("%d Get calls of L1-resident keys failed during the fault, want 0; last: %v", n, tr.lastErr.Load())
	}
	if opsDuringFault < 100 {
		t.Errorf("only %d operations ran during the fault: the traffic stalled", opsDuringFault)
	}
	if outages == 0 {
		t.Errorf("Stats().Outages = 0 after the fault: the breaker never opened")
	}
	if s.Recoveries == 0 {
		t.Errorf("Stats().Recoveries = 0 after the fault")
	}
	// The operation bounds, last: the figures above explain a failure here.
	var over []string
	if faultMax > budget {
		over = append(over, fmt.Sprintf("slowest operation during the fault took %v (%s)", faultMax, faultDesc))
	}
	if recoveryMax > budget {
		over = append(over, fmt.Sprintf("slowest operation around recovery took %v (%s)", recoveryMax, recoveryDesc))
	}
	if len(over) > 0 {
		t.Errorf("%s, want at most L2Timeout %v + margin %v", strings.Join(over, "; "), a.cfg.L2Timeout, opMargin())
	}
}

func TestResilienceRedisKilledUnderLoad(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	outageUnderLoad(t, srv, outage{
		name:   "kill",
		client: func(tb testing.TB, srv *redistest.Server) redis.UniversalClient { return faultClient(tb, srv, "") },
		fault:  srv.Kill,
		heal:   srv.Restart,
		hold:   1500 * time.Millisecond,
	})
}

func TestResilienceRedisPaused(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	outageUnderLoad(t, srv, outage{
		name:   "pause",
		client: func(tb testing.TB, srv *redistest.Server) redis.UniversalClient { return faultClient(tb, srv, "") },
		fault:  srv.Pause,
		heal:   srv.Resume,
		hold:   3 * time.Second,
	})
}

func TestResilienceBlackhole(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	p := faultproxy.New(t, srv.Addr())
	outageUnderLoad(t, srv, outage{
		name: "blackhole",
		client: func(tb testing.TB, srv *redistest.Server) redis.UniversalClient {
			return faultClient(tb, srv, p.Addr())
		},
		fault: func(testing.TB) { p.Blackhole(true) },
		heal:  func(testing.TB) { p.Blackhole(false) },
		hold:  3 * time.Second,
	})
}

// openFiles counts this process's open file descriptors.
func openFiles(tb testing.TB) int {
	tb.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		tb.Skipf("cannot count open files: %v", err)
	}
	return len(ents)
}

// TestResiliencePauseCyclesNoLeak pauses and resumes Redis 20 times under traffic; goroutines and
// open files must come back to their baseline, with the cache open and after Close. It is not
// parallel: it counts the goroutines and files of the whole process.
func TestResiliencePauseCyclesNoLeak(t *testing.T) {
	srv := redistest.Start(t)
	baseG, baseF := runtime.NumGoroutine(), openFiles(t)
	rdb := faultClient(t, srv, "")
	c := newCache(t, srv, Options{Redis: rdb, Logger: quietLogger(), L1TTL: time.Minute})
	tr := newTraffic(c, 20, 500)
	tr.warm(t)
	tr.start(2)
	waitFor(t, "healthy traffic", 5*time.Second, func() bool { return tr.ops.Load() > 200 })
	openG, openF := runtime.NumGoroutine(), openFiles(t)

	ctx := context.Background()
	for i := range 20 {
		srv.Pause(t)
		<-time.After(time.Duration(200+mrand.IntN(100)) * time.Millisecond) // the pause itself
		srv.Resume(t)
		// Traffic between pauses: wait until L2 answers again, then let some operations run.
		waitFor(t, fmt.Sprintf("L2 after resume %d", i), slack(3*time.Second), func() bool {
			_, err := tr.rows.Get(ctx, tr.hot[0], SkipL1())
			return err == nil
		})
		n := tr.ops.Load()
		waitFor(t, "traffic between pauses", 5*time.Second, func() bool { return tr.ops.Load() > n+50 })
	}
	tr.halt()
	cycleMax, cycleDesc := tr.takeMax()
	if n := tr.loadFails.Load(); n != 0 {
		t.Errorf("%d GetOrLoad calls failed during the pause cycles, want 0; last: %v", n, tr.lastErr.Load())
	}
	waitFor(t, "Health healthy after the cycles", slack(5*time.Second), func() bool { return c.Health(ctx).State == StateHealthy })

	const extra = 5
	var g, f int
	deadline := time.Now().Add(slack(5 * time.Second))
	for {
		g, f = runtime.NumGoroutine(), openFiles(t)
		if g <= openG+extra && f <= openF+extra {
			break
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("after 20 pause cycles with the cache open: %d goroutines (baseline %d), %d open files (baseline %d), want at most baseline+%d\n%s",
				g, openG, f, openF, extra, buf[:runtime.Stack(buf, true)])
		}
		<-time.After(10 * time.Millisecond)
	}
	t.Logf("with the cache open: goroutines %d -> %d, open files %d -> %d; slowest op %v (%s)", openG, g, openF, f, cycleMax, cycleDesc)

	c.Close()
	rdb.Close()
	deadline = time.Now().Add(slack(5 * time.Second))
	for {
		g, f = runtime.NumGoroutine(), openFiles(t)
		if g <= baseG+extra && f <= baseF+extra {
			break
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("after Close: %d goroutines (baseline %d), %d open files (baseline %d), want at most baseline+%d\n%s",
				g, baseG, f, baseF, extra, buf[:runtime.Stack(buf, true)])
		}
		<-time.After(10 * time.Millisecond)
	}
	t.Logf("after Close: goroutines %d -> %d, open files %d -> %d", baseG, g, baseF, f)
	if budget := c.cfg.L2Timeout + opMargin(); cycleMax > budget {
		t.Errorf("slowest operation during the pause cycles took %v (%s), want at most %v", cycleMax, cycleDesc, budget)
	}
}

// TestResilienceWritesDuringOutage: writes accepted while Redis is down are replayed on recovery,
// and then no instance serves the value they replaced.
func TestResilienceWritesDuringOutage(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	ctx := context.Background()
	a := newCache(t, srv, Options{Logger: quietLogger()})
	b := newCache(t, srv, Options{Logger: quietLogger()})
	keys := keyRange("k", 20)
	for _, k := range keys {
		if err := a.Set(ctx, k, []byte("pre")); err != nil {
			t.Fatalf("Set(%q, pre): %v", k, err)
		}
	}
	for _, k := range keys {
		if got, err := b.Get(ctx, k); err != nil || string(got) != "pre" {
			t.Fatalf("B: Get(%q) = %q, %v, want pre", k, got, err)
		}
		if _, ok := b.Peek(k); !ok {
			t.Fatalf("B: Peek(%q): not in L1", k)
		}
	}

	srv.Kill(t)
	for _, k := range keys {
		if err := a.Set(ctx, k, []byte("during")); err != nil {
			t.Fatalf("Set(%q, during) with Redis down = %v, want nil (remembered)", k, err)
		}
		if got, err := a.Get(ctx, k); err != nil || string(got) != "during" {
			t.Fatalf("A: Get(%q) after its write during the outage = %q, %v, want during", k, got, err)
		}
	}
	if n := a.Stats().PendingWrites; n != uint64(len(keys)) {
		t.Errorf("A: Stats().PendingWrites = %d during the outage, want %d", n, len(keys))
	}
	if h := a.Health(ctx); h.State != StateDegraded || h.Pending != len(keys) {
		t.Errorf("A: Health during the outage = %q with %d pending, want %q with %d", h.State, h.Pending, StateDegraded, len(keys))
	}

	srv.Restart(t)
	restarted := time.Now()
	waitFor(t, "A to replay its writes", slack(5*time.Second), func() bool {
		return a.Stats().PendingWrites == 0 && a.Health(ctx).State == StateHealthy
	})
	recovered := time.Now()
	t.Logf("A replayed %d writes %v after the restart", a.Stats().Replayed, recovered.Sub(restarted).Round(time.Millisecond))

	// B converges within a bound; count what it served on the way.
	var bPre int
	var converged time.Duration
	waitFor(t, "B to serve the writes made during the outage", slack(2*time.Second), func() bool {
		ok := true
		for _, k := range keys {
			got, err := b.Get(ctx, k)
			if string(got) == "pre" {
				bPre++
			}
			if err != nil || string(got) != "during" {
				ok = false
			}
		}
		converged = time.Since(recovered)
		return ok
	})
	t.Logf("B converged %v after A's recovery; it served pre %d times on the way", converged.Round(time.Millisecond), bPre)
	if bPre > 0 {
		t.Errorf("B served the pre-outage value %d times after A had recovered", bPre)
	}

	c := newCache(t, srv, Options{Logger: quietLogger()})
	for round := range 3 {
		for name, inst := range map[string]*Cache{"A": a, "B": b, "C": c} {
			for _, k := range keys {
				if got, err := inst.Get(ctx, k); err != nil || string(got) != "during" {
					t.Errorf("round %d: %s: Get(%q) = %q, %v, want during", round, name, k, got, err)
				}
			}
		}
	}
	if s := a.Stats(); s.Replayed < uint64(len(keys)) || s.Recoveries == 0 {
		t.Errorf("A: Stats() Replayed %d, Recoveries %d; want at least %d and 1", s.Replayed, s.Recoveries, len(keys))
	}
}

var errLoader = errors.New("loader: database down")

// staleEntry writes key=val with a short TTL through a and moves the shared fake clock past its
// logical expiry; Redis keeps it for FailSafeMaxAge more.
func staleEntry(tb testing.TB, a *Cache, clock *fakeClock, key, val string) {
	tb.Helper()
	if err := a.Set(context.Background(), key, []byte(val), TTL(time.Second)); err != nil {
		tb.Fatalf("Set(%q): %v", key, err)
	}
	clock.Advance(2 * time.Second)
}

func TestResilienceFailSafe(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	ctx := context.Background()
	clock := newFakeClock()
	o := Options{Logger: quietLogger(), Clock: clock, NoJitter: true}
	a := newCache(t, srv, o)
	b := newCache(t, srv, o)
	staleEntry(t, a, clock, "fs", "old")

	calls := 0
	failing := func(context.Context, string) ([]byte, error) { calls++; return nil, errLoader }
	got, err := b.GetOrLoad(ctx, "fs", failing)
	if !errors.Is(err, ErrStale) || !errors.Is(err, errLoader) {
		t.Errorf("GetOrLoad(fs) with a failing loader: err = %v, want one matching ErrStale and the loader's error", err)
	}
	if string(got) != "old" {
		t.Errorf("GetOrLoad(fs) with a failing loader = %q, want the stale value %q", got, "old")
	}
	if calls != 1 {
		t.Errorf("loader called %d times, want 1", calls)
	}
	if n := b.Stats().StaleServed; n != 1 {
		t.Errorf("Stats().StaleServed = %d, want 1", n)
	}
	// The stale value is not served as fresh by Get.
	if got, err := b.Get(ctx, "fs", SkipL1()); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get(fs) past its logical expiry = %q, %v, want ErrNotFound", got, err)
	}

	// Without a stale entry the loader's error comes back unchanged.
	got, err = b.GetOrLoad(ctx, "absent", failing)
	if err != errLoader { //nolint:errorlint // unchanged means the very same error
		t.Errorf("GetOrLoad(absent) with a failing loader: err = %v, want the loader's error unchanged", err)
	}
	if errors.Is(err, ErrStale) || got != nil {
		t.Errorf("GetOrLoad(absent) with a failing loader = %q, %v, want nil and no ErrStale", got, err)
	}
	// Past the maximum stale age nothing is served either.
	staleEntry(t, a, clock, "old", "older")
	clock.Advance(DefaultFailSafeMaxAge)
	if got, err := b.GetOrLoad(ctx, "old", failing); err != errLoader || got != nil { //nolint:errorlint
		t.Errorf("GetOrLoad(old) past FailSafeMaxAge = %q, %v, want nil, the loader's error", got, err)
	}
	if n := b.Stats().StaleServed; n != 1 {
		t.Errorf("Stats().StaleServed = %d at the end, want 1", n)
	}
}

func TestResilienceSoftTimeout(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	ctx := context.Background()
	clock := newFakeClock()
	o := Options{Logger: quietLogger(), Clock: clock, NoJitter: true, SoftTimeout: 50 * time.Millisecond}
	a := newCache(t, srv, o)
	b := newCache(t, srv, o)
	staleEntry(t, a, clock, "soft", "old")

	const loadTime = 500 * time.Millisecond
	var calls atomic.Int32
	finished := make(chan struct{})
	slow := func(ctx context.Context, _ string) ([]byte, error) {
		calls.Add(1)
		defer close(finished)
		select {
		case <-time.After(loadTime): // a slow database
			return []byte("fresh"), nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	start := time.Now()
	got, err := b.GetOrLoad(ctx, "soft", slow)
	took := time.Since(start)
	if !errors.Is(err, ErrStale) || string(got) != "old" {
		t.Errorf("GetOrLoad(soft) with a slow loader = %q, %v, want %q with ErrStale", got, err, "old")
	}
	if took >= 400*time.Millisecond {
		t.Errorf("GetOrLoad(soft) took %v with SoftTimeout 50ms and a %v loader, want well under the loader's time", took, loadTime)
	}
	select {
	case <-finished:
	case <-time.After(slack(5 * time.Second)):
		t.Fatal("the background load never finished")
	}
	var filled time.Duration
	waitFor(t, "the fresh value in Redis", slack(2*time.Second), func() bool {
		v, err := a.Get(ctx, "soft", SkipL1())
		filled = time.Since(start)
		return err == nil && string(v) == "fresh"
	})
	waitFor(t, "the fresh value on the loading instance", slack(2*time.Second), func() bool {
		v, err := b.GetOrLoad(ctx, "soft", slow)
		return err == nil && string(v) == "fresh"
	})
	if n := calls.Load(); n != 1 {
		t.Errorf("loader called %d times, want 1", n)
	}
	t.Logf("stale answer after %v; fresh value in Redis %v after the call", took.Round(time.Millisecond), filled.Round(time.Millisecond))
}

// TestResilienceStampede: 100 goroutines in each of 3 instances miss one key at once and the
// loader runs once; when the lease holder is dead, each instance loads at most once more.
func TestResilienceStampede(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	ctx := context.Background()
	const instances, perInstance = 3, 100
	var caches []*Cache
	for range instances {
		caches = append(caches, newCache(t, srv, Options{Logger: quietLogger()}))
	}

	run := func(key string, load func(context.Context, string) ([]byte, error)) (time.Duration, int) {
		var wg sync.WaitGroup
		var failed atomic.Int32
		gate := make(chan struct{})
		for _, c := range caches {
			for range perInstance {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-gate
					if v, err := c.GetOrLoad(ctx, key, load); err != nil || string(v) != "loaded" {
						failed.Add(1)
						t.Errorf("GetOrLoad(%q) = %q, %v, want loaded", key, v, err)
					}
				}()
			}
		}
		start := time.Now()
		close(gate)
		wg.Wait()
		return time.Since(start), int(failed.Load())
	}

	var calls atomic.Int32
	load := func(ctx context.Context, _ string) ([]byte, error) {
		calls.Add(1)
		// Stay in the load long enough for every instance to miss and meet the lease.
		select {
		case <-time.After(100 * time.Millisecond):
		case <-ctx.Done():
		}
		return []byte("loaded"), nil
	}
	took, _ := run("stampede", load)
	if n := calls.Load(); n != 1 {
		t.Errorf("%d goroutines in %d instances missed one key at once: the loader ran %d times, want 1", instances*perInstance, instances, n)
	}
	var waits uint64
	for _, c := range caches {
		waits += c.Stats().LeaseWaits
	}
	t.Logf("stampede: %d callers served in %v, loader calls %d, lease waits %d", instances*perInstance, took.Round(time.Millisecond), calls.Load(), waits)

	// The lease holder dies: a lease taken here and never released, as by a crashed instance.
	locker, err := lock.New(lock.Options{Clients: []redis.UniversalClient{srv.Client(t)}, Prefix: DefaultNamespace + ":lease:", TTL: DefaultLeaseTTL, ExtendEvery: -1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := locker.TryLock(ctx, leaseName(DefaultNamespace, "orphan")); err != nil {
		t.Fatalf("taking the lease of a dead instance: %v", err)
	}
	calls.Store(0)
	took, _ = run("orphan", load)
	if n := calls.Load(); n < 1 || n > instances {
		t.Errorf("with a dead lease holder the loader ran %d times, want 1 to %d (at most once per instance)", n, instances)
	}
	if took < DefaultLeaseWait*9/10 {
		t.Errorf("with a dead lease holder the callers were served in %v, want them to wait about LeaseWait %v first", took, DefaultLeaseWait)
	}
	t.Logf("dead lease holder: callers served in %v, loader calls %d", took.Round(time.Millisecond), calls.Load())
}

func TestResilienceHealthHandler(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	c := newCache(t, srv, Options{Logger: quietLogger()})
	h := c.HealthHandler()
	get := func() (int, Health) {
		t.Helper()
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/health", nil))
		var body Health
		if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
			t.Fatalf("health body %q: %v", rec.Body.String(), err)
		}
		if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
			t.Errorf("Content-Type = %q, want application/json", ct)
		}
		return rec.Code, body
	}
	if code, body := get(); code != http.StatusOK || body.State != StateHealthy || body.Breaker != "closed" || body.Subscriber == nil || !body.Subscriber.Up {
		t.Errorf("healthy: %d %+v, want 200, healthy, breaker closed, subscriber up", code, body)
	}
	srv.Kill(t)
	var code int
	var body Health
	waitFor(t, "health degraded", slack(2*time.Second), func() bool {
		code, body = get()
		return body.State == StateDegraded
	})
	if code != http.StatusOK || body.RedisError == "" {
		t.Errorf("Redis killed: %d %+v, want 200, degraded, with the Redis error", code, body)
	}
	c.Close()
	if code, body := get(); code != http.StatusServiceUnavailable || body.State != StateClosed {
		t.Errorf("after Close: %d %q, want 503 %q", code, body.State, StateClosed)
	}
}

func TestResilienceEagerRefresh(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	ctx := context.Background()
	clock := newFakeClock()
	o := Options{Logger: quietLogger(), Clock: clock, NoJitter: true, EagerRefresh: 0.5, TTL: 10 * time.Second, L1TTL: time.Second}
	a := newCache(t, srv, o)
	b := newCache(t, srv, o)
	if err := a.Set(ctx, "hot", []byte("v1")); err != nil {
		t.Fatal(err)
	}
	var calls atomic.Int32
	load := func(context.Context, string) ([]byte, error) {
		calls.Add(1)
		return []byte("v2"), nil
	}
	// Early in its life a read does not refresh.
	clock.Advance(2 * time.Second)
	if got, err := b.GetOrLoad(ctx, "hot", load, SkipL1()); err != nil || string(got) != "v1" {
		t.Fatalf("GetOrLoad(hot) at 20%% of its TTL = %q, %v, want v1", got, err)
	}
	// Past half its TTL a read from Redis answers with the current value and refreshes once.
	clock.Advance(4 * time.Second)
	for range 5 {
		if got, err := b.GetOrLoad(ctx, "hot", load, SkipL1()); err != nil || (string(got) != "v1" && string(got) != "v2") {
			t.Fatalf("GetOrLoad(hot) at 60%% of its TTL = %q, %v, want v1 (or v2 once refreshed)", got, err)
		}
	}
	waitFor(t, "the refreshed value in Redis", slack(2*time.Second), func() bool {
		v, err := a.Get(ctx, "hot", SkipL1())
		return err == nil && string(v) == "v2"
	})
	if n := calls.Load(); n != 1 {
		t.Errorf("loader called %d times, want exactly one background refresh", n)
	}
	if n := b.Stats().Refreshes; n != 1 {
		t.Errorf("Stats().Refreshes = %d, want 1", n)
	}
	// The refreshed entry has a full TTL again: no further refresh.
	if got, err := b.GetOrLoad(ctx, "hot", load, SkipL1()); err != nil || string(got) != "v2" {
		t.Errorf("GetOrLoad(hot) after the refresh = %q, %v, want v2", got, err)
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("loader called %d times after reading the refreshed entry, want 1", n)
	}
}

// TestResilienceL2BudgetDefaultClient: the L2 budget must hold whatever socket timeouts the
// caller's client has; here go-redis's defaults (ReadTimeout 3s) and a paused Redis.
func TestResilienceL2BudgetDefaultClient(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	ctx := context.Background()
	rdb := redis.NewClient(srv.Options())
	t.Cleanup(func() { rdb.Close() })
	c := newCache(t, srv, Options{Redis: rdb, Logger: quietLogger()})
	if err := c.Set(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	srv.Pause(t)
	defer srv.Resume(t)
	start := time.Now()
	_, err := c.Get(ctx, "k", SkipL1())
	took := time.Since(start)
	t.Logf("Get(k, SkipL1) with Redis paused: %v after %v", err, took.Round(time.Millisecond))
	if !errors.Is(err, ErrUnavailable) {
		t.Errorf("Get(k, SkipL1) with Redis paused = %v, want ErrUnavailable", err)
	}
	if budget := c.cfg.L2Timeout + opMargin(); took > budget {
		t.Errorf("Get(k, SkipL1) with Redis paused took %v, want at most L2Timeout %v + margin %v", took, c.cfg.L2Timeout, opMargin())
	}
}

// TestForgetKeepsNewerPending: a write of version 5 that reaches Redis after a write of version 6
// was remembered (Redis was unreachable for it) must not drop the remembered one; a write of
// version 7 supersedes it. (Found by TestCoherenceUnderFaults: the remembered write was lost.)
func TestForgetKeepsNewerPending(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	c := newCache(t, srv, Options{Logger: quietLogger()})
	if _, err := c.g.remember(&pendingWrite{req: writeReq{env: make([]byte, 30), px: 60000}, key: "k", val: []byte("v6"), until: time.Now().Add(time.Minute)}, 6, 0, time.Now()); err != nil {
		t.Fatal(err)
	}
	c.g.forget("k", 5)
	if v, found, ok := c.bytes.pendingValue("k"); !ok || !found || string(v) != "v6" {
		t.Fatalf("after an older write succeeded, pending = %q, %v, %v; want v6 kept", v, found, ok)
	}
	c.g.forget("k", 7)
	if _, _, ok := c.bytes.pendingValue("k"); ok {
		t.Fatal("a newer write that reached Redis did not supersede the remembered one")
	}
}

// A lease whose release never reached Redis (the connection dropped during the load) must not
// make this instance's next load of the key wait LeaseWait for a fill only it could make.
func TestResilienceOwnUnreleasedLease(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	p := faultproxy.New(t, srv.Addr())
	c := newCache(t, srv, Options{Redis: faultClient(t, srv, p.Addr()), Logger: quietLogger()})
	ctx := context.Background()
	var calls atomic.Int32
	cut := func(ctx context.Context, _ string) ([]byte, error) {
		if calls.Add(1) == 1 {
			// Drop the connection under the flight: its fill and its lease release both fail.
			p.Refuse(true)
			p.ResetAll()
		}
		return []byte("loaded"), nil
	}
	if v, err := c.GetOrLoad(ctx, "k", cut); err != nil || string(v) != "loaded" {
		t.Fatalf("GetOrLoad during the cut = %q, %v", v, err)
	}
	waitFor(t, "Health degraded", 5*time.Second, func() bool { return c.Health(ctx).State == StateDegraded })
	p.Refuse(false)
	waitFor(t, "Health healthy", 10*time.Second, func() bool { return c.Health(ctx).State == StateHealthy })
	leaseKey := DefaultNamespace + ":lease:{" + leaseName(DefaultNamespace, "k") + "}:lock"
	if n, err := srv.Client(t).Exists(ctx, leaseKey).Result(); err != nil || n != 1 {
		t.Fatalf("EXISTS %s = %d, %v: the lease should have outlived its failed release", leaseKey, n, err)
	}
	waits := c.Stats().LeaseWaits
	if v, err := c.GetOrLoad(ctx, "k", cut, SkipL1()); err != nil || string(v) != "loaded" {
		t.Fatalf("GetOrLoad after recovery = %q, %v", v, err)
	}
	if got := c.Stats().LeaseWaits; got != waits {
		t.Errorf("the load after recovery waited on the instance's own unreleased lease (lease waits %d -> %d)", waits, got)
	}
	if n := calls.Load(); n != 2 {
		t.Errorf("loader calls = %d, want 2", n)
	}
}
