package main

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestGoRedisLogRateLimited(t *testing.T) {
	var buf bytes.Buffer
	g := &goRedisLog{log: slog.New(slog.NewTextHandler(&buf, nil)), every: time.Hour}
	ctx := context.Background()
	for i := range 50 {
		g.Printf(ctx, "dial tcp 127.0.0.1:6379: connect: connection refused (%d)", i)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 1 || !strings.Contains(lines[0], "connection refused (0)") || !strings.Contains(lines[0], "level=WARN") {
		t.Fatalf("50 lines within the interval logged as %q, want only the first, at WARN", lines)
	}
	// Past the interval the next line is logged with the count suppressed meanwhile.
	g.mu.Lock()
	g.last = time.Now().Add(-2 * time.Hour)
	g.mu.Unlock()
	g.Printf(ctx, "dial tcp: refused again")
	if out := buf.String(); !strings.Contains(out, "refused again") || !strings.Contains(out, "suppressed_since_last=49") {
		t.Errorf("line after the interval = %q, want it logged with suppressed_since_last=49", out)
	}
}
