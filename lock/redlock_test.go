package lock_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/lock"
)

func startN(t *testing.T, n int) ([]*redistest.Server, []redis.UniversalClient) {
	t.Helper()
	var srvs []*redistest.Server
	var clients []redis.UniversalClient
	for range n {
		s := redistest.Start(t)
		srvs = append(srvs, s)
		// No go-redis retries: a killed server must fail at once, not after
		// command and dial retry backoffs (5 dials 100 ms apart by default)
		// that eat the whole ServerTimeout and, with a ServerTimeout sized
		// for a loaded machine, the lease's validity.
		o := s.Options()
		o.MaxRetries = -1
		o.DialerRetries = 1
		o.DialerRetryTimeout = time.Millisecond
		c := redis.NewClient(o)
		t.Cleanup(func() { c.Close() })
		clients = append(clients, c)
	}
	return srvs, clients
}

func TestRedlock(t *testing.T) {
	t.Parallel()
	srvs, clients := startN(t, 3)
	// Every live server must answer each call in time for the assertions
	// below (all three hold the lock; quorum with one killed), so the
	// per-server budget is sized for a loaded machine, not the 50 ms default:
	// a server that answers after its budget counts as failed.
	o := lock.Options{TTL: time.Second, ServerTimeout: 500 * time.Millisecond}
	l := newLocker(t, lock.Options{TTL: o.TTL, ServerTimeout: o.ServerTimeout, RetryMin: time.Millisecond, RetryMax: 5 * time.Millisecond}, clients...)
	other := newLocker(t, o, clients...)
	ctx := context.Background()
	if l.Quorum() != 2 {
		t.Fatalf("Quorum() = %d, want 2", l.Quorum())
	}

	le, err := l.TryLock(ctx, "x")
	if err != nil {
		t.Fatalf("TryLock on 3 servers = %v", err)
	}
	for i, s := range srvs {
		if s.Do(t, "EXISTS", l.LockKey("x")) != int64(1) {
			t.Errorf("server %d does not hold the lock", i)
		}
	}
	if _, err := other.TryLock(ctx, "x"); !errors.Is(err, lock.ErrNotLocked) {
		t.Errorf("TryLock by another Locker = %v, want ErrNotLocked", err)
	}
	if err := le.Release(ctx); err != nil {
		t.Fatalf("Release = %v", err)
	}
	last := le.Token()

	// One server down: everything keeps working on the other two.
	srvs[2].Kill(t)
	for i := range 5 {
		le, err := l.TryLock(ctx, "x")
		if err != nil {
			t.Fatalf("TryLock %d with one server killed = %v", i, err)
		}
		if le.Token() <= last {
			t.Errorf("token %d after %d, want increasing", le.Token(), last)
		}
		last = le.Token()
		if _, err := other.TryLock(ctx, "x"); !errors.Is(err, lock.ErrNotLocked) {
			t.Errorf("TryLock by another Locker = %v, want ErrNotLocked", err)
		}
		if err := le.Extend(ctx); err != nil {
			t.Errorf("Extend with one server killed = %v", err)
		}
		if err := le.Release(ctx); err != nil {
			t.Errorf("Release with one server killed = %v", err)
		}
	}
	held, err := l.TryLock(ctx, "x")
	if err != nil {
		t.Fatal(err)
	}

	// Two down: no quorum, for acquisition or extension.
	srvs[1].Kill(t)
	_, err = l.TryLock(ctx, "y")
	const want = `lock: quorum not reached for "y": 1 of 3 servers granted, need 2`
	if !errors.Is(err, lock.ErrQuorum) || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("TryLock with two servers killed = %v, want ErrQuorum starting %q", err, want)
	}
	if n := srvs[0].Do(t, "EXISTS", l.LockKey("y")); n != int64(0) {
		t.Errorf("failed acquisition left the lock on the surviving server")
	}
	wctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if _, err := l.Lock(wctx, "y"); !errors.Is(err, lock.ErrQuorum) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Lock with two servers killed = %v, want ErrQuorum and DeadlineExceeded", err)
	}
	if err := held.Extend(ctx); !errors.Is(err, lock.ErrQuorum) {
		t.Errorf("Extend with two servers killed = %v, want ErrQuorum", err)
	}
	select {
	case <-held.Context().Done():
	case <-time.After(5 * time.Second):
		t.Fatal("lease without quorum did not end at its validity deadline")
	}
	if cause := context.Cause(held.Context()); !errors.Is(cause, lock.ErrExpired) {
		t.Errorf("Cause = %v, want ErrExpired", cause)
	}
	held.Release(ctx)
}

// A Redlock lease is auto-extended on a majority and released on all.
func TestRedlockAutoExtend(t *testing.T) {
	t.Parallel()
	srvs, clients := startN(t, 3)
	// Budgets for a loaded machine, as in TestRedlock: an extension must land within about 2/3 of
	// the TTL, and with 300 ms a scheduling stall of a few hundred ms (seen with both cores busy)
	// let the lease run out.
	l := newLocker(t, lock.Options{TTL: 1500 * time.Millisecond, ServerTimeout: 500 * time.Millisecond}, clients...)
	ctx := context.Background()
	le, err := l.TryLock(ctx, "z")
	if err != nil {
		t.Fatal(err)
	}
	first := le.Validity()
	waitFor(t, 3*l.TTL()+10*time.Second, "three TTLs", func() bool { return time.Since(first) > 3*l.TTL() })
	if err := context.Cause(le.Context()); err != nil {
		t.Fatalf("Redlock lease lost while extended: %v", err)
	}
	if err := le.Release(ctx); err != nil {
		t.Fatal(err)
	}
	for i, s := range srvs {
		if s.Do(t, "EXISTS", l.LockKey("z")) != int64(0) {
			t.Errorf("server %d still holds the lock after Release", i)
		}
	}
}

// Redlock tokens increase across leases even when the servers' counters
// disagree and the majority changes: a server far ahead grants one lease, is
// killed, and the next lease from the other two still gets a larger token.
func TestRedlockTokensIncreaseAcrossMajorities(t *testing.T) {
	t.Parallel()
	srvs, clients := startN(t, 3)
	l := newLocker(t, lock.Options{TTL: time.Second, ServerTimeout: 500 * time.Millisecond}, clients...) // the maximum needs every live server: budgets as in TestRedlock
	ctx := context.Background()
	fence := strings.TrimSuffix(l.LockKey("tok"), ":lock") + ":fence"
	ahead := time.Now().Add(time.Hour).UnixMicro()
	srvs[0].Do(t, "SET", fence, ahead)

	first, err := l.TryLock(ctx, "tok")
	if err != nil {
		t.Fatal(err)
	}
	if first.Token() <= uint64(ahead) {
		t.Fatalf("token %d, want the maximum over the servers (> %d)", first.Token(), ahead)
	}
	first.Release(ctx)
	srvs[0].Kill(t)
	second, err := l.TryLock(ctx, "tok")
	if err != nil {
		t.Fatal(err)
	}
	defer second.Release(ctx)
	if second.Token() <= first.Token() {
		t.Errorf("token %d from the other majority, want > %d", second.Token(), first.Token())
	}
}
