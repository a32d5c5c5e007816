package main

import (
	"bytes"
	"errors"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/tiercache/tiercache"
	"github.com/tiercache/tiercache/internal/redistest"
)

const (
	operationsDoc = "../../docs/OPERATIONS.md"
	aclUser       = "tiercache" // the user of the ACL SETUSER lines in docs/OPERATIONS.md
)

// contextdACL returns the documented rules for the cache plus those contextd adds, for namespace ns.
func contextdACL(tb testing.TB, ns string) []string {
	tb.Helper()
	return append(redistest.ACLRules(tb, operationsDoc, aclUser, "on", tiercache.DefaultNamespace, ns),
		redistest.ACLRules(tb, operationsDoc, aclUser, "+info", tiercache.DefaultNamespace, ns)...)
}

// TestTLSAndACL: contextd over mutual TLS (rediss:// URL, CA, client certificate and key from the
// environment) as a user with exactly the documented rules: chat, contexts, SSE events and the
// Redis health route all work, and the cache reports Redis healthy.
func TestTLSAndACL(t *testing.T) {
	t.Parallel()
	rs := redistest.StartWith(t, redistest.Options{TLS: &redistest.TLSOptions{AuthClients: true}})
	ns := "acl" + randHex(3)
	rs.SetUser(t, aclUser, "s3cret", contextdACL(t, ns)...)
	certs := rs.Certs()
	base, shutdown := serveInProcess(t, map[string]string{
		"REDIS_URL":           "rediss://" + url.UserPassword(aclUser, "s3cret").String() + "@" + rs.TLSAddr() + "/0",
		"REDIS_TLS_CA_FILE":   certs.CAFile,
		"REDIS_TLS_CERT_FILE": certs.ClientCertFile,
		"REDIS_TLS_KEY_FILE":  certs.ClientKeyFile,
		"CACHE_NAMESPACE":     ns,
		"CACHE_L2_TIMEOUT":    "10s", // so that an L2 error below is a refusal, not a busy host's timeout
	})
	defer shutdown()
	s := createSession(t, base, "", "tls")
	ch, stop := subscribe(t, base, "", s.ID, "")
	defer stop()
	first := chat(t, base, "", s.ID, "hello over TLS")
	ev := nextEvent(t, ch)
	if ev.ID == "" {
		t.Fatalf("SSE event without an ID: %+v", ev)
	}
	// A node update appends a node event (its version is checked in the stream's hash).
	must(t, base, req{Method: "PATCH", Path: "/api/nodes/" + first.Node.ID, Header: map[string]string{"If-Match": `"1"`},
		Body: map[string]any{"content": "changed"}}, 200, nil)
	updated := nextEvent(t, ch)
	// A client resuming after the first event gets the update again from the stream.
	resumed, stopResumed := subscribe(t, base, "", s.ID, ev.ID)
	defer stopResumed()
	if got := nextEvent(t, resumed); got.ID != updated.ID {
		t.Errorf("resumed after %s: first event %s, want %s", ev.ID, got.ID, updated.ID)
	}
	if c := getContext(t, base, "", s.ID); len(c.Nodes) != 1 || c.Nodes[0].Content != "changed" {
		t.Errorf("context = %+v, want the one updated node", c.Nodes)
	}
	var h healthReport
	must(t, base, req{Method: "GET", Path: "/api/health/redis"}, 200, &h)
	if h.Status != "healthy" || h.Mode != "two-tier" || !h.Redis.Connected || h.Redis.UsedMemory == 0 {
		t.Errorf("health = status %q, mode %q, connected %v, used memory %d; want healthy, two-tier, true, > 0",
			h.Status, h.Mode, h.Redis.Connected, h.Redis.UsedMemory)
	}
	if h.Cache.L2Errors != 0 {
		t.Errorf("health: %d L2 errors, want 0", h.Cache.L2Errors)
	}
	if n := rs.Do(t, "EXISTS", ns+":ev:{local:"+s.ID+"}"); n != int64(1) {
		t.Errorf("EXISTS of the session's event stream = %v, want 1", n)
	}
}

const mainArgsEnv = "CONTEXTD_TEST_MAIN_ARGS"

// TestContextdMain is the body of a child process started by TestStartPermissionError: contextd's
// real main, with the arguments from the environment.
func TestContextdMain(t *testing.T) {
	args := os.Getenv(mainArgsEnv)
	if args == "" {
		t.Skip("runs only as a child of TestStartPermissionError")
	}
	os.Args = append([]string{"contextd"}, strings.Split(args, "\x1f")...)
	main()
}

// TestStartPermissionError: contextd started as a Redis user that lacks a permission the cache
// needs exits at once with status 1 and says on stderr what is missing.
func TestStartPermissionError(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t)
	ns := "perm" + randHex(3)
	rules := contextdACL(t, ns)
	for _, tt := range []struct {
		name, drop, want string
	}{
		{"command", "+evalsha", `contextd: tiercache: Redis user "command" may not run EVALSHA (ACL)`},
		{"channel", "&" + ns + ":*", `may not access invalidation channel "` + ns + `:invalidate"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rs.SetUser(t, tt.name, "pw", slices.DeleteFunc(slices.Clone(rules), func(r string) bool { return r == tt.drop })...)
			args := []string{"serve", "--listen", "127.0.0.1:0", "--database-url", filepath.Join(t.TempDir(), "c.db"), "--namespace", ns,
				"--redis-url", "redis://" + url.UserPassword(tt.name, "pw").String() + "@" + rs.Addr() + "/0"}
			cmd := exec.Command(os.Args[0], "-test.run=^TestContextdMain$")
			cmd.Env = append(os.Environ(), mainArgsEnv+"="+strings.Join(args, "\x1f"))
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
			err := cmd.Run()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 1 {
				t.Fatalf("contextd as a user without %s: %v, want exit status 1\nstderr:\n%s\nstdout:\n%s", tt.drop, err, &stderr, &stdout)
			}
			if !strings.Contains(stderr.String(), tt.want) {
				t.Errorf("stderr does not say %q:\n%s", tt.want, &stderr)
			}
		})
	}
}
