package tiercache

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tiercache/tiercache/internal/redistest"
)

// sessionOf puts "session:<id>:..." keys in the namespace "session:<id>".
func sessionOf(key string) string {
	parts := strings.SplitN(key, ":", 3)
	if len(parts) < 3 || parts[0] != "session" {
		return ""
	}
	return parts[0] + ":" + parts[1]
}

func TestInvalidateNamespace(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	hook := &countingHook{}
	rdb := srv.Client(t)
	rdb.AddHook(hook)
	a := newCache(t, srv, Options{Redis: rdb, NamespaceOf: sessionOf})
	b := newCache(t, srv, Options{NamespaceOf: sessionOf})
	ctx := context.Background()
	keys := []string{"session:1:a", "session:1:b", "session:2:a", "other"}
	for _, k := range keys {
		if err := a.Set(ctx, k, []byte("old "+k)); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := b.GetMany(ctx, keys); err != nil || len(got) != 4 {
		t.Fatalf("b.GetMany = %q, %v", got, err)
	}
	if err := a.InvalidateNamespace(ctx, "session:0"); err != nil { // loads the script
		t.Fatal(err)
	}
	hook.reset()
	if err := a.InvalidateNamespace(ctx, "session:1"); err != nil {
		t.Fatal(err)
	}
	if n := hook.cmds.Load() + hook.pipelines.Load(); n != 1 {
		t.Errorf("InvalidateNamespace made %d round trips, want 1", n)
	}
	waitFor(t, "b to drop session:1 from L1", 2*time.Second, func() bool {
		_, ok1 := b.Peek("session:1:a")
		_, ok2 := b.Peek("session:1:b")
		return !ok1 && !ok2
	})
	for _, c := range []*Cache{a, b} {
		for _, k := range []string{"session:1:a", "session:1:b"} {
			if v, err := c.Get(ctx, k); !errors.Is(err, ErrNotFound) {
				t.Fatalf("Get(%q) after InvalidateNamespace = %q, %v; want ErrNotFound", k, v, err)
			}
		}
		for _, k := range []string{"session:2:a", "other"} {
			if v, err := c.Get(ctx, k); err != nil || string(v) != "old "+k {
				t.Fatalf("Get(%q) outside the namespace = %q, %v", k, v, err)
			}
		}
	}
	// The namespace lives on under its new generation.
	if err := b.Set(ctx, "session:1:a", []byte("new")); err != nil {
		t.Fatal(err)
	}
	if v, err := a.Get(ctx, "session:1:a"); err != nil || string(v) != "new" {
		t.Fatalf("a.Get after a write under the new generation = %q, %v", v, err)
	}
	// A fresh instance loads the generation from Redis.
	fresh := newCache(t, srv, Options{NamespaceOf: sessionOf})
	if v, err := fresh.Get(ctx, "session:1:b"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("fresh.Get(session:1:b) = %q, %v; want ErrNotFound", v, err)
	}
	if v, err := fresh.Get(ctx, "session:1:a"); err != nil || string(v) != "new" {
		t.Fatalf("fresh.Get(session:1:a) = %q, %v", v, err)
	}
}

func TestInvalidateNamespaceL1Only(t *testing.T) {
	t.Parallel()
	c := newCache(t, nil, Options{NamespaceOf: sessionOf})
	ctx := context.Background()
	for i := range 3 {
		if err := c.Set(ctx, fmt.Sprintf("session:9:%d", i), []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Set(ctx, "session:8:0", []byte("y")); err != nil {
		t.Fatal(err)
	}
	if err := c.InvalidateNamespace(ctx, "session:9"); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if _, ok := c.Peek(fmt.Sprintf("session:9:%d", i)); ok {
			t.Fatalf("session:9:%d survived", i)
		}
	}
	if _, ok := c.Peek("session:8:0"); !ok {
		t.Fatal("another namespace was dropped")
	}
}

func TestInvalidateNamespaceNeedsNamespaceOf(t *testing.T) {
	t.Parallel()
	c := newCache(t, nil, Options{})
	if err := c.InvalidateNamespace(context.Background(), "x"); err == nil || !strings.Contains(err.Error(), "NamespaceOf") {
		t.Fatalf("err = %v, want one naming Options.NamespaceOf", err)
	}
}

func TestClear(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	a := newCache(t, srv, Options{Namespace: "mine"})
	b := newCache(t, srv, Options{Namespace: "mine"})
	theirs := newCache(t, srv, Options{Namespace: "theirs"})
	ctx := context.Background()
	for i := range 2500 {
		if err := a.Set(ctx, fmt.Sprint(i), []byte("x"), SkipL1()); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Set(ctx, "k", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := theirs.Set(ctx, "k", []byte("kept")); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Get(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	n, err := a.Clear(ctx)
	if err != nil || n != 2501 {
		t.Fatalf("Clear = %d, %v; want 2501 keys removed", n, err)
	}
	waitFor(t, "b to flush", 2*time.Second, func() bool { _, ok := b.Peek("k"); return !ok })
	if _, err := b.Get(ctx, "k"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("b.Get after Clear err = %v", err)
	}
	if v, err := theirs.Get(ctx, "k", SkipL1()); err != nil || string(v) != "kept" {
		t.Fatalf("another namespace's key after Clear = %q, %v", v, err)
	}
}
