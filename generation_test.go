package tiercache

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/faultproxy"
	"github.com/tiercache/tiercache/internal/redistest"
)

// TestNamespaceGenerationOutlivesUse: a generation key is kept alive in Redis by the instances
// that use it, and restored if Redis loses it, so a new instance agrees with a long-lived one on
// the namespace's Redis keys.
func TestNamespaceGenerationOutlivesUse(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	ctx := context.Background()
	clock := newFakeClock()
	// Entries outlive the clock jumps below; a cached generation is checked again after a day.
	o := Options{Logger: quietLogger(), Clock: clock, NamespaceOf: sessionOf, TTL: 48 * time.Hour}
	a := newCache(t, srv, o)
	const ns, key = "session:7", "session:7:n1"
	if err := a.InvalidateNamespace(ctx, ns); err != nil {
		t.Fatal(err)
	}
	gk := a.genKey(ns)
	for round, lose := range []func(){
		// Redis time runs out for the key (what a day without a bump looks like).
		func() { rdb.PExpire(ctx, gk, 2*time.Second) },
		// Redis evicts the key (maxmemory policy).
		func() { rdb.Del(ctx, gk) },
	} {
		val := fmt.Sprintf("v%d", round)
		if err := a.Set(ctx, key, []byte(val)); err != nil {
			t.Fatal(err)
		}
		lose()
		clock.Advance(25 * time.Hour) // a's cached generation is due for a check
		if v, err := a.Get(ctx, key, SkipL1()); err != nil || string(v) != val {
			t.Fatalf("round %d: a.Get(%q) = %q, %v; want %s", round, key, v, err, val)
		}
		if ttl, err := rdb.PTTL(ctx, gk).Result(); err != nil || ttl < 12*time.Hour {
			t.Errorf("round %d: PTTL %s = %v, %v after a used it; want the key kept for a generation's life (>= 24h)", round, gk, ttl, err)
		}
		fresh := newCache(t, srv, o)
		if v, err := fresh.Get(ctx, key); err != nil || string(v) != val {
			t.Errorf("round %d: a new instance's Get(%q) = %q, %v; want %s (the long-lived instance's generation)", round, key, v, err, val)
		}
	}
}

// TestGenerationKeptWhileRedisDown: a cached generation due for its re-check stays in use while
// Redis cannot be asked, so reads and writes of the namespace keep working in degraded mode.
// (Before: the failed re-sync made every Get and Set of the namespace fail.)
func TestGenerationKeptWhileRedisDown(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	ctx := context.Background()
	clock := newFakeClock()
	a := newCache(t, srv, Options{Logger: quietLogger(), Clock: clock, NamespaceOf: sessionOf, TTL: time.Hour})
	const ns, key = "session:7", "session:7:n1"
	if err := a.InvalidateNamespace(ctx, ns); err != nil {
		t.Fatal(err)
	}
	if err := a.Set(ctx, key, []byte("v1")); err != nil {
		t.Fatal(err)
	}
	clock.Advance(2 * time.Hour) // the cached generation is due for a re-check
	srv.Kill(t)
	waitDegraded(t, a)
	if err := a.Set(ctx, key, []byte("v2")); err != nil {
		t.Errorf("Set(%q) while Redis is down = %v, want nil (remembered under the known generation)", key, err)
	}
	if v, ok := a.Peek(key); !ok || string(v) != "v2" {
		t.Errorf("Peek(%q) = %q, %v after the degraded Set; want v2", key, v, ok)
	}
}

// TestGenerationSurvivesEmptyRestartAndGap: Redis restarts empty (its generation keys gone) and
// the instance then flushes for a gap. Its own acknowledged write, made under the generation it
// knows, stays readable: the generation is synced again, not forgotten (a forgotten one reads as
// 0 from the empty Redis, and the read goes to another key than the write did).
func TestGenerationSurvivesEmptyRestartAndGap(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	ctx := context.Background()
	a := newCache(t, srv, Options{Logger: quietLogger(), NamespaceOf: sessionOf})
	const ns, key = "session:7", "session:7:n1"
	if err := a.InvalidateNamespace(ctx, ns); err != nil {
		t.Fatal(err)
	}
	srv.Restart(t) // empty: no persistence
	waitFor(t, "a Set to reach the restarted Redis", slack(10*time.Second), func() bool {
		return a.Set(ctx, key, []byte("v1")) == nil && a.Health(ctx).State == StateHealthy && a.Stats().PendingWrites == 0
	})
	a.flushL1() // what a gap does
	if v, err := a.Get(ctx, key); err != nil || string(v) != "v1" {
		t.Errorf("Get(%q) after the empty restart and a gap = %q, %v; want v1 (the instance's own write)", key, v, err)
	}
}

// TestDegradedWriteReplaysUnderBumpedGeneration: while A cannot reach Redis, B bumps a
// namespace's generation. A's write made after the bump is replayed under the new generation,
// where every reader looks, so it is neither lost for B nor for A once its L1 forgets it; A's
// write made before the bump died with it. (Before: the replay wrote both under the generation
// A knew when it accepted them, a dead one, so the later acknowledged write was lost and A
// answered "not found" after its own Set, found by scripts/soak seed 1.)
func TestDegradedWriteReplaysUnderBumpedGeneration(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	p := faultproxy.New(t, srv.Addr())
	ctx := context.Background()
	a := newCache(t, srv, Options{Redis: faultClient(t, srv, p.Addr()), Logger: quietLogger(), NamespaceOf: sessionOf, L1TTL: time.Minute})
	b := newCache(t, srv, Options{Logger: quietLogger(), NamespaceOf: sessionOf})
	const ns, before, after = "session:7", "session:7:before", "session:7:after"
	if err := a.Set(ctx, before, []byte("v1"), Version(1)); err != nil { // A learns the generation and Redis TIME
		t.Fatalf("Set(%q, v1) while healthy: %v", before, err)
	}

	p.Blackhole(true)
	healed := false
	defer func() {
		if !healed {
			p.Blackhole(false)
		}
	}()
	waitDegraded(t, a)
	if err := a.Set(ctx, before, []byte("v2"), Version(2)); err != nil {
		t.Fatalf("Set(%q, v2) while degraded = %v, want nil (remembered)", before, err)
	}
	if err := b.InvalidateNamespace(ctx, ns); err != nil {
		t.Fatalf("b.InvalidateNamespace(%q): %v", ns, err)
	}
	bumped, _ := b.gens.get(ns)
	// A's next write must follow the bump on Redis's clock as A estimates it.
	waitFor(t, "A's estimate of Redis TIME to pass the bump", slack(5*time.Second), func() bool {
		ms, ok := a.g.redisNow()
		return ok && uint64(ms) > bumped.g
	})
	if err := a.Set(ctx, after, []byte("v3"), Version(3)); err != nil {
		t.Fatalf("Set(%q, v3) while degraded = %v, want nil (remembered)", after, err)
	}
	p.Blackhole(false)
	healed = true
	waitReplayed(t, a)

	check := func(who string, c *Cache) {
		t.Helper()
		if v, err := getString(c, after); err != nil || v != "v3" {
			t.Errorf("%s: Get(%q) = %q, %v after the replay; want v3 (acknowledged after the bump)", who, after, v, err)
		}
		if v, err := getString(c, before); !errors.Is(err, ErrNotFound) {
			t.Errorf("%s: Get(%q) = %q, %v after the replay; want ErrNotFound (written before the bump)", who, before, v, err)
		}
	}
	check("B", b)
	a.flushL1() // what a gap does: A must find its own write in Redis
	check("A after a flush", a)
	if got := a.Stats().ReplaySuperseded; got != 1 {
		t.Errorf("Stats().ReplaySuperseded = %d, want 1 (the write the bump outdated)", got)
	}
}

// TestWritesWhileUnsubscribedFollowBumps: while an instance's invalidation subscriber is down it
// cannot hear a peer's namespace bump, so it must not trust its cached generation. A is cut off
// from pub/sub only (its subscription is killed and it cannot dial a new one; its pooled
// connections keep working), uses the namespace (which syncs the generation), then B bumps it
// and A writes: the write goes under the new generation, where every reader looks. (Before: A
// wrote under its cached generation, a dead one, for up to genRecheck; found by scripts/soak seed
// 2027 as read-your-writes violations after a proxy blackhole, when A synced its generations only
// once its subscriber was back.)
func TestWritesWhileUnsubscribedFollowBumps(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	ctx := context.Background()
	var noDials atomic.Bool
	o := srv.Options()
	o.Dialer = func(ctx context.Context, network, addr string) (net.Conn, error) {
		if noDials.Load() {
			return nil, errors.New("test: no new connections")
		}
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
	o.MinIdleConns = 4 // a warm pool: A's commands need no new connection once dials fail
	rdb := redis.NewClient(o)
	t.Cleanup(func() { rdb.Close() })
	a := newCache(t, srv, Options{Redis: rdb, Logger: quietLogger(), NamespaceOf: sessionOf})
	b := newCache(t, srv, Options{Logger: quietLogger(), NamespaceOf: sessionOf})
	const ns, key = "session:9", "session:9:n1"
	if err := a.Set(ctx, key, []byte("v1")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "A's pool warm", slack(5*time.Second), func() bool { return rdb.PoolStats().IdleConns >= 2 })
	noDials.Store(true)
	if err := srv.Client(t).ClientKillByFilter(ctx, "TYPE", "pubsub").Err(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "A's subscriber down", slack(5*time.Second), func() bool { return !a.Health(ctx).Subscriber.Up })
	if _, err := a.Get(ctx, key, SkipL1()); err != nil { // a use of the namespace while unsubscribed
		t.Fatalf("A's Get while unsubscribed: %v", err)
	}
	if err := b.InvalidateNamespace(ctx, ns); err != nil {
		t.Fatal(err)
	}
	if err := a.Set(ctx, key, []byte("v2")); err != nil {
		t.Fatalf("A's Set after B's bump: %v", err)
	}
	if got, err := getString(b, key, SkipL1()); err != nil || got != "v2" {
		t.Errorf("B reads %q, %v after A's acknowledged Set, want v2 (A wrote under a dead generation)", got, err)
	}
	noDials.Store(false)
	waitFor(t, "A's subscriber back", slack(10*time.Second), func() bool { return a.Health(ctx).Subscriber.Up })
	if got, err := getString(a, key, SkipL1()); err != nil || got != "v2" {
		t.Errorf("A reads %q, %v once resubscribed, want v2, its own write", got, err)
	}
}

// TestTimedOutInvalidateNamespaceCannotLandLate: an InvalidateNamespace that timed out against a
// paused Redis must not run once Redis resumes, or it would invalidate a write the instance
// acknowledged after the call had failed. (Found by scripts/soak seed 424242: after a SIGSTOP the
// replay dropped an acknowledged write as superseded by a bump whose caller had given up on it
// over a second earlier.)
func TestTimedOutInvalidateNamespaceCannotLandLate(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	ctx := context.Background()
	a := newCache(t, srv, Options{Redis: faultClient(t, srv, ""), Logger: quietLogger(), NamespaceOf: sessionOf})
	b := newCache(t, srv, Options{Logger: quietLogger(), NamespaceOf: sessionOf})
	const ns, key = "session:5", "session:5:n1"
	if err := a.Set(ctx, key, []byte("v1")); err != nil { // A sees Redis TIME and the generation
		t.Fatal(err)
	}
	// Loads the bump script: the late bump must not fail with NOSCRIPT on its own.
	if err := a.InvalidateNamespace(ctx, "session:other"); err != nil {
		t.Fatal(err)
	}
	resume := pauseRedis(t, srv)
	if err := a.InvalidateNamespace(ctx, ns); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("InvalidateNamespace with Redis paused = %v, want ErrUnavailable", err)
	}
	if err := a.Set(ctx, key, []byte("v2")); err != nil { // after the failure: remembered
		t.Fatalf("Set after the failed InvalidateNamespace = %v, want nil (remembered)", err)
	}
	resume()
	waitReplayed(t, a)
	if v, err := getString(b, key, SkipL1()); err != nil || v != "v2" {
		t.Errorf("B reads %q, %v after the replay, want v2 (A's write, acknowledged after its InvalidateNamespace failed)", v, err)
	}
	if n := a.Stats().ReplaySuperseded; n != 0 {
		t.Errorf("ReplaySuperseded = %d, want 0: no bump ran after the write", n)
	}
}
