package tiercache

import (
	"log/slog"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/tiercache/tiercache/internal/testhook"
	"github.com/tiercache/tiercache/internal/wire"
)

// Defaults applied by [New] to zero fields of [Options].
const (
	DefaultNamespace            = "enhanced-context"
	DefaultTTL                  = 15 * time.Minute
	DefaultL1TTL                = 5 * time.Second
	DefaultL1MaxBytes           = 64 << 20
	DefaultTombstoneTTL         = 10 * time.Second
	DefaultCompressionThreshold = 1024
	DefaultJitter               = 0.1
	DefaultLoadTimeout          = 10 * time.Second
	DefaultMaxKeyLen            = 512
	DefaultMaxValueLen          = 8 << 20
	DefaultMaxDecodedLen        = 32 << 20
	DefaultHeartbeat            = 200 * time.Millisecond
	DefaultUnsubscribedL1TTL    = 250 * time.Millisecond
	DefaultL2Timeout            = 50 * time.Millisecond
	DefaultBreakerFailures      = 5
	DefaultBreakerOpenFor       = 250 * time.Millisecond
	DefaultBreakerWindow        = 250 * time.Millisecond
	DefaultMaxPendingWrites     = 10000
	DefaultFailSafeMaxAge       = 5 * time.Minute
	DefaultLeaseTTL             = 5 * time.Second
	DefaultLeaseWait            = time.Second
)

// Compression selects how large values are compressed before they go to Redis.
type Compression uint8

const (
	// CompressZstd is the default: best ratio for text-like values.
	CompressZstd Compression = iota
	// CompressS2 trades ratio for speed.
	CompressS2
	// CompressOff stores every value raw.
	CompressOff
)

// Options configure a [Cache]. The zero value of every field means its documented default;
// [New] never modifies the Options it is given.
type Options struct {
	// Redis is the L2 client, owned by the caller (single, Sentinel or Cluster). Nil runs the cache
	// in L1-only mode: one process, entries live for TTL in L1, nothing is shared.
	Redis redis.UniversalClient

	// Namespace prefixes every Redis key and channel. Default "enhanced-context". It may not contain
	// braces, whitespace or glob characters.
	Namespace string

	// TTL is the lifetime of an entry in Redis. Default 15 min; at least 1 ms.
	TTL time.Duration
	// L1TTL bounds how long an entry is served from process memory without asking Redis; it bounds
	// staleness when invalidation messages cannot arrive. Default 5 s; at least 1 ms and at most TTL.
	// In L1-only mode entries live for TTL instead.
	L1TTL time.Duration
	// NoRevalidate turns revalidation off. By default, once an entry's L1TTL has ended L1 keeps
	// it, unserved, until its TTL ends, and the next read asks Redis whether the entry still has
	// the version L1 holds (one script call whose reply is the 30-byte header): if so, L1's copy
	// is served again for another L1TTL, and the value is neither transferred nor decoded; if
	// not, the reply is the new value. The staleness bounds are those of a whole read.
	NoRevalidate bool
	// Jitter spreads expirations: each TTL is shortened by a random fraction up to Jitter.
	// Default 0.1; range [0, 0.5]. Set NoJitter to turn it off.
	Jitter   float64
	NoJitter bool
	// TombstoneTTL is how long a delete is remembered in Redis so that a late fill carrying an
	// older version is refused. Default 10 s.
	TombstoneTTL time.Duration

	// L1MaxBytes bounds L1 memory: entries are weighted by key and value size plus a fixed
	// per-entry overhead. Default 64 MiB; a negative value disables L1.
	L1MaxBytes int64
	// L1MaxEntries additionally bounds the number of L1 entries when positive. Default: no bound
	// beyond L1MaxBytes.
	L1MaxEntries int

	// Compression picks the codec for values at or above CompressionThreshold bytes.
	// Default zstd. A value is stored raw when compressing does not shrink it.
	Compression Compression
	// CompressionThreshold is the smallest encoded value that is compressed. Default 1 KiB.
	CompressionThreshold int

	// MaxKeyLen, MaxValueLen and MaxDecodedLen bound keys, stored values and decompressed
	// values. Defaults 512 B, 8 MiB and 32 MiB. Writes beyond them fail with [ErrTooLarge];
	// reads beyond them are treated as corrupt.
	MaxKeyLen     int
	MaxValueLen   int
	MaxDecodedLen int

	// LoadTimeout bounds every loader call made by GetOrLoad and GetOrLoadMany. Default 10 s.
	LoadTimeout time.Duration

	// CoalesceWindow, when positive, sends the invalidations of single writes made within this
	// window as one message instead of one per write (published from inside each write's
	// script). Fewer messages, at the price of up to one window more propagation delay, and of
	// a write whose process dies within the window reaching peers' L1 only at L1TTL. Default 0
	// (off); at most 100 ms.
	CoalesceWindow time.Duration
	// ShardedPubSub, on a Redis Cluster (a *redis.ClusterClient), publishes each write's
	// invalidation with SPUBLISH on a channel of the written key's hash slot, and subscribes to
	// those channels on every master, following the slot map: each master then carries the
	// messages of its own keys instead of every message of the namespace. Batch, flush and
	// namespace messages stay on the classic channel. Needs Redis 7 and, with ACLs, SPUBLISH and
	// SSUBSCRIBE. Default off; New refuses it on a client that is not a Cluster client.
	// docs/CONSISTENCY.md, "The invalidation backplane", says what it changes.
	ShardedPubSub bool
	// Heartbeat is how long the invalidation subscriber waits in silence before it pings Redis;
	// an unanswered ping for two heartbeats counts as a lost subscription. Default 200 ms.
	Heartbeat time.Duration
	// UnsubscribedL1TTL bounds the L1 lifetime of entries stored while the invalidation
	// subscriber is down, so staleness stays bounded while no invalidation can arrive. Default
	// 250 ms; negative bypasses L1 entirely until the subscriber is back.
	UnsubscribedL1TTL time.Duration

	// NamespaceOf maps a key to its namespace ("" for none), for InvalidateNamespace; for
	// example everything before the second ':'. It must be fast and always give the same answer
	// for a key. Default nil: InvalidateNamespace is unavailable.
	NamespaceOf func(key string) string

	// L2Timeout is the time budget of every Redis call; no call waits longer for Redis. Default
	// 50 ms.
	L2Timeout time.Duration
	// BreakerFailures consecutive Redis failures that span at least BreakerWindow (from the
	// start of the first to the end of the last), confirmed by a PING that Redis does not answer
	// within max(1 s, 20 x L2Timeout), open the circuit breaker, which then refuses L2 calls for
	// BreakerOpenFor before one trial call. Defaults 5, 250 ms and 250 ms; a negative
	// BreakerWindow starts the probe on the count alone. Only failures Redis is to blame for
	// count: a call whose caller cancelled, or whose caller's deadline was earlier than its L2
	// budget, does not. Window and probe keep a busy host (goroutines, or Redis, not scheduled
	// in time fail every call in flight at once) from opening the breaker; see
	// docs/OPERATIONS.md for the measurements behind the defaults.
	BreakerFailures int
	BreakerOpenFor  time.Duration
	BreakerWindow   time.Duration
	// MaxPendingWrites bounds the writes remembered while Redis is unreachable (one per key,
	// newest wins), replayed on recovery. Past it, writes of new keys fail with ErrUnavailable.
	// Default 10000.
	MaxPendingWrites int

	// FailSafeMaxAge keeps entries in Redis this long past their logical expiry so that
	// GetOrLoad can serve them, flagged with ErrStale, when the loader fails or is slow.
	// Default 5 min; negative turns fail-safe off.
	FailSafeMaxAge time.Duration
	// SoftTimeout, when positive, makes GetOrLoad answer with the stale value (flagged with
	// ErrStale) once a load has run this long and a fail-safe value exists; the load finishes in
	// the background and refreshes the cache. Default 0: wait for the loader (up to LoadTimeout).
	SoftTimeout time.Duration
	// LeaseTTL is the lifetime of the Redis lease that lets one instance load a missing key while
	// the others wait for it, up to LeaseWait, before they load themselves. Defaults 5 s and 1 s;
	// a negative LeaseTTL turns the distributed lease off (loads are still deduplicated within
	// the instance).
	LeaseTTL  time.Duration
	LeaseWait time.Duration
	// EagerRefresh, when positive, refreshes an entry read through GetOrLoad in the background
	// once less than this fraction of its TTL remains. The refresh lands like a miss's fill
	// (compare-and-set against the version read): a write made meanwhile wins. Default 0 (off);
	// range [0, 1).
	EagerRefresh float64

	// Clock supplies the time; default the system clock. Tests use a fake one.
	Clock Clock
	// Logger receives rare events (corrupt entries, reconnects). Default slog.Default().
	Logger *slog.Logger
	// TracerProvider, when set, traces with OpenTelemetry the operations that leave the process or
	// run a loader: the Redis lookup after an L1 miss, GetOrLoad and its loader call, batch reads
	// and loads, writes, InvalidateNamespace, Clear and the replay after an outage (span names
	// "tiercache.*", children of the span in the caller's ctx). An L1 hit never starts a span.
	// Spans carry the namespace and key counts, never keys or values. Redis commands appear as
	// child spans when the client is traced too (see
	// [github.com/tiercache/tiercache/redisconfig.Config].TracerProvider). Default nil: no
	// tracing, at no cost; the global OTel provider is not consulted.
	TracerProvider trace.TracerProvider
	// MeterProvider, when set, receives the cache's OpenTelemetry metrics (instrumentation scope
	// "github.com/tiercache/tiercache"): the counters and gauges of [Stats] as observable
	// instruments read at each collection, and three histograms in seconds recorded as they
	// happen (tiercache.l2.duration, tiercache.load.duration, tiercache.propagation.lag; see
	// [Cache.Histograms]). Every data point carries tiercache.namespace; other attributes are
	// low-cardinality (tier, result, op, direction, state), never keys. docs/OPERATIONS.md
	// lists them. Close unregisters the callback. Default nil: no metrics, at no cost beyond
	// one nil check per Redis call, load and received message; the global OTel provider is not
	// consulted. An L1 hit records nothing either way.
	MeterProvider metric.MeterProvider

	// noInvalidation switches the backplane off; tests use it to prove the checker sees the
	// staleness that follows.
	noInvalidation bool
}

func init() {
	testhook.NoInvalidation = func(o any) { o.(*Options).noInvalidation = true }
}

// config is Options with defaults applied and derived values computed once.
type config struct {
	Options
	limits    wire.Limits
	l1Enabled bool
	l1Life    time.Duration // how long L1 may serve an entry: L1TTL, or TTL in L1-only mode
}

func (o Options) withDefaults() (config, error) {
	c := config{Options: o}
	if c.Namespace == "" {
		c.Namespace = DefaultNamespace
	}
	if strings.ContainsAny(c.Namespace, "{}*?[] \t\r\n") {
		return c, errorf("Namespace %q may not contain braces, glob characters or whitespace", c.Namespace)
	}
	if c.ShardedPubSub {
		if _, ok := c.Redis.(*redis.ClusterClient); !ok {
			return c, errorf("ShardedPubSub needs a Redis Cluster client (*redis.ClusterClient), got %T", c.Redis)
		}
	}
	if c.TTL == 0 {
		c.TTL = DefaultTTL
	}
	if c.L1TTL == 0 {
		c.L1TTL = DefaultL1TTL
		if c.L1TTL > c.TTL {
			c.L1TTL = c.TTL
		}
	}
	if c.TombstoneTTL == 0 {
		c.TombstoneTTL = DefaultTombstoneTTL
	}
	if c.TTL < time.Millisecond || c.L1TTL < time.Millisecond || c.TombstoneTTL < time.Millisecond {
		return c, errorf("TTL (%v), L1TTL (%v) and TombstoneTTL (%v) must be at least 1ms", c.TTL, c.L1TTL, c.TombstoneTTL)
	}
	if c.L1TTL > c.TTL {
		return c, errorf("L1TTL (%v) may not exceed TTL (%v)", c.L1TTL, c.TTL)
	}
	switch {
	case c.NoJitter:
		c.Jitter = 0
	case c.Jitter == 0:
		c.Jitter = DefaultJitter
	case c.Jitter < 0 || c.Jitter > 0.5:
		return c, errorf("Jitter %v out of range [0, 0.5]", c.Jitter)
	}
	if c.L1MaxBytes == 0 {
		c.L1MaxBytes = DefaultL1MaxBytes
	}
	c.l1Enabled = c.L1MaxBytes > 0
	if c.L1MaxEntries < 0 {
		return c, errorf("L1MaxEntries %d is negative", c.L1MaxEntries)
	}
	if c.Compression > CompressOff {
		return c, errorf("unknown Compression %d", c.Compression)
	}
	if c.CompressionThreshold == 0 {
		c.CompressionThreshold = DefaultCompressionThreshold
	}
	if c.CompressionThreshold < 0 {
		return c, errorf("CompressionThreshold %d is negative", c.CompressionThreshold)
	}
	if c.MaxKeyLen == 0 {
		c.MaxKeyLen = DefaultMaxKeyLen
	}
	if c.MaxValueLen == 0 {
		c.MaxValueLen = DefaultMaxValueLen
	}
	if c.MaxDecodedLen == 0 {
		c.MaxDecodedLen = DefaultMaxDecodedLen
	}
	if c.MaxKeyLen < 0 || c.MaxValueLen < 0 || c.MaxDecodedLen < 0 {
		return c, errorf("MaxKeyLen, MaxValueLen and MaxDecodedLen may not be negative")
	}
	c.limits = wire.Limits{MaxKeyLen: c.MaxKeyLen, MaxValueLen: c.MaxValueLen, MaxDecodedLen: c.MaxDecodedLen}
	if c.LoadTimeout == 0 {
		c.LoadTimeout = DefaultLoadTimeout
	}
	if c.LoadTimeout < 0 {
		return c, errorf("LoadTimeout %v is negative", c.LoadTimeout)
	}
	if c.CoalesceWindow < 0 || c.CoalesceWindow > 100*time.Millisecond {
		return c, errorf("CoalesceWindow %v out of range [0, 100ms]", c.CoalesceWindow)
	}
	if c.Heartbeat == 0 {
		c.Heartbeat = DefaultHeartbeat
	}
	if c.Heartbeat < time.Millisecond {
		return c, errorf("Heartbeat %v must be at least 1ms", c.Heartbeat)
	}
	if c.UnsubscribedL1TTL == 0 {
		c.UnsubscribedL1TTL = DefaultUnsubscribedL1TTL
	}
	for _, d := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"L2Timeout", &c.L2Timeout, DefaultL2Timeout},
		{"BreakerOpenFor", &c.BreakerOpenFor, DefaultBreakerOpenFor},
		{"LeaseWait", &c.LeaseWait, DefaultLeaseWait},
	} {
		if *d.v == 0 {
			*d.v = d.def
		}
		if *d.v < time.Millisecond {
			return c, errorf("%s %v must be at least 1ms", d.name, *d.v)
		}
	}
	if c.BreakerFailures == 0 {
		c.BreakerFailures = DefaultBreakerFailures
	}
	switch {
	case c.BreakerWindow == 0:
		c.BreakerWindow = DefaultBreakerWindow
	case c.BreakerWindow < 0:
		c.BreakerWindow = 0
	}
	if c.MaxPendingWrites == 0 {
		c.MaxPendingWrites = DefaultMaxPendingWrites
	}
	if c.BreakerFailures < 0 || c.MaxPendingWrites < 0 || c.SoftTimeout < 0 {
		return c, errorf("BreakerFailures, MaxPendingWrites and SoftTimeout may not be negative")
	}
	if c.FailSafeMaxAge == 0 {
		c.FailSafeMaxAge = DefaultFailSafeMaxAge
	}
	if c.LeaseTTL == 0 {
		c.LeaseTTL = DefaultLeaseTTL
	}
	if c.LeaseTTL > 0 && c.LeaseTTL < 10*time.Millisecond {
		return c, errorf("LeaseTTL %v must be at least 10ms (or negative to turn the lease off)", c.LeaseTTL)
	}
	if c.EagerRefresh < 0 || c.EagerRefresh >= 1 {
		return c, errorf("EagerRefresh %v out of range [0, 1)", c.EagerRefresh)
	}
	if c.Clock == nil {
		c.Clock = systemClock{}
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	c.l1Life = c.L1TTL
	if c.Redis == nil {
		c.l1Life = c.TTL
	}
	return c, nil
}

// Option adjusts one call. Options are small values: passing them does not allocate.
type Option struct {
	ttl     time.Duration
	version uint64
	skipL1  bool
}

// TTL overrides Options.TTL for one write or fill.
func TTL(d time.Duration) Option { return Option{ttl: d} }

// Version gives a write the caller's version (for example a database row version, at least 1).
// A write never replaces a stored entry with a greater version. Without it, versions are assigned
// by a hybrid logical clock that never goes backwards.
func Version(v uint64) Option { return Option{version: v} }

// SkipL1 makes a call read and write Redis only, leaving process memory untouched (writes still
// evict the local copy so the instance never serves an older value).
func SkipL1() Option { return Option{skipL1: true} }

type callOptions struct {
	ttl     time.Duration
	version uint64
	skipL1  bool
	// announce makes a fill publish its invalidation (eager refresh: peers hold the old
	// version); set internally, never by an Option.
	announce bool
}

func (c *config) call(opts []Option) (callOptions, error) {
	co := callOptions{ttl: c.TTL}
	for _, o := range opts {
		if o.ttl != 0 {
			if o.ttl < time.Millisecond {
				return co, errorf("TTL option %v must be at least 1ms", o.ttl)
			}
			co.ttl = o.ttl
		}
		if o.version != 0 {
			co.version = o.version
		}
		co.skipL1 = co.skipL1 || o.skipL1
	}
	return co, nil
}
