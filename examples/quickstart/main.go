// Command quickstart shows both tiers of tiercache working: it writes and reads a typed value,
// loads a missing one once for many callers, and prints where each answer came from. With
// REDIS_URL set it uses Redis as L2; otherwise it runs on L1 alone and says so.
package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache"
)

type user struct {
	ID   int    `json:"id"`
	Name string `json:"name"`
}

func main() {
	ctx := context.Background()
	var rdb redis.UniversalClient
	if url := os.Getenv("REDIS_URL"); url != "" {
		opts, err := redis.ParseURL(url)
		if err != nil {
			log.Fatalf("quickstart: REDIS_URL: %v", err)
		}
		rdb = redis.NewClient(opts)
		defer rdb.Close()
	}
	c, err := tiercache.New(tiercache.Options{Redis: rdb, Namespace: "quickstart"})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	fmt.Println("health:", c.Health(ctx).State)

	users := tiercache.Typed(c, tiercache.JSON[user]())
	if err := users.Set(ctx, "user:1", user{1, "Ada"}); err != nil {
		log.Fatalf("quickstart: set: %v (is Redis at REDIS_URL up?)", err)
	}
	u, err := users.Get(ctx, "user:1")
	fmt.Printf("get user:1 -> %+v, err=%v\n", u, err)

	var loads int
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = users.GetOrLoad(ctx, "user:2", func(context.Context, string) (user, error) {
				mu.Lock()
				loads++
				mu.Unlock()
				time.Sleep(20 * time.Millisecond) // a slow database
				return user{2, "Grace"}, nil
			})
		}()
	}
	wg.Wait()
	fmt.Printf("50 concurrent GetOrLoad of user:2 ran the loader %d time(s)\n", loads)

	if rdb != nil {
		// A second instance on the same Redis finds the value in L2.
		other, err := tiercache.New(tiercache.Options{Redis: rdb, Namespace: "quickstart"})
		if err != nil {
			log.Fatal(err)
		}
		defer other.Close()
		u2, err := tiercache.Typed(other, tiercache.JSON[user]()).Get(ctx, "user:2")
		fmt.Printf("second instance get user:2 -> %+v, err=%v (from Redis)\n", u2, err)
	}
	s := c.Stats()
	fmt.Printf("stats: L1 hits %d, L1 misses %d, L2 hits %d, L2 misses %d, loads %d\n",
		s.L1Hits, s.L1Misses, s.L2Hits, s.L2Misses, s.Loads)
}
