// Package tiercache provides a two-tier cache for Go services that run as many instances: an
// in-process L1 (github.com/maypok86/otter/v2, W-TinyLFU, bounded by bytes) in front of a shared
// Redis L2 (any github.com/redis/go-redis/v9 UniversalClient: single server, Sentinel or Cluster).
//
// A [Cache] stores []byte values; [Typed] gives a [TypedCache] for any type with a [Codec] (JSON
// by default). L1 keeps decoded values, so an L1 hit neither decodes nor allocates. Reads go L1,
// then Redis, then (with GetOrLoad) the caller's loader, once per key however many goroutines
// miss at the same time. Batch calls (GetMany, SetMany, DeleteMany, GetOrLoadMany) cost one Redis
// round trip and at most one loader call. Values over a threshold are compressed (zstd or s2) in
// a versioned envelope; see docs/WIRE_FORMAT.md. Configure it with [Options]; zero fields mean
// documented defaults, and a nil Redis runs on L1 alone.
//
// # What the cache guarantees
//
// Every entry carries a version: the caller's (for example a database row version, with
// [Version]) or one assigned by a hybrid logical clock in Redis that never goes backwards, not
// even when the key expires or Redis restarts empty. The guarantees, specified and tested in
// docs/CONSISTENCY.md:
//
//   - Read-your-writes on the writing instance: after Set, Delete or SetMany returns nil, that
//     instance never returns the older value.
//   - No regression in Redis: a write or fill with version v never replaces a stored version
//     above v (the check and the write are one Lua script). Deletes leave a versioned tombstone
//     for a while, so a slow reader cannot fill the deleted value back.
//   - Bounded staleness: another instance's L1 serves an entry for at most L1TTL (5 s by default)
//     without asking Redis.
//
// When Redis fails, a circuit breaker keeps every call within Options.L2Timeout; reads serve L1
// (bounded by L1TTL) and loaders, writes are remembered and replayed with their versions when
// Redis returns, and [Cache.Health] says "degraded". With fail-safe, GetOrLoad serves an expired
// value, flagged with [ErrStale], when the loader fails or is slow. Across instances a Redis lease
// lets one instance load a missing key while the others wait for it.
//
// What it does not guarantee: linearizability across instances, or that a value loaded by a
// loader is current (the loader is the source of truth; the cache only refuses to let an older
// version replace a newer one).
//
// # Observing it
//
// [Cache.Stats] counts hits and misses per tier, loads, writes, invalidations, gaps, outages and
// more; [Cache.Histograms] holds the latency of Redis calls and loads and the propagation lag of
// peers' invalidations; [Cache.Health] adds a Redis ping. Options.MeterProvider exports them to
// OpenTelemetry, and the module github.com/tiercache/tiercache/promcache to a Prometheus
// registry; docs/OPERATIONS.md lists every metric. An L1 hit records nothing but its counter.
//
// # Concurrency
//
// All methods are safe for concurrent use. Values are shared between callers and must not be
// modified after Set or after a Get returns them.
package tiercache
