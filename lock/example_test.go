package lock_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/tiercache/tiercache/lock"
)

// A job that must run on one instance at a time, and whose result must not be
// overwritten by a former holder that was paused past its lease.
func Example() {
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
	defer rdb.Close()
	locker, err := lock.New(lock.Options{Clients: []redis.UniversalClient{rdb}, TTL: 10 * time.Second})
	if err != nil {
		log.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	lease, err := locker.Lock(ctx, "report:2024-06")
	if err != nil {
		log.Fatal(err) // wraps ErrNotLocked or ErrQuorum, and ctx's error
	}
	defer lease.Release(context.Background())

	result := []byte("...")                       // work under lease.Context()
	if err := lease.Context().Err(); err != nil { // the lease was lost: stop
		log.Print(context.Cause(lease.Context()))
		return
	}
	key := locker.Fence().Key("report:2024-06", "result")
	err = locker.FencedSet(ctx, "report:2024-06", lease.Token(), key, result, time.Hour)
	if err != nil {
		log.Print(err) // ErrFenced: a newer holder has written; ours is dropped
	}
}

// Redlock over three independent servers.
func ExampleNew_redlock() {
	var clients []redis.UniversalClient
	for _, addr := range []string{"127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"} {
		clients = append(clients, redis.NewClient(&redis.Options{Addr: addr}))
	}
	locker, err := lock.New(lock.Options{Clients: clients, ServerTimeout: 50 * time.Millisecond})
	if err != nil {
		log.Fatal(err)
	}
	err = locker.WithLock(context.Background(), "nightly", func(ctx context.Context, token uint64) error {
		fmt.Println("running with token", token)
		return nil
	})
	if err != nil {
		log.Print(err)
	}
}
