package lock

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// maxToken is the largest token a fenced write accepts: the scripts compare
// tokens as Lua numbers (doubles), exact up to 2^53.
const maxToken = 1 << 53

// A Fence applies writes to Redis only on behalf of the newest lock holder:
// each write carries the writer's fencing token ([Lease.Token]) and is refused
// if a larger token was already seen for the same resource. This keeps a
// former holder that was paused past its lease (GC, SIGSTOP, a slow network)
// from overwriting its successor's data.
//
// The highest token seen for resource is kept under the key
// Prefix + "{" + resource + "}:seen", with no expiry. In Redis Cluster the
// data key must hash to the same slot: build it with [Fence.Key], or give it
// the hash tag {resource} yourself. A Fence is safe for concurrent use.
type Fence struct {
	rdb    redis.UniversalClient
	prefix string
}

// NewFence returns a Fence writing through rdb with the given key prefix (""
// means DefaultPrefix). Use it when the protected data lives in a Redis other
// than the lock's. It panics if rdb is nil or prefix contains a brace, both
// programmer errors.
func NewFence(rdb redis.UniversalClient, prefix string) *Fence {
	if rdb == nil {
		panic("lock: NewFence with a nil client")
	}
	if prefix == "" {
		prefix = DefaultPrefix
	}
	for _, r := range prefix {
		if r == '{' || r == '}' {
			panic(fmt.Sprintf("lock: NewFence prefix %q contains a hash-tag brace", prefix))
		}
	}
	return &Fence{rdb: rdb, prefix: prefix}
}

// Key returns a data key in the same hash slot as resource's token record,
// Prefix + "{" + resource + "}:data:" + suffix, for use with [Fence.Set].
func (f *Fence) Key(resource, suffix string) string {
	return f.prefix + "{" + resource + "}:data:" + suffix
}

func (f *Fence) seenKey(resource string) string { return f.prefix + "{" + resource + "}:seen" }

// Set writes value under key (with expiry ttl; 0 means none) in one atomic
// script, only if token is at least the highest token seen for resource, and
// then records token as the highest. Equal tokens pass, so a holder may write
// many times. A refused write returns an error wrapping [ErrFenced] that names
// both tokens; the writer has been superseded and must stop. Bad input (an
// invalid resource name, a zero or too large token, an empty key, a negative
// ttl) wraps [ErrInvalid]. The write is idempotent, so go-redis's retries are
// safe.
func (f *Fence) Set(ctx context.Context, resource string, token uint64, key string, value []byte, ttl time.Duration) error {
	if err := checkName("resource", resource); err != nil {
		return err
	}
	switch {
	case token == 0 || token > maxToken:
		return invalidf("fencing token %d for %q is outside [1, 2^53]", token, resource)
	case key == "":
		return invalidf("empty key for fenced write on %q", resource)
	case ttl < 0:
		return invalidf("negative ttl %v for fenced write of %q", ttl, key)
	case ttl > 0 && ttl < time.Millisecond:
		return invalidf("ttl %v for fenced write of %q is under 1ms", ttl, key)
	}
	res, err := fencedSetScript.Run(ctx, f.rdb, []string{f.seenKey(resource), key},
		strconv.FormatUint(token, 10), value, ttl.Milliseconds()).Result()
	if err != nil {
		return fmt.Errorf("lock: fenced write of %q for %q: %w", key, resource, err)
	}
	switch v := res.(type) {
	case int64:
		return nil
	case string:
		return fmt.Errorf("%w: resource %q: token %d is older than token %s already seen; %q not written",
			ErrFenced, resource, token, v, key)
	default:
		return fmt.Errorf("lock: fenced write of %q for %q: unexpected reply %T", key, resource, res)
	}
}

// Seen returns the highest token seen by fenced writes for resource, or 0 if
// none.
func (f *Fence) Seen(ctx context.Context, resource string) (uint64, error) {
	if err := checkName("resource", resource); err != nil {
		return 0, err
	}
	s, err := f.rdb.Get(ctx, f.seenKey(resource)).Result()
	if errors.Is(err, redis.Nil) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("lock: read fence of %q: %w", resource, err)
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("lock: fence of %q holds %q: %w", resource, s, err)
	}
	return n, nil
}
