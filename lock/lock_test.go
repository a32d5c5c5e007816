package lock_test

import (
	"context"
	"errors"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/lock"
)

func TestLockRelease(t *testing.T) {
	t.Parallel()
	_, c, l := single(t, lock.Options{})
	ctx := context.Background()
	base := runtime.NumGoroutine()

	le, err := l.TryLock(ctx, "job")
	if err != nil {
		t.Fatalf("TryLock(job) = %v", err)
	}
	if le.Name() != "job" || le.Token() == 0 {
		t.Fatalf("lease name %q token %d, want job and a token > 0", le.Name(), le.Token())
	}
	if v := time.Until(le.Validity()); v <= 0 || v > l.TTL() {
		t.Errorf("Validity() in %v, want within (0, %v]", v, l.TTL())
	}
	if pttl := c.PTTL(ctx, l.LockKey("job")).Val(); pttl <= 0 {
		t.Errorf("PTTL(lock key) = %v, want > 0", pttl)
	}
	if _, err := l.TryLock(ctx, "job"); !errors.Is(err, lock.ErrNotLocked) || !strings.Contains(err.Error(), `"job"`) {
		t.Errorf("second TryLock(job) = %v, want ErrNotLocked naming job", err)
	}
	if err := le.Release(ctx); err != nil {
		t.Fatalf("Release() = %v", err)
	}
	select {
	case <-le.Context().Done():
	default:
		t.Fatal("lease context not done after Release")
	}
	if cause := context.Cause(le.Context()); !errors.Is(cause, lock.ErrReleased) {
		t.Errorf("Cause = %v, want ErrReleased", cause)
	}
	if n := c.Exists(ctx, l.LockKey("job")).Val(); n != 0 {
		t.Errorf("lock key exists after Release")
	}
	le2, err := l.TryLock(ctx, "job")
	if err != nil {
		t.Fatalf("TryLock after Release = %v", err)
	}
	if le2.Token() <= le.Token() {
		t.Errorf("token %d after token %d, want increasing", le2.Token(), le.Token())
	}
	if err := le2.Release(ctx); err != nil {
		t.Fatal(err)
	}
	checkNoLeaks(t, base)
}

func TestKeyLayoutSharesHashTag(t *testing.T) {
	t.Parallel()
	_, c, l := single(t, lock.Options{Prefix: "app:"})
	ctx := context.Background()
	le, err := l.TryLock(ctx, "orders:42")
	if err != nil {
		t.Fatal(err)
	}
	defer le.Release(ctx)
	keys := c.Keys(ctx, "app:*").Val()
	want := map[string]bool{"app:{orders:42}:lock": true, "app:{orders:42}:fence": true}
	if len(keys) != len(want) {
		t.Fatalf("keys = %q, want %v", keys, want)
	}
	for _, k := range keys {
		if !want[k] {
			t.Errorf("unexpected key %q, want %v", k, want)
		}
	}
}

func TestAutoExtendKeepsLease(t *testing.T) {
	t.Parallel()
	_, c, l := single(t, lock.Options{TTL: 300 * time.Millisecond})
	ctx := context.Background()
	base := runtime.NumGoroutine()
	le, err := l.TryLock(ctx, "long")
	if err != nil {
		t.Fatal(err)
	}
	first := le.Validity()
	// Hold for several TTLs: the watchdog must keep moving the deadline.
	waitFor(t, 5*time.Second, "three TTLs to pass", func() bool {
		return time.Since(first) > 3*l.TTL()
	})
	if err := context.Cause(le.Context()); err != nil {
		t.Fatalf("lease lost while the watchdog runs: %v", err)
	}
	if !le.Validity().After(first) {
		t.Errorf("Validity did not move: %v, first %v", le.Validity(), first)
	}
	if pttl := c.PTTL(ctx, l.LockKey("long")).Val(); pttl <= 0 {
		t.Errorf("PTTL = %v, want > 0", pttl)
	}
	if err := le.Release(ctx); err != nil {
		t.Fatal(err)
	}
	checkNoLeaks(t, base)
}

func TestManualExtend(t *testing.T) {
	t.Parallel()
	_, _, l := single(t, lock.Options{TTL: time.Second, ExtendEvery: -1})
	ctx := context.Background()
	le, err := l.TryLock(ctx, "m")
	if err != nil {
		t.Fatal(err)
	}
	v1 := le.Validity()
	waitFor(t, time.Second, "time to advance", func() bool { return time.Since(v1.Add(-l.TTL())) > 20*time.Millisecond })
	if err := le.Extend(ctx); err != nil {
		t.Fatalf("Extend() = %v", err)
	}
	if !le.Validity().After(v1) {
		t.Errorf("Validity after Extend %v, want after %v", le.Validity(), v1)
	}
	if err := le.Release(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestMaxHold(t *testing.T) {
	t.Parallel()
	_, _, l := single(t, lock.Options{TTL: 300 * time.Millisecond, MaxHold: 100 * time.Millisecond})
	ctx := context.Background()
	le, err := l.TryLock(ctx, "capped")
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-le.Context().Done():
	case <-time.After(5 * time.Second):
		t.Fatal("lease context not done after MaxHold")
	}
	if cause := context.Cause(le.Context()); !errors.Is(cause, lock.ErrMaxHold) {
		t.Errorf("Cause = %v, want ErrMaxHold", cause)
	}
	if err := le.Release(ctx); !errors.Is(err, lock.ErrNotHeld) {
		t.Errorf("Release after MaxHold = %v, want ErrNotHeld", err)
	}
	// Release still deleted the key: the lock is free at once.
	le2, err := l.TryLock(ctx, "capped")
	if err != nil {
		t.Fatalf("TryLock after releasing a lost lease = %v", err)
	}
	le2.Release(ctx)
}

func TestLockWaitsAndTimesOut(t *testing.T) {
	t.Parallel()
	_, _, l := single(t, lock.Options{TTL: time.Second, RetryMin: time.Millisecond, RetryMax: 5 * time.Millisecond})
	ctx := context.Background()
	le, err := l.TryLock(ctx, "w")
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := l.Lock(short, "w"); !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, lock.ErrNotLocked) {
		t.Errorf("Lock on a held lock = %v, want DeadlineExceeded and ErrNotLocked", err)
	}

	got := make(chan *lock.Lease)
	go func() {
		le2, err := l.Lock(ctx, "w")
		if err != nil {
			t.Error(err)
		}
		got <- le2
	}()
	if err := le.Release(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case le2 := <-got:
		if le2 != nil {
			if le2.Token() <= le.Token() {
				t.Errorf("waiter's token %d, want > %d", le2.Token(), le.Token())
			}
			le2.Release(ctx)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("waiter did not get the lock after release")
	}
}

func TestWithLock(t *testing.T) {
	t.Parallel()
	_, c, l := single(t, lock.Options{})
	ctx := context.Background()
	err := l.WithLock(ctx, "wl", func(ctx context.Context, token uint64) error {
		return l.FencedSet(ctx, "wl", token, l.Fence().Key("wl", "v"), []byte("x"), 0)
	})
	if err != nil {
		t.Fatalf("WithLock = %v", err)
	}
	if v := c.Get(ctx, l.Fence().Key("wl", "v")).Val(); v != "x" {
		t.Errorf("value = %q, want x", v)
	}
	if n := c.Exists(ctx, l.LockKey("wl")).Val(); n != 0 {
		t.Error("lock still held after WithLock")
	}
}

// A refused extension ends the lease at once, with the refusal as cause.
func TestExtendRefusedEndsLease(t *testing.T) {
	t.Parallel()
	_, c, l := single(t, lock.Options{ExtendEvery: -1})
	ctx := context.Background()
	le, err := l.TryLock(ctx, "stolen")
	if err != nil {
		t.Fatal(err)
	}
	c.Set(ctx, l.LockKey("stolen"), "someone-else", time.Minute)
	if err := le.Extend(ctx); !errors.Is(err, lock.ErrNotHeld) || !strings.Contains(err.Error(), `"stolen"`) {
		t.Errorf("Extend() = %v, want ErrNotHeld naming the lock", err)
	}
	if cause := context.Cause(le.Context()); !errors.Is(cause, lock.ErrNotHeld) {
		t.Errorf("Cause = %v, want ErrNotHeld", cause)
	}
	if err := le.Release(ctx); !errors.Is(err, lock.ErrNotHeld) {
		t.Errorf("Release of a lost lease = %v, want ErrNotHeld", err)
	}
	if got := c.Get(ctx, l.LockKey("stolen")).Val(); got != "someone-else" {
		t.Errorf("lock key = %q after a lost lease's Release, want the other owner's value", got)
	}
}

// Tokens stay increasing when Redis restarts empty (the counter is lost):
// the clock floor in the acquire script carries them.
func TestTokensSurviveRestart(t *testing.T) {
	t.Parallel()
	srv, _, l := single(t, lock.Options{})
	ctx := context.Background()
	le, err := l.TryLock(ctx, "r")
	if err != nil {
		t.Fatal(err)
	}
	le.Release(ctx)
	srv.Restart(t)
	var le2 *lock.Lease
	waitFor(t, 5*time.Second, "lock after restart", func() bool {
		le2, err = l.TryLock(ctx, "r")
		return err == nil
	})
	if le2.Token() <= le.Token() {
		t.Errorf("token after restart %d, want > %d", le2.Token(), le.Token())
	}
	le2.Release(ctx)
}

func TestSingleServerDown(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr(), MaxRetries: -1})
	t.Cleanup(func() { rdb.Close() })
	l := newLocker(t, lock.Options{}, rdb)
	srv.Kill(t)
	ctx := context.Background()
	if _, err := l.TryLock(ctx, "down"); err == nil || errors.Is(err, lock.ErrNotLocked) || !strings.Contains(err.Error(), `"down"`) {
		t.Errorf("TryLock with Redis down = %v, want a Redis error naming the lock", err)
	}
}

// A deadline that fires while an attempt waits for its answer is still "not
// acquired": Lock and TryLock return an error wrapping ErrNotLocked and the
// context's error, never a bare context error. The servers are stopped
// (SIGSTOP) so that every attempt is cut short by the deadline, however
// loaded the machine. Redlock's ServerTimeout is longer than the deadline so
// the deadline, not the per-server timeout, ends the attempt.
func TestLockDeadlineDuringAttempt(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		servers int
	}{
		{"single", 1},
		{"redlock", 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			// The deadline reaches the socket only with ContextTimeoutEnabled;
			// without it go-redis waits out its own ReadTimeout and retries.
			srvs, _ := startN(t, tc.servers)
			var clients []redis.UniversalClient
			for _, s := range srvs {
				o := s.Options()
				o.ContextTimeoutEnabled = true
				c := redis.NewClient(o)
				t.Cleanup(func() { c.Close() })
				clients = append(clients, c)
			}
			l := newLocker(t, lock.Options{ServerTimeout: 400 * time.Millisecond, RetryMin: time.Millisecond, RetryMax: 5 * time.Millisecond}, clients...)
			ctx := context.Background()
			held, err := l.TryLock(ctx, "cut")
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range srvs {
				s.Pause(t)
			}
			for _, call := range []struct {
				name string
				fn   func(context.Context, string) (*lock.Lease, error)
			}{
				{"TryLock", l.TryLock},
				{"Lock", l.Lock},
			} {
				short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
				le, err := call.fn(short, "cut")
				cancel()
				if le != nil || !errors.Is(err, lock.ErrNotLocked) || !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), `"cut"`) {
					t.Errorf("%s with the deadline firing during the attempt = %v, %v; want ErrNotLocked and DeadlineExceeded naming the lock", call.name, le, err)
				}
			}
			for _, s := range srvs {
				s.Resume(t)
			}
			if err := held.Release(ctx); err != nil {
				t.Errorf("Release after the servers resumed = %v", err)
			}
		})
	}
}
