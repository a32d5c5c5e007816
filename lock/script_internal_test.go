package lock

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/tiercache/tiercache/internal/redistest"
)

// The acquire script must be idempotent: go-redis may run it twice for one
// call when a reply is lost. A second run with our value returns the same
// token and issues no new one.
func TestAcquireScriptIdempotent(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	c := srv.Client(t)
	ctx := context.Background()
	keys := []string{"t:{n}:lock", "t:{n}:fence"}
	run := func(value string) (int64, error) {
		return acquireScript.Run(ctx, c, keys, value, 10000, 60000).Int64()
	}
	tok1, err := run("ours")
	if err != nil {
		t.Fatal(err)
	}
	tok2, err := run("ours")
	if err != nil || tok2 != tok1 {
		t.Errorf("retried acquire = %d, %v; want the same token %d", tok2, err, tok1)
	}
	if _, err := run("theirs"); err == nil {
		t.Errorf("acquire by another value succeeded while held")
	}
	// Clock floor: a token is at least the server time in microseconds.
	if now := time.Now().UnixMicro(); tok1 < now-int64(time.Minute/time.Microsecond) {
		t.Errorf("token %d far below the clock %d", tok1, now)
	}
	// With the counter lost, tokens still increase.
	c.Del(ctx, keys...)
	tok3, err := run("again")
	if err != nil || tok3 <= tok1 {
		t.Errorf("token after losing the counter = %d, %v; want > %d", tok3, err, tok1)
	}
	if got := srv.Do(t, "GET", keys[1]); got != itoa(tok3) {
		t.Errorf("counter = %v, want %d in plain digits", got, tok3)
	}
}

func itoa(n int64) string {
	return strconv.FormatInt(n, 10)
}

// BenchmarkBareScripts runs the acquire and release scripts alone, with no
// lease, watchdog or validity bookkeeping: it separates the cost of Lua on the
// server from the package's Go-side cost in BenchmarkLockRelease.
func BenchmarkBareScripts(b *testing.B) {
	srv := redistest.Start(b)
	c := srv.Client(b)
	ctx := context.Background()
	keys := []string{"b:{n}:lock", "b:{n}:fence"}
	const value = "0123456789abcdef0123456789abcdef"
	b.ReportAllocs()
	for b.Loop() {
		if err := acquireScript.Run(ctx, c, keys, value, 10000, 86400000).Err(); err != nil {
			b.Fatal(err)
		}
		if err := releaseScript.Run(ctx, c, keys[:1], value).Err(); err != nil {
			b.Fatal(err)
		}
	}
}
