package promcache_test

import (
	"context"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tiercache/tiercache"
	"github.com/tiercache/tiercache/promcache"
)

func Example() {
	c, err := tiercache.New(tiercache.Options{}) // L1-only; pass Options.Redis in production
	if err != nil {
		panic(err)
	}
	defer c.Close()
	reg := prometheus.NewRegistry() // the caller's registry, never the global one
	reg.MustRegister(promcache.New(c, promcache.Label("cache", "example")))

	ctx := context.Background()
	_ = c.Set(ctx, "k", []byte("v"))
	_, _ = c.Get(ctx, "k")
	n, _ := testutil.GatherAndCount(reg, "tiercache_lookups_total")
	fmt.Println("lookup series:", n)
	// Output: lookup series: 4
}
