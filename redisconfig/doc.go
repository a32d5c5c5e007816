// Package redisconfig builds the go-redis client a [github.com/tiercache/tiercache.Cache] runs on:
// a redis.UniversalClient for a single server, a Sentinel-managed master or a Cluster, described
// by a [Config] struct or read by [FromEnv] from the REDIS_* environment variables (REDIS_URL,
// REDIS_HOST, REDIS_PORT, REDIS_USERNAME, REDIS_PASSWORD, REDIS_DB, REDIS_TLS,
// REDIS_TLS_CA_FILE, REDIS_TLS_CERT_FILE, REDIS_TLS_KEY_FILE, REDIS_TLS_SERVER_NAME,
// REDIS_SENTINEL_MASTER, REDIS_SENTINEL_ADDRS, REDIS_CLUSTER_ADDRS; see docs/OPERATIONS.md).
//
// TLS is on with a rediss:// URL or REDIS_TLS=true, in every mode (single, Sentinel, Cluster);
// the TLS_* settings are refused while it is off. The server's certificate is always verified,
// against REDIS_TLS_CA_FILE or the system's roots; a client certificate and key give mutual TLS.
//
// [NewClient] applies the short timeouts and capped retry backoff a cache wants (the Default*
// constants: a cache that waits seconds for Redis is slower than no cache), enables go-redis's
// ContextTimeoutEnabled so the cache's per-call budget reaches the socket, and, with
// Config.TracerProvider set, traces Redis commands as children of the caller's spans. It does no
// I/O; the caller owns the client and closes it.
//
// contextd configures its Redis this way; library users may do the same or pass any
// redis.UniversalClient of their own to tiercache.Options.Redis.
package redisconfig
