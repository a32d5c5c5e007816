package tiercache

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/tiercache/tiercache/internal/faultproxy"
	"github.com/tiercache/tiercache/internal/redistest"
)

// TestCluster runs the core operations and invalidation against a 3-master Redis Cluster: every
// script must touch one slot, batches must work across slots.
func TestCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a cluster")
	}
	cl := redistest.StartCluster(t, 3)
	ctx := context.Background()
	newC := func() *Cache {
		c, err := New(Options{Redis: cl.Client(t), NamespaceOf: sessionOf})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		waitFor(t, "subscribed", 10*time.Second, c.bp.up.Load)
		return c
	}
	a, b := newC(), newC()
	items := map[string][]byte{}
	keys := []string{}
	for i := range 50 {
		k := fmt.Sprintf("session:%d:k{%d}", i%5, i) // braces in user keys are escaped
		items[k] = []byte(fmt.Sprint("v", i))
		keys = append(keys, k)
	}
	if err := a.SetMany(ctx, items); err != nil {
		t.Fatal(err)
	}
	got, err := b.GetMany(ctx, keys)
	if err != nil || len(got) != 50 {
		t.Fatalf("GetMany across slots = %d values, %v", len(got), err)
	}
	if err := a.Set(ctx, keys[0], []byte("new")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "b to drop the old value", 2*time.Second, func() bool { _, ok := b.Peek(keys[0]); return !ok })
	if v, err := b.Get(ctx, keys[0]); err != nil || string(v) != "new" {
		t.Fatalf("b.Get = %q, %v", v, err)
	}
	if err := a.Delete(ctx, keys[1]); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Get(ctx, keys[1], SkipL1()); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get after Delete = %v", err)
	}
	loads := 0
	v, err := b.GetOrLoad(ctx, "fresh", func(context.Context, string) ([]byte, error) { loads++; return []byte("L"), nil })
	if err != nil || string(v) != "L" || loads != 1 {
		t.Fatalf("GetOrLoad = %q, %v, %d loads", v, err, loads)
	}
	if err := a.InvalidateNamespace(ctx, "session:2"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Get(ctx, "session:2:k{2}", SkipL1()); !errors.Is(err, ErrNotFound) {
		t.Fatalf("the invalidating instance's Get after InvalidateNamespace = %v", err)
	}
	// The peer learns the new generation from the namespace's message.
	waitFor(t, "b to see the namespace invalidated", 2*time.Second, func() bool {
		_, err := b.Get(ctx, "session:2:k{2}", SkipL1())
		return errors.Is(err, ErrNotFound)
	})
	n, err := a.Clear(ctx)
	if err != nil || n == 0 {
		t.Fatalf("Clear = %d, %v", n, err)
	}
	if got, err := b.GetMany(ctx, keys, SkipL1()); err != nil || len(got) != 0 {
		t.Fatalf("GetMany after Clear = %d values, %v", len(got), err)
	}
}

// clusterClientVia returns a cluster client whose connections to node go through a fault proxy
// (the proxy is returned), and to every other node directly, closed at cleanup.
func clusterClientVia(t *testing.T, cl *redistest.Cluster, node *redistest.Server) (*redis.ClusterClient, *faultproxy.Proxy) {
	t.Helper()
	p := faultproxy.New(t, node.Addr())
	var d net.Dialer
	cc := redis.NewClusterClient(&redis.ClusterOptions{
		Addrs: cl.Addrs(),
		Dialer: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if addr == node.Addr() {
				addr = p.Addr()
			}
			return d.DialContext(ctx, network, addr)
		},
	})
	t.Cleanup(func() { cc.Close() })
	return cc, p
}

// nodeOf returns the node of cl whose slots hold Redis key rk.
func nodeOf(t *testing.T, cl *redistest.Cluster, rk string) *redistest.Server {
	t.Helper()
	nodes := cl.Nodes()
	slot, ok := nodes[0].Do(t, "CLUSTER", "KEYSLOT", rk).(int64)
	if !ok {
		t.Fatalf("CLUSTER KEYSLOT %q: not an integer", rk)
	}
	return nodes[int(slot)*len(nodes)/16384] // node i owns the i-th equal share (StartCluster)
}

// TestClusterBatchInvalidationFollowsItsWrites: on Cluster a batch's writes run per node, in
// parallel, and the batch's one invalidation must not reach a peer before every write ran, or the
// peer refills the old value from a node whose write is late and serves it for its whole L1
// lifetime. A proxy delays the writer's connections to one node while the peer reads that
// node's key directly in a loop. (Before: the invalidation went out in the same pipeline, to
// whichever node, and overtook the delayed write two rounds in three.)
func TestClusterBatchInvalidationFollowsItsWrites(t *testing.T) {
	cl := redistest.ParallelCluster(t, 3)
	ctx := context.Background()
	// Keys on every node, so the batch's pipeline spans them all.
	var keys []string
	owner := map[*redistest.Server]string{}
	probe := &Cache{cfg: config{Options: Options{Namespace: DefaultNamespace}}}
	for i := 0; len(owner) < 3; i++ {
		k := fmt.Sprintf("k%d", i)
		n := nodeOf(t, cl, probe.redisKey(k))
		if _, ok := owner[n]; !ok {
			owner[n] = k
			keys = append(keys, k)
		}
	}
	slow := cl.Nodes()[0]
	late := owner[slow]
	wc, proxy := clusterClientVia(t, cl, slow)
	open := func(rdb redis.UniversalClient) *Cache {
		c := newCache(t, nil, Options{Redis: rdb, Logger: quietLogger(), L1TTL: time.Minute})
		waitFor(t, "subscribed", slack(10*time.Second), c.bp.up.Load)
		return c
	}
	a, b := open(wc), open(cl.Client(t))

	for round := range 4 {
		old, next := fmt.Sprint("v", round), fmt.Sprint("v", round+1)
		if round == 0 {
			items := map[string][]byte{}
			for _, k := range keys {
				items[k] = []byte(old)
			}
			if err := a.SetMany(ctx, items); err != nil {
				t.Fatal(err)
			}
		}
		waitFor(t, "the peer to serve "+old, slack(5*time.Second), func() bool {
			v, err := b.Get(ctx, late)
			return err == nil && string(v) == old
		})
		// The peer reads the late key over and over while the batch runs: any invalidation that
		// arrives before the late write ran is followed by a refill of the old value.
		stop := make(chan struct{})
		var readers sync.WaitGroup
		readers.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
					_, _ = b.Get(ctx, late)
				}
			}
		})
		proxy.SetDelay(300 * time.Millisecond)
		items := map[string][]byte{}
		for _, k := range keys {
			items[k] = []byte(next)
		}
		err := a.SetMany(ctx, items)
		proxy.SetDelay(0)
		close(stop)
		readers.Wait()
		if err != nil {
			t.Fatalf("round %d: SetMany: %v", round, err)
		}
		// The batch's invalidation follows every write, so the peer drops whatever it refilled
		// before it; with it ahead of the late write, the peer keeps the old value a minute.
		waitFor(t, fmt.Sprintf("round %d: the peer to serve %s for %s (on the delayed node)", round, next, late), slack(5*time.Second), func() bool {
			v, err := b.Get(ctx, late)
			return err == nil && string(v) == next
		})
	}
}

// TestClusterGetManyFailsWhenANodeFails: a batch read across nodes of which one is down fails,
// rather than reporting that node's keys as absent, with plain reads and with revalidations.
// (Before: the pipeline's first error was another key's redis.Nil, so GetMany returned the other
// nodes' values and no error.)
func TestClusterGetManyFailsWhenANodeFails(t *testing.T) {
	cl := redistest.ParallelCluster(t, 3)
	ctx := context.Background()
	down := cl.Nodes()[1]
	clock := newFakeClock()
	c := newCache(t, nil, Options{Redis: cl.Client(t), Logger: quietLogger(), Clock: clock})
	// Subscribed first: entries that land before are kept briefly and not for revalidation, and
	// the subscription's start flushes L1.
	waitFor(t, "subscribed", slack(10*time.Second), c.bp.up.Load)
	items := map[string][]byte{}
	var keys []string
	nodes := map[*redistest.Server]bool{}
	for i := range 30 {
		k := fmt.Sprintf("k%d", i)
		items[k], keys = []byte(k), append(keys, k)
		nodes[nodeOf(t, cl, c.redisKey(k))] = true
	}
	if len(nodes) != 3 {
		t.Fatalf("the keys span %d nodes, want 3", len(nodes))
	}
	// A miss first, on a node that answers: Exec reports the first command's error, redis.Nil.
	absent := "absent"
	for nodeOf(t, cl, c.redisKey(absent)) == down {
		absent += "!"
	}
	keys = append([]string{absent}, keys...)
	if err := c.SetMany(ctx, items); err != nil {
		t.Fatal(err)
	}
	if got, err := c.GetMany(ctx, keys, SkipL1()); err != nil || len(got) != len(items) {
		t.Fatalf("GetMany with every node up = %d values, %v; want %d", len(got), err, len(items))
	}
	clock.Advance(DefaultL1TTL + time.Second) // L1's entries now revalidate, by script
	// (L1 may have refused a few of SetMany's landings, a ticket's stripe being bumped meanwhile:
	// those are read whole.)
	if got, err := c.GetMany(ctx, keys); err != nil || len(got) != len(items) || c.Stats().Revalidated == 0 {
		t.Fatalf("GetMany revalidating with every node up = %d values, %v, %d revalidated; want %d values, revalidated", len(got), err, c.Stats().Revalidated, len(items))
	}
	down.Kill(t)
	if got, err := c.GetMany(ctx, keys, SkipL1()); err == nil {
		t.Errorf("GetMany with a node down = %d values, no error; want an error", len(got))
	}
	clock.Advance(DefaultL1TTL + time.Second)
	if got, err := c.GetMany(ctx, keys); err == nil {
		t.Errorf("GetMany revalidating with a node down = %d values, no error; want an error", len(got))
	}
}
