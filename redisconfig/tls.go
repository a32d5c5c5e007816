package redisconfig

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
)

// TLSOn reports whether cfg connects with TLS: TLS is set or the URL's scheme is rediss.
func (cfg Config) TLSOn() bool {
	return cfg.TLS || strings.HasPrefix(strings.ToLower(cfg.URL), "rediss://")
}

// validateTLS checks the TLS fields without reading the files: they need TLS on, and a client
// certificate needs its key and the key its certificate.
func (cfg Config) validateTLS() error {
	if !cfg.TLSOn() {
		for _, f := range []struct{ name, v string }{
			{"REDIS_TLS_CA_FILE", cfg.TLSCAFile}, {"REDIS_TLS_CERT_FILE", cfg.TLSCertFile},
			{"REDIS_TLS_KEY_FILE", cfg.TLSKeyFile}, {"REDIS_TLS_SERVER_NAME", cfg.TLSServerName},
		} {
			if f.v != "" {
				return fmt.Errorf("redisconfig: %s is set but TLS is off: set REDIS_TLS=true or use a rediss:// URL", f.name)
			}
		}
		return nil
	}
	switch {
	case cfg.TLSCertFile != "" && cfg.TLSKeyFile == "":
		return errors.New("redisconfig: REDIS_TLS_CERT_FILE is set but REDIS_TLS_KEY_FILE is empty: a client certificate needs its private key")
	case cfg.TLSKeyFile != "" && cfg.TLSCertFile == "":
		return errors.New("redisconfig: REDIS_TLS_KEY_FILE is set but REDIS_TLS_CERT_FILE is empty: a private key needs its client certificate")
	}
	return nil
}

// tlsConfig reads the TLS files and returns the client TLS configuration, nil with TLS off. Its
// ServerName is TLSServerName; empty, crypto/tls takes the host of each address dialed (every
// Sentinel and Cluster node is checked against its own address).
func (cfg Config) tlsConfig() (*tls.Config, error) {
	if !cfg.TLSOn() {
		return nil, nil
	}
	conf := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: cfg.TLSServerName}
	if cfg.TLSCAFile != "" {
		pem, err := os.ReadFile(cfg.TLSCAFile)
		if err != nil {
			return nil, fmt.Errorf("redisconfig: REDIS_TLS_CA_FILE: %w", err)
		}
		conf.RootCAs = x509.NewCertPool()
		if !conf.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("redisconfig: REDIS_TLS_CA_FILE %q holds no PEM certificate", cfg.TLSCAFile)
		}
	}
	if cfg.TLSCertFile != "" {
		for _, f := range []struct{ name, path string }{{"REDIS_TLS_CERT_FILE", cfg.TLSCertFile}, {"REDIS_TLS_KEY_FILE", cfg.TLSKeyFile}} {
			if _, err := os.Stat(f.path); err != nil {
				return nil, fmt.Errorf("redisconfig: %s: %w", f.name, err)
			}
		}
		pair, err := tls.LoadX509KeyPair(cfg.TLSCertFile, cfg.TLSKeyFile)
		if err != nil {
			return nil, fmt.Errorf("redisconfig: REDIS_TLS_CERT_FILE %q and REDIS_TLS_KEY_FILE %q: %w", cfg.TLSCertFile, cfg.TLSKeyFile, err)
		}
		conf.Certificates = []tls.Certificate{pair}
	}
	return conf, nil
}
