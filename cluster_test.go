package tiercache

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/tiercache/tiercache/internal/redistest"
)

// TestCluster runs the core operations and invalidation against a 3-master Redis Cluster: every
// script must touch one slot, batches must work across slots.
func TestCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a cluster")
	}
	cl := redistest.StartCluster(t, 3)
	ctx := context.Background()
	newC := func() *Cache {
		c, err := New(Options{Redis: cl.Client(t), NamespaceOf: sessionOf})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		waitFor(t, "subscribed", 10*time.Second, c.bp.up.Load)
		return c
	}
	a, b := newC(), newC()
	items := map[string][]byte{}
	keys := []string{}
	for i := range 50 {
		k := fmt.Sprintf("session:%d:k{%d}", i%5, i) // braces in user keys are escaped
		items[k] = []byte(fmt.Sprint("v", i))
		keys = append(keys, k)
	}
	if err := a.SetMany(ctx, items); err != nil {
		t.Fatal(err)
	}
	got, err := b.GetMany(ctx, keys)
	if err != nil || len(got) != 50 {
		t.Fatalf("GetMany across slots = %d values, %v", len(got), err)
	}
	if err := a.Set(ctx, keys[0], []byte("new")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "b to drop the old value", 2*time.Second, func() bool { _, ok := b.Peek(keys[0]); return !ok })
	if v, err := b.Get(ctx, keys[0]); err != nil || string(v) != "new" {
		t.Fatalf("b.Get = %q, %v", v, err)
	}
	if err := a.Delete(ctx, keys[1]); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Get(ctx, keys[1], SkipL1()); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get after Delete = %v", err)
	}
	loads := 0
	v, err := b.GetOrLoad(ctx, "fresh", func(context.Context, string) ([]byte, error) { loads++; return []byte("L"), nil })
	if err != nil || string(v) != "L" || loads != 1 {
		t.Fatalf("GetOrLoad = %q, %v, %d loads", v, err, loads)
	}
	if err := a.InvalidateNamespace(ctx, "session:2"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Get(ctx, "session:2:k{2}", SkipL1()); !errors.Is(err, ErrNotFound) {
		t.Fatalf("the invalidating instance's Get after InvalidateNamespace = %v", err)
	}
	// The peer learns the new generation from the namespace's message.
	waitFor(t, "b to see the namespace invalidated", 2*time.Second, func() bool {
		_, err := b.Get(ctx, "session:2:k{2}", SkipL1())
		return errors.Is(err, ErrNotFound)
	})
	n, err := a.Clear(ctx)
	if err != nil || n == 0 {
		t.Fatalf("Clear = %d, %v", n, err)
	}
	if got, err := b.GetMany(ctx, keys, SkipL1()); err != nil || len(got) != 0 {
		t.Fatalf("GetMany after Clear = %d values, %v", len(got), err)
	}
}
