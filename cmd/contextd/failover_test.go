package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/session"
)

// TestSentinelFailoverService runs two contextd instances configured with
// REDIS_SENTINEL_MASTER and REDIS_SENTINEL_ADDRS through a kill -9 of the
// master: while the sentinels promote the replica, both keep answering
// /api/health/redis (degraded, then healthy again) and a session's context,
// which one of them cached before the kill; afterwards a change made through
// one reaches the other's context through the new master.
func TestSentinelFailoverService(t *testing.T) {
	if testing.Short() {
		t.Skip("fails a Sentinel master over")
	}
	s := redistest.StartSentinel(t)
	const key = "failover-key"
	o := instanceOptions{Sentinel: s, Namespace: "failover", Database: filepath.Join(t.TempDir(), "contextd.db"), APIKeys: map[string]string{key: "ops"}}
	a, b := startInstance(t, o), startInstance(t, o)
	for name, in := range map[string]*instance{"a": a, "b": b} {
		var h healthReport
		must(t, in.URL, req{Method: "GET", Path: "/api/health/redis"}, http.StatusOK, &h)
		if h.Status != "healthy" || !h.Redis.Connected {
			t.Fatalf("instance %s before the kill: status %q, redis %+v; want healthy, connected", name, h.Status, h.Redis)
		}
	}
	sess := createSession(t, a.URL, key, "Failover")
	chat(t, a.URL, key, sess.ID, "first")
	chat(t, a.URL, key, sess.ID, "second, see @n1")
	want := []string{"n1", "n2"}
	if got := shortIDs(getContext(t, b.URL, key, sess.ID).Nodes); !slices.Equal(got, want) {
		t.Fatalf("b's context before the kill = %v, want %v", got, want)
	}

	killed := time.Now()
	_, replica := s.KillMaster(t)
	statuses := map[string]map[string]int{"a": {}, "b": {}}
	var promotedAt, recovered time.Duration
	for {
		if time.Since(killed) > time.Minute {
			t.Fatalf("not recovered within a minute of the kill; statuses seen %v", statuses)
		}
		healthy := 0
		for name, in := range map[string]*instance{"a": a, "b": b} {
			var h healthReport
			must(t, in.URL, req{Method: "GET", Path: "/api/health/redis"}, http.StatusOK, &h)
			statuses[name][h.Status]++
			if h.Status == "healthy" && h.Redis.Connected {
				healthy++
			}
			r := do(t, in.URL, req{Method: "GET", Path: "/api/sessions/" + sess.ID + "/context", Key: key})
			var c session.Context
			if r.Status != http.StatusOK || json.Unmarshal(r.Body, &c) != nil || !slices.Equal(shortIDs(c.Nodes), want) {
				t.Fatalf("instance %s %v after the kill: context answered %d %s; want %v", name, time.Since(killed).Round(time.Millisecond), r.Status, r.Body, want)
			}
		}
		if promotedAt == 0 && strings.HasPrefix(fmt.Sprint(replica.Do(t, "ROLE")), "[master") {
			promotedAt = time.Since(killed)
		}
		if promotedAt != 0 && healthy == 2 {
			recovered = time.Since(killed)
			break
		}
		time.Sleep(20 * time.Millisecond) // polling interval
	}
	s.WaitFailover(t, replica)
	t.Logf("replica promoted %v after the kill, both instances healthy after %v; statuses seen %v",
		promotedAt.Round(time.Millisecond), recovered.Round(time.Millisecond), statuses)
	for name, seen := range statuses {
		if seen["degraded"] == 0 {
			t.Errorf("instance %s never reported degraded while the master was down: %v", name, seen)
		}
	}

	third := chat(t, a.URL, key, sess.ID, "third, after the failover")
	if third.Node.ShortID != "n3" {
		t.Fatalf("chat after the failover made %s, want n3", third.Node.ShortID)
	}
	want = append(want, "n3")
	eventually(t, "b's context to hold the node written through a after the failover", func() bool {
		return slices.Equal(shortIDs(getContext(t, b.URL, key, sess.ID).Nodes), want)
	})
	var h healthReport
	must(t, b.URL, req{Method: "GET", Path: "/api/health/redis"}, http.StatusOK, &h)
	if h.Status != "healthy" || h.Cache.L2Hits == 0 {
		t.Errorf("b after the failover: status %q, L2 hits %d; want healthy, reading Redis", h.Status, h.Cache.L2Hits)
	}
}
