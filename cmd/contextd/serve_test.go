package main

import (
	"context"
	"net"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/tiercache/tiercache/internal/redistest"
)

// TestServeGracefulShutdown runs the real serve path (config from the
// environment, two-tier on real Redis, SQLite), holds an SSE stream open,
// and checks that cancelling the context shuts down cleanly.
func TestServeGracefulShutdown(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t)
	base, shutdown := serveInProcess(t, map[string]string{"REDIS_URL": "redis://" + rs.Addr() + "/0", "WARM_RECENT": "10"})
	s := createSession(t, base, "", "s")
	ch, _ := subscribe(t, base, "", s.ID, "")
	chat(t, base, "", s.ID, "hi")
	nextEvent(t, ch)
	shutdown()
	select {
	case _, ok := <-ch:
		if ok {
			t.Error("SSE stream still delivering after shutdown")
		}
	case <-time.After(10 * time.Second):
		t.Error("SSE stream not closed after shutdown")
	}
}

// serveInProcess runs "contextd serve" (the real serve path: configuration
// from env, plus a free loopback LISTEN_ADDR and a new SQLite file unless env
// names them) until it answers /readyz, and returns its base URL and a
// function that cancels it and fails the test unless serve returns nil within
// 15 s (a graceful shutdown, SSE streams included).
func serveInProcess(t *testing.T, env map[string]string) (base string, shutdown func()) {
	t.Helper()
	if env["LISTEN_ADDR"] == "" {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		env["LISTEN_ADDR"] = ln.Addr().String()
		ln.Close()
	}
	if env["DATABASE_URL"] == "" {
		env["DATABASE_URL"] = filepath.Join(t.TempDir(), "c.db")
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"serve"}, func(k string) string { return env[k] }) }()
	base = "http://" + env["LISTEN_ADDR"]
	eventually(t, "serve answers /readyz", func() bool {
		resp, err := http.Get(base + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return base, func() {
		t.Helper()
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("serve returned %v, want nil after a graceful shutdown", err)
			}
		case <-time.After(15 * time.Second):
			t.Fatal("serve did not return within 15s of cancellation (an SSE stream kept it open?)")
		}
	}
}
