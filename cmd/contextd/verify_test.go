package main

import (
	"path/filepath"
	"strings"
	"testing"

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
	if err := verify(t.Context(), []string{"-urls", "http://192.0.2.1:8080"}, &out); err == nil {
		t.Error("verify against a non-loopback URL = nil error")
	}
}
