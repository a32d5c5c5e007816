package tiercache

import (
	"context"
	"strconv"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/redistest"
)

// TestClearOnlyTheCachesKeys: Clear removes the cache's entries and tombstones, with and without
// a namespace generation, and nothing else: not another cache whose namespace starts with this
// one, not generations, leases, or the session service's event streams and their tokens.
// (Before: it scanned "<ns>:*".)
func TestClearOnlyTheCachesKeys(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	ctx := context.Background()
	nsOf := func(k string) string {
		if ns, _, ok := strings.Cut(k, "/"); ok {
			return ns
		}
		return ""
	}
	a := newCache(t, srv, Options{Namespace: "app", NamespaceOf: nsOf})
	v2 := newCache(t, srv, Options{Namespace: "app:v2"})
	for _, k := range []string{"x", "y{1}%", "s/1"} {
		if err := a.Set(ctx, k, []byte("v")); err != nil {
			t.Fatalf("Set(%q): %v", k, err)
		}
	}
	if err := a.InvalidateNamespace(ctx, "s"); err != nil {
		t.Fatal(err)
	}
	if err := a.Set(ctx, "s/2", []byte("v")); err != nil { // under the new generation
		t.Fatal(err)
	}
	if err := a.Delete(ctx, "d"); err != nil { // a tombstone
		t.Fatal(err)
	}
	if err := v2.Set(ctx, "x", []byte("kept")); err != nil {
		t.Fatal(err)
	}
	raw := srv.Client(t)
	others := []string{
		"app:ev:{o:1}:t:tok",       // an event stream's idempotency token
		"app:lease:{app:x}:lock",   // a stampede lease
		"app:{x}:meta",             // not an entry's layout
		"app:{}",                   // no user key is empty
		"app:{x}:g12a",             // not a generation
		"application:{x}",          // another namespace
		"app:gen:{other}",          // a generation key besides s's
		"app:{x",                   // no closing brace
		"other:{app:{x}}",          // another namespace again
		"app:v2:{plain-key-of-v2}", // another cache's key
	}
	for _, k := range others {
		if err := raw.Set(ctx, k, "x", 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if err := raw.XAdd(ctx, &redis.XAddArgs{Stream: "app:ev:{o:1}", Values: []string{"f", "v"}}).Err(); err != nil {
		t.Fatal(err)
	}
	keep := append(others, "app:ev:{o:1}", "app:gen:{s}", "app:v2:{x}")
	gen, err := a.nsGen(ctx, "s")
	if err != nil {
		t.Fatal(err)
	}
	s2, err := a.entryKey(ctx, "s/2")
	if err != nil || !strings.HasSuffix(s2, ":g"+strconv.FormatUint(gen, 10)) {
		t.Fatalf("entryKey(s/2) = %q, %v; want one with the generation", s2, err)
	}
	entries := []string{a.redisKey("x"), a.redisKey("y{1}%"), a.redisKey("s/1"), s2, a.redisKey("d")}
	for _, k := range entries {
		if got, err := raw.Exists(ctx, k).Result(); err != nil || got != 1 {
			t.Fatalf("EXISTS %q before Clear = %d, %v; want the entry there", k, got, err)
		}
	}
	want := int64(len(entries))

	n, err := a.Clear(ctx)
	if err != nil || n != want {
		t.Fatalf("Clear = %d, %v; want %d keys removed", n, err, want)
	}
	for _, k := range keep {
		if got, err := raw.Exists(ctx, k).Result(); err != nil || got != 1 {
			t.Errorf("EXISTS %q after Clear = %d, %v; want it kept", k, got, err)
		}
	}
	for _, k := range entries {
		if got, err := raw.Exists(ctx, k).Result(); err != nil || got != 0 {
			t.Errorf("EXISTS %q after Clear = %d, %v; want the entry gone", k, got, err)
		}
	}
	for _, k := range []string{"x", "y{1}%", "s/1", "s/2"} {
		if got, err := a.Get(ctx, k, SkipL1()); err == nil {
			t.Errorf("Get(%q) after Clear = %q, want ErrNotFound", k, got)
		}
	}
}
