package redisconfig

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

func TestFromEnv(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		env  map[string]string
		want Config
		mode string
	}{
		{name: "empty", env: nil, want: Config{}, mode: "none"},
		{name: "url", env: map[string]string{"REDIS_URL": "redis://u:p@127.0.0.1:6380/2"},
			want: Config{URL: "redis://u:p@127.0.0.1:6380/2"}, mode: "url"},
		{name: "host", env: map[string]string{"REDIS_HOST": "127.0.0.1", "REDIS_PORT": "6390", "REDIS_DB": "3",
			"REDIS_PASSWORD": " secret ", "REDIS_USERNAME": "me", "REDIS_TLS": "true"},
			want: Config{Host: "127.0.0.1", Port: 6390, DB: 3, Password: " secret ", Username: "me", TLS: true}, mode: "single"},
		{name: "sentinel", env: map[string]string{"REDIS_SENTINEL_MASTER": "mymaster", "REDIS_SENTINEL_ADDRS": "127.0.0.1:26379, 127.0.0.1:26380"},
			want: Config{SentinelMaster: "mymaster", SentinelAddrs: []string{"127.0.0.1:26379", "127.0.0.1:26380"}}, mode: "sentinel"},
		{name: "cluster", env: map[string]string{"REDIS_CLUSTER_ADDRS": "127.0.0.1:7000,127.0.0.1:7001,"},
			want: Config{ClusterAddrs: []string{"127.0.0.1:7000", "127.0.0.1:7001"}}, mode: "cluster"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := FromEnv(envOf(tt.env))
			if err != nil {
				t.Fatalf("FromEnv(%v) error: %v", tt.env, err)
			}
			if !sameConfig(got, tt.want) {
				t.Errorf("FromEnv(%v) = %+v, want %+v", tt.env, got, tt.want)
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

func sameConfig(a, b Config) bool {
	return a.URL == b.URL && a.Host == b.Host && a.Port == b.Port && a.Username == b.Username &&
		a.Password == b.Password && a.DB == b.DB && a.TLS == b.TLS && a.SentinelMaster == b.SentinelMaster &&
		strings.Join(a.SentinelAddrs, ",") == strings.Join(b.SentinelAddrs, ",") &&
		strings.Join(a.ClusterAddrs, ",") == strings.Join(b.ClusterAddrs, ",")
}

func TestFromEnvErrors(t *testing.T) {
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
			_, err := FromEnv(envOf(tt.env))
			if err == nil {
				t.Fatalf("FromEnv(%v) = nil error, want one mentioning %q", tt.env, tt.mention)
			}
			if !strings.Contains(err.Error(), tt.mention) {
				t.Errorf("FromEnv(%v) error %q does not mention %q", tt.env, err, tt.mention)
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Errorf("error %q leaks the password", err)
			}
		})
	}
}

func TestNewClientConfig(t *testing.T) {
	t.Parallel()
	if _, err := NewClient(Config{}); err == nil {
		t.Error("NewClient(Config{}) = nil error, want 'no Redis configured'")
	}
	// Defaults apply; nothing dials (the address is unroutable on purpose and the call returns at once).
	c, err := NewClient(Config{Host: "127.0.0.1", Port: 1})
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	defer c.Close()
	o := c.(*redis.Client).Options()
	if o.Addr != "127.0.0.1:1" || o.DialTimeout != DefaultDialTimeout || o.ReadTimeout != DefaultReadTimeout ||
		o.WriteTimeout != DefaultWriteTimeout || o.MaxRetries != DefaultMaxRetries ||
		o.MinRetryBackoff != DefaultMinRetryBackoff || o.MaxRetryBackoff != DefaultMaxRetryBackoff {
		t.Errorf("options = addr %s dial %v read %v write %v retries %d backoff %v..%v, want the defaults",
			o.Addr, o.DialTimeout, o.ReadTimeout, o.WriteTimeout, o.MaxRetries, o.MinRetryBackoff, o.MaxRetryBackoff)
	}
	// URL query values win over defaults, explicit fields over both.
	c2, err := NewClient(Config{URL: "redis://127.0.0.1:1/4?dial_timeout=2s", ReadTimeout: time.Second, MaxRetries: -1})
	if err != nil {
		t.Fatalf("NewClient(url): %v", err)
	}
	defer c2.Close()
	o2 := c2.(*redis.Client).Options()
	if o2.DB != 4 || o2.DialTimeout != 2*time.Second || o2.ReadTimeout != time.Second || o2.MaxRetries > 0 || // go-redis normalizes -1 (off) to 0
		o2.WriteTimeout != DefaultWriteTimeout {
		t.Errorf("url options = db %d dial %v read %v write %v retries %d", o2.DB, o2.DialTimeout, o2.ReadTimeout, o2.WriteTimeout, o2.MaxRetries)
	}
	c3, err := NewClient(Config{ClusterAddrs: []string{"127.0.0.1:1"}})
	if err != nil {
		t.Fatalf("NewClient(cluster): %v", err)
	}
	if _, ok := c3.(*redis.ClusterClient); !ok {
		t.Errorf("cluster config gave %T, want *redis.ClusterClient", c3)
	}
	c3.Close()
	c4, err := NewClient(Config{SentinelMaster: "m", SentinelAddrs: []string{"127.0.0.1:1"}})
	if err != nil {
		t.Fatalf("NewClient(sentinel): %v", err)
	}
	c4.Close()
}

func TestNewClientConnects(t *testing.T) {
	srv := redistest.Start(t)
	cfg, err := FromEnv(envOf(map[string]string{"REDIS_URL": "redis://" + srv.Addr() + "/0"}))
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewClient(cfg)
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
