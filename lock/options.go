package lock

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/redis/go-redis/v9"
)

// Defaults for the zero fields of [Options].
const (
	DefaultPrefix        = "tiercache:lock:"
	DefaultTTL           = 10 * time.Second
	DefaultExtendEvery   = 1.0 / 3
	DefaultDrift         = 0.01
	DefaultRetryMin      = 2 * time.Millisecond
	DefaultRetryMax      = 100 * time.Millisecond
	DefaultServerTimeout = 50 * time.Millisecond

	// MinTTL is the shortest accepted [Options.TTL]: below it the safety
	// margins leave no usable validity.
	MinTTL = 10 * time.Millisecond

	// validityMargin is subtracted from every validity window on top of the
	// drift: it covers timer latency and the millisecond rounding of PX.
	validityMargin = 2 * time.Millisecond

	// fenceCounterTTL is how long the per-name token counter outlives its
	// last acquisition; after that the clock floor in the acquire script
	// keeps tokens increasing (see docs/LOCKS.md).
	fenceCounterTTL = 24 * time.Hour
)

// Options configures a [Locker]. Zero fields mean the documented defaults;
// [New] never modifies the struct it is given.
type Options struct {
	// Clients are the Redis servers. One client locks on a single Redis
	// (which may be a Sentinel or Cluster client). Three or more, an odd
	// number, run Redlock over independent servers that do not replicate to
	// each other. Two or any even number is an error. Required; the Locker
	// does not close them.
	Clients []redis.UniversalClient

	// Prefix starts every key the Locker writes. Default "tiercache:lock:".
	// It must not contain '{' or '}' (the name is the hash tag).
	Prefix string

	// TTL is the lease lifetime in Redis, renewed by the watchdog. Default
	// 10s; at least MinTTL; negative is an error. It is truncated to whole
	// milliseconds.
	TTL time.Duration

	// ExtendEvery is the fraction of TTL after which the watchdog renews a
	// lease. Default 1/3; it must leave time for an extension before the
	// validity deadline (ExtendEvery < 1 - Drift). Negative disables
	// automatic extension: the lease then ends at its validity deadline unless
	// [Lease.Extend] is called.
	ExtendEvery float64

	// MaxHold caps how long a lease may be held in total, extensions
	// included; when it passes, the lease context ends with cause ErrMaxHold
	// and no further extension is made. 0 means unlimited; negative is an
	// error.
	MaxHold time.Duration

	// Drift is the clock drift allowance as a fraction of TTL, subtracted
	// from every validity window (plus 2ms). Default 0.01; range (0, 0.5).
	Drift float64

	// RetryMin and RetryMax bound the exponential backoff (with jitter) of
	// [Locker.Lock] between attempts. Defaults 2ms and 100ms; RetryMin must
	// not exceed RetryMax.
	RetryMin, RetryMax time.Duration

	// ServerTimeout bounds each call to one server in Redlock mode, so that a
	// dead or paused server costs at most this much. Default 50ms; it must be
	// shorter than TTL. Unused with a single client, where the caller's
	// context governs.
	ServerTimeout time.Duration

	// Logger receives lease losses (Warn) and per-server Redlock failures
	// (Debug). Default: discard.
	Logger *slog.Logger
}

// config is Options after defaults and validation.
type config struct {
	clients       []redis.UniversalClient
	prefix        string
	ttl           time.Duration
	ttlMs         int64
	extendEvery   time.Duration // 0 = no auto-extension
	maxHold       time.Duration
	drift         time.Duration // Drift*TTL + validityMargin
	retryMin      time.Duration
	retryMax      time.Duration
	serverTimeout time.Duration
	quorum        int
	log           *slog.Logger
}

func invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, args...)...)
}

func (o Options) config() (config, error) {
	c := config{
		clients:       append([]redis.UniversalClient(nil), o.Clients...),
		prefix:        o.Prefix,
		ttl:           o.TTL,
		maxHold:       o.MaxHold,
		retryMin:      o.RetryMin,
		retryMax:      o.RetryMax,
		serverTimeout: o.ServerTimeout,
		log:           o.Logger,
	}
	n := len(c.clients)
	switch {
	case n == 0:
		return c, invalidf("Options.Clients is empty")
	case n > 1 && n%2 == 0:
		return c, invalidf("Redlock needs an odd number (3 or more) of independent servers, got %d clients", n)
	}
	for i, cl := range c.clients {
		if cl == nil {
			return c, invalidf("Options.Clients[%d] is nil", i)
		}
	}
	c.quorum = n/2 + 1

	if c.prefix == "" {
		c.prefix = DefaultPrefix
	}
	for _, r := range c.prefix {
		if r == '{' || r == '}' {
			return c, invalidf("Options.Prefix %q contains a hash-tag brace", c.prefix)
		}
	}

	switch {
	case c.ttl == 0:
		c.ttl = DefaultTTL
	case c.ttl < 0:
		return c, invalidf("Options.TTL %v is negative", c.ttl)
	case c.ttl < MinTTL:
		return c, invalidf("Options.TTL %v is shorter than the minimum %v", c.ttl, MinTTL)
	}
	c.ttl = c.ttl.Truncate(time.Millisecond)
	c.ttlMs = c.ttl.Milliseconds()

	drift := o.Drift
	switch {
	case drift == 0:
		drift = DefaultDrift
	case drift < 0 || drift >= 0.5:
		return c, invalidf("Options.Drift %v is outside (0, 0.5)", drift)
	}
	c.drift = time.Duration(drift*float64(c.ttl)) + validityMargin
	if c.drift >= c.ttl {
		return c, invalidf("Options.TTL %v leaves no validity after drift %v", c.ttl, c.drift)
	}

	every := o.ExtendEvery
	switch {
	case every == 0:
		every = DefaultExtendEvery
	case every < 0:
		every = 0
	}
	if every > 0 {
		c.extendEvery = time.Duration(every * float64(c.ttl))
		if c.extendEvery >= c.ttl-c.drift {
			return c, invalidf("Options.ExtendEvery %v would extend after the validity deadline (TTL %v, drift %v)", o.ExtendEvery, c.ttl, c.drift)
		}
	}

	if c.maxHold < 0 {
		return c, invalidf("Options.MaxHold %v is negative", c.maxHold)
	}

	if c.retryMin == 0 {
		c.retryMin = DefaultRetryMin
	}
	if c.retryMax == 0 {
		c.retryMax = max(DefaultRetryMax, c.retryMin)
	}
	if c.retryMin < 0 || c.retryMax < 0 || c.retryMin > c.retryMax {
		return c, invalidf("Options.RetryMin %v and RetryMax %v must be positive with RetryMin <= RetryMax", o.RetryMin, o.RetryMax)
	}

	switch {
	case c.serverTimeout == 0:
		c.serverTimeout = DefaultServerTimeout
	case c.serverTimeout < 0:
		return c, invalidf("Options.ServerTimeout %v is negative", c.serverTimeout)
	}
	if n > 1 && c.serverTimeout >= c.ttl-c.drift {
		return c, invalidf("Options.ServerTimeout %v leaves no validity within TTL %v", c.serverTimeout, c.ttl)
	}

	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	return c, nil
}
