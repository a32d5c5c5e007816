package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/redisconfig"
	"github.com/tiercache/tiercache/session"
	"github.com/tiercache/tiercache/session/pgstore/pgtest"
)

// instance is one contextd (the real app wiring) behind an httptest.Server.
type instance struct {
	app *app
	ts  *httptest.Server
	URL string
	ns  string
}

type instanceOptions struct {
	Redis     *redistest.Server // nil: L1 only (unless Cluster is set)
	Database  string            // SQLite path or postgres URL; empty: a new SQLite file
	Namespace string            // empty: a fresh random one
	APIKeys   map[string]string
	OpsKey    string
	// TracerProvider, when set, traces the instance (as the OTel environment would).
	TracerProvider *sdktrace.TracerProvider
	L1TTL          time.Duration
	// L2Timeout is the cache's Redis time budget. Default 500 ms here, not
	// the library's 50 ms: with -race on two shared cores a healthy Redis
	// call can take longer, and these tests are about the service, not the
	// budget. The Redis-kill test keeps the library default (negative).
	L2Timeout time.Duration
	// Cluster, when set and Redis is nil, is the Redis Cluster the instance
	// uses, configured from REDIS_CLUSTER_ADDRS as serve reads it.
	Cluster *redistest.Cluster
	// Sentinel, when set and Redis and Cluster are nil, is the Sentinel setup the instance
	// uses, configured from REDIS_SENTINEL_MASTER and REDIS_SENTINEL_ADDRS as serve reads them.
	Sentinel *redistest.Sentinel
	// MaxNodes is MAX_NODES_PER_SESSION; 0: no limit.
	MaxNodes int
	// NoInvalidation switches the instance's cache invalidations off (internal/testhook).
	NoInvalidation bool
	// Sharded is CACHE_SHARDED_PUBSUB (with Cluster).
	Sharded bool
}

// startInstance builds an app as serve does and serves it; everything is
// closed in tb.Cleanup.
func startInstance(tb testing.TB, o instanceOptions) *instance {
	tb.Helper()
	if o.Database == "" {
		o.Database = filepath.Join(tb.TempDir(), "contextd.db")
	}
	if o.Namespace == "" {
		o.Namespace = "t" + randHex(4)
	}
	if o.L1TTL == 0 {
		o.L1TTL = 5 * time.Second
	}
	switch {
	case o.L2Timeout == 0:
		o.L2Timeout = 500 * time.Millisecond
	case o.L2Timeout < 0:
		o.L2Timeout = 0 // the library default
	}
	cfg := config{Listen: "127.0.0.1:0", DatabaseURL: o.Database, Namespace: o.Namespace, TTL: 15 * time.Minute,
		L1TTL: o.L1TTL, L2Timeout: o.L2Timeout, APIKeys: o.APIKeys, OpsKey: o.OpsKey, MaxBody: defaultMaxBody, MaxNodes: o.MaxNodes,
		Tracing: tracingConfig{provider: o.TracerProvider}, noInvalidation: o.NoInvalidation, Sharded: o.Sharded}
	switch {
	case o.Redis != nil:
		cfg.Redis = redisconfig.Config{URL: "redis://" + o.Redis.Addr() + "/0"}
	case o.Cluster != nil:
		cfg.Redis = redisFromEnv(tb, map[string]string{"REDIS_CLUSTER_ADDRS": strings.Join(o.Cluster.Addrs(), ",")})
	case o.Sentinel != nil:
		cfg.Redis = redisFromEnv(tb, map[string]string{"REDIS_SENTINEL_MASTER": o.Sentinel.MasterName(),
			"REDIS_SENTINEL_ADDRS": strings.Join(o.Sentinel.SentinelAddrs(), ",")})
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	a, err := newApp(tb.Context(), cfg, log)
	if err != nil {
		tb.Fatalf("newApp: %v", err)
	}
	a.srv.ready.Store(true)
	ts := httptest.NewServer(a.srv.Handler())
	tb.Cleanup(func() {
		a.srv.stopStreams()
		ts.CloseClientConnections()
		ts.Close()
		a.Close()
	})
	return &instance{app: a, ts: ts, URL: ts.URL, ns: o.Namespace}
}

// redisFromEnv reads the Redis configuration from env as serve reads the environment.
func redisFromEnv(tb testing.TB, env map[string]string) redisconfig.Config {
	tb.Helper()
	rc, err := redisconfig.FromEnv(func(k string) string { return env[k] })
	if err != nil {
		tb.Fatalf("redisconfig.FromEnv(%v): %v", env, err)
	}
	return rc
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// response is one HTTP exchange's result.
type response struct {
	Status int
	Header http.Header
	Body   []byte
}

func (r response) decode(tb testing.TB, dst any) {
	tb.Helper()
	if err := json.Unmarshal(r.Body, dst); err != nil {
		tb.Fatalf("decode %s: %v", r.Body, err)
	}
}

// errCode returns the error code of a JSON error body, failing when the body
// is not one.
func (r response) errCode(tb testing.TB) string {
	tb.Helper()
	var e errorBody
	if err := json.Unmarshal(r.Body, &e); err != nil || e.Error.Code == "" || e.Error.Message == "" {
		tb.Fatalf("body %q is not a JSON error {\"error\":{\"code\",\"message\"}}", r.Body)
	}
	return e.Error.Code
}

// req is a request description for do.
type req struct {
	Method, Path, Key string
	Body              any    // JSON-encoded unless []byte or string
	ContentType       string // default application/json when Body is set
	Header            map[string]string
}

func do(tb testing.TB, base string, q req) response {
	tb.Helper()
	var body io.Reader
	ct := q.ContentType
	switch b := q.Body.(type) {
	case nil:
	case []byte:
		body = bytes.NewReader(b)
	case string:
		body = strings.NewReader(b)
	default:
		data, err := json.Marshal(b)
		if err != nil {
			tb.Fatal(err)
		}
		body = bytes.NewReader(data)
	}
	if q.Body != nil && ct == "" {
		ct = "application/json"
	}
	r, err := http.NewRequestWithContext(tb.Context(), q.Method, base+q.Path, body)
	if err != nil {
		tb.Fatal(err)
	}
	if ct != "-" && ct != "" {
		r.Header.Set("Content-Type", ct)
	}
	if q.Key != "" {
		r.Header.Set("Authorization", "Bearer "+q.Key)
	}
	for k, v := range q.Header {
		r.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(r)
	if err != nil {
		tb.Fatalf("%s %s: %v", q.Method, q.Path, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return response{Status: resp.StatusCode, Header: resp.Header, Body: data}
}

// must does q and fails unless the status is want; it decodes into dst when
// dst is not nil.
func must(tb testing.TB, base string, q req, want int, dst any) response {
	tb.Helper()
	r := do(tb, base, q)
	if r.Status != want {
		tb.Fatalf("%s %s = %d %s, want %d", q.Method, q.Path, r.Status, r.Body, want)
	}
	if dst != nil {
		r.decode(tb, dst)
	}
	return r
}

func createSession(tb testing.TB, base, key, title string) session.Session {
	tb.Helper()
	var s session.Session
	must(tb, base, req{Method: "POST", Path: "/api/sessions", Key: key, Body: map[string]any{"title": title}}, http.StatusCreated, &s)
	return s
}

func chat(tb testing.TB, base, key, sessionID, text string) session.ChatResult {
	tb.Helper()
	var res session.ChatResult
	must(tb, base, req{Method: "POST", Path: "/api/chat", Key: key, Body: map[string]any{"session_id": sessionID, "content": text}}, http.StatusCreated, &res)
	return res
}

func getContext(tb testing.TB, base, key, sessionID string) session.Context {
	tb.Helper()
	var c session.Context
	must(tb, base, req{Method: "GET", Path: "/api/sessions/" + sessionID + "/context", Key: key}, http.StatusOK, &c)
	return c
}

// subscribe opens an SSE stream and returns its events; cancel closes it.
func subscribe(tb testing.TB, base, key, sessionID, lastID string) (<-chan sseEvent, context.CancelFunc) {
	tb.Helper()
	ctx, cancel := context.WithCancel(tb.Context())
	out := make(chan sseEvent, 64)
	opened := make(chan struct{})
	ended := make(chan error, 1)
	var wg sync.WaitGroup
	wg.Go(func() {
		defer close(out)
		ended <- readEvents(ctx, http.DefaultClient, base, key, sessionID, lastID, func() { close(opened) }, func(ev sseEvent) {
			select {
			case out <- ev:
			case <-ctx.Done():
			}
		})
	})
	select {
	case <-opened:
	case err := <-ended:
		cancel()
		wg.Wait()
		tb.Fatalf("subscribe: %v", err)
	}
	stop := func() { cancel(); wg.Wait() }
	tb.Cleanup(stop)
	return out, stop
}

// nextEvent waits up to 10 s for the next event.
func nextEvent(tb testing.TB, ch <-chan sseEvent) sseEvent {
	tb.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			tb.Fatal("event stream closed, want an event")
		}
		return ev
	case <-time.After(10 * time.Second):
		tb.Fatal("no event within 10s")
	}
	return sseEvent{}
}

// eventually polls cond every 10 ms until it holds or 10 s pass.
func eventually(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("%s: not within 10s", what)
		}
		time.Sleep(10 * time.Millisecond) // polling interval, not a settle wait
	}
}

// stores returns the store backends to run end-to-end tests against: a
// fresh SQLite file always, and a fresh PostgreSQL schema when
// TEST_DATABASE_URL is set and reachable.
func stores(t *testing.T) map[string]func(t *testing.T) string {
	m := map[string]func(t *testing.T) string{
		"sqlite": func(t *testing.T) string { return filepath.Join(t.TempDir(), "contextd.db") },
	}
	if os.Getenv("TEST_DATABASE_URL") != "" {
		m["postgres"] = func(t *testing.T) string { return pgtest.Schema(t) }
	}
	return m
}
