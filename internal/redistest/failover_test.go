package redistest_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/redistest"
)

// eventually polls ok until it holds, failing t after timeout.
func eventually(t *testing.T, what string, timeout time.Duration, ok func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := ok()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %v", what, timeout, err)
		}
		time.Sleep(50 * time.Millisecond) // polling interval
	}
}

// TestClusterFailovers fails two shards of a 3-master Cluster with replicas over: a planned
// failover (CLUSTER FAILOVER, nothing lost), then a kill -9 of another shard's master, whose
// frozen replica is read before its promotion. A cluster client reaches every key again.
func TestClusterFailovers(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a cluster with replicas and fails it over")
	}
	t.Parallel()
	cl := redistest.StartClusterWithReplicas(t, 3)
	if n, r := len(cl.Nodes()), len(cl.Replicas()); n != 3 || r != 3 {
		t.Fatalf("len(Nodes()) = %d, len(Replicas()) = %d, want 3 and 3", n, r)
	}
	for i, r := range cl.Replicas() {
		if got := fmt.Sprint(r.Do(t, "ROLE")); got[:6] != "[slave" {
			t.Fatalf("replica %d: ROLE = %s, want a replica", i, got)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := cl.Client(t)
	const keys = 60
	for i := range keys {
		k := fmt.Sprint("key-", i)
		if err := c.Set(ctx, k, k, 0).Err(); err != nil {
			t.Fatalf("Set(%q): %v", k, err)
		}
	}
	// Replication is asynchronous: WAIT makes each master's writes reach its replica, so that
	// the kill below loses nothing and the frozen replica's contents are known.
	for _, n := range cl.Nodes() {
		if got := n.Do(t, "WAIT", 1, 5000); got != int64(1) {
			t.Fatalf("%s: WAIT 1 = %v, want 1", n.Addr(), got)
		}
	}
	readAll := func(what string) {
		t.Helper()
		eventually(t, what, 30*time.Second, func() error {
			for i := range keys {
				k := fmt.Sprint("key-", i)
				if got, err := c.Get(ctx, k).Result(); err != nil || got != k {
					return fmt.Errorf("Get(%q) = %q, %v", k, got, err)
				}
			}
			return nil
		})
	}

	promoted := cl.Failover(t, 0)
	if promoted != cl.Replicas()[0] || fmt.Sprint(cl.Nodes()[0].Do(t, "ROLE"))[:6] != "[slave" {
		t.Fatalf("after Failover(0): new master %s, old master ROLE %v; want the replica promoted, the old master its replica",
			promoted.Addr(), cl.Nodes()[0].Do(t, "ROLE"))
	}
	readAll("reads after the planned failover")

	killed, replica := cl.KillMaster(t, 1)
	if killed != cl.Nodes()[1] || replica != cl.Replicas()[1] || killed.PID() != 0 {
		t.Fatalf("KillMaster(1) = %s (pid %d), %s; want Nodes()[1] killed and Replicas()[1]", killed.Addr(), killed.PID(), replica.Addr())
	}
	frozen := redis.NewClient(&redis.Options{Addr: replica.Addr(), OnConnect: func(ctx context.Context, cn *redis.Conn) error {
		return cn.ReadOnly(ctx).Err()
	}})
	defer frozen.Close()
	if n, err := frozen.DBSize(ctx).Result(); err != nil || n == 0 {
		t.Fatalf("frozen replica DBSIZE = %d, %v; want its shard's keys", n, err)
	}
	cl.WaitPromoted(t, replica)
	// go-redis reloads its slot map on MOVED, ASK or READONLY replies, or every 60 s: a refused
	// connection to the dead master triggers nothing, so the client keeps dialing it.
	c.ReloadState(ctx)
	readAll("reads after the master's kill")

	// The killed master comes back as a replica of the promoted one.
	killed.Restart(t)
	eventually(t, "the old master to rejoin as a replica", 30*time.Second, func() error {
		if role := fmt.Sprint(killed.Do(t, "ROLE")); role[:6] != "[slave" {
			return fmt.Errorf("ROLE = %s", role)
		}
		return nil
	})
	// A second failover of shard 1 goes back to the first server.
	if got := cl.Failover(t, 1); got != killed {
		t.Fatalf("Failover(1) promoted %s, want %s", got.Addr(), killed.Addr())
	}
	readAll("reads after failing back")
}

// TestSentinelKillMaster kills the master of the Sentinel setup and waits for the sentinels to
// promote the replica; the failover client follows.
func TestSentinelKillMaster(t *testing.T) {
	if testing.Short() {
		t.Skip("fails a Sentinel master over")
	}
	t.Parallel()
	s := redistest.StartSentinel(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := s.Client(t)
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatalf("Set: %v", err)
	}
	if got := s.Master().Do(t, "WAIT", 1, 5000); got != int64(1) {
		t.Fatalf("WAIT 1 = %v, want 1", got)
	}
	killed, replica := s.KillMaster(t)
	if killed != s.Master() || replica != s.Replica() {
		t.Fatalf("KillMaster() = %s, %s; want Master() and Replica()", killed.Addr(), replica.Addr())
	}
	if got := replica.Do(t, "GET", "k"); got != "v" {
		t.Fatalf("frozen replica GET k = %v, want v", got)
	}
	start := time.Now()
	s.WaitFailover(t, replica)
	t.Logf("sentinels promoted %s %v after the kill was seen", replica.Addr(), time.Since(start).Round(time.Millisecond))
	eventually(t, "the failover client to write to the new master", 30*time.Second, func() error {
		return c.Set(ctx, "after", "failover", 0).Err()
	})
	if got := replica.Do(t, "GET", "after"); got != "failover" {
		t.Errorf("promoted replica GET after = %v, want failover", got)
	}
	// A second KillMaster needs a replica: the killed master is down.
	killed.Restart(t)
	eventually(t, "the old master to rejoin as a replica", 30*time.Second, func() error {
		if role := fmt.Sprint(killed.Do(t, "ROLE")); role[:6] != "[slave" {
			return fmt.Errorf("ROLE = %s", role)
		}
		return nil
	})
	if k2, r2 := s.KillMaster(t); k2 != replica || r2 != killed {
		t.Fatalf("second KillMaster() = %s, %s; want %s, %s", k2.Addr(), r2.Addr(), replica.Addr(), killed.Addr())
	}
	s.WaitFailover(t, killed)
}
