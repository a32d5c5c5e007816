package tiercache

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/faultproxy"
	"github.com/tiercache/tiercache/internal/redistest"
)

// skewClock is the host's wall clock off by d from Redis's.
type skewClock struct{ d time.Duration }

func (s skewClock) Now() time.Time { return time.Now().Add(s.d) }

// waitDegraded waits until c's breaker keeps it off Redis. Health turns degraded as soon as its
// ping times out, before the breaker opens, and a write sent meanwhile still runs when Redis
// answers again: tests of writes the breaker keeps from Redis must wait for the breaker itself.
func waitDegraded(tb testing.TB, c *Cache) {
	tb.Helper()
	waitFor(tb, "the breaker open and Health degraded", slack(5*time.Second), func() bool {
		// Health's pings are failures that open the breaker when nothing else calls Redis.
		return c.Health(context.Background()).State == StateDegraded && c.g.degraded()
	})
}

// waitReplayed waits until c has nothing pending and reports healthy.
func waitReplayed(tb testing.TB, c *Cache) {
	tb.Helper()
	waitFor(tb, "the remembered writes replayed and Health healthy", slack(10*time.Second), func() bool {
		return c.Stats().PendingWrites == 0 && c.Health(context.Background()).State == StateHealthy
	})
}

// getString reads key as a string, "" with the error when it fails.
func getString(c *Cache, key string, opts ...Option) (string, error) {
	v, err := c.Get(context.Background(), key, opts...)
	return string(v), err
}

// TestDegradedWritesJudgedByVersion: while Redis is unreachable a write is judged against the
// highest version the instance knows (its L1, its remembered writes, what it saw in Redis) and
// refused with ErrStaleVersion as Redis would refuse it; the replay leaves Redis holding what was
// acknowledged. (Before: the remembered write was the last to arrive, so Set v7, Set v6 left v6
// in Redis while the writer served v7, and a Delete v6 won over v7.)
func TestDegradedWritesJudgedByVersion(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	ctx := context.Background()
	a := newCache(t, srv, Options{Redis: faultClient(t, srv, ""), Logger: quietLogger(), L1TTL: time.Minute})
	for _, k := range []string{"raise", "del", "same"} {
		if err := a.Set(ctx, k, []byte("v5"), Version(5)); err != nil {
			t.Fatalf("Set(%q, v5) while healthy: %v", k, err)
		}
	}
	if err := a.Delete(ctx, "gone", Version(8)); err != nil {
		t.Fatalf("Delete(gone, v8) while healthy: %v", err)
	}

	resume := pauseRedis(t, srv)
	waitDegraded(t, a) // the breaker itself: a write sent before it opened could run late, in any order
	set := func(k, v string, ver uint64) func() error {
		return func() error { return a.Set(ctx, k, []byte(v), Version(ver)) }
	}
	steps := []struct {
		name    string
		op      func() error
		wantErr error // nil: acknowledged
	}{
		{"higher version accepted", set("raise", "v7", 7), nil},
		{"lower version after it refused", set("raise", "v6", 6), ErrStaleVersion},
		{"higher version before a delete", set("del", "v7", 7), nil},
		{"lower delete refused", func() error { return a.Delete(ctx, "del", Version(6)) }, ErrStaleVersion},
		{"below a tombstone seen in Redis", set("gone", "v7", 7), ErrStaleVersion},
		{"a version remembered first", set("same", "first", 6), nil},
		{"the same version again changes nothing", set("same", "second", 6), nil},
	}
	for _, s := range steps {
		err := s.op()
		switch {
		case s.wantErr == nil && err != nil:
			t.Errorf("%s: err = %v with Redis paused, want nil (remembered)", s.name, err)
		case s.wantErr != nil && !errors.Is(err, s.wantErr):
			t.Errorf("%s: err = %v with Redis paused, want %v", s.name, err, s.wantErr)
		}
	}
	want := map[string]string{"raise": "v7", "del": "v7", "gone": "", "same": "first"}
	check := func(when string, c *Cache, redisUp bool, opts ...Option) {
		t.Helper()
		for k, w := range want {
			got, err := getString(c, k, opts...)
			if w == "" && !redisUp {
				continue // nothing in L1 or pending: Get has to ask Redis
			}
			if w == "" {
				if !errors.Is(err, ErrNotFound) {
					t.Errorf("%s: Get(%q) = %q, %v, want ErrNotFound", when, k, got, err)
				}
				continue
			}
			if err != nil || got != w {
				t.Errorf("%s: Get(%q) = %q, %v, want %q", when, k, got, err, w)
			}
		}
	}
	check("the writer with Redis paused", a, false)

	resume()
	waitReplayed(t, a)
	check("the writer after the replay", a, true)
	fresh := newCache(t, srv, Options{Logger: quietLogger()})
	check("a fresh instance after the replay", fresh, true, SkipL1())
	if s := a.Stats(); s.StaleRefused < 3 {
		t.Errorf("Stats().StaleRefused = %d, want at least the 3 refusals made while degraded", s.StaleRefused)
	}
}

// TestDegradedAutomaticVersionsIgnoreHostClock: automatic versions made while Redis is
// unreachable carry the last Redis TIME forward, so the host's clock skew never decides which
// acknowledged write survives. (Before: they came from the host clock, so a host behind Redis
// lost its own later write at the replay, and a host ahead overwrote a peer's later write.)
func TestDegradedAutomaticVersionsIgnoreHostClock(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		skew time.Duration
		peer bool   // a healthy peer writes after the degraded write
		want string // what Redis must end with
	}{
		{name: "host an hour behind, its degraded write is the latest", skew: -time.Hour, want: "during"},
		{name: "host an hour ahead, a peer writes later", skew: time.Hour, peer: true, want: "peer-later"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := redistest.Start(t)
			p := faultproxy.New(t, srv.Addr())
			ctx := context.Background()
			clock := skewClock{tc.skew}
			a := newCache(t, srv, Options{Redis: faultClient(t, srv, p.Addr()), Logger: quietLogger(), Clock: clock})
			b := newCache(t, srv, Options{Logger: quietLogger(), Clock: clock})
			if err := a.Set(ctx, "k", []byte("before")); err != nil {
				t.Fatalf("Set(k, before) while healthy: %v", err)
			}
			p.Blackhole(true)
			waitDegraded(t, a)
			if err := a.Set(ctx, "k", []byte("during")); err != nil {
				t.Fatalf("Set(k, during) with Redis unreachable = %v, want nil (remembered)", err)
			}
			if tc.peer {
				// Let Redis's clock pass the degraded write's millisecond, then write from B.
				raw := srv.Client(t)
				after := time.Now()
				waitFor(t, "Redis TIME to pass the degraded write", 5*time.Second, func() bool {
					rt, err := raw.Time(ctx).Result()
					return err == nil && rt.Sub(after) > 2*time.Millisecond
				})
				if err := b.Set(ctx, "k", []byte("peer-later")); err != nil {
					t.Fatalf("B: Set(k, peer-later): %v", err)
				}
			}
			p.Blackhole(false)
			waitReplayed(t, a)
			fresh := newCache(t, srv, Options{Logger: quietLogger(), Clock: clock})
			if got, err := getString(fresh, "k", SkipL1()); err != nil || got != tc.want {
				t.Errorf("after the replay, a fresh instance reads k = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

// TestSequenceHasNoHoleForUnsentWrites: a write that never reaches Redis (its context was
// cancelled, the breaker refused it, the pool had no connection for it) leaves no hole in its
// instance's message sequence, so peers do not flush for a message that never existed.
// (Before: the sequence number was taken when the request was built.)
func TestSequenceHasNoHoleForUnsentWrites(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	p := faultproxy.New(t, srv.Addr())
	ctx := context.Background()
	o := srv.Options()
	o.Addr = p.Addr()
	o.DialTimeout, o.ReadTimeout, o.WriteTimeout = 100*time.Millisecond, 100*time.Millisecond, 100*time.Millisecond
	o.MaxRetries = 1
	o.PoolSize, o.PoolTimeout = 1, 20*time.Millisecond
	rdb := redis.NewClient(o)
	t.Cleanup(func() { rdb.Close() })
	a := newCache(t, srv, Options{Redis: rdb, Logger: quietLogger(),
		NamespaceOf: func(k string) string {
			if ns, _, ok := strings.Cut(k, ":"); ok {
				return ns
			}
			return ""
		}})
	if _, err := a.Get(ctx, "ns:k"); !errors.Is(err, ErrNotFound) { // learns the namespace's generation
		t.Fatalf("Get(ns:k) = %v, want ErrNotFound", err)
	}

	// Every sequence number A publishes, seen from a subscription of the test's own.
	sub := srv.Client(t).Subscribe(ctx, DefaultNamespace+":invalidate")
	t.Cleanup(func() { sub.Close() })
	if _, err := sub.Receive(ctx); err != nil {
		t.Fatalf("subscribing: %v", err)
	}
	var mu sync.Mutex
	seen := map[uint64]bool{}
	go func() {
		for {
			m, err := sub.ReceiveMessage(ctx)
			if err != nil {
				return
			}
			f := strings.Fields(m.Payload)
			if len(f) < 2 || f[0] != a.bp.origin {
				continue
			}
			if s, err := strconv.ParseUint(f[1], 10, 64); err == nil {
				mu.Lock()
				seen[s] = true
				mu.Unlock()
			}
		}
	}()

	if err := a.Set(ctx, "first", []byte("x")); err != nil {
		t.Fatalf("Set(first): %v", err)
	}
	// A cancelled context.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := a.Set(cctx, "cancelled", []byte("x")); err == nil {
		t.Errorf("Set with a cancelled context = nil, want an error")
	}
	if err := a.InvalidateNamespace(cctx, "ns"); err == nil {
		t.Errorf("InvalidateNamespace with a cancelled context = nil, want an error")
	}
	// No connection in the pool: the only one is held by a blocking command.
	held := make(chan struct{})
	go func() {
		defer close(held)
		rdb.BLPop(ctx, time.Second, "tc:nolist")
	}()
	waitFor(t, "the blocking command to hold the pool's connection", 5*time.Second, func() bool {
		ps := rdb.PoolStats()
		return ps.TotalConns >= 1 && ps.IdleConns == 0
	})
	_ = a.Set(ctx, "pool", []byte("x")) // remembered (pool timeout) or written: either is fine
	<-held
	// The breaker refuses: Redis blackholed until it opens.
	p.Blackhole(true)
	waitDegraded(t, a)
	for i := range 3 {
		if err := a.Set(ctx, fmt.Sprint("refused", i), []byte("x")); err != nil {
			t.Errorf("Set(refused%d) with the breaker open = %v, want nil (remembered)", i, err)
		}
	}
	if err := a.InvalidateNamespace(ctx, "ns"); err == nil {
		t.Errorf("InvalidateNamespace with the breaker open = nil, want an error")
	}
	p.Blackhole(false)
	waitReplayed(t, a)
	if err := a.Set(ctx, "last", []byte("x")); err != nil {
		t.Fatalf("Set(last): %v", err)
	}
	last := a.bp.seq.Load()
	var missing []uint64
	for deadline := time.Now().Add(slack(5 * time.Second)); ; {
		mu.Lock()
		missing = missing[:0]
		for s := uint64(1); s <= last; s++ {
			if !seen[s] {
				missing = append(missing, s)
			}
		}
		mu.Unlock()
		if len(missing) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("A took sequence numbers 1..%d but never published %v: peers count a gap for each", last, missing)
		}
		<-time.After(5 * time.Millisecond) // poll
	}
	t.Logf("A took %d sequence numbers; fillers %d", last, a.Stats().SequenceFillers)
}

// TestReplayDropsWritesRedisRejects: a remembered write that Redis rejects for good at the replay
// (WRONGTYPE: a key of another type under the entry's name; OOM that outlasts the guard's
// patience, a Redis left full) is counted and dropped, not retried forever: pending writes drain,
// health returns to healthy, and the other writes are replayed.
func TestReplayDropsWritesRedisRejects(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		setup func(tb testing.TB, srv *redistest.Server) // while A cannot reach Redis
		other bool                                       // another remembered write must be replayed
	}{
		{name: "WRONGTYPE", other: true, setup: func(tb testing.TB, srv *redistest.Server) {
			if err := srv.Client(tb).LPush(context.Background(), DefaultNamespace+":{bad}", "a list").Err(); err != nil {
				tb.Fatal(err)
			}
		}},
		{name: "OOM", setup: func(tb testing.TB, srv *redistest.Server) { setMaxmemory(tb, srv, "1") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := redistest.Start(t)
			p := faultproxy.New(t, srv.Addr())
			ctx := context.Background()
			a := newCache(t, srv, Options{Redis: faultClient(t, srv, p.Addr()), Logger: quietLogger()})
			a.g.oomPatience.Store(int64(300 * time.Millisecond))
			p.Blackhole(true)
			waitDegraded(t, a)
			tc.setup(t, srv)
			keys := []string{"bad"}
			if tc.other {
				keys = append(keys, "good")
			}
			for _, k := range keys {
				if err := a.Set(ctx, k, []byte("during")); err != nil {
					t.Fatalf("Set(%s) with Redis unreachable = %v, want nil (remembered)", k, err)
				}
			}
			p.Blackhole(false)
			waitReplayed(t, a)
			if n := a.Stats().ReplayDropped; n != 1 {
				t.Errorf("Stats().ReplayDropped = %d, want 1", n)
			}
			if v, ok := a.Peek("bad"); ok {
				t.Errorf("Peek(bad) = %q after Redis rejected its replay, want it gone from L1", v)
			}
			if tc.other {
				fresh := newCache(t, srv, Options{Logger: quietLogger()})
				if got, err := getString(fresh, "good", SkipL1()); err != nil || got != "during" {
					t.Errorf("a fresh instance reads good = %q, %v after the replay, want during", got, err)
				}
			}
		})
	}
}

// oomHook counts Redis replies that refuse a command for memory (OOM), in pipelines too.
type oomHook struct{ n atomic.Int64 }

func (h *oomHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *oomHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		if isOOM(cmd.Err()) {
			h.n.Add(1)
		}
		return err
	}
}
func (h *oomHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		for _, cmd := range cmds {
			if isOOM(cmd.Err()) {
				h.n.Add(1)
			}
		}
		return err
	}
}

// setMaxmemory sets maxmemory (noeviction) on srv; "0" lifts it.
func setMaxmemory(tb testing.TB, srv *redistest.Server, v string) {
	tb.Helper()
	raw, ctx := srv.Client(tb), context.Background()
	if err := raw.ConfigSet(ctx, "maxmemory-policy", "noeviction").Err(); err != nil {
		tb.Fatal(err)
	}
	if err := raw.ConfigSet(ctx, "maxmemory", v).Err(); err != nil {
		tb.Fatal(err)
	}
}

// TestReplayWaitsOutOOM: Redis refusing a replay for memory (OOM under maxmemory noeviction) is
// not the end of an acknowledged write. It stays remembered, keeps answering this instance's
// reads (read-your-writes), health says recovering, and it is replayed once Redis has room; none
// is dropped. (Found by the fault suite, seed 2027: the replay was dropped, and the instance then
// read the version below its own acknowledged write.)
func TestReplayWaitsOutOOM(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	p := faultproxy.New(t, srv.Addr())
	ctx := context.Background()
	rdb := faultClient(t, srv, p.Addr())
	oom := &oomHook{}
	rdb.AddHook(oom)
	a := newCache(t, srv, Options{Redis: rdb, Logger: quietLogger()})
	if err := a.Set(ctx, "k", []byte("before")); err != nil {
		t.Fatal(err)
	}
	p.Blackhole(true)
	waitDegraded(t, a)
	setMaxmemory(t, srv, "1")
	if err := a.Set(ctx, "k", []byte("during")); err != nil {
		t.Fatalf("Set with Redis unreachable = %v, want nil (remembered)", err)
	}
	p.Blackhole(false)
	// Two refusals: the replay was refused and tried again.
	waitFor(t, "two replays refused for memory", slack(10*time.Second), func() bool { return oom.n.Load() >= 2 })
	if got, err := getString(a, "k"); err != nil || got != "during" {
		t.Errorf("Get while Redis refuses the replay for memory = %q, %v, want during (its own write)", got, err)
	}
	if got, err := getString(a, "k", SkipL1()); err != nil || got != "during" {
		t.Errorf("Get(SkipL1) while Redis refuses the replay = %q, %v, want during", got, err)
	}
	st := a.Stats()
	if st.PendingWrites != 1 || st.ReplayDropped != 0 {
		t.Errorf("while refused: PendingWrites = %d, ReplayDropped = %d, want 1 and 0", st.PendingWrites, st.ReplayDropped)
	}
	if h := a.Health(ctx); h.State != StateRecovering {
		t.Errorf("Health while a replay waits for memory = %s, want %s", h.State, StateRecovering)
	}
	setMaxmemory(t, srv, "0")
	waitReplayed(t, a)
	fresh := newCache(t, srv, Options{Logger: quietLogger()})
	if got, err := getString(fresh, "k", SkipL1()); err != nil || got != "during" {
		t.Errorf("a fresh instance reads %q, %v after Redis had room again, want during", got, err)
	}
	if st := a.Stats(); st.ReplayDropped != 0 || st.ReplayExpired != 0 {
		t.Errorf("ReplayDropped = %d, ReplayExpired = %d, want 0 and 0", st.ReplayDropped, st.ReplayExpired)
	}
}

// TestRememberedWriteExpiresWhileRefused: a remembered write that Redis refuses for memory longer
// than its own lifetime is neither served nor replayed once that lifetime ends, as the key would
// have expired in Redis: it answers not found, is counted in ReplayExpired, and recovery ends.
func TestRememberedWriteExpiresWhileRefused(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	p := faultproxy.New(t, srv.Addr())
	ctx := context.Background()
	a := newCache(t, srv, Options{Redis: faultClient(t, srv, p.Addr()), Logger: quietLogger(), FailSafeMaxAge: -1})
	p.Blackhole(true)
	waitDegraded(t, a)
	setMaxmemory(t, srv, "1")
	if err := a.Set(ctx, "short", []byte("during"), TTL(300*time.Millisecond)); err != nil {
		t.Fatalf("Set with Redis unreachable = %v, want nil (remembered)", err)
	}
	p.Blackhole(false)
	waitFor(t, "the expired write dropped", slack(10*time.Second), func() bool { return a.Stats().ReplayExpired == 1 })
	waitReplayed(t, a)
	if got, err := getString(a, "short"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get after its lifetime = %q, %v, want ErrNotFound", got, err)
	}
	setMaxmemory(t, srv, "0")
	if n, err := srv.Client(t).Exists(ctx, DefaultNamespace+":{short}").Result(); err != nil || n != 0 {
		t.Errorf("Redis holds the expired write: EXISTS = %d, %v, want 0", n, err)
	}
}

// TestTimedOutAutomaticWriteCannotLandLate: an automatic-version write sent to a Redis that
// stopped answering times out and is remembered; a later write is remembered above it. When
// Redis resumes, the first call (and go-redis's retry of it) still runs, and an automatic version
// is assigned by Redis's clock there and then: it came out above the later write's, so the
// replay of the later write was refused and Redis kept the older value, which the writer served
// after its own newer Set (scripts/soak seed 1, read-your-writes on an automatic key across a
// SIGSTOP). An automatic write now carries a fence, the Redis time past which its caller has
// given up; run after it, it changes nothing.
func TestTimedOutAutomaticWriteCannotLandLate(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	ctx := context.Background()
	a := newCache(t, srv, Options{Redis: faultClient(t, srv, ""), Logger: quietLogger(), L1TTL: time.Minute})
	b := newCache(t, srv, Options{Logger: quietLogger()})
	const key = "auto"
	if err := a.Set(ctx, key, []byte("v1")); err != nil { // A sees Redis TIME
		t.Fatalf("Set(%q, v1) while healthy: %v", key, err)
	}
	resume := pauseRedis(t, srv)
	if a.g.degraded() {
		t.Fatal("breaker open before the first write to the paused Redis")
	}
	if err := a.Set(ctx, key, []byte("v2")); err != nil { // sent, times out: remembered
		t.Fatalf("Set(%q, v2) to the paused Redis = %v, want nil (remembered)", key, err)
	}
	waitFor(t, "the breaker open", slack(5*time.Second), func() bool {
		_ = a.Health(ctx)
		return a.g.degraded()
	})
	if err := a.Set(ctx, key, []byte("v3")); err != nil { // not sent: remembered above v2
		t.Fatalf("Set(%q, v3) with the breaker open = %v, want nil (remembered)", key, err)
	}
	resume()
	waitReplayed(t, a)
	if v, err := getString(b, key); err != nil || v != "v3" {
		t.Errorf("B: Get(%q) after the replay = %q, %v; want v3 (A's last acknowledged write)", key, v, err)
	}
	a.flushL1()
	if v, err := getString(a, key); err != nil || v != "v3" {
		t.Errorf("A after a flush: Get(%q) = %q, %v; want v3 (its own last write)", key, v, err)
	}
}

// TestDegradedForgetsVersionsRedisNoLongerHolds: a version seen in a read is known for as long
// as Redis keeps it, and no longer. While Redis is unreachable, a lower version is refused for a
// key whose read value Redis still holds, and accepted for one whose lifetime has ended, as
// Redis would accept it.
func TestDegradedForgetsVersionsRedisNoLongerHolds(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	ctx := context.Background()
	// No fail-safe lifetime: Redis keeps each entry exactly its TTL.
	w := newCache(t, srv, Options{Logger: quietLogger(), FailSafeMaxAge: -1})
	const short = 1500 * time.Millisecond
	if err := w.Set(ctx, "long", []byte("v5"), Version(5), TTL(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := w.Set(ctx, "short", []byte("v5"), Version(5), TTL(short)); err != nil {
		t.Fatal(err)
	}
	written := time.Now()
	r := newCache(t, srv, Options{Redis: faultClient(t, srv, ""), Logger: quietLogger()})
	// Batch reads that skip L1: what r knows of these versions it knows from the reads alone.
	got, err := r.GetMany(ctx, []string{"long", "short"}, SkipL1())
	if err != nil || len(got) != 2 {
		t.Fatalf("GetMany = %v, %v; want both keys", got, err)
	}

	pauseRedis(t, srv)
	waitDegraded(t, r)
	if err := r.Set(ctx, "long", []byte("v3"), Version(3)); !errors.Is(err, ErrStaleVersion) {
		t.Errorf("Set(long, v3) below the v5 read, Redis unreachable: err = %v, want ErrStaleVersion", err)
	}
	waitFor(t, "the short key's lifetime over", slack(10*time.Second), func() bool {
		return time.Since(written) > short+100*time.Millisecond
	})
	if err := r.Set(ctx, "short", []byte("v3"), Version(3)); err != nil {
		t.Errorf("Set(short, v3) after the v5 read expired, Redis unreachable: err = %v, want nil (Redis would accept it)", err)
	}
}
