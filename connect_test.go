package tiercache

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/redistest"
)

func envOf(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestRedisConfigFromEnv(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		env  map[string]string
		want RedisConfig
		mode string
	}{
		{name: "empty", env: nil, want: RedisConfig{}, mode: "none"},
		{name: "url", env: map[string]string{"REDIS_URL": "redis://u:p@127.0.0.1:6380/2"},
			want: RedisConfig{URL: "redis://u:p@127.0.0.1:6380/2"}, mode: "url"},
		{name: "host", env: map[string]string{"REDIS_HOST": "127.0.0.1", "REDIS_PORT": "6390", "REDIS_DB": "3",
			"REDIS_PASSWORD": " secret ", "REDIS_USERNAME": "me", "REDIS_TLS": "true"},
			want: RedisConfig{Host: "127.0.0.1", Port: 6390, DB: 3, Password: " secret ", Username: "me", TLS: true}, mode: "single"},
		{name: "sentinel", env: map[string]string{"REDIS_SENTINEL_MASTER": "mymaster", "REDIS_SENTINEL_ADDRS": "127.0.0.1:26379, 127.0.0.1:26380"},
			want: RedisConfig{SentinelMaster: "mymaster", SentinelAddrs: []string{"127.0.0.1:26379", "127.0.0.1:26380"}}, mode: "sentinel"},
		{name: "cluster", env: map[string]string{"REDIS_CLUSTER_ADDRS": "127.0.0.1:7000,127.0.0.1:7001,"},
			want: RedisConfig{ClusterAddrs: []string{"127.0.0.1:7000", "127.0.0.1:7001"}}, mode: "cluster"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := RedisConfigFromEnv(envOf(tt.env))
			if err != nil {
				t.Fatalf("RedisConfigFromEnv(%v) error: %v", tt.env, err)
			}
			if !sameConfig(got, tt.want) {
				t.Errorf("RedisConfigFromEnv(%v) = %+v, want %+v", tt.env, got, tt.want)
			}
			if got.Mode() != tt.mode {
				t.Errorf("Mode() = %q, want %q", got.Mode(), tt.mode)
			}
			if got.Configured() != (tt.mode != "none") {
				t.Errorf("Configured() = %v for mode %q", got.Configured(), tt.mode)
			}
		})
	}
}

func sameConfig(a, b RedisConfig) bool {
	return a.URL == b.URL && a.Host == b.Host && a.Port == b.Port && a.Username == b.Username &&
		a.Password == b.Password && a.DB == b.DB && a.TLS == b.TLS && a.SentinelMaster == b.SentinelMaster &&
		strings.Join(a.SentinelAddrs, ",") == strings.Join(b.SentinelAddrs, ",") &&
		strings.Join(a.ClusterAddrs, ",") == strings.Join(b.ClusterAddrs, ",")
}

func TestRedisConfigFromEnvErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		env     map[string]string
		mention string
	}{
		{"bad port", map[string]string{"REDIS_HOST": "h", "REDIS_PORT": "http"}, "REDIS_PORT"},
		{"port out of range", map[string]string{"REDIS_HOST": "h", "REDIS_PORT": "70000"}, "REDIS_PORT"},
		{"port without host", map[string]string{"REDIS_PORT": "6379"}, "REDIS_HOST"},
		{"bad db", map[string]string{"REDIS_HOST": "h", "REDIS_DB": "-1"}, "REDIS_DB"},
		{"bad tls", map[string]string{"REDIS_HOST": "h", "REDIS_TLS": "maybe"}, "REDIS_TLS"},
		{"bad url scheme", map[string]string{"REDIS_URL": "http://127.0.0.1:6379"}, "REDIS_URL"},
		{"url password not leaked", map[string]string{"REDIS_URL": "redis://u:hunter2@127.0.0.1:6379/notanumber"}, "REDIS_URL"},
		{"two modes", map[string]string{"REDIS_URL": "redis://127.0.0.1", "REDIS_HOST": "h"}, "only one"},
		{"sentinel without master", map[string]string{"REDIS_SENTINEL_ADDRS": "127.0.0.1:26379"}, "REDIS_SENTINEL_MASTER"},
		{"master without sentinels", map[string]string{"REDIS_SENTINEL_MASTER": "m"}, "REDIS_SENTINEL_ADDRS"},
		{"bad sentinel addr", map[string]string{"REDIS_SENTINEL_MASTER": "m", "REDIS_SENTINEL_ADDRS": "127.0.0.1"}, "REDIS_SENTINEL_ADDRS"},
		{"bad cluster port", map[string]string{"REDIS_CLUSTER_ADDRS": "127.0.0.1:x"}, "REDIS_CLUSTER_ADDRS"},
		{"empty cluster list", map[string]string{"REDIS_CLUSTER_ADDRS": " , "}, "REDIS_CLUSTER_ADDRS"},
		{"cluster with db", map[string]string{"REDIS_CLUSTER_ADDRS": "127.0.0.1:7000", "REDIS_DB": "1"}, "REDIS_DB"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := RedisConfigFromEnv(envOf(tt.env))
			if err == nil {
				t.Fatalf("RedisConfigFromEnv(%v) = nil error, want one mentioning %q", tt.env, tt.mention)
			}
			if !strings.Contains(err.Error(), tt.mention) {
				t.Errorf("RedisConfigFromEnv(%v) error %q does not mention %q", tt.env, err, tt.mention)
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Errorf("error %q leaks the password", err)
			}
		})
	}
}

func TestNewRedisClientConfig(t *testing.T) {
	t.Parallel()
	if _, err := NewRedisClient(RedisConfig{}); err == nil {
		t.Error("NewRedisClient(RedisConfig{}) = nil error, want 'no Redis configured'")
	}
	// Defaults apply; nothing dials (the address is unroutable on purpose and the call returns at once).
	c, err := NewRedisClient(RedisConfig{Host: "127.0.0.1", Port: 1})
	if err != nil {
		t.Fatalf("NewRedisClient: %v", err)
	}
	defer c.Close()
	o := c.(*redis.Client).Options()
	if o.Addr != "127.0.0.1:1" || o.DialTimeout != DefaultRedisDialTimeout || o.ReadTimeout != DefaultRedisReadTimeout ||
		o.WriteTimeout != DefaultRedisWriteTimeout || o.MaxRetries != DefaultRedisMaxRetries ||
		o.MinRetryBackoff != DefaultRedisMinRetryBackoff || o.MaxRetryBackoff != DefaultRedisMaxRetryBackoff {
		t.Errorf("options = addr %s dial %v read %v write %v retries %d backoff %v..%v, want the defaults",
			o.Addr, o.DialTimeout, o.ReadTimeout, o.WriteTimeout, o.MaxRetries, o.MinRetryBackoff, o.MaxRetryBackoff)
	}
	// URL query values win over defaults, explicit fields over both.
	c2, err := NewRedisClient(RedisConfig{URL: "redis://127.0.0.1:1/4?dial_timeout=2s", ReadTimeout: time.Second, MaxRetries: -1})
	if err != nil {
		t.Fatalf("NewRedisClient(url): %v", err)
	}
	defer c2.Close()
	o2 := c2.(*redis.Client).Options()
	if o2.DB != 4 || o2.DialTimeout != 2*time.Second || o2.ReadTimeout != time.Second || o2.MaxRetries > 0 || // go-redis normalizes -1 (off) to 0
		o2.WriteTimeout != DefaultRedisWriteTimeout {
		t.Errorf("url options = db %d dial %v read %v write %v retries %d", o2.DB, o2.DialTimeout, o2.ReadTimeout, o2.WriteTimeout, o2.MaxRetries)
	}
	c3, err := NewRedisClient(RedisConfig{ClusterAddrs: []string{"127.0.0.1:1"}})
	if err != nil {
		t.Fatalf("NewRedisClient(cluster): %v", err)
	}
	if _, ok := c3.(*redis.ClusterClient); !ok {
		t.Errorf("cluster config gave %T, want *redis.ClusterClient", c3)
	}
	c3.Close()
	c4, err := NewRedisClient(RedisConfig{SentinelMaster: "m", SentinelAddrs: []string{"127.0.0.1:1"}})
	if err != nil {
		t.Fatalf("NewRedisClient(sentinel): %v", err)
	}
	c4.Close()
}

func TestNewRedisClientConnects(t *testing.T) {
	srv := redistest.Start(t)
	cfg, err := RedisConfigFromEnv(envOf(map[string]string{"REDIS_URL": "redis://" + srv.Addr() + "/0"}))
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewRedisClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatalf("Ping via REDIS_URL: %v", err)
	}
}
