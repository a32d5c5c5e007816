package redisconfig

import (
	"context"
	"crypto/tls"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/redistest"
)

func TestFromEnvTLS(t *testing.T) {
	t.Parallel()
	got, err := FromEnv(envOf(map[string]string{"REDIS_HOST": "redis.internal", "REDIS_TLS": "1",
		"REDIS_TLS_CA_FILE": "/etc/ca.pem", "REDIS_TLS_CERT_FILE": " /etc/c.pem ", "REDIS_TLS_KEY_FILE": "/etc/c.key",
		"REDIS_TLS_SERVER_NAME": "redis.example"}))
	if err != nil {
		t.Fatal(err)
	}
	if got.TLSCAFile != "/etc/ca.pem" || got.TLSCertFile != "/etc/c.pem" || got.TLSKeyFile != "/etc/c.key" ||
		got.TLSServerName != "redis.example" || !got.TLSOn() {
		t.Errorf("FromEnv(TLS variables) = %+v", got)
	}
	u, err := FromEnv(envOf(map[string]string{"REDIS_URL": "rediss://127.0.0.1:6380", "REDIS_TLS_CA_FILE": "/etc/ca.pem"}))
	if err != nil {
		t.Fatalf("rediss:// URL with a CA file: %v", err)
	}
	if !u.TLSOn() || u.TLS {
		t.Errorf("rediss:// URL: TLSOn() = %v, TLS = %v; want TLS on through the scheme alone", u.TLSOn(), u.TLS)
	}
}

func TestTLSConfigErrors(t *testing.T) {
	t.Parallel()
	certs := redistest.NewCerts(t)
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	unreadable := filepath.Join(dir, "unreadable.pem")
	if err := os.WriteFile(unreadable, []byte("x"), 0o000); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.pem")
	tls := map[string]string{"REDIS_HOST": "127.0.0.1", "REDIS_TLS": "true"}
	with := func(m map[string]string) map[string]string { return merge(tls, m) }
	// Caught by FromEnv (no file is read).
	for _, tt := range []struct {
		name    string
		env     map[string]string
		mention []string
	}{
		{"ca file with tls off", map[string]string{"REDIS_HOST": "h", "REDIS_TLS_CA_FILE": certs.CAFile}, []string{"REDIS_TLS_CA_FILE", "TLS is off"}},
		{"ca file with tls false", map[string]string{"REDIS_HOST": "h", "REDIS_TLS": "false", "REDIS_TLS_CA_FILE": certs.CAFile}, []string{"REDIS_TLS_CA_FILE", "TLS is off"}},
		{"cert with redis:// url", map[string]string{"REDIS_URL": "redis://h:6379", "REDIS_TLS_CERT_FILE": certs.ClientCertFile,
			"REDIS_TLS_KEY_FILE": certs.ClientKeyFile}, []string{"REDIS_TLS_CERT_FILE", "rediss://"}},
		{"skip_verify in the url", map[string]string{"REDIS_URL": "rediss://h:6380?skip_verify=true"}, []string{"REDIS_URL", "skip_verify", "REDIS_TLS_CA_FILE"}},
		{"server name with tls off", map[string]string{"REDIS_CLUSTER_ADDRS": "127.0.0.1:7000", "REDIS_TLS_SERVER_NAME": "x"}, []string{"REDIS_TLS_SERVER_NAME"}},
		{"cert without key", with(map[string]string{"REDIS_TLS_CERT_FILE": certs.ClientCertFile}), []string{"REDIS_TLS_KEY_FILE is empty"}},
		{"key without cert", with(map[string]string{"REDIS_TLS_KEY_FILE": certs.ClientKeyFile}), []string{"REDIS_TLS_CERT_FILE is empty"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := FromEnv(envOf(tt.env))
			for _, m := range tt.mention {
				if err == nil || !strings.Contains(err.Error(), m) {
					t.Errorf("FromEnv(%v) = %v, want an error mentioning %q", tt.env, err, m)
				}
			}
		})
	}
	// Caught by NewClient, which reads the files.
	for _, tt := range []struct {
		name    string
		env     map[string]string
		mention []string
	}{
		{"missing ca file", with(map[string]string{"REDIS_TLS_CA_FILE": missing}), []string{"REDIS_TLS_CA_FILE", "missing.pem", "no such file"}},
		{"unreadable ca file", with(map[string]string{"REDIS_TLS_CA_FILE": unreadable}), []string{"REDIS_TLS_CA_FILE", "unreadable.pem"}},
		{"ca file not pem", with(map[string]string{"REDIS_TLS_CA_FILE": notPEM}), []string{"REDIS_TLS_CA_FILE", "not.pem", "no PEM certificate"}},
		{"missing cert file", with(map[string]string{"REDIS_TLS_CERT_FILE": missing, "REDIS_TLS_KEY_FILE": certs.ClientKeyFile}), []string{"REDIS_TLS_CERT_FILE", "missing.pem"}},
		{"missing key file", with(map[string]string{"REDIS_TLS_CERT_FILE": certs.ClientCertFile, "REDIS_TLS_KEY_FILE": missing}), []string{"REDIS_TLS_KEY_FILE", "missing.pem"}},
		{"cert not pem", with(map[string]string{"REDIS_TLS_CERT_FILE": notPEM, "REDIS_TLS_KEY_FILE": certs.ClientKeyFile}), []string{"REDIS_TLS_CERT_FILE", "not.pem"}},
		{"key of another cert", with(map[string]string{"REDIS_TLS_CERT_FILE": certs.ClientCertFile, "REDIS_TLS_KEY_FILE": certs.ServerKeyFile}),
			[]string{"REDIS_TLS_CERT_FILE", "REDIS_TLS_KEY_FILE", "does not match"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if tt.name == "unreadable ca file" && os.Geteuid() == 0 {
				t.Skip("root reads files whatever their mode")
			}
			cfg, err := FromEnv(envOf(tt.env))
			if err != nil {
				t.Fatalf("FromEnv(%v): %v", tt.env, err)
			}
			c, err := NewClient(cfg)
			if err == nil {
				c.Close()
			}
			for _, m := range tt.mention {
				if err == nil || !strings.Contains(err.Error(), m) {
					t.Errorf("NewClient(%v) = %v, want an error mentioning %q", tt.env, err, m)
				}
			}
		})
	}
}

// TestNewClientTLSModes: every mode carries the CA, the client certificate and the server name.
func TestNewClientTLSModes(t *testing.T) {
	t.Parallel()
	certs := redistest.NewCerts(t)
	base := Config{TLS: true, TLSCAFile: certs.CAFile, TLSCertFile: certs.ClientCertFile, TLSKeyFile: certs.ClientKeyFile}
	for _, tt := range []struct {
		name       string
		cfg        func(Config) Config
		serverName string
	}{
		{"url", func(c Config) Config { c.TLS = false; c.URL = "rediss://127.0.0.1:1"; return c }, "127.0.0.1"},
		{"url with name", func(c Config) Config { c.URL = "redis://127.0.0.1:1"; c.TLSServerName = "redis.example"; return c }, "redis.example"},
		{"single", func(c Config) Config { c.Host = "localhost"; c.Port = 1; return c }, "localhost"},
		{"sentinel", func(c Config) Config { c.SentinelMaster = "m"; c.SentinelAddrs = []string{"127.0.0.1:1"}; return c }, ""},
		{"cluster", func(c Config) Config { c.ClusterAddrs = []string{"127.0.0.1:1"}; c.TLSServerName = "n"; return c }, "n"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := NewClient(tt.cfg(base))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			var conf *tls.Config
			switch cl := c.(type) {
			case *redis.Client:
				conf = cl.Options().TLSConfig
			case *redis.ClusterClient:
				conf = cl.Options().TLSConfig
			}
			if conf == nil {
				t.Fatalf("%T has no TLSConfig", c)
			}
			if conf.RootCAs == nil || len(conf.Certificates) != 1 || conf.ServerName != tt.serverName ||
				conf.MinVersion != tls.VersionTLS12 || conf.InsecureSkipVerify {
				t.Errorf("TLSConfig: RootCAs set %v, %d certificates, ServerName %q, MinVersion %x, InsecureSkipVerify %v; want the CA, 1, %q, TLS 1.2, false",
					conf.RootCAs != nil, len(conf.Certificates), conf.ServerName, conf.MinVersion, conf.InsecureSkipVerify, tt.serverName)
			}
		})
	}
}

// TestNewClientTLSConnects talks to a TLS redis-server: with the CA, with mutual TLS, through a
// rediss:// URL; and fails against an unknown CA, a wrong server name, or without a client
// certificate where one is required.
func TestNewClientTLSConnects(t *testing.T) {
	t.Parallel()
	srv := redistest.StartWith(t, redistest.Options{TLS: &redistest.TLSOptions{}})
	mutual := redistest.StartWith(t, redistest.Options{TLS: &redistest.TLSOptions{AuthClients: true}})
	other := redistest.NewCerts(t)
	ca, mca := srv.Certs().CAFile, mutual.Certs().CAFile
	client := map[string]string{"REDIS_TLS_CERT_FILE": mutual.Certs().ClientCertFile, "REDIS_TLS_KEY_FILE": mutual.Certs().ClientKeyFile}
	for _, tt := range []struct {
		name    string
		env     map[string]string
		failing string // "": must connect; else a word of the error
	}{
		{"rediss url", map[string]string{"REDIS_URL": "rediss://" + srv.TLSAddr(), "REDIS_TLS_CA_FILE": ca}, ""},
		{"host and tls", map[string]string{"REDIS_HOST": "127.0.0.1", "REDIS_PORT": port(srv.TLSAddr()), "REDIS_TLS": "true", "REDIS_TLS_CA_FILE": ca}, ""},
		{"server name", map[string]string{"REDIS_HOST": "127.0.0.1", "REDIS_PORT": port(srv.TLSAddr()), "REDIS_TLS": "true", "REDIS_TLS_CA_FILE": ca,
			"REDIS_TLS_SERVER_NAME": "localhost"}, ""},
		{"mutual", merge(map[string]string{"REDIS_URL": "rediss://" + mutual.TLSAddr(), "REDIS_TLS_CA_FILE": mca}, client), ""},
		{"unknown ca", map[string]string{"REDIS_URL": "rediss://" + srv.TLSAddr(), "REDIS_TLS_CA_FILE": other.CAFile}, "certificate"},
		{"system roots", map[string]string{"REDIS_URL": "rediss://" + srv.TLSAddr()}, "certificate"},
		{"wrong server name", map[string]string{"REDIS_URL": "rediss://" + srv.TLSAddr(), "REDIS_TLS_CA_FILE": ca, "REDIS_TLS_SERVER_NAME": "redis.example"}, "redis.example"},
		{"no client cert", map[string]string{"REDIS_URL": "rediss://" + mutual.TLSAddr(), "REDIS_TLS_CA_FILE": mca}, "certificate"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := FromEnv(envOf(tt.env))
			if err != nil {
				t.Fatal(err)
			}
			cfg.MaxRetries = -1
			c, err := NewClient(cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			err = c.Set(ctx, "k", tt.name, 0).Err()
			switch {
			case tt.failing == "" && err != nil:
				t.Fatalf("Set over TLS with %v: %v", tt.env, err)
			case tt.failing != "" && (err == nil || !strings.Contains(err.Error(), tt.failing)):
				t.Fatalf("Set over TLS with %v = %v, want an error mentioning %q", tt.env, err, tt.failing)
			}
		})
	}
	if got := srv.Do(t, "GET", "k"); got != "server name" {
		t.Errorf("GET k on the plain port = %v, want the last successful write's value", got)
	}
}

// merge returns one map with the entries of ms, later ones winning.
func merge(ms ...map[string]string) map[string]string {
	out := map[string]string{}
	for _, m := range ms {
		maps.Copy(out, m)
	}
	return out
}

func port(addr string) string { return addr[strings.LastIndexByte(addr, ':')+1:] }
