package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/tiercache/tiercache"
	"github.com/tiercache/tiercache/redisconfig"
	"github.com/tiercache/tiercache/session"
)

// config is contextd serve's configuration: environment variables, each
// overridden by its flag.
type config struct {
	Listen      string
	DatabaseURL string
	Namespace   string
	TTL         time.Duration
	L1TTL       time.Duration
	L2Timeout   time.Duration // 0: the library's default
	Compression tiercache.Compression
	Revalidate  bool              // CACHE_REVALIDATE: see tiercache.Options.NoRevalidate
	Sharded     bool              // CACHE_SHARDED_PUBSUB: see tiercache.Options.ShardedPubSub
	APIKeys     map[string]string // key -> owner; empty: single local owner
	OpsKey      string            // guards the operational routes; empty: they are open
	WarmRecent  int
	Redis       redisconfig.Config
	MaxBody     int64
	MaxNodes    int           // nodes per session; 0 means no limit
	Tracing     tracingConfig // from the OTEL_* environment (see tracing.go)
	// Events bounds the SSE subscriptions (EVENTS_MAX_SUBSCRIPTIONS,
	// EVENTS_MAX_SUBSCRIPTIONS_PER_OWNER); zero fields: session's defaults.
	Events session.EventLimits
	// noInvalidation switches the cache's invalidations off (internal/testhook): a test-only
	// setting, no variable or flag sets it, for tests that prove verify sees the staleness.
	noInvalidation bool
}

// Defaults of contextd serve.
const (
	defaultListen     = "127.0.0.1:8080"
	defaultDatabase   = "contextd.db"
	defaultWarmRecent = 50
	defaultMaxBody    = 1 << 20
	localOwner        = "local"
)

// loadConfig reads the environment through getenv, then the flags in args.
// Errors name the variable or flag.
func loadConfig(args []string, getenv func(string) string, stderr io.Writer) (config, error) {
	env := func(k, def string) string {
		if v := strings.TrimSpace(getenv(k)); v != "" {
			return v
		}
		return def
	}
	fs := flag.NewFlagSet("contextd serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", env("LISTEN_ADDR", defaultListen), "listen address `host:port` (LISTEN_ADDR)")
	dbURL := fs.String("database-url", env("DATABASE_URL", defaultDatabase), "SQLite file path or postgres:// URL (DATABASE_URL)")
	ns := fs.String("namespace", env("CACHE_NAMESPACE", tiercache.DefaultNamespace), "cache key prefix (CACHE_NAMESPACE)")
	ttl := fs.String("cache-ttl", env("CACHE_TTL", "15m"), "Redis entry lifetime (CACHE_TTL)")
	l1ttl := fs.String("cache-l1-ttl", env("CACHE_L1_TTL", "5s"), "process-memory entry lifetime (CACHE_L1_TTL)")
	l2timeout := fs.String("cache-l2-timeout", env("CACHE_L2_TIMEOUT", ""), "time budget of every Redis call (CACHE_L2_TIMEOUT); default the library's, 50ms")
	comp := fs.String("compression", env("CACHE_COMPRESSION", "on"), "on|zstd, s2 or off (CACHE_COMPRESSION)")
	sharded := fs.String("cache-sharded-pubsub", env("CACHE_SHARDED_PUBSUB", "off"), "on or off: on a Redis Cluster, send invalidations on their keys' shard channels (SPUBLISH) (CACHE_SHARDED_PUBSUB)")
	reval := fs.String("cache-revalidate", env("CACHE_REVALIDATE", "on"), "on or off: when an entry's L1 lifetime ends, ask Redis whether it changed instead of reading it again (CACHE_REVALIDATE)")
	keys := fs.String("api-keys", env("API_KEYS", ""), "key1=owner1,key2=owner2 (API_KEYS); empty: one local owner, no auth")
	opsKey := fs.String("ops-key", env("OPS_KEY", ""), "key for /api/health/redis, /metrics and /dashboard (OPS_KEY); empty: open")
	warm := fs.String("warm-recent", env("WARM_RECENT", strconv.Itoa(defaultWarmRecent)), "sessions to warm at start (WARM_RECENT)")
	redisURL := fs.String("redis-url", env("REDIS_URL", ""), "redis:// or rediss:// URL (REDIS_URL); also REDIS_HOST, REDIS_PORT, ... see docs/OPERATIONS.md")
	// The Redis settings that have flags; the others are read from the environment alone.
	redisFlags := map[string]*string{"REDIS_URL": redisURL}
	for _, f := range []struct{ name, variable, usage string }{
		{"redis-tls", "REDIS_TLS", "connect to Redis with TLS: true or false (REDIS_TLS); a rediss:// URL implies it"},
		{"redis-tls-ca-file", "REDIS_TLS_CA_FILE", "PEM `file` of the CAs that sign the Redis server's certificate (REDIS_TLS_CA_FILE); default the system's"},
		{"redis-tls-cert-file", "REDIS_TLS_CERT_FILE", "PEM client certificate `file` for mutual TLS with Redis (REDIS_TLS_CERT_FILE)"},
		{"redis-tls-key-file", "REDIS_TLS_KEY_FILE", "PEM private key `file` of the client certificate (REDIS_TLS_KEY_FILE)"},
		{"redis-tls-server-name", "REDIS_TLS_SERVER_NAME", "`name` the Redis server's certificate must carry (REDIS_TLS_SERVER_NAME); default the host dialed"},
		{"redis-sentinel-master", "REDIS_SENTINEL_MASTER", "`name` of the master the sentinels monitor (REDIS_SENTINEL_MASTER); with --redis-sentinel-addrs"},
		{"redis-sentinel-addrs", "REDIS_SENTINEL_ADDRS", "comma-separated host:port `list` of the sentinels (REDIS_SENTINEL_ADDRS)"},
		{"redis-cluster-addrs", "REDIS_CLUSTER_ADDRS", "comma-separated host:port seed `list` of a Redis Cluster (REDIS_CLUSTER_ADDRS)"},
	} {
		redisFlags[f.variable] = fs.String(f.name, env(f.variable, ""), f.usage)
	}
	maxBody := fs.Int64("max-body", defaultMaxBody, "largest request body in bytes")
	maxNodes := fs.String("max-nodes-per-session", env("MAX_NODES_PER_SESSION", strconv.Itoa(session.DefaultMaxNodesPerSession)), "most nodes one session may hold, 0 for no limit (MAX_NODES_PER_SESSION)")
	maxSubs := fs.String("events-max-subscriptions", env("EVENTS_MAX_SUBSCRIPTIONS", strconv.Itoa(session.DefaultMaxSubscriptions)),
		"open SSE event streams this instance serves (EVENTS_MAX_SUBSCRIPTIONS)")
	maxOwnerSubs := fs.String("events-max-subscriptions-per-owner", env("EVENTS_MAX_SUBSCRIPTIONS_PER_OWNER", strconv.Itoa(session.DefaultMaxSubscriptionsPerOwner)),
		"open SSE event streams of one owner on this instance (EVENTS_MAX_SUBSCRIPTIONS_PER_OWNER)")
	if err := fs.Parse(args); err != nil {
		return config{}, err
	}
	if fs.NArg() > 0 {
		return config{}, fmt.Errorf("serve: unexpected argument %q", fs.Arg(0))
	}
	c := config{Listen: *listen, DatabaseURL: *dbURL, Namespace: *ns, MaxBody: *maxBody}
	var err error
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return config{}, fmt.Errorf("LISTEN_ADDR/--listen %q is not host:port", c.Listen)
	}
	if c.TTL, err = positiveDuration("CACHE_TTL/--cache-ttl", *ttl); err != nil {
		return config{}, err
	}
	if c.L1TTL, err = positiveDuration("CACHE_L1_TTL/--cache-l1-ttl", *l1ttl); err != nil {
		return config{}, err
	}
	if *l2timeout != "" {
		if c.L2Timeout, err = positiveDuration("CACHE_L2_TIMEOUT/--cache-l2-timeout", *l2timeout); err != nil {
			return config{}, err
		}
	}
	switch strings.ToLower(*comp) {
	case "on", "true", "1", "zstd":
		c.Compression = tiercache.CompressZstd
	case "s2":
		c.Compression = tiercache.CompressS2
	case "off", "false", "0":
		c.Compression = tiercache.CompressOff
	default:
		return config{}, fmt.Errorf("CACHE_COMPRESSION/--compression %q: want on, zstd, s2 or off", *comp)
	}
	if c.Revalidate, err = onOff("CACHE_REVALIDATE/--cache-revalidate", *reval); err != nil {
		return config{}, err
	}
	if c.Sharded, err = onOff("CACHE_SHARDED_PUBSUB/--cache-sharded-pubsub", *sharded); err != nil {
		return config{}, err
	}
	if c.WarmRecent, err = strconv.Atoi(*warm); err != nil || c.WarmRecent < 0 {
		return config{}, fmt.Errorf("WARM_RECENT/--warm-recent %q: want a count of 0 or more", *warm)
	}
	if c.APIKeys, err = parseAPIKeys(*keys); err != nil {
		return config{}, err
	}
	if c.OpsKey = *opsKey; c.OpsKey != "" && len(c.OpsKey) < 8 {
		return config{}, fmt.Errorf("OPS_KEY/--ops-key is shorter than 8 characters")
	}
	if _, clash := c.APIKeys[c.OpsKey]; clash {
		return config{}, fmt.Errorf("OPS_KEY/--ops-key is also an API key in API_KEYS: use a key of its own")
	}
	if c.Events.MaxSubscriptions, err = strconv.Atoi(*maxSubs); err != nil || c.Events.MaxSubscriptions < 1 {
		return config{}, fmt.Errorf("EVENTS_MAX_SUBSCRIPTIONS/--events-max-subscriptions %q: want a count of 1 or more", *maxSubs)
	}
	if c.Events.MaxSubscriptionsPerOwner, err = strconv.Atoi(*maxOwnerSubs); err != nil || c.Events.MaxSubscriptionsPerOwner < 1 {
		return config{}, fmt.Errorf("EVENTS_MAX_SUBSCRIPTIONS_PER_OWNER/--events-max-subscriptions-per-owner %q: want a count of 1 or more", *maxOwnerSubs)
	}
	if c.MaxBody <= 0 {
		return config{}, fmt.Errorf("--max-body %d: want a positive byte count", c.MaxBody)
	}
	if c.MaxNodes, err = strconv.Atoi(*maxNodes); err != nil || c.MaxNodes < 0 {
		return config{}, fmt.Errorf("MAX_NODES_PER_SESSION/--max-nodes-per-session %q: want a count of 0 (no limit) or more", *maxNodes)
	}
	redisEnv := func(k string) string {
		if v, ok := redisFlags[k]; ok {
			return *v
		}
		return getenv(k)
	}
	if c.Redis, err = redisconfig.FromEnv(redisEnv); err != nil {
		return config{}, err
	}
	if c.Sharded && c.Redis.Mode() != "cluster" {
		return config{}, fmt.Errorf("CACHE_SHARDED_PUBSUB/--cache-sharded-pubsub on needs a Redis Cluster (REDIS_CLUSTER_ADDRS); Redis is %s", c.Redis.Mode())
	}
	if c.Tracing, err = tracingFromEnv(getenv); err != nil {
		return config{}, err
	}
	return c, nil
}

func positiveDuration(name, v string) (time.Duration, error) {
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("%s %q: want a positive duration like 15m or 5s", name, v)
	}
	return d, nil
}

// parseAPIKeys parses "key1=owner1,key2=owner2".
func parseAPIKeys(s string) (map[string]string, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	out := map[string]string{}
	for i, pair := range strings.Split(s, ",") {
		pair = strings.TrimSpace(pair)
		if pair == "" {
			continue
		}
		k, owner, ok := strings.Cut(pair, "=")
		k, owner = strings.TrimSpace(k), strings.TrimSpace(owner)
		if !ok || k == "" || owner == "" {
			return nil, fmt.Errorf("API_KEYS entry %d: want key=owner", i+1)
		}
		if len(k) < 8 {
			return nil, fmt.Errorf("API_KEYS entry %d: key for owner %q is shorter than 8 characters", i+1, owner)
		}
		if _, dup := out[k]; dup {
			return nil, fmt.Errorf("API_KEYS entry %d: key for owner %q listed twice", i+1, owner)
		}
		out[k] = owner
	}
	return out, nil
}

// onOff reads a switch named name: on, true or 1; off, false or 0.
func onOff(name, v string) (bool, error) {
	switch strings.ToLower(v) {
	case "on", "true", "1":
		return true, nil
	case "off", "false", "0":
		return false, nil
	}
	return false, fmt.Errorf("%s %q: want on or off", name, v)
}
