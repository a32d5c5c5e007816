package main

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tiercache/tiercache/internal/redistest"
)

// TestVerifyTwoInstances runs contextd verify against two instances on one
// Redis and one database: no read may be stale by more than the bound.
func TestVerifyTwoInstances(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t)
	db := filepath.Join(t.TempDir(), "shared.db")
	a := startInstance(t, instanceOptions{Redis: rs, Database: db, Namespace: "verify"})
	b := startInstance(t, instanceOptions{Redis: rs, Database: db, Namespace: "verify"})
	var out strings.Builder
	err := verify(t.Context(), []string{"-urls", a.URL + "," + b.URL, "-duration", "2s", "-nodes", "4", "-readers", "2"}, &out)
	t.Logf("verify report:\n%s", out.String())
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	if !strings.Contains(out.String(), "propagation lag") {
		t.Errorf("report lacks the propagation lag")
	}
	for _, bad := range [][]string{
		{"-urls", "http://192.0.2.1:8080"},
		{"-urls", a.URL, "-bound", "0s"},
		{"-urls", a.URL, "-bound", "-1s"},
	} {
		if err := verify(t.Context(), bad, &out); err == nil {
			t.Errorf("verify %q = nil error", bad)
		}
	}
}

// TestVerifySeesStalenessWithoutInvalidation: with one instance's invalidations switched off
// (a test-only setting), verify finds reads stale by more than the bound and fails, naming them.
// (A verify that passes here would pass whatever the cache did.)
func TestVerifySeesStalenessWithoutInvalidation(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t)
	db := filepath.Join(t.TempDir(), "shared.db")
	a := startInstance(t, instanceOptions{Redis: rs, Database: db, Namespace: "deaf", L1TTL: time.Minute})
	b := startInstance(t, instanceOptions{Redis: rs, Database: db, Namespace: "deaf", L1TTL: time.Minute, NoInvalidation: true})
	var out strings.Builder
	err := verify(t.Context(), []string{"-urls", a.URL + "," + b.URL, "-duration", "4s", "-nodes", "4", "-readers", "2", "-bound", "500ms"}, &out)
	t.Logf("verify report:\n%s", out.String())
	if err == nil {
		t.Fatal("verify with one instance deaf to invalidations = nil error, want the stale reads reported")
	}
	if !strings.Contains(out.String(), "stale") {
		t.Errorf("report does not mention stale reads")
	}
}
