package redistest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Certs is a throwaway PKI for TLS tests, made by NewCerts: a CA, a server certificate for
// 127.0.0.1, ::1 and localhost, and a client certificate for mutual TLS, all signed by the CA
// and written as PEM files. Two calls make two unrelated CAs, so a client trusting one rejects a
// server of the other.
type Certs struct {
	// CAFile holds the CA certificate; CA is the same certificate as a pool.
	CAFile string
	CA     *x509.CertPool
	// ServerCertFile and ServerKeyFile are the server's certificate and private key.
	ServerCertFile, ServerKeyFile string
	// ClientCertFile and ClientKeyFile are a client certificate (CN "tiercache-test-client") and
	// its key, for servers that require client certificates.
	ClientCertFile, ClientKeyFile string
	// Client is the client certificate and key, ready for tls.Config.Certificates.
	Client tls.Certificate
}

// NewCerts generates a CA and, signed by it, a server and a client certificate (ECDSA P-256,
// valid from an hour ago for a day), and writes them to PEM files under tb.TempDir(). It fails tb
// when generating or writing fails.
func NewCerts(tb testing.TB) *Certs {
	tb.Helper()
	dir := tb.TempDir()
	now := time.Now()
	template := func(serial int64, cn string) *x509.Certificate {
		return &x509.Certificate{
			SerialNumber: big.NewInt(serial),
			Subject:      pkix.Name{CommonName: cn, Organization: []string{"tiercache redistest"}},
			NotBefore:    now.Add(-time.Hour),
			NotAfter:     now.Add(24 * time.Hour),
		}
	}
	caKey := newKey(tb)
	ca := template(1, "tiercache-test-ca")
	ca.IsCA, ca.BasicConstraintsValid = true, true
	ca.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		tb.Fatalf("redistest: CA certificate: %v", err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		tb.Fatalf("redistest: CA certificate: %v", err)
	}
	c := &Certs{CAFile: filepath.Join(dir, "ca.crt"), CA: x509.NewCertPool()}
	c.CA.AddCert(caCert)
	writePEM(tb, c.CAFile, "CERTIFICATE", caDER)

	leaf := func(name string, serial int64, cn string, usage x509.ExtKeyUsage, edit func(*x509.Certificate)) (certFile, keyFile string, pair tls.Certificate) {
		key := newKey(tb)
		t := template(serial, cn)
		t.KeyUsage = x509.KeyUsageDigitalSignature
		t.ExtKeyUsage = []x509.ExtKeyUsage{usage}
		if edit != nil {
			edit(t)
		}
		der, err := x509.CreateCertificate(rand.Reader, t, caCert, &key.PublicKey, caKey)
		if err != nil {
			tb.Fatalf("redistest: %s certificate: %v", name, err)
		}
		keyDER, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			tb.Fatalf("redistest: %s key: %v", name, err)
		}
		certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
		writePEM(tb, certFile, "CERTIFICATE", der)
		writePEM(tb, keyFile, "PRIVATE KEY", keyDER)
		pair, err = tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			tb.Fatalf("redistest: %s key pair: %v", name, err)
		}
		return certFile, keyFile, pair
	}
	c.ServerCertFile, c.ServerKeyFile, _ = leaf("server", 2, "localhost", x509.ExtKeyUsageServerAuth, func(t *x509.Certificate) {
		t.DNSNames = []string{"localhost"}
		t.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	})
	c.ClientCertFile, c.ClientKeyFile, c.Client = leaf("client", 3, "tiercache-test-client", x509.ExtKeyUsageClientAuth, nil)
	return c
}

func newKey(tb testing.TB) *ecdsa.PrivateKey {
	tb.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatalf("redistest: key: %v", err)
	}
	return k
}

func writePEM(tb testing.TB, path, typ string, der []byte) {
	tb.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		tb.Fatalf("redistest: %v", err)
	}
}

// TLSOptions makes a server started by StartWith also listen with TLS (Options.TLS).
type TLSOptions struct {
	// Certs are the server's certificate and the CA it checks client certificates against;
	// nil: fresh ones from NewCerts (see Server.Certs).
	Certs *Certs
	// AuthClients requires clients to present a certificate signed by Certs' CA
	// (tls-auth-clients yes); false: tls-auth-clients no.
	AuthClients bool
}

// tlsArgs returns the redis-server arguments for the TLS port, nil without TLS.
func (s *Server) tlsArgs() []string {
	if s.opts.TLS == nil {
		return nil
	}
	auth := "no"
	if s.opts.TLS.AuthClients {
		auth = "yes"
	}
	a := []string{
		"--tls-port", strconv.Itoa(s.tlsPort),
		"--tls-cert-file", s.certs.ServerCertFile,
		"--tls-key-file", s.certs.ServerKeyFile,
		"--tls-ca-cert-file", s.certs.CAFile,
		"--tls-auth-clients", auth,
	}
	if s.kind == kindCluster {
		// The bus between nodes speaks TLS too, and CLUSTER SLOTS then names the TLS ports. A
		// node dials its peers as a TLS client with the client certificate.
		a = append(a, "--tls-cluster", "yes",
			"--tls-client-cert-file", s.certs.ClientCertFile, "--tls-client-key-file", s.certs.ClientKeyFile)
	}
	return a
}

// TLSAddr returns the server's TLS address, "127.0.0.1:PORT", or "" when it was started
// without Options.TLS. The plain port (Addr) stays open on loopback for the test's own
// administration (Do, readiness checks).
func (s *Server) TLSAddr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.opts.TLS == nil {
		return ""
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.tlsPort))
}

// Certs returns the certificates the server's TLS port uses, nil without Options.TLS.
func (s *Server) Certs() *Certs { return s.certs }

// TLSClientConfig returns a client TLS configuration that trusts the server's CA and, with
// clientCert, presents the client certificate (as a server with AuthClients requires).
func (s *Server) TLSClientConfig(clientCert bool) *tls.Config {
	if s.certs == nil {
		return nil
	}
	conf := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: s.certs.CA, ServerName: "127.0.0.1"}
	if clientCert {
		conf.Certificates = []tls.Certificate{s.certs.Client}
	}
	return conf
}

// TLSOptions returns go-redis Options for the server's TLS port (see TLSClientConfig).
func (s *Server) TLSOptions(clientCert bool) *redis.Options {
	return &redis.Options{Addr: s.TLSAddr(), TLSConfig: s.TLSClientConfig(clientCert)}
}
