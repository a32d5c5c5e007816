package redistest

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"
)

// Failovers: a Cluster whose masters each have a replica (StartClusterWithReplicas), and the
// helpers that fail a master over, unplanned (kill -9, then wait for the promotion) or planned
// (CLUSTER FAILOVER), on a Cluster and on the Sentinel setup.
//
// An unplanned failover is split in two calls, KillMaster and WaitPromoted (WaitFailover for
// Sentinel), because what a test most wants to see lies between them: the killed master's
// replica holds, frozen, exactly the data that will survive (its master is gone, and nothing
// writes to a replica), so a test can read it to count the acknowledged writes that
// asynchronous replication lost, and measure from the kill until its clients recover.

// failoverTimeout bounds the wait for a promotion: detection (cluster-node-timeout 3 s, or
// the sentinels' down-after-milliseconds 1 s), the election and the new master's announcement
// take a few seconds on a loaded 2-core machine.
const failoverTimeout = 30 * time.Second

// StartClusterWithReplicas starts a Cluster of masters (at least 3) as StartCluster does, and
// one replica for each master (CLUSTER REPLICATE), then waits until every node reports
// cluster_state:ok and knows all 2×masters nodes, and every replica's link to its master is up.
// Replicas()[i] replicates Nodes()[i]; Addrs() stays the masters' addresses (seeds enough for a
// client, which discovers the replicas). Everything is killed in tb.Cleanup. It fails tb when
// masters < 3 or the cluster does not form in time, and skips it like Start when redis-server
// is missing.
func StartClusterWithReplicas(tb testing.TB, masters int) *Cluster {
	tb.Helper()
	if masters < 3 {
		tb.Fatalf("redistest: StartClusterWithReplicas(%d): need at least 3 masters", masters)
	}
	c := &Cluster{nodes: make([]*Server, masters), replicas: make([]*Server, masters)}
	for i := range c.nodes {
		c.nodes[i] = startServer(tb, Options{}, kindCluster, 0)
		c.replicas[i] = startServer(tb, Options{}, kindCluster, 0)
	}
	c.assignSlots(tb)
	for _, n := range append(c.nodes[1:], c.replicas...) {
		c.nodes[0].Do(tb, "CLUSTER", "MEET", "127.0.0.1", n.Port(), n.BusPort())
	}
	for i, r := range c.replicas {
		id, _ := c.nodes[i].Do(tb, "CLUSTER", "MYID").(string)
		// The replica learns of its master by gossip after the MEET: until then REPLICATE
		// answers "Unknown node".
		poll(tb, 20*time.Second, fmt.Sprintf("%s to accept CLUSTER REPLICATE %s", r.Addr(), id), func() string {
			if _, err := r.do("CLUSTER", "REPLICATE", id); err != nil {
				return err.Error()
			}
			return ""
		})
	}
	c.waitReady(tb, 30*time.Second)
	for _, r := range c.replicas {
		waitInfo(tb, r, "replication", 20*time.Second, "master_link_status:up")
	}
	return c
}

// Replicas returns the replicas started by StartClusterWithReplicas (nil for StartCluster):
// Replicas()[i] was started as the replica of Nodes()[i]. After a failover of shard i the two
// have swapped roles (see KillMaster).
func (c *Cluster) Replicas() []*Server {
	return append([]*Server(nil), c.replicas...)
}

// shardPair returns shard i's running master and the other server of its pair.
func (c *Cluster) shardPair(tb testing.TB, shard int) (master, other *Server) {
	tb.Helper()
	if c.replicas == nil || shard < 0 || shard >= len(c.nodes) {
		tb.Fatalf("redistest: shard %d: the cluster has %d shards with %d replicas (StartClusterWithReplicas)", shard, len(c.nodes), len(c.replicas))
	}
	a, b := c.nodes[shard], c.replicas[shard]
	if b.PID() != 0 && isMaster(b) {
		return b, a
	}
	if a.PID() == 0 || !isMaster(a) {
		tb.Fatalf("redistest: shard %d has no running master (%s, %s)", shard, a.Addr(), b.Addr())
	}
	return a, b
}

// KillMaster sends SIGKILL to the current master of shard i (Nodes()[i] until its first
// failover), and waits until the replica has noticed (master_link_status:down), so that the
// replica holds all it will ever receive from it. It returns the killed master and the replica,
// which the cluster promotes after cluster-node-timeout (3 s) and an election: WaitPromoted
// waits for that. The killed server stays down (Restart brings it back, as a replica of the
// promoted one). It fails tb when the cluster has no replicas or shard i has no master.
func (c *Cluster) KillMaster(tb testing.TB, shard int) (killed, replica *Server) {
	tb.Helper()
	killed, replica = c.shardPair(tb, shard)
	if replica.PID() == 0 {
		tb.Fatalf("redistest: shard %d: replica %s is not running; a kill would leave its slots without a master", shard, replica.Addr())
	}
	killed.Kill(tb)
	waitInfo(tb, replica, "replication", 10*time.Second, "master_link_status:down")
	return killed, replica
}

// WaitPromoted waits until replica is a master owning slots in the view of every running node
// of the cluster, and each of them reports cluster_state:ok. It fails tb after 30 s.
func (c *Cluster) WaitPromoted(tb testing.TB, replica *Server) {
	tb.Helper()
	addr := replica.Addr() + "@"
	poll(tb, failoverTimeout, fmt.Sprintf("cluster to promote %s", replica.Addr()), func() string {
		for _, n := range append(c.Nodes(), c.replicas...) {
			if n.PID() == 0 {
				continue
			}
			info, err := n.do("CLUSTER", "INFO")
			if err != nil {
				return fmt.Sprintf("%s: CLUSTER INFO: %v", n.Addr(), err)
			}
			if s, _ := info.(string); !strings.Contains(s, "cluster_state:ok") {
				return fmt.Sprintf("%s: cluster_state is not ok", n.Addr())
			}
			v, err := n.do("CLUSTER", "NODES")
			if err != nil {
				return fmt.Sprintf("%s: CLUSTER NODES: %v", n.Addr(), err)
			}
			nodes, _ := v.(string)
			promoted := false
			for line := range strings.Lines(nodes) {
				f := strings.Fields(line)
				// <id> <ip:port@cport> <flags> <master> <ping> <pong> <epoch> <link> <slot>...
				if len(f) > 8 && strings.HasPrefix(f[1], addr) && strings.Contains(f[2], "master") && !strings.Contains(f[2], "fail") {
					promoted = true
				}
			}
			if !promoted {
				return fmt.Sprintf("%s does not see %s as a master with slots:\n%s", n.Addr(), replica.Addr(), nodes)
			}
		}
		return ""
	})
}

// Failover runs a planned failover of shard i: CLUSTER FAILOVER on the replica of its current
// master, which waits for the replica to catch up before it takes over (no acknowledged write
// is lost), once the replica's link to its master is up, then waits as WaitPromoted does. It returns the new master. It fails tb when the
// cluster has no replicas, the replica is not running or the failover does not complete.
func (c *Cluster) Failover(tb testing.TB, shard int) *Server {
	tb.Helper()
	_, replica := c.shardPair(tb, shard)
	// A manual failover waits for the replica to reach its master's offset, and times out
	// when it cannot: a replica still syncing (it just restarted) never does.
	waitInfo(tb, replica, "replication", 20*time.Second, "master_link_status:up")
	replica.Do(tb, "CLUSTER", "FAILOVER")
	c.WaitPromoted(tb, replica)
	return replica
}

// KillMaster sends SIGKILL to the server the sentinels name as master (Master() until the
// first failover, then Replica(), and so on), and waits until the other one has noticed
// (master_link_status:down), so that it holds all it will ever receive. It returns the killed
// server and the replica the sentinels will promote after down-after-milliseconds (1 s) and an
// election: WaitFailover waits for that. The killed server stays down; Restart brings it back
// and the sentinels make it a replica of the new master. It fails tb when the sentinels name
// neither server.
func (s *Sentinel) KillMaster(tb testing.TB) (killed, replica *Server) {
	tb.Helper()
	addr, err := s.masterAddr(s.sentinels[0])
	if err != nil {
		tb.Fatalf("redistest: sentinel %s: %v", s.sentinels[0].Addr(), err)
	}
	switch addr {
	case s.master.Addr():
		killed, replica = s.master, s.replica
	case s.replica.Addr():
		killed, replica = s.replica, s.master
	default:
		tb.Fatalf("redistest: the sentinels name %s as master, neither %s nor %s", addr, s.master.Addr(), s.replica.Addr())
	}
	if replica.PID() == 0 {
		tb.Fatalf("redistest: replica %s is not running; a kill would leave no server to promote", replica.Addr())
	}
	killed.Kill(tb)
	waitInfo(tb, replica, "replication", 10*time.Second, "master_link_status:down")
	return killed, replica
}

// WaitFailover waits until every sentinel names replica as the master and replica says it is
// one (INFO replication role:master). It fails tb after 30 s.
func (s *Sentinel) WaitFailover(tb testing.TB, replica *Server) {
	tb.Helper()
	poll(tb, failoverTimeout, fmt.Sprintf("sentinels to promote %s", replica.Addr()), func() string {
		for _, sn := range s.sentinels {
			addr, err := s.masterAddr(sn)
			if err != nil {
				return fmt.Sprintf("sentinel %s: %v", sn.Addr(), err)
			}
			if addr != replica.Addr() {
				return fmt.Sprintf("sentinel %s names %s as master", sn.Addr(), addr)
			}
		}
		if !isMaster(replica) {
			return replica.Addr() + " is not a master yet"
		}
		return ""
	})
}

// masterAddr asks sentinel sn where the master is.
func (s *Sentinel) masterAddr(sn *Server) (string, error) {
	v, err := sn.do("SENTINEL", "GET-MASTER-ADDR-BY-NAME", masterName)
	if err != nil {
		return "", err
	}
	hp, ok := v.([]any)
	if !ok || len(hp) != 2 {
		return "", fmt.Errorf("SENTINEL GET-MASTER-ADDR-BY-NAME %s: unexpected reply %v", masterName, v)
	}
	return net.JoinHostPort(fmt.Sprint(hp[0]), fmt.Sprint(hp[1])), nil
}

// isMaster reports whether srv answers that it is a master.
func isMaster(srv *Server) bool {
	info, err := srv.info("replication")
	return err == nil && strings.Contains(info, "role:master\r\n")
}

// poll calls check until it returns "" and fails tb with its last answer after timeout.
func poll(tb testing.TB, timeout time.Duration, what string, check func() string) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		bad := check()
		if bad == "" {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("redistest: waiting %v for %s: %s", timeout, what, bad)
		}
		time.Sleep(50 * time.Millisecond) // polling interval
	}
}
