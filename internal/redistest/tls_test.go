package redistest_test

import (
	"crypto/tls"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/redistest"
)

func TestTLS(t *testing.T) {
	t.Parallel()
	s := redistest.StartWith(t, redistest.Options{TLS: &redistest.TLSOptions{}})
	if s.TLSAddr() == "" || s.TLSAddr() == s.Addr() || s.Certs() == nil {
		t.Fatalf("TLSAddr() = %q, Addr() = %q, Certs() = %v: want a second port and certificates", s.TLSAddr(), s.Addr(), s.Certs())
	}
	ctx := ctxT(t)
	c := redis.NewClient(s.TLSOptions(false))
	defer c.Close()
	if err := c.Set(ctx, "k", "tls", 0).Err(); err != nil {
		t.Fatalf("Set over TLS: %v", err)
	}
	if got := s.Do(t, "GET", "k"); got != "tls" {
		t.Errorf("Do(GET k) on the plain port = %v, want tls", got)
	}
	// A client that trusts another CA refuses the server.
	other := redistest.NewCerts(t)
	bad := redis.NewClient(&redis.Options{Addr: s.TLSAddr(), MaxRetries: -1,
		TLSConfig: &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: other.CA, ServerName: "127.0.0.1"}})
	defer bad.Close()
	if err := bad.Ping(ctx).Err(); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("Ping trusting another CA = %v, want a certificate error", err)
	}
	// Plain RESP on the TLS port gets no answer.
	plain := redis.NewClient(&redis.Options{Addr: s.TLSAddr(), MaxRetries: -1})
	defer plain.Close()
	if err := plain.Ping(ctx).Err(); err == nil {
		t.Error("Ping without TLS on the TLS port succeeded")
	}
	s.Restart(t)
	if err := c.Ping(ctx).Err(); err != nil {
		t.Errorf("Ping over TLS after Restart: %v", err)
	}
}

func TestTLSAuthClients(t *testing.T) {
	t.Parallel()
	s := redistest.StartWith(t, redistest.Options{TLS: &redistest.TLSOptions{AuthClients: true}})
	ctx := ctxT(t)
	anon := redis.NewClient(&redis.Options{Addr: s.TLSAddr(), TLSConfig: s.TLSClientConfig(false), MaxRetries: -1})
	defer anon.Close()
	if err := anon.Ping(ctx).Err(); err == nil {
		t.Error("Ping without a client certificate succeeded, want the server to refuse it")
	}
	c := redis.NewClient(s.TLSOptions(true))
	defer c.Close()
	if err := c.Ping(ctx).Err(); err != nil {
		t.Errorf("Ping with the client certificate: %v", err)
	}
}

func TestSetUser(t *testing.T) {
	t.Parallel()
	s := redistest.Start(t)
	s.SetUser(t, "app", "secret", "~app:*", "-@all", "+get", "+set")
	ctx := ctxT(t)
	c := s.UserClient(t, "app", "secret")
	if err := c.Set(ctx, "app:k", "v", 0).Err(); err != nil {
		t.Fatalf("Set(app:k) as app: %v", err)
	}
	if err := c.Set(ctx, "other:k", "v", 0).Err(); err == nil || !strings.Contains(err.Error(), "NOPERM") {
		t.Errorf("Set(other:k) as app = %v, want NOPERM", err)
	}
	if err := c.Del(ctx, "app:k").Err(); err == nil || !strings.Contains(err.Error(), "NOPERM") {
		t.Errorf("Del(app:k) as app = %v, want NOPERM", err)
	}
	wrong := s.UserClient(t, "app", "wrong")
	if err := wrong.Ping(ctx).Err(); err == nil || !strings.Contains(err.Error(), "WRONGPASS") {
		t.Errorf("Ping with a wrong password = %v, want WRONGPASS", err)
	}
}

func TestClusterTLS(t *testing.T) {
	t.Parallel()
	cl := redistest.StartClusterWith(t, 3, redistest.Options{TLS: &redistest.TLSOptions{AuthClients: true}})
	nodes := cl.Nodes()
	if len(cl.TLSAddrs()) != 3 || nodes[0].Certs() != nodes[1].Certs() {
		t.Fatalf("TLSAddrs() = %v; nodes share certificates: %v", cl.TLSAddrs(), nodes[0].Certs() == nodes[1].Certs())
	}
	ctx := ctxT(t)
	c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cl.TLSAddrs(), TLSConfig: nodes[0].TLSClientConfig(true)})
	defer c.Close()
	for i := range 30 {
		k := fmt.Sprintf("key-%d", i)
		if err := c.Set(ctx, k, k, 0).Err(); err != nil {
			t.Fatalf("Set(%q) over TLS: %v", k, err)
		}
	}
	for _, n := range nodes {
		if got, _ := n.Do(t, "DBSIZE").(int64); got == 0 {
			t.Errorf("node %s: DBSIZE = 0, want some of the keys", n.Addr())
		}
	}
	// The slot map names the TLS ports: no slot points at a plain one.
	slots, err := c.ClusterSlots(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range slots {
		for _, n := range s.Nodes {
			if !slices.Contains(cl.TLSAddrs(), n.Addr) {
				t.Errorf("CLUSTER SLOTS over TLS names %s, not a TLS address %v", n.Addr, cl.TLSAddrs())
			}
		}
	}
}
