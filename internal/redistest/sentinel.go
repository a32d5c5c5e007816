package redistest

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// masterName is the name the sentinels monitor the master under.
const masterName = "mymaster"

// Sentinel is one master, one replica and three sentinels (quorum 2,
// down-after-milliseconds 1000, failover-timeout 5000), started by
// StartSentinel.
type Sentinel struct {
	master    *Server
	replica   *Server
	sentinels []*Server
}

// StartSentinel starts a master, a replica of it and three sentinels
// monitoring it, and waits until the replica is in sync and every sentinel
// knows the replica and the two other sentinels. All processes are killed
// in tb.Cleanup. It fails tb when the setup does not become ready in time
// and skips it like Start when redis-server is missing.
func StartSentinel(tb testing.TB) *Sentinel {
	tb.Helper()
	s := &Sentinel{master: Start(tb)}
	s.replica = StartWith(tb, Options{Args: []string{"--replicaof", "127.0.0.1", strconv.Itoa(s.master.Port())}})
	waitInfo(tb, s.replica, "replication", 15*time.Second, "master_link_status:up")
	for i := 0; i < 3; i++ {
		s.sentinels = append(s.sentinels, startServer(tb, Options{}, kindSentinel, s.master.Port()))
	}
	want := fmt.Sprintf("name=%s,status=ok,address=%s,slaves=1,sentinels=3", masterName, s.master.Addr())
	for _, sn := range s.sentinels {
		waitInfo(tb, sn, "sentinel", 20*time.Second, want)
	}
	return s
}

// waitInfo polls INFO section on srv until it contains every string in want.
func waitInfo(tb testing.TB, srv *Server, section string, timeout time.Duration, want ...string) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		info, err := srv.info(section)
		missing := ""
		if err != nil {
			missing = err.Error()
		} else {
			for _, w := range want {
				if !strings.Contains(info, w) {
					missing = w
					break
				}
			}
		}
		if missing == "" {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("redistest: %s: INFO %s lacks %q after %v:\n%s", srv.Addr(), section, missing, timeout, info)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// MasterName returns the name the sentinels monitor the master under.
func (s *Sentinel) MasterName() string { return masterName }

// SentinelAddrs returns the TCP addresses of the three sentinels.
func (s *Sentinel) SentinelAddrs() []string {
	a := make([]string, len(s.sentinels))
	for i, n := range s.sentinels {
		a[i] = n.Addr()
	}
	return a
}

// Sentinels returns the three sentinel processes.
func (s *Sentinel) Sentinels() []*Server {
	return append([]*Server(nil), s.sentinels...)
}

// Master returns the server that was master at start; after a failover it
// may no longer be the master.
func (s *Sentinel) Master() *Server { return s.master }

// Replica returns the server that was the replica at start; after a
// failover it is usually the new master.
func (s *Sentinel) Replica() *Server { return s.replica }

// Client returns a new go-redis failover client (redis.NewFailoverClient)
// that finds the master through the sentinels, closed in tb.Cleanup.
func (s *Sentinel) Client(tb testing.TB) *redis.Client {
	tb.Helper()
	c := redis.NewFailoverClient(&redis.FailoverOptions{
		MasterName:    masterName,
		SentinelAddrs: s.SentinelAddrs(),
	})
	tb.Cleanup(func() { c.Close() })
	return c
}
