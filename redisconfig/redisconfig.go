package redisconfig

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/trace"
)

// Connection defaults applied by [NewClient] to zero fields of [Config]. They are short on
// purpose: a cache that waits seconds for Redis is slower than no cache.
const (
	// DefaultPort is the port used with Host when Port is 0.
	DefaultPort = 6379
	// DefaultDialTimeout bounds connecting to Redis.
	DefaultDialTimeout = 500 * time.Millisecond
	// DefaultReadTimeout bounds waiting for a reply.
	DefaultReadTimeout = 250 * time.Millisecond
	// DefaultWriteTimeout bounds sending a command.
	DefaultWriteTimeout = 250 * time.Millisecond
	// DefaultMaxRetries is the number of retries after a network error.
	DefaultMaxRetries = 3
	// DefaultMinRetryBackoff is the first retry's backoff (doubling, jittered by go-redis).
	DefaultMinRetryBackoff = 8 * time.Millisecond
	// DefaultMaxRetryBackoff caps the retry backoff.
	DefaultMaxRetryBackoff = 128 * time.Millisecond
)

// Config describes how to reach Redis: a URL, a single host, a Sentinel-managed master or a
// Cluster. Exactly one of URL, Host, SentinelAddrs and ClusterAddrs selects the mode (URL and Host
// may not both be set). Zero durations and counts mean the Default* constants above; PoolSize 0
// means go-redis's default (10 connections per GOMAXPROCS); MaxRetries < 0 turns retries off.
type Config struct {
	URL            string // redis:// or rediss:// URL, parsed by redis.ParseURL
	Host           string // single server host; Port defaults to 6379
	Port           int
	Username       string // overrides the URL's user when set
	Password       string // overrides the URL's password when set
	DB             int    // database number (not used by Cluster)
	TLS            bool   // use TLS (also implied by a rediss:// URL)
	SentinelMaster string // master name; requires SentinelAddrs
	SentinelAddrs  []string
	ClusterAddrs   []string

	// TLS settings; each requires TLS on (TLS set or a rediss:// URL), so that a certificate meant
	// for an encrypted connection never goes unused on a plain one. The server's certificate is
	// always verified: there is no switch to turn that off (see docs/OPERATIONS.md).
	TLSCAFile     string // PEM file of the CAs to verify the server with; default the system's roots
	TLSCertFile   string // PEM client certificate for mutual TLS; requires TLSKeyFile
	TLSKeyFile    string // PEM private key of TLSCertFile; requires TLSCertFile
	TLSServerName string // name the server's certificate must carry; default the host dialed

	DialTimeout, ReadTimeout, WriteTimeout time.Duration
	PoolSize, MaxRetries                   int
	MinRetryBackoff, MaxRetryBackoff       time.Duration

	// TracerProvider, when set, traces the client with go-redis's redisotel: every command or
	// pipeline sent inside a traced operation (a span in its ctx, such as a
	// [github.com/tiercache/tiercache.Cache] operation's when its Options.TracerProvider is set)
	// becomes a client span under it. Commands sent with no span in their ctx (background probes,
	// the invalidation subscriber's setup) start no trace, and spans never carry command arguments
	// (keys and values may be sensitive). Default nil: no tracing. FromEnv leaves it nil.
	TracerProvider trace.TracerProvider
}

// FromEnv reads a Config from REDIS_URL, REDIS_HOST, REDIS_PORT, REDIS_USERNAME, REDIS_PASSWORD,
// REDIS_DB, REDIS_TLS (a boolean such as true/1/false/0), REDIS_TLS_CA_FILE, REDIS_TLS_CERT_FILE,
// REDIS_TLS_KEY_FILE, REDIS_TLS_SERVER_NAME, REDIS_SENTINEL_MASTER, REDIS_SENTINEL_ADDRS and
// REDIS_CLUSTER_ADDRS (comma-separated host:port lists) through getenv, usually os.Getenv. Unset
// variables leave fields zero; no variable set gives a config whose Configured is false. Errors
// name the offending variable. It does no I/O: NewClient reads the TLS files.
func FromEnv(getenv func(string) string) (Config, error) {
	get := func(k string) string { return strings.TrimSpace(getenv(k)) }
	cfg := Config{
		URL:            get("REDIS_URL"),
		Host:           get("REDIS_HOST"),
		Username:       get("REDIS_USERNAME"),
		Password:       getenv("REDIS_PASSWORD"), // passwords are taken verbatim
		SentinelMaster: get("REDIS_SENTINEL_MASTER"),
		TLSCAFile:      get("REDIS_TLS_CA_FILE"),
		TLSCertFile:    get("REDIS_TLS_CERT_FILE"),
		TLSKeyFile:     get("REDIS_TLS_KEY_FILE"),
		TLSServerName:  get("REDIS_TLS_SERVER_NAME"),
	}
	var err error
	if v := get("REDIS_PORT"); v != "" {
		if cfg.Port, err = strconv.Atoi(v); err != nil || cfg.Port < 1 || cfg.Port > 65535 {
			return Config{}, fmt.Errorf("redisconfig: REDIS_PORT=%q is not a port number (1-65535)", v)
		}
	}
	if v := get("REDIS_DB"); v != "" {
		if cfg.DB, err = strconv.Atoi(v); err != nil || cfg.DB < 0 {
			return Config{}, fmt.Errorf("redisconfig: REDIS_DB=%q is not a database number (0 or more)", v)
		}
	}
	if v := get("REDIS_TLS"); v != "" {
		if cfg.TLS, err = strconv.ParseBool(v); err != nil {
			return Config{}, fmt.Errorf("redisconfig: REDIS_TLS=%q is not a boolean (true, false, 1, 0)", v)
		}
	}
	if cfg.SentinelAddrs, err = addrList("REDIS_SENTINEL_ADDRS", get("REDIS_SENTINEL_ADDRS")); err != nil {
		return Config{}, err
	}
	if cfg.ClusterAddrs, err = addrList("REDIS_CLUSTER_ADDRS", get("REDIS_CLUSTER_ADDRS")); err != nil {
		return Config{}, err
	}
	if err := cfg.validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// addrList splits a comma-separated list of host:port addresses, naming variable on error.
func addrList(variable, v string) ([]string, error) {
	if v == "" {
		return nil, nil
	}
	var out []string
	for _, a := range strings.Split(v, ",") {
		a = strings.TrimSpace(a)
		if a == "" {
			continue
		}
		if err := checkAddr(a); err != nil {
			return nil, fmt.Errorf("redisconfig: %s: %q %v", variable, a, err)
		}
		out = append(out, a)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("redisconfig: %s=%q lists no address", variable, v)
	}
	return out, nil
}

func checkAddr(a string) error {
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		return errors.New("is not host:port")
	}
	if host == "" {
		return errors.New("has an empty host")
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return errors.New("has a bad port")
	}
	return nil
}

// validate checks that the fields select one mode and that the URL parses.
func (cfg Config) validate() error {
	modes := 0
	for _, set := range []bool{cfg.URL != "", cfg.Host != "", len(cfg.SentinelAddrs) > 0, len(cfg.ClusterAddrs) > 0} {
		if set {
			modes++
		}
	}
	if modes > 1 {
		return errors.New("redisconfig: set only one of REDIS_URL, REDIS_HOST, REDIS_SENTINEL_ADDRS and REDIS_CLUSTER_ADDRS")
	}
	if cfg.SentinelMaster != "" && len(cfg.SentinelAddrs) == 0 {
		return errors.New("redisconfig: REDIS_SENTINEL_MASTER is set but REDIS_SENTINEL_ADDRS is empty")
	}
	if len(cfg.SentinelAddrs) > 0 && cfg.SentinelMaster == "" {
		return errors.New("redisconfig: REDIS_SENTINEL_ADDRS is set but REDIS_SENTINEL_MASTER is empty")
	}
	if cfg.Port != 0 && cfg.Host == "" {
		return errors.New("redisconfig: REDIS_PORT is set but REDIS_HOST is empty")
	}
	if cfg.URL != "" {
		o, err := redis.ParseURL(cfg.URL)
		if err != nil {
			return fmt.Errorf("redisconfig: REDIS_URL: %v", redactURLError(cfg.URL, err))
		}
		if o.TLSConfig != nil && o.TLSConfig.InsecureSkipVerify {
			return errors.New("redisconfig: REDIS_URL: skip_verify would turn off TLS certificate verification, which redisconfig does not do: give the server's CA in REDIS_TLS_CA_FILE")
		}
	}
	if len(cfg.ClusterAddrs) > 0 && cfg.DB != 0 {
		return errors.New("redisconfig: REDIS_DB must be 0 with REDIS_CLUSTER_ADDRS (Cluster has one database)")
	}
	return cfg.validateTLS()
}

// redactURLError keeps a password in the URL out of error messages.
func redactURLError(raw string, err error) error {
	msg := err.Error()
	if u, perr := url.Parse(raw); perr == nil && u.User != nil {
		if p, ok := u.User.Password(); ok && p != "" {
			msg = strings.ReplaceAll(msg, p, "xxxxx")
		}
	}
	return errors.New(msg)
}

// Configured reports whether cfg names a Redis server (URL, host, Sentinel or Cluster). A service
// with an unconfigured Config runs its cache in L1-only mode.
func (cfg Config) Configured() bool {
	return cfg.URL != "" || cfg.Host != "" || len(cfg.SentinelAddrs) > 0 || len(cfg.ClusterAddrs) > 0
}

// Mode names the deployment cfg selects: "url", "single", "sentinel", "cluster" or "none".
func (cfg Config) Mode() string {
	switch {
	case cfg.URL != "":
		return "url"
	case cfg.Host != "":
		return "single"
	case len(cfg.SentinelAddrs) > 0:
		return "sentinel"
	case len(cfg.ClusterAddrs) > 0:
		return "cluster"
	}
	return "none"
}

// NewClient returns a client for cfg with the Default* timeouts and retry backoff applied to
// zero fields (go-redis adds jitter to the backoff). It reads the TLS files cfg names but does no
// network I/O: the first command connects. It returns an error naming the problem when cfg is
// not configured or inconsistent, or a TLS file is missing or does not hold what it should. With
// cfg.TracerProvider set the client is traced (see [Config]). The caller owns the client
// and closes it.
func NewClient(cfg Config) (redis.UniversalClient, error) {
	if !cfg.Configured() {
		return nil, errors.New("redisconfig: no Redis configured (set REDIS_URL, REDIS_HOST, REDIS_SENTINEL_ADDRS or REDIS_CLUSTER_ADDRS)")
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	t := cfg.tuning()
	tlsConf, err := cfg.tlsConfig()
	if err != nil {
		return nil, err
	}
	switch cfg.Mode() {
	case "url":
		o, err := redis.ParseURL(cfg.URL)
		if err != nil {
			return nil, fmt.Errorf("redisconfig: REDIS_URL: %v", redactURLError(cfg.URL, err))
		}
		if cfg.Username != "" {
			o.Username = cfg.Username
		}
		if cfg.Password != "" {
			o.Password = cfg.Password
		}
		if cfg.DB != 0 {
			o.DB = cfg.DB
		}
		if tlsConf != nil { // replaces ParseURL's (validate refused its skip_verify)
			if tlsConf.ServerName == "" {
				tlsConf.ServerName, _, _ = net.SplitHostPort(o.Addr)
			}
			o.TLSConfig = tlsConf
		}
		// Values given in the URL's query win over the defaults; explicit config fields win over both.
		o.DialTimeout = pick(cfg.DialTimeout, o.DialTimeout, t.dial)
		o.ReadTimeout = pick(cfg.ReadTimeout, o.ReadTimeout, t.read)
		o.WriteTimeout = pick(cfg.WriteTimeout, o.WriteTimeout, t.write)
		o.MinRetryBackoff = pick(cfg.MinRetryBackoff, o.MinRetryBackoff, t.minBackoff)
		o.MaxRetryBackoff = pick(cfg.MaxRetryBackoff, o.MaxRetryBackoff, t.maxBackoff)
		if cfg.PoolSize != 0 {
			o.PoolSize = cfg.PoolSize
		}
		if cfg.MaxRetries != 0 || o.MaxRetries == 0 {
			o.MaxRetries = t.retries
		}
		o.ContextTimeoutEnabled = true
		return instrumentRedis(redis.NewClient(o), cfg.TracerProvider)
	case "single":
		port := cfg.Port
		if port == 0 {
			port = DefaultPort
		}
		if tlsConf != nil && tlsConf.ServerName == "" {
			tlsConf.ServerName = cfg.Host
		}
		return instrumentRedis(redis.NewClient(&redis.Options{
			Addr: net.JoinHostPort(cfg.Host, strconv.Itoa(port)), Username: cfg.Username, Password: cfg.Password,
			DB: cfg.DB, TLSConfig: tlsConf, DialTimeout: t.dial, ReadTimeout: t.read, WriteTimeout: t.write,
			PoolSize: cfg.PoolSize, MaxRetries: t.retries, MinRetryBackoff: t.minBackoff, MaxRetryBackoff: t.maxBackoff,
			ContextTimeoutEnabled: true, // the cache's per-call budget reaches the socket
		}), cfg.TracerProvider)
	case "sentinel":
		return instrumentRedis(redis.NewFailoverClient(&redis.FailoverOptions{
			MasterName: cfg.SentinelMaster, SentinelAddrs: cfg.SentinelAddrs,
			Username: cfg.Username, Password: cfg.Password, DB: cfg.DB, TLSConfig: tlsConf,
			DialTimeout: t.dial, ReadTimeout: t.read, WriteTimeout: t.write,
			PoolSize: cfg.PoolSize, MaxRetries: t.retries, MinRetryBackoff: t.minBackoff, MaxRetryBackoff: t.maxBackoff,
			ContextTimeoutEnabled: true, // the cache's per-call budget reaches the socket
		}), cfg.TracerProvider)
	default: // cluster
		return instrumentRedis(redis.NewClusterClient(&redis.ClusterOptions{
			Addrs: cfg.ClusterAddrs, Username: cfg.Username, Password: cfg.Password, TLSConfig: tlsConf,
			DialTimeout: t.dial, ReadTimeout: t.read, WriteTimeout: t.write,
			PoolSize: cfg.PoolSize, MaxRetries: t.retries, MinRetryBackoff: t.minBackoff, MaxRetryBackoff: t.maxBackoff,
			ContextTimeoutEnabled: true, // the cache's per-call budget reaches the socket
		}), cfg.TracerProvider)
	}
}

// tuning holds cfg's timeouts and retry settings with defaults applied.
type tuning struct {
	dial, read, write      time.Duration
	retries                int
	minBackoff, maxBackoff time.Duration
}

func (cfg Config) tuning() tuning {
	t := tuning{
		dial: pick(cfg.DialTimeout, 0, DefaultDialTimeout), read: pick(cfg.ReadTimeout, 0, DefaultReadTimeout),
		write:      pick(cfg.WriteTimeout, 0, DefaultWriteTimeout),
		minBackoff: pick(cfg.MinRetryBackoff, 0, DefaultMinRetryBackoff),
		maxBackoff: pick(cfg.MaxRetryBackoff, 0, DefaultMaxRetryBackoff),
		retries:    cfg.MaxRetries,
	}
	switch {
	case t.retries == 0:
		t.retries = DefaultMaxRetries
	case t.retries < 0:
		t.retries = -1 // go-redis: -1 disables retries
	}
	return t
}

// pick returns the first non-zero duration of explicit, fromURL and def.
func pick(explicit, fromURL, def time.Duration) time.Duration {
	if explicit != 0 {
		return explicit
	}
	if fromURL != 0 {
		return fromURL
	}
	return def
}
