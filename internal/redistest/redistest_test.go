package redistest_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/redistest"
)

func ctxT(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestStartPing(t *testing.T) {
	t.Parallel()
	s := redistest.Start(t)
	ctx := ctxT(t)
	if got, err := s.Client(t).Ping(ctx).Result(); err != nil || got != "PONG" {
		t.Fatalf("Ping() = %q, %v, want PONG", got, err)
	}
	if want := fmt.Sprintf("127.0.0.1:%d", s.Port()); s.Addr() != want {
		t.Errorf("Addr() = %q, want %q", s.Addr(), want)
	}
	if s.PID() <= 0 {
		t.Errorf("PID() = %d, want > 0", s.PID())
	}
	if s.SocketPath() != "" {
		t.Errorf("SocketPath() = %q, want empty", s.SocketPath())
	}
	if got := s.Do(t, "CONFIG", "GET", "save"); !strings.Contains(fmt.Sprint(got), "save") {
		t.Errorf("Do(CONFIG GET save) = %v", got)
	}
	if got := s.Do(t, "GET", "missing"); got != nil {
		t.Errorf("Do(GET missing) = %v, want nil", got)
	}
}

func TestStartWithArgs(t *testing.T) {
	t.Parallel()
	s := redistest.StartWith(t, redistest.Options{Args: []string{"--maxmemory", "10mb"}})
	got, err := s.Client(t).ConfigGet(ctxT(t), "maxmemory").Result()
	if err != nil || got["maxmemory"] != "10485760" {
		t.Fatalf("ConfigGet(maxmemory) = %v, %v, want 10485760", got, err)
	}
}

func TestKillRestart(t *testing.T) {
	t.Parallel()
	s := redistest.Start(t)
	ctx := ctxT(t)
	c := s.Client(t)
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatalf("Set: %v", err)
	}
	addr, pid := s.Addr(), s.PID()
	s.Kill(t)
	if s.PID() != 0 {
		t.Errorf("PID() after Kill = %d, want 0", s.PID())
	}
	if conn, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		conn.Close()
		t.Fatalf("dial %s after Kill succeeded", addr)
	}
	s.Kill(t) // no-op when not running
	s.Restart(t)
	if s.Addr() != addr {
		t.Fatalf("Addr() after Restart = %q, want %q", s.Addr(), addr)
	}
	if s.PID() == pid {
		t.Errorf("PID() after Restart = %d, same as before", pid)
	}
	if err := c.Get(ctx, "k").Err(); !errors.Is(err, redis.Nil) {
		t.Errorf("Get(k) after Restart: err = %v, want redis.Nil", err)
	}
	// Restart while running kills first.
	c.Set(ctx, "k2", "v", 0)
	s.Restart(t)
	if err := c.Get(ctx, "k2").Err(); !errors.Is(err, redis.Nil) {
		t.Errorf("Get(k2) after second Restart: err = %v, want redis.Nil", err)
	}
}

func TestPauseResume(t *testing.T) {
	t.Parallel()
	s := redistest.Start(t)
	ctx := ctxT(t)
	opt := s.Options()
	opt.ReadTimeout = 100 * time.Millisecond
	opt.MaxRetries = -1
	c := redis.NewClient(opt)
	t.Cleanup(func() { c.Close() })
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	s.Pause(t)
	err := c.Ping(ctx).Err()
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Errorf("Ping while paused: err = %v, want timeout", err)
	}
	s.Resume(t)
	if err := c.Ping(ctx).Err(); err != nil {
		t.Errorf("Ping after Resume: %v", err)
	}
	// Cleanup must also work on a paused server.
	s.Pause(t)
}

func TestUnix(t *testing.T) {
	t.Parallel()
	s := redistest.StartWith(t, redistest.Options{Unix: true})
	p := s.SocketPath()
	if p == "" || len(p) >= 100 {
		t.Fatalf("SocketPath() = %q, want non-empty and < 100 bytes", p)
	}
	if fi, err := os.Stat(p); err != nil || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("Stat(%q) = %v, %v, want a socket", p, fi, err)
	}
	ctx := ctxT(t)
	c := s.Client(t)
	if err := c.Set(ctx, "k", "unix", 0).Err(); err != nil {
		t.Fatalf("Set over unix: %v", err)
	}
	if got := s.Do(t, "GET", "k"); got != "unix" {
		t.Errorf("Do(GET k) over TCP = %v, want unix", got)
	}
	s.Restart(t)
	if err := c.Ping(ctx).Err(); err != nil {
		t.Errorf("Ping over unix after Restart: %v", err)
	}
}

func TestCluster(t *testing.T) {
	t.Parallel()
	cl := redistest.StartCluster(t, 3)
	if n := len(cl.Nodes()); n != 3 || len(cl.Addrs()) != 3 {
		t.Fatalf("len(Nodes()) = %d, len(Addrs()) = %d, want 3", n, len(cl.Addrs()))
	}
	ctx := ctxT(t)
	c := cl.Client(t)
	slots := map[int64]bool{}
	for i := 0; i < 50; i++ {
		k := fmt.Sprintf("key-%d", i)
		if err := c.Set(ctx, k, k, 0).Err(); err != nil {
			t.Fatalf("Set(%q): %v", k, err)
		}
		slot, err := c.ClusterKeySlot(ctx, k).Result()
		if err != nil {
			t.Fatalf("ClusterKeySlot(%q): %v", k, err)
		}
		slots[slot/(16384/3)] = true
	}
	if len(slots) < 3 {
		t.Errorf("keys landed on %d nodes' slot ranges, want 3", len(slots))
	}
	for i := 0; i < 50; i++ {
		k := fmt.Sprintf("key-%d", i)
		if got, err := c.Get(ctx, k).Result(); err != nil || got != k {
			t.Errorf("Get(%q) = %q, %v, want %q", k, got, err, k)
		}
	}
	// Every node holds some of the keys.
	for _, n := range cl.Nodes() {
		if got, _ := n.Do(t, "DBSIZE").(int64); got == 0 {
			t.Errorf("node %s: DBSIZE = 0, want > 0", n.Addr())
		}
	}
}

func TestSentinelFailover(t *testing.T) {
	t.Parallel()
	s := redistest.StartSentinel(t)
	if len(s.SentinelAddrs()) != 3 || s.MasterName() == "" {
		t.Fatalf("SentinelAddrs() = %v, MasterName() = %q", s.SentinelAddrs(), s.MasterName())
	}
	ctx := ctxT(t)
	c := s.Client(t)
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatalf("Set via failover client: %v", err)
	}
	if got, err := c.Get(ctx, "k").Result(); err != nil || got != "v" {
		t.Fatalf("Get(k) = %q, %v, want v", got, err)
	}

	s.Master().Kill(t)
	deadline := time.Now().Add(20 * time.Second)
	for {
		err := c.Set(ctx, "after", "failover", 0).Err()
		if err == nil {
			if role := fmt.Sprint(s.Replica().Do(t, "ROLE")); strings.HasPrefix(role, "[master") {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no failover to replica %s within 20s; last Set err = %v, ROLE = %v",
				s.Replica().Addr(), err, s.Replica().Do(t, "ROLE"))
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got := s.Replica().Do(t, "GET", "after"); got != "failover" {
		t.Errorf("promoted replica GET after = %v, want failover", got)
	}
}
