package tiercache_test

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache"
)

type User struct {
	ID   int
	Name string
}

// A cache without Redis: one process, L1 alone.
func ExampleTyped() {
	c, err := tiercache.New(tiercache.Options{})
	if err != nil {
		panic(err)
	}
	defer c.Close()
	ctx := context.Background()
	users := tiercache.Typed(c, tiercache.JSON[User]())

	_ = users.Set(ctx, "user:1", User{1, "Ada"})
	u, _ := users.Get(ctx, "user:1")
	fmt.Println(u.Name)

	loads := 0
	for range 3 {
		u, _ = users.GetOrLoad(ctx, "user:2", func(context.Context, string) (User, error) {
			loads++
			return User{2, "Grace"}, nil
		})
	}
	fmt.Println(u.Name, "loaded", loads, "time")
	// Output:
	// Ada
	// Grace loaded 1 time
}

// Two tiers: Redis owned by the caller, a database row version on every write.
func ExampleNew() {
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
	defer rdb.Close()
	c, err := tiercache.New(tiercache.Options{
		Redis:     rdb,
		Namespace: "enhanced-context",
		TTL:       15 * time.Minute,
		L1TTL:     5 * time.Second,
	})
	if err != nil {
		panic(err)
	}
	defer c.Close()
	ctx := context.Background()
	users := tiercache.Typed(c, tiercache.JSON[User]())
	if err := users.Set(ctx, "user:42", User{42, "Lin"}, tiercache.Version(7)); err != nil {
		fmt.Println("set:", err)
	}
	all, err := users.GetOrLoadMany(ctx, []string{"user:42", "user:43"},
		func(ctx context.Context, missing []string) (map[string]User, error) {
			return map[string]User{"user:43": {43, "Mo"}}, nil // one query for all misses
		})
	fmt.Println(len(all), err)
}
