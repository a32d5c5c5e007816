package tiercache

import (
	"context"
	"fmt"
	"testing"

	"github.com/tiercache/tiercache/internal/redistest"
)

// TestGetManyCountsPerKey: a batch's hits and misses are counted per key (added once per
// batch), a repeated key once, and L1 hits stay L1 hits.
func TestGetManyCountsPerKey(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	c := newCache(t, srv, Options{Logger: quietLogger()})
	ctx := context.Background()
	for i := range 7 {
		if err := c.Set(ctx, fmt.Sprintf("k%d", i), []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	keys := []string{"k0", "k1", "k2", "k3", "k4", "k5", "k6", "x0", "x1", "x2", "k3", "x1"}
	before := c.Stats()
	m, err := c.GetMany(ctx, keys, SkipL1())
	if err != nil || len(m) != 7 {
		t.Fatalf("GetMany = %d values, %v; want 7, nil", len(m), err)
	}
	s := c.Stats()
	if hits, misses := s.L2Hits-before.L2Hits, s.L2Misses-before.L2Misses; hits != 7 || misses != 3 {
		t.Errorf("GetMany of 7 stored and 3 absent keys (2 repeated): L2Hits +%d, L2Misses +%d; want +7, +3", hits, misses)
	}
	// Without SkipL1 the Sets' L1 entries answer.
	before = c.Stats()
	if m, err := c.GetMany(ctx, keys); err != nil || len(m) != 7 {
		t.Fatalf("GetMany = %d values, %v; want 7, nil", len(m), err)
	}
	s = c.Stats()
	if l1, l2, miss := s.L1Hits-before.L1Hits, s.L2Hits-before.L2Hits, s.L2Misses-before.L2Misses; l1 != 7 || l2 != 0 || miss != 3 {
		t.Errorf("GetMany through L1: L1Hits +%d, L2Hits +%d, L2Misses +%d; want +7, +0, +3", l1, l2, miss)
	}
}

// TestBatchKeys: the keys a batch builds together are those entryKey builds one by one, for
// keys that need escaping, with and without namespaces, across chunk boundaries.
func TestBatchKeys(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	c := newCache(t, srv, Options{Logger: quietLogger(), NamespaceOf: func(k string) string {
		if len(k) > 2 && k[1] == '/' {
			return k[:1]
		}
		return ""
	}})
	ctx := context.Background()
	if err := c.InvalidateNamespace(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	var keys []string
	for i := range 300 { // several chunks' worth
		keys = append(keys, fmt.Sprintf("plain%d", i), fmt.Sprintf("a/{%d}%%", i), fmt.Sprintf("b/%d", i))
	}
	keys = append(keys, string(make([]byte, 3000))) // longer than a chunk
	bk := batchKeys{c: c}
	var got []string
	for _, k := range keys {
		rk, err := bk.entryKey(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, rk)
	}
	for i, k := range keys {
		want, err := c.entryKey(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		if got[i] != want {
			t.Errorf("batch key of %q = %q, want %q", k, got[i], want)
		}
	}
}

func TestKeySet(t *testing.T) {
	t.Parallel()
	keys := []string{"a", "b", "a", "", "c", "", "b", "d"}
	want := []bool{true, true, false, true, true, false, false, true}
	s := newKeySet(keys)
	for i := range keys {
		if got := s.add(i); got != want[i] {
			t.Errorf("add(%d) (%q) = %v, want %v", i, keys[i], got, want[i])
		}
	}
}
