package tiercache

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/lock"
	"github.com/tiercache/tiercache/redisconfig"
)

// docACLUser is the user name of the ACL SETUSER lines in docs/OPERATIONS.md.
const docACLUser = "tiercache"

// documentedACL returns the rules of the copy-paste ACL SETUSER line in docs/OPERATIONS.md for
// namespace ns (the line is written for the default namespace). The tests use exactly that line,
// so the document cannot drift from what the cache needs.
func documentedACL(tb testing.TB, ns string) []string {
	tb.Helper()
	return redistest.ACLRules(tb, "docs/OPERATIONS.md", docACLUser, "on", DefaultNamespace, ns)
}

// documentedClusterACL returns the rules the Cluster line of docs/OPERATIONS.md adds.
func documentedClusterACL(tb testing.TB) []string {
	tb.Helper()
	return redistest.ACLRules(tb, "docs/OPERATIONS.md", docACLUser, "+cluster|slots", DefaultNamespace, DefaultNamespace)
}

// without returns rules with the rules drop removed and add appended.
func without(rules []string, drop []string, add ...string) []string {
	var out []string
	for _, r := range rules {
		if !slices.Contains(drop, r) {
			out = append(out, r)
		}
	}
	return append(out, add...)
}

// newFails checks that New(o) fails with an error that mentions every string of want. A zero
// L2Timeout becomes 5 s: New's check then waits up to 100 s for Redis, so that a busy host's
// slow answers never pass for an unreachable Redis (which is no error).
func newFails(tb testing.TB, o Options, want ...string) {
	tb.Helper()
	if o.L2Timeout == 0 {
		o.L2Timeout = 5 * time.Second
	}
	c, err := New(o)
	if err == nil {
		c.Close()
		tb.Fatalf("New = nil error, want one mentioning %q", want)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			tb.Errorf("New error %q does not mention %q", err, w)
		}
	}
}

// patient gives cfg timeouts long enough for a busy host (see newFails).
func patient(cfg redisconfig.Config) redisconfig.Config {
	cfg.DialTimeout, cfg.ReadTimeout, cfg.WriteTimeout = 5*time.Second, 5*time.Second, 5*time.Second
	return cfg
}

// userClient returns a client of srv authenticated as user, with redisconfig's settings and
// patient timeouts.
func userClient(tb testing.TB, srv *redistest.Server, user, password string) redis.UniversalClient {
	tb.Helper()
	rdb, err := redisconfig.NewClient(patient(redisconfig.Config{Host: "127.0.0.1", Port: srv.Port(), Username: user, Password: password}))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { rdb.Close() })
	return rdb
}

// TestACLDocumentedUser: two caches and a Locker running as a user with exactly the documented
// rules do everything: writes, reads, batches, invalidation across instances, namespace
// invalidation, stampede leases, Clear, health, and the lock package's locks and fences.
func TestACLDocumentedUser(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	const ns = "aclapp"
	srv.SetUser(t, docACLUser, "pw", documentedACL(t, ns)...)
	opts := func() Options {
		// A long L2Timeout: an L2 error counted below is a refusal, not a busy host's timeout.
		return Options{Redis: userClient(t, srv, docACLUser, "pw"), Namespace: ns, NamespaceOf: sessionOf, L2Timeout: 10 * time.Second}
	}
	a, b := newCache(t, nil, opts()), newCache(t, nil, opts())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	if err := a.Set(ctx, "session:1:k", []byte("v1")); err != nil {
		t.Fatalf("Set: %v", err)
	}
	if got, err := b.Get(ctx, "session:1:k"); err != nil || string(got) != "v1" {
		t.Fatalf("peer Get = %q, %v, want v1", got, err)
	}
	if err := a.Set(ctx, "session:1:k", []byte("v2")); err != nil {
		t.Fatalf("Set: %v", err)
	}
	waitFor(t, "the peer to drop v1 from L1", 10*time.Second, func() bool {
		v, ok := b.Peek("session:1:k")
		return !ok || string(v) == "v2"
	})
	if err := a.SetMany(ctx, map[string][]byte{"session:2:a": []byte("a"), "session:2:b": []byte("b")}); err != nil {
		t.Fatalf("SetMany: %v", err)
	}
	got, err := b.GetMany(ctx, []string{"session:2:a", "session:2:b", "session:2:none"})
	if err != nil || string(got["session:2:a"]) != "a" || string(got["session:2:b"]) != "b" || len(got) != 2 {
		t.Fatalf("GetMany = %q, %v", got, err)
	}
	if err := a.DeleteMany(ctx, []string{"session:2:a"}); err != nil {
		t.Fatalf("DeleteMany: %v", err)
	}
	if err := a.Delete(ctx, "session:2:b"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	loads := 0
	v, err := b.GetOrLoad(ctx, "session:3:x", func(context.Context, string) ([]byte, error) { loads++; return []byte("loaded"), nil })
	if err != nil || string(v) != "loaded" || loads != 1 {
		t.Fatalf("GetOrLoad = %q, %v after %d loads", v, err, loads)
	}
	if err := b.InvalidateNamespace(ctx, "session:3"); err != nil {
		t.Fatalf("InvalidateNamespace: %v", err)
	}
	if _, err := a.Get(ctx, "session:3:x"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get after InvalidateNamespace = %v, want ErrNotFound", err)
	}
	if err := a.Set(ctx, "session:4:k", []byte("bytes")); err != nil {
		t.Fatal(err)
	}
	a.flushL1() // the next read goes to Redis
	if v, err := a.Get(ctx, "session:4:k"); err != nil || string(v) != "bytes" {
		t.Fatalf("Get from Redis = %q, %v", v, err)
	}
	if n, err := a.Clear(ctx); err != nil || n == 0 {
		t.Fatalf("Clear = %d, %v, want keys removed", n, err)
	}
	for _, c := range []*Cache{a, b} {
		if h := c.Health(ctx); h.State != StateHealthy || !h.Subscriber.Up || h.Stats.L2Errors != 0 {
			t.Errorf("Health = %s, subscriber up %v, %d L2 errors; want healthy, up, 0", h.State, h.Subscriber.Up, h.Stats.L2Errors)
		}
	}

	l, err := lock.New(lock.Options{Clients: []redis.UniversalClient{opts().Redis}, Prefix: ns + ":lock:", TTL: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	le, err := l.Lock(ctx, "job")
	if err != nil {
		t.Fatalf("Lock: %v", err)
	}
	if err := le.Extend(ctx); err != nil {
		t.Fatalf("Extend: %v", err)
	}
	if err := l.FencedSet(ctx, "job", le.Token(), l.Fence().Key("job", "data"), []byte("x"), time.Minute); err != nil {
		t.Fatalf("FencedSet: %v", err)
	}
	if seen, err := l.Fence().Seen(ctx, "job"); err != nil || seen != le.Token() {
		t.Fatalf("Seen = %d, %v, want %d", seen, err, le.Token())
	}
	if err := le.Release(ctx); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if _, err := l.TryLock(ctx, "job"); err != nil {
		t.Fatalf("TryLock after Release: %v", err)
	}
}

// TestACLMissingPermission: New fails, naming what is missing, for a user without one of the
// documented rules: a command, a command only a script runs, a command without keys, a
// subcommand, the key pattern, one key family, the channel; and for refused credentials.
func TestACLMissingPermission(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	const ns = "aclmiss"
	const probe = `"` + ns + `:{` + probeKey + `}"`
	doc := documentedACL(t, ns)
	keys, channels := "~"+ns+":*", "&"+ns+":*"
	for _, tt := range []struct {
		name     string
		rules    []string
		password string
		want     []string
	}{
		{"command", without(doc, []string{"+evalsha"}), "", []string{"may not run EVALSHA (ACL)", "NOPERM"}},
		{"script command", without(doc, []string{"+setrange"}), "", []string{"may not run SETRANGE on entry key " + probe}},
		{"command without keys", without(doc, []string{"+time"}), "", []string{"may not run TIME (ACL)"}},
		{"subcommand", without(doc, []string{"+script|load"}), "", []string{"may not run SCRIPT LOAD (ACL)"}},
		{"key pattern", without(doc, []string{keys}, "~other:*"), "", []string{"may not access entry key " + probe}},
		{"key family", without(doc, []string{keys}, "~"+ns+":{*"), "", []string{
			`may not access stampede lease key "` + ns + `:lease:{` + probeKey + `}:lock"`,
			`may not access namespace generation key "` + ns + `:gen:{` + probeKey + `}"`}},
		{"channel", without(doc, []string{channels}, "&other:*"), "", []string{
			`may not access invalidation channel "` + ns + `:invalidate"`, `may not run PUBLISH on invalidation channel "` + ns + `:invalidate"`}},
		{"subscribe", without(doc, []string{"+subscribe"}), "", []string{"may not run SUBSCRIBE (ACL)"}},
		{"credentials", doc, "wrong", []string{"did not authenticate user", "WRONGPASS"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			user := strings.ReplaceAll(tt.name, " ", "-")
			srv.SetUser(t, user, "pw", tt.rules...)
			pw := "pw"
			if tt.password != "" {
				pw = tt.password
			}
			newFails(t, Options{Redis: userClient(t, srv, user, pw), Namespace: ns, NamespaceOf: sessionOf},
				append([]string{prefix, `user "` + user + `"`}, tt.want...)...)
		})
	}
}

// TestNoAuth: a Redis that requires a password, given none, fails New (NOAUTH).
func TestNoAuth(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	rdb := userClient(t, srv, "", "")
	srv.Do(t, "ACL", "SETUSER", "default", "on", ">pw") // the harness's own connections end here
	newFails(t, Options{Redis: rdb}, `did not authenticate user "default" (wrong or missing password?)`)
}

// TestStartUnreachable: a Redis that refuses connections, or does not answer, is no permission
// problem: New succeeds and the cache starts degraded.
func TestStartUnreachable(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	addr := srv.Addr()
	srv.Kill(t)
	refused := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
	defer refused.Close()
	c, err := New(Options{Redis: refused})
	if err != nil {
		t.Fatalf("New with Redis down = %v, want a degraded start", err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Set(ctx, "k", []byte("v")); err != nil {
		t.Fatalf("Set while degraded: %v", err)
	}
	waitFor(t, "the degraded state", 10*time.Second, func() bool { return c.Health(ctx).State == StateDegraded })

	paused := redistest.Start(t)
	resume := pauseRedis(t, paused)
	c2, err := New(Options{Redis: paused.Client(t)})
	resume()
	if err != nil {
		t.Fatalf("New with Redis paused = %v, want a degraded start", err)
	}
	c2.Close()
}

// TestTLSWithACL: two caches over mutual TLS, as a user with the documented rules, keep each
// other coherent; a client that does not trust the server's certificate fails New.
func TestTLSWithACL(t *testing.T) {
	t.Parallel()
	srv := redistest.StartWith(t, redistest.Options{TLS: &redistest.TLSOptions{AuthClients: true}})
	const ns = "acltls"
	srv.SetUser(t, docACLUser, "pw", documentedACL(t, ns)...)
	certs := srv.Certs()
	cfg := redisconfig.Config{URL: "rediss://" + srv.TLSAddr(), Username: docACLUser, Password: "pw",
		TLSCAFile: certs.CAFile, TLSCertFile: certs.ClientCertFile, TLSKeyFile: certs.ClientKeyFile}
	client := func(cfg redisconfig.Config) redis.UniversalClient {
		rdb, err := redisconfig.NewClient(patient(cfg))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { rdb.Close() })
		return rdb
	}
	// A long L2Timeout: a busy host may not finish a TLS handshake within the default budget.
	a := newCache(t, nil, Options{Redis: client(cfg), Namespace: ns, L2Timeout: 10 * time.Second})
	b := newCache(t, nil, Options{Redis: client(cfg), Namespace: ns, L2Timeout: 10 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, v := range []string{"v1", "v2"} {
		if err := a.Set(ctx, "k", []byte(v)); err != nil {
			t.Fatalf("Set over TLS: %v", err)
		}
		waitFor(t, "the peer to read "+v, 10*time.Second, func() bool {
			got, err := b.Get(ctx, "k")
			return err == nil && string(got) == v
		})
	}
	if got := srv.Do(t, "EXISTS", ns+":{k}"); got != int64(1) {
		t.Errorf("EXISTS %s:{k} on the server = %v, want 1", ns, got)
	}

	untrusting := cfg
	untrusting.TLSCAFile = redistest.NewCerts(t).CAFile
	newFails(t, Options{Redis: client(untrusting), Namespace: ns}, "TLS certificate is not trusted")
}

// TestACLCluster: on a Cluster over mutual TLS (ACL users are per node) the documented rules,
// plus the Cluster line, serve two coherent caches; without the Cluster line New names what is
// missing.
func TestACLCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a cluster")
	}
	t.Parallel()
	cl := redistest.StartClusterWith(t, 3, redistest.Options{TLS: &redistest.TLSOptions{AuthClients: true}})
	certs := cl.Nodes()[0].Certs()
	const ns = "aclcluster"
	doc := documentedACL(t, ns)
	for _, n := range cl.Nodes() {
		n.SetUser(t, docACLUser, "pw", append(doc, documentedClusterACL(t)...)...)
		n.SetUser(t, "nocluster", "pw", doc...)
	}
	client := func(user string) redis.UniversalClient {
		rdb, err := redisconfig.NewClient(patient(redisconfig.Config{ClusterAddrs: cl.TLSAddrs(), Username: user, Password: "pw",
			TLS: true, TLSCAFile: certs.CAFile, TLSCertFile: certs.ClientCertFile, TLSKeyFile: certs.ClientKeyFile}))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { rdb.Close() })
		return rdb
	}
	// A long L2Timeout: the first calls make TLS handshakes to three nodes, which a busy host may
	// not finish within the default budget.
	a := newCache(t, nil, Options{Redis: client(docACLUser), Namespace: ns, NamespaceOf: sessionOf, L2Timeout: 10 * time.Second})
	b := newCache(t, nil, Options{Redis: client(docACLUser), Namespace: ns, NamespaceOf: sessionOf, L2Timeout: 10 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	items := map[string][]byte{}
	var keys []string
	for i := range 20 {
		k := "session:" + string(rune('a'+i%4)) + ":" + string(rune('a'+i))
		items[k] = []byte(k)
		keys = append(keys, k)
	}
	if err := a.SetMany(ctx, items); err != nil {
		t.Fatalf("SetMany: %v", err)
	}
	got, err := b.GetMany(ctx, keys)
	if err != nil || len(got) != len(keys) {
		t.Fatalf("GetMany = %d values, %v; want %d", len(got), err, len(keys))
	}
	if err := a.Set(ctx, keys[0], []byte("new")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the peer to read the new value", 10*time.Second, func() bool {
		v, err := b.Get(ctx, keys[0])
		return err == nil && string(v) == "new"
	})
	if err := b.InvalidateNamespace(ctx, "session:b"); err != nil {
		t.Fatalf("InvalidateNamespace: %v", err)
	}
	if n, err := a.Clear(ctx); err != nil || n == 0 {
		t.Fatalf("Clear = %d, %v", n, err)
	}
	newFails(t, Options{Redis: client("nocluster"), Namespace: ns}, `may not run CLUSTER SLOTS`)
}

// TestProbeScript drives lua/probe.lua directly: it reports the indices of the commands the
// user may not run, runs none of them, and fails on an unknown command.
func TestProbeScript(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	srv.SetUser(t, "p", "pw", "~p:*", "-@all", "+evalsha", "+eval", "+get")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	checks := []any{"GET\np:x", "SET\np:x\nv", "GET\nother:x", "PING", "GET\np:y"}
	for _, tt := range []struct {
		name string
		rdb  redis.UniversalClient
		want []int64
	}{
		{"default user", srv.Client(t), []int64{}},
		{"limited user", srv.UserClient(t, "p", "pw"), []int64{2, 3, 4}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := probeScript.Run(ctx, tt.rdb, []string{"p:x"}, checks...).Int64Slice()
			if err != nil || !slices.Equal(got, tt.want) {
				t.Errorf("probe %q = %v, %v; want %v", checks, got, err, tt.want)
			}
		})
	}
	if got := srv.Do(t, "EXISTS", "p:x"); got != int64(0) {
		t.Errorf("EXISTS p:x after the probe = %v, want 0: it must not run SET", got)
	}
	if err := probeScript.Run(ctx, srv.Client(t), []string{"p:x"}, "NOSUCHCOMMAND\nx").Err(); err == nil {
		t.Error("probe of an unknown command = nil error")
	}
}
