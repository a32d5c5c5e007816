package redistest

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// clusterSlots is the number of hash slots in a Redis cluster.
const clusterSlots = 16384

// Cluster is a Redis cluster of masters, without replicas (StartCluster) or with one per
// master (StartClusterWithReplicas, failover.go).
type Cluster struct {
	nodes    []*Server
	replicas []*Server // replicas[i] replicates nodes[i]; nil without replicas
}

// StartCluster starts masters (at least 3) cluster-enabled redis-server
// processes, splits the hash slots evenly between them (CLUSTER
// ADDSLOTSRANGE), joins them (CLUSTER MEET) and waits until every node
// reports cluster_state:ok, knows every node and sees all slots assigned.
// The nodes are killed in tb.Cleanup. It fails tb when masters < 3 or the
// cluster does not form in time, and skips it like Start when redis-server
// is missing.
func StartCluster(tb testing.TB, masters int) *Cluster {
	tb.Helper()
	return StartClusterWith(tb, masters, Options{})
}

// StartClusterWith is StartCluster with every node configured by o. With o.TLS the nodes share
// one set of certificates (o.TLS.Certs, or fresh ones), speak TLS on the cluster bus too
// (tls-cluster yes) and announce their TLS ports to clients (see TLSAddrs); the plain ports stay
// open for the harness.
func StartClusterWith(tb testing.TB, masters int, o Options) *Cluster {
	tb.Helper()
	if masters < 3 {
		tb.Fatalf("redistest: StartCluster(%d): need at least 3 masters", masters)
	}
	if o.TLS != nil && o.TLS.Certs == nil {
		t := *o.TLS
		t.Certs = NewCerts(tb)
		o.TLS = &t
	}
	c := &Cluster{nodes: make([]*Server, masters)}
	for i := range c.nodes {
		c.nodes[i] = startServer(tb, o, kindCluster, 0)
	}
	c.assignSlots(tb)
	for _, n := range c.nodes[1:] {
		c.nodes[0].Do(tb, "CLUSTER", "MEET", "127.0.0.1", n.Port(), n.BusPort())
	}
	c.waitReady(tb, 20*time.Second)
	return c
}

// assignSlots splits the hash slots evenly between the masters: node i gets the i-th share.
func (c *Cluster) assignSlots(tb testing.TB) {
	tb.Helper()
	per := clusterSlots / len(c.nodes)
	for i, n := range c.nodes {
		lo, hi := i*per, (i+1)*per-1
		if i == len(c.nodes)-1 {
			hi = clusterSlots - 1
		}
		n.Do(tb, "CLUSTER", "ADDSLOTSRANGE", lo, hi)
	}
}

// waitReady polls CLUSTER INFO on every node until the cluster is formed.
func (c *Cluster) waitReady(tb testing.TB, timeout time.Duration) {
	tb.Helper()
	want := []string{
		"cluster_state:ok",
		fmt.Sprintf("cluster_slots_assigned:%d", clusterSlots),
		fmt.Sprintf("cluster_slots_ok:%d", clusterSlots),
		fmt.Sprintf("cluster_known_nodes:%d", len(c.nodes)+len(c.replicas)),
	}
	deadline := time.Now().Add(timeout)
	for {
		var bad string
		for _, n := range c.nodes {
			v, err := n.do("CLUSTER", "INFO")
			if err != nil {
				bad = fmt.Sprintf("%s: CLUSTER INFO: %v", n.Addr(), err)
				break
			}
			info, _ := v.(string)
			for _, w := range want {
				if !strings.Contains(info, w+"\r\n") && !strings.HasSuffix(strings.TrimSpace(info), w) {
					bad = fmt.Sprintf("%s: CLUSTER INFO lacks %q:\n%s", n.Addr(), w, info)
					break
				}
			}
			if bad != "" {
				break
			}
		}
		if bad == "" {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("redistest: cluster not ready after %v: %s", timeout, bad)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Addrs returns the TCP addresses of all nodes.
func (c *Cluster) Addrs() []string {
	a := make([]string, len(c.nodes))
	for i, n := range c.nodes {
		a[i] = n.Addr()
	}
	return a
}

// TLSAddrs returns the TLS addresses of all nodes, nil when the cluster was started without
// Options.TLS.
func (c *Cluster) TLSAddrs() []string {
	if c.nodes[0].TLSAddr() == "" {
		return nil
	}
	a := make([]string, len(c.nodes))
	for i, n := range c.nodes {
		a[i] = n.TLSAddr()
	}
	return a
}

// Nodes returns the nodes; node i owns the i-th equal share of the slots.
func (c *Cluster) Nodes() []*Server {
	return append([]*Server(nil), c.nodes...)
}

// Client returns a new go-redis cluster client seeded with all node
// addresses, closed in tb.Cleanup.
func (c *Cluster) Client(tb testing.TB) *redis.ClusterClient {
	tb.Helper()
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs()})
	tb.Cleanup(func() { cc.Close() })
	return cc
}

// ParallelCluster is StartCluster for a test that runs in parallel with others: it skips t
// under -short (a cluster takes seconds to form) and marks it parallel first.
func ParallelCluster(t *testing.T, masters int) *Cluster {
	t.Helper()
	if testing.Short() {
		t.Skip("starts a cluster")
	}
	t.Parallel()
	return StartCluster(t, masters)
}
