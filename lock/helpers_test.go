package lock_test

import (
	"bytes"
	"context"
	"runtime"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/lock"
)

// newLocker returns a Locker over clients with o's other fields, failing tb
// on a validation error.
func newLocker(tb testing.TB, o lock.Options, clients ...redis.UniversalClient) *lock.Locker {
	tb.Helper()
	o.Clients = clients
	l, err := lock.New(o)
	if err != nil {
		tb.Fatalf("lock.New: %v", err)
	}
	return l
}

// single starts a server and returns it with a Locker on it.
func single(tb testing.TB, o lock.Options) (*redistest.Server, *redis.Client, *lock.Locker) {
	tb.Helper()
	srv := redistest.Start(tb)
	c := srv.Client(tb)
	return srv, c, newLocker(tb, o, c)
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(tb testing.TB, timeout time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(time.Millisecond) // polling interval, not settling
	}
}

// watchdogs counts running lease watchdog goroutines.
func watchdogs() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return bytes.Count(buf[:n], []byte("lock.(*Lease).watchdog"))
		}
		buf = make([]byte, 2*len(buf))
	}
}

// checkNoLeaks fails tb unless every watchdog has exited and the goroutine
// count is back to base, within a deadline.
func checkNoLeaks(tb testing.TB, base int) {
	tb.Helper()
	waitFor(tb, 5*time.Second, "watchdogs to exit", func() bool { return watchdogs() == 0 })
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > base {
		if time.Now().After(deadline) {
			tb.Fatalf("runtime.NumGoroutine() = %d, want <= %d (before the leases)", runtime.NumGoroutine(), base)
		}
		time.Sleep(time.Millisecond)
	}
}

// quietLogger drops go-redis's own log lines (dial failures after a server is
// killed on purpose), which would drown the test output.
type quietLogger struct{}

func (quietLogger) Printf(context.Context, string, ...any) {}

func init() { redis.SetLogger(quietLogger{}) }
