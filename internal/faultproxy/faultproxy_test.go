package faultproxy_test

import (
	"bufio"
	"context"
	"errors"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/faultproxy"
	"github.com/tiercache/tiercache/internal/redistest"
)

func ctxT(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// client returns a go-redis client through p with short timeouts.
func client(t *testing.T, p *faultproxy.Proxy, retries int) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{
		Addr:         p.Addr(),
		DialTimeout:  time.Second,
		ReadTimeout:  50 * time.Millisecond,
		WriteTimeout: 50 * time.Millisecond,
		MaxRetries:   retries,
		PoolSize:     1,
	})
	t.Cleanup(func() { c.Close() })
	return c
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// eventually polls cond until it is true or fails t after timeout.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not true within %v", what, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestForward(t *testing.T) {
	t.Parallel()
	s := redistest.Start(t)
	p := faultproxy.New(t, s.Addr())
	ctx := ctxT(t)
	c := client(t, p, -1)
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatalf("Set through proxy: %v", err)
	}
	if got := s.Do(t, "GET", "k"); got != "v" {
		t.Errorf("GET k on server = %v, want v", got)
	}
	if p.Conns() != 1 {
		t.Errorf("Conns() = %d, want 1", p.Conns())
	}
	// A large value crosses many chunks.
	big := strings.Repeat("x", 1<<20)
	c2 := redis.NewClient(&redis.Options{Addr: p.Addr()})
	defer c2.Close()
	if err := c2.Set(ctx, "big", big, 0).Err(); err != nil {
		t.Fatalf("Set(big): %v", err)
	}
	if got, err := c2.Get(ctx, "big").Result(); err != nil || got != big {
		t.Fatalf("Get(big): len %d, %v, want len %d", len(got), err, len(big))
	}
}

func TestDelay(t *testing.T) {
	t.Parallel()
	_, p, c := proxied(t)
	ctx := ctxT(t)
	p.SetDelay(200 * time.Millisecond)
	if err := c.Ping(ctx).Err(); !isTimeout(err) {
		t.Errorf("Ping with delay 200ms, ReadTimeout 50ms: err = %v, want timeout", err)
	}
	// A patient client gets through, and takes at least the delay.
	slow := redis.NewClient(&redis.Options{Addr: p.Addr(), ReadTimeout: 5 * time.Second})
	defer slow.Close()
	slow.Ping(ctx) // dial (and handshake) under the delay too
	start := time.Now()
	if err := slow.Ping(ctx).Err(); err != nil {
		t.Errorf("Ping with delay and long timeout: %v", err)
	}
	if el := time.Since(start); el < 200*time.Millisecond {
		t.Errorf("Ping with delay 200ms took %v, want >= 200ms", el)
	}
	p.SetDelay(0)
	if err := c.Ping(ctx).Err(); err != nil {
		t.Errorf("Ping after SetDelay(0): %v", err)
	}
}

func TestBlackhole(t *testing.T) {
	t.Parallel()
	s, p, c := proxied(t)
	ctx := ctxT(t)
	p.Blackhole(true)
	if err := c.Ping(ctx).Err(); !isTimeout(err) {
		t.Errorf("Ping while blackholed: err = %v, want timeout", err)
	}
	// New connections are accepted but go nowhere.
	c2 := client(t, p, -1)
	if err := c2.Ping(ctx).Err(); !isTimeout(err) {
		t.Errorf("Ping on new conn while blackholed: err = %v, want timeout", err)
	}
	raw, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.Write([]byte("PING\r\n"))
	raw.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if n, err := raw.Read(make([]byte, 16)); !isTimeout(err) {
		t.Errorf("raw Read while blackholed = %d, %v, want timeout", n, err)
	}
	eventually(t, 2*time.Second, "Conns() > 0 while blackholed", func() bool { return p.Conns() > 0 })
	if err := s.Do(t, "SET", "direct", "1"); err != "OK" {
		t.Errorf("direct SET = %v", err)
	}
	p.Blackhole(false)
	raw.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := raw.Read(make([]byte, 16)); err == nil || isTimeout(err) {
		t.Errorf("raw Read after Blackhole(false): err = %v, want reset", err)
	}
	eventually(t, 5*time.Second, "Ping after Blackhole(false)", func() bool {
		return c.Ping(ctx).Err() == nil && c2.Ping(ctx).Err() == nil
	})
}

func TestResetAll(t *testing.T) {
	t.Parallel()
	s, p, c := proxied(t) // retries off
	ctx := ctxT(t)
	p.ResetAll()
	eventually(t, 2*time.Second, "Conns() == 0 after ResetAll", func() bool { return p.Conns() == 0 })
	// The client reconnects on its own.
	eventually(t, 5*time.Second, "Ping after ResetAll", func() bool { return c.Ping(ctx).Err() == nil })

	// A command in flight during ResetAll fails (retries are off), and the
	// client then reconnects.
	errc := make(chan error, 1)
	go func() { errc <- c.BLPop(ctx, 10*time.Second, "faultproxy-nokey").Err() }()
	eventually(t, 5*time.Second, "BLPOP blocked on server", func() bool {
		info, _ := s.Do(t, "INFO", "clients").(string)
		return strings.Contains(info, "blocked_clients:1\r\n")
	})
	p.ResetAll()
	select {
	case err := <-errc:
		if err == nil || errors.Is(err, redis.Nil) {
			t.Errorf("BLPOP across ResetAll: err = %v, want connection error", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("BLPOP did not return within 5s of ResetAll")
	}
	if err := c.Ping(ctx).Err(); err != nil {
		t.Errorf("Ping after ResetAll during BLPOP: %v", err)
	}

	// A raw connection sees the reset as an error, not a clean EOF.
	raw, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	if _, err := raw.Write([]byte("PING\r\n")); err != nil {
		t.Fatal(err)
	}
	raw.SetReadDeadline(time.Now().Add(5 * time.Second))
	if line, err := bufio.NewReader(raw).ReadString('\n'); err != nil || line != "+PONG\r\n" {
		t.Fatalf("raw PING = %q, %v", line, err)
	}
	p.ResetAll()
	_, err = raw.Read(make([]byte, 1))
	if err == nil || isTimeout(err) || !strings.Contains(err.Error(), "reset") {
		t.Errorf("Read after ResetAll: err = %v, want connection reset", err)
	}
}

func TestRefuse(t *testing.T) {
	t.Parallel()
	_, p, c := proxied(t)
	ctx := ctxT(t)
	p.Refuse(true)
	c2 := client(t, p, -1)
	if err := c2.Ping(ctx).Err(); err == nil {
		t.Errorf("Ping on new conn while refusing: err = nil, want error")
	}
	if err := c.Ping(ctx).Err(); err != nil {
		t.Errorf("Ping on live conn while refusing: %v", err)
	}
	p.Refuse(false)
	eventually(t, 5*time.Second, "Ping after Refuse(false)", func() bool { return c2.Ping(ctx).Err() == nil })
}

func TestCloseNoLeak(t *testing.T) {
	// Not parallel: counts goroutines.
	s := redistest.Start(t)
	ctx := ctxT(t)
	before := runtime.NumGoroutine()

	p := faultproxy.New(t, s.Addr())
	c := redis.NewClient(&redis.Options{Addr: p.Addr(), PoolSize: 4})
	for i := 0; i < 20; i++ {
		if err := c.Ping(ctx).Err(); err != nil {
			t.Fatalf("Ping: %v", err)
		}
	}
	p.SetDelay(time.Hour) // writers parked on timers
	raw, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	raw.Write([]byte("PING\r\n"))
	p.Blackhole(true)
	raw2, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "Conns() >= 2", func() bool { return p.Conns() >= 2 })

	if err := p.Close(); err != nil {
		t.Errorf("Close() = %v", err)
	}
	if err := p.Close(); err != nil {
		t.Errorf("second Close() = %v", err)
	}
	if n := p.Conns(); n != 0 {
		t.Errorf("Conns() after Close = %d, want 0", n)
	}
	c.Close()
	raw.Close()
	raw2.Close()
	eventually(t, 5*time.Second, "goroutines back to baseline", func() bool {
		return runtime.NumGoroutine() <= before
	})
	if _, err := net.DialTimeout("tcp", p.Addr(), time.Second); err == nil {
		t.Errorf("dial after Close succeeded")
	}
}

// proxied starts a redis-server behind a proxy and returns both and a client through the proxy
// (retries off) that has answered one PING.
func proxied(t *testing.T) (*redistest.Server, *faultproxy.Proxy, *redis.Client) {
	t.Helper()
	s := redistest.Start(t)
	p := faultproxy.New(t, s.Addr())
	c := client(t, p, -1)
	if err := c.Ping(ctxT(t)).Err(); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	return s, p, c
}
