package lock_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/tiercache/tiercache/lock"
)

func TestNewRejectsBadOptions(t *testing.T) {
	t.Parallel()
	// No server needed: New does no I/O.
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	t.Cleanup(func() { c.Close() })
	three := []redis.UniversalClient{c, c, c}
	tests := []struct {
		name string
		o    lock.Options
		want string
	}{
		{"no clients", lock.Options{}, "Clients is empty"},
		{"nil client", lock.Options{Clients: []redis.UniversalClient{nil}}, "Clients[0] is nil"},
		{"two clients", lock.Options{Clients: []redis.UniversalClient{c, c}}, "odd number"},
		{"four clients", lock.Options{Clients: []redis.UniversalClient{c, c, c, c}}, "odd number"},
		{"negative TTL", lock.Options{Clients: three[:1], TTL: -time.Second}, "TTL -1s is negative"},
		{"tiny TTL", lock.Options{Clients: three[:1], TTL: time.Nanosecond}, "shorter than the minimum"},
		{"negative drift", lock.Options{Clients: three[:1], Drift: -0.1}, "Drift"},
		{"huge drift", lock.Options{Clients: three[:1], Drift: 0.5}, "Drift"},
		{"extend too late", lock.Options{Clients: three[:1], ExtendEvery: 0.995}, "ExtendEvery"},
		{"negative MaxHold", lock.Options{Clients: three[:1], MaxHold: -1}, "MaxHold"},
		{"RetryMin > RetryMax", lock.Options{Clients: three[:1], RetryMin: time.Second, RetryMax: time.Millisecond}, "RetryMin"},
		{"negative ServerTimeout", lock.Options{Clients: three, ServerTimeout: -1}, "ServerTimeout"},
		{"ServerTimeout >= TTL", lock.Options{Clients: three, TTL: 100 * time.Millisecond, ServerTimeout: time.Second}, "ServerTimeout"},
		{"brace in prefix", lock.Options{Clients: three[:1], Prefix: "a{b}:"}, "Prefix"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, err := lock.New(tt.o)
			if l != nil || !errors.Is(err, lock.ErrInvalid) || !strings.Contains(err.Error(), tt.want) || !strings.HasPrefix(err.Error(), "lock: ") {
				t.Errorf("New() = %v, %v; want ErrInvalid mentioning %q", l, err, tt.want)
			}
		})
	}

	// Zero means default (STYLE.md): TTL 0 is the documented 10s, not an error.
	l, err := lock.New(lock.Options{Clients: three[:1]})
	if err != nil || l.TTL() != lock.DefaultTTL {
		t.Errorf("New with TTL 0: TTL() = %v, %v; want %v", l.TTL(), err, lock.DefaultTTL)
	}
}

func TestBadNames(t *testing.T) {
	t.Parallel()
	_, _, l := single(t, lock.Options{})
	ctx := context.Background()
	tests := []struct{ name, lockName, want string }{
		{"empty", "", "empty"},
		{"star", "a*b", "glob"},
		{"question", "a?b", "glob"},
		{"open bracket", "a[b", "glob"},
		{"close bracket", "a]b", "glob"},
		{"open brace", "a{b", "hash-tag"},
		{"close brace", "a}b", "hash-tag"},
		{"space", "a b", "whitespace"},
		{"tab", "a\tb", "whitespace"},
		{"newline", "a\nb", "whitespace"},
		{"NUL", "a\x00b", "control"},
		{"DEL", "a\x7fb", "control"},
		{"invalid UTF-8", "a\xffb", "UTF-8"},
		{"too long", strings.Repeat("n", lock.MaxNameLen+1), "longer than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, call := range []struct {
				op string
				fn func() error
			}{
				{"TryLock", func() error { _, err := l.TryLock(ctx, tt.lockName); return err }},
				{"Lock", func() error { _, err := l.Lock(ctx, tt.lockName); return err }},
				{"FencedSet", func() error { return l.FencedSet(ctx, tt.lockName, 1, "k", nil, 0) }},
			} {
				err := call.fn()
				if !errors.Is(err, lock.ErrInvalid) || !strings.Contains(err.Error(), tt.want) {
					t.Errorf("%s(%q) = %v, want ErrInvalid mentioning %q", call.op, tt.lockName, err, tt.want)
				}
			}
		})
	}
	// Names may hold colons, slashes, dots and non-ASCII letters.
	le, err := l.TryLock(ctx, "tenant:7/report.v2-é")
	if err != nil {
		t.Fatalf("TryLock(valid name) = %v", err)
	}
	le.Release(ctx)
}

func TestBadFencedWrites(t *testing.T) {
	t.Parallel()
	_, _, l := single(t, lock.Options{})
	ctx := context.Background()
	tests := []struct {
		name  string
		token uint64
		key   string
		ttl   time.Duration
		want  string
	}{
		{"zero token", 0, "k", 0, "token 0"},
		{"token beyond 2^53", 1<<53 + 1, "k", 0, "outside"},
		{"empty key", 1, "", 0, "empty key"},
		{"negative ttl", 1, "k", -time.Second, "negative ttl"},
		{"sub-ms ttl", 1, "k", time.Microsecond, "under 1ms"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := l.FencedSet(ctx, "res", tt.token, tt.key, []byte("v"), tt.ttl); !errors.Is(err, lock.ErrInvalid) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("FencedSet = %v, want ErrInvalid mentioning %q", err, tt.want)
			}
		})
	}
}

func TestReleaseWrongToken(t *testing.T) {
	t.Parallel()
	_, c, l := single(t, lock.Options{})
	ctx := context.Background()
	le, err := l.TryLock(ctx, "wrong")
	if err != nil {
		t.Fatal(err)
	}
	// Another owner's value replaced ours (as after an expiry and a new holder).
	c.Set(ctx, l.LockKey("wrong"), "0123456789abcdef0123456789abcdef", time.Minute)
	err = le.Release(ctx)
	if !errors.Is(err, lock.ErrNotHeld) || !strings.Contains(err.Error(), `"wrong"`) {
		t.Errorf("Release of an overwritten lease = %v, want ErrNotHeld naming the lock", err)
	}
	if got := c.Get(ctx, l.LockKey("wrong")).Val(); got != "0123456789abcdef0123456789abcdef" {
		t.Errorf("Release deleted another owner's lock: key = %q", got)
	}
}

func TestDoubleRelease(t *testing.T) {
	t.Parallel()
	_, _, l := single(t, lock.Options{})
	ctx := context.Background()
	le, err := l.TryLock(ctx, "twice")
	if err != nil {
		t.Fatal(err)
	}
	if err := le.Release(ctx); err != nil {
		t.Fatal(err)
	}
	err = le.Release(ctx)
	if !errors.Is(err, lock.ErrNotHeld) || !strings.Contains(err.Error(), `"twice" was already released`) {
		t.Errorf("second Release = %v, want ErrNotHeld saying already released", err)
	}
	if err := le.Extend(ctx); !errors.Is(err, lock.ErrNotHeld) {
		t.Errorf("Extend after Release = %v, want ErrNotHeld", err)
	}
}

func TestExtendAfterExpiry(t *testing.T) {
	t.Parallel()
	_, _, l := single(t, lock.Options{TTL: 50 * time.Millisecond, ExtendEvery: -1})
	ctx := context.Background()
	le, err := l.TryLock(ctx, "late")
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-le.Context().Done():
	case <-time.After(5 * time.Second):
		t.Fatal("lease did not expire")
	}
	err = le.Extend(ctx)
	if !errors.Is(err, lock.ErrNotHeld) || !errors.Is(err, lock.ErrExpired) || !strings.Contains(err.Error(), `"late"`) {
		t.Errorf("Extend after expiry = %v, want ErrNotHeld and ErrExpired naming the lock", err)
	}
}
