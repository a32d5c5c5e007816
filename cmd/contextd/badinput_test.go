package main

import (
	"encoding/base64"
	"net/http"
	"strings"
	"testing"

	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/session"
)

// TestBadInput: each malformed request gets a 4xx JSON error and stores
// nothing.
func TestBadInput(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t)
	in := startInstance(t, instanceOptions{Redis: rs})
	s := createSession(t, in.URL, "", "s")
	n := chat(t, in.URL, "", s.ID, "hello").Node
	other := createSession(t, in.URL, "", "other")
	big := strings.Repeat("x", defaultMaxBody+10)
	bigMeta := map[string]any{"blob": strings.Repeat("y", session.MaxMetadataBytes)}
	chatTo := func(extra map[string]any) map[string]any {
		m := map[string]any{"session_id": s.ID, "content": "hi"}
		for k, v := range extra {
			m[k] = v
		}
		return m
	}
	tests := []struct {
		name   string
		q      req
		status int
		code   string
	}{
		{"malformed JSON", req{Method: "POST", Path: "/api/chat", Body: `{"session_id": "` + s.ID + `", "content": `}, 400, "bad_json"},
		{"syntax error", req{Method: "POST", Path: "/api/chat", Body: `{"session_id" "x"}`}, 400, "bad_json"},
		{"two JSON values", req{Method: "POST", Path: "/api/chat", Body: `{"session_id":"` + s.ID + `","content":"a"} {}`}, 400, "bad_json"},
		{"wrong JSON type", req{Method: "POST", Path: "/api/chat", Body: `{"session_id": 5, "content": "a"}`}, 400, "bad_json"},
		{"empty body", req{Method: "POST", Path: "/api/chat", Body: "", ContentType: "application/json"}, 400, "bad_json"},
		{"unknown field", req{Method: "POST", Path: "/api/chat", Body: chatTo(map[string]any{"sessionid": "x"})}, 400, "unknown_field"},
		{"oversized body", req{Method: "POST", Path: "/api/chat", Body: chatTo(map[string]any{"content": big})}, 413, "body_too_large"},
		{"wrong content type", req{Method: "POST", Path: "/api/chat", Body: `{"content":"hi"}`, ContentType: "text/plain"}, 415, "unsupported_media_type"},
		{"form content type", req{Method: "POST", Path: "/api/sessions", Body: "title=x", ContentType: "application/x-www-form-urlencoded"}, 415, "unsupported_media_type"},
		{"no content type", req{Method: "POST", Path: "/api/nodes", Body: `{"content":"hi"}`, ContentType: "-"}, 415, "unsupported_media_type"},
		{"oversized metadata", req{Method: "POST", Path: "/api/chat", Body: chatTo(map[string]any{"metadata": bigMeta})}, 422, "invalid_metadata"},
		{"oversized metadata on node", req{Method: "POST", Path: "/api/nodes", Body: map[string]any{"session_id": s.ID, "content": "x", "metadata": bigMeta}}, 422, "invalid_metadata"},
		{"oversized metadata on patch", req{Method: "PATCH", Path: "/api/nodes/" + n.ID, Header: map[string]string{"If-Match": `"1"`}, Body: map[string]any{"metadata": bigMeta}}, 422, "invalid_metadata"},
		{"bad role", req{Method: "POST", Path: "/api/chat", Body: chatTo(map[string]any{"role": "root"})}, 422, "invalid_role"},
		{"empty content", req{Method: "POST", Path: "/api/chat", Body: chatTo(map[string]any{"content": "  "})}, 422, "invalid_content"},
		{"long title", req{Method: "POST", Path: "/api/sessions", Body: map[string]any{"title": strings.Repeat("t", session.MaxTitle+1)}}, 422, "invalid_title"},
		{"invalid short ID", req{Method: "GET", Path: "/api/nodes/resolve/x12"}, 400, "invalid_short_id"},
		{"short ID leading zero", req{Method: "GET", Path: "/api/nodes/resolve/n012"}, 400, "invalid_short_id"},
		{"short ID too long", req{Method: "GET", Path: "/api/nodes/resolve/n1234567890123456789"}, 400, "invalid_short_id"},
		{"invalid short ID in refs", req{Method: "POST", Path: "/api/nodes", Body: map[string]any{"session_id": s.ID, "content": "x", "refs": []string{"#n0"}}}, 400, "invalid_short_id"},
		{"unknown short ID in refs", req{Method: "POST", Path: "/api/nodes", Body: map[string]any{"session_id": s.ID, "content": "x", "refs": []string{"@n77"}}}, 422, "unknown_refs"},
		{"bad last event ID", req{Method: "GET", Path: "/api/sessions/" + s.ID + "/events", Header: map[string]string{"Last-Event-ID": "yesterday"}}, 400, "invalid_last_event_id"},
		{"encoded slash", req{Method: "GET", Path: "/api/sessions/" + s.ID + "%2F..%2F" + other.ID}, 400, "bad_path"},
		{"encoded slash in node", req{Method: "GET", Path: "/api/nodes/a%2fb"}, 400, "bad_path"},
		{"dot segments", req{Method: "GET", Path: "/api/nodes/../sessions/" + other.ID}, 400, "bad_path"},
		{"encoded dots", req{Method: "GET", Path: "/api/sessions/%2e%2e/" + other.ID}, 400, "bad_path"},
		{"single dot", req{Method: "GET", Path: "/api/sessions/./" + other.ID}, 400, "bad_path"},
		{"double slash", req{Method: "GET", Path: "/api//sessions/" + other.ID}, 400, "bad_path"},
		{"backslash", req{Method: "GET", Path: "/api/sessions/a%5Cb"}, 400, "bad_path"},
		{"bad id chars", req{Method: "GET", Path: "/api/sessions/s%20x"}, 404, "not_found"},
		{"unknown route", req{Method: "GET", Path: "/api/nope"}, 404, "not_found"},
		{"wrong method", req{Method: "PUT", Path: "/api/sessions/" + s.ID, Body: map[string]any{}}, 405, "method_not_allowed"},
		{"bad limit", req{Method: "GET", Path: "/api/sessions?limit=-1"}, 400, "invalid_limit"},
		{"empty update", req{Method: "PATCH", Path: "/api/nodes/" + n.ID, Header: map[string]string{"If-Match": `"1"`}, Body: map[string]any{}}, 422, "invalid_update"},
		{"warm nothing", req{Method: "POST", Path: "/api/cache/warm", Body: map[string]any{}}, 422, "invalid_warm"},
		{"chat unknown session", req{Method: "POST", Path: "/api/chat", Body: map[string]any{"session_id": "s_nope", "content": "x"}}, 404, "not_found"},
		{"new-session chat with unknown ref", req{Method: "POST", Path: "/api/chat", Body: map[string]any{"content": "see @n55"}}, 422, "unknown_refs"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := do(t, in.URL, tt.q)
			if r.Status != tt.status {
				t.Errorf("%s %s = %d %s, want %d", tt.q.Method, tt.q.Path, r.Status, r.Body, tt.status)
			}
			if ct := r.Header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type = %q, want application/json", ct)
			}
			if code := r.errCode(t); code != tt.code {
				t.Errorf("code = %q, want %q (%s)", code, tt.code, r.Body)
			}
		})
	}
	// Nothing was stored: still two sessions, one node, versions unchanged.
	var list struct{ Sessions []session.Session }
	must(t, in.URL, req{Method: "GET", Path: "/api/sessions"}, http.StatusOK, &list)
	if len(list.Sessions) != 2 {
		t.Errorf("%d sessions after bad input, want 2", len(list.Sessions))
	}
	c := getContext(t, in.URL, "", s.ID)
	if len(c.Nodes) != 1 || c.Nodes[0].Version != 1 || c.Session.Version != 2 {
		t.Errorf("after bad input: %d nodes, node version %d, session version %d; want 1, 1, 2", len(c.Nodes), c.Nodes[0].Version, c.Session.Version)
	}
}

func TestConfig(t *testing.T) {
	t.Parallel()
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	c, err := loadConfig(nil, env(nil), &strings.Builder{})
	if err != nil {
		t.Fatalf("defaults: %v", err)
	}
	if c.Listen != defaultListen || c.DatabaseURL != defaultDatabase || c.Namespace != "enhanced-context" || c.TTL.String() != "15m0s" ||
		c.L1TTL.String() != "5s" || !c.Revalidate || c.WarmRecent != 50 || c.Redis.Configured() || len(c.APIKeys) != 0 {
		t.Errorf("defaults = %+v", c)
	}
	c, err = loadConfig([]string{"--listen", "127.0.0.1:9000", "--cache-l1-ttl", "1s"},
		env(map[string]string{"LISTEN_ADDR": "127.0.0.1:1", "API_KEYS": "abcdefgh=alice, ijklmnop=bob", "REDIS_HOST": "127.0.0.1", "CACHE_COMPRESSION": "off", "CACHE_REVALIDATE": "off"}), &strings.Builder{})
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != "127.0.0.1:9000" || c.L1TTL.String() != "1s" || c.APIKeys["ijklmnop"] != "bob" || !c.Redis.Configured() || c.Revalidate {
		t.Errorf("flags over env = %+v", c)
	}
	c, err = loadConfig([]string{"--redis-tls", "true", "--redis-tls-ca-file", "/flag/ca.pem", "--redis-tls-server-name", "redis.example"},
		env(map[string]string{"REDIS_HOST": "127.0.0.1", "REDIS_TLS_CA_FILE": "/env/ca.pem", "REDIS_TLS_CERT_FILE": "/env/c.pem", "REDIS_TLS_KEY_FILE": "/env/c.key"}), &strings.Builder{})
	if err != nil {
		t.Fatal(err)
	}
	if r := c.Redis; !r.TLS || r.TLSCAFile != "/flag/ca.pem" || r.TLSServerName != "redis.example" || r.TLSCertFile != "/env/c.pem" || r.TLSKeyFile != "/env/c.key" {
		t.Errorf("TLS flags over env = %+v", r)
	}
	c, err = loadConfig([]string{"--redis-cluster-addrs", "127.0.0.1:7000,127.0.0.1:7001", "--cache-sharded-pubsub", "on"}, env(nil), &strings.Builder{})
	if err != nil || c.Redis.Mode() != "cluster" || len(c.Redis.ClusterAddrs) != 2 || !c.Sharded {
		t.Errorf("cluster flags = %+v, sharded %v, %v; want cluster mode with 2 seeds, sharded", c.Redis, c.Sharded, err)
	}
	c, err = loadConfig([]string{"--redis-sentinel-master", "mymaster", "--redis-sentinel-addrs", "127.0.0.1:26379"}, env(nil), &strings.Builder{})
	if err != nil || c.Redis.Mode() != "sentinel" || c.Redis.SentinelMaster != "mymaster" {
		t.Errorf("sentinel flags = %+v, %v; want sentinel mode on mymaster", c.Redis, err)
	}
	for _, tt := range []struct {
		name    string
		args    []string
		env     map[string]string
		mention string
	}{
		{"sentinel addrs flag without a master", []string{"--redis-sentinel-addrs", "127.0.0.1:26379"}, nil, "REDIS_SENTINEL_MASTER"},
		{"tls ca flag with tls off", []string{"--redis-tls-ca-file", "/ca.pem"}, map[string]string{"REDIS_HOST": "h"}, "REDIS_TLS_CA_FILE is set but TLS is off"},
		{"tls off by flag", []string{"--redis-tls", "false"}, map[string]string{"REDIS_HOST": "h", "REDIS_TLS": "true", "REDIS_TLS_CA_FILE": "/ca.pem"}, "TLS is off"},
		{"bad tls flag", []string{"--redis-tls", "yes please"}, map[string]string{"REDIS_HOST": "h"}, "REDIS_TLS"},
		{"tls cert flag without key", []string{"--redis-url", "rediss://h:6380", "--redis-tls-cert-file", "/c.pem"}, nil, "REDIS_TLS_KEY_FILE is empty"},
		{"tls key without cert", []string{"--redis-tls-key-file", "/c.key"}, map[string]string{"REDIS_URL": "rediss://h:6380"}, "REDIS_TLS_CERT_FILE is empty"},
		{"bad listen", []string{"--listen", "8080"}, nil, "LISTEN_ADDR"},
		{"bad ttl", nil, map[string]string{"CACHE_TTL": "forever"}, "CACHE_TTL"},
		{"bad l2 timeout", []string{"--cache-l2-timeout", "-1s"}, nil, "CACHE_L2_TIMEOUT"},
		{"bad compression", nil, map[string]string{"CACHE_COMPRESSION": "lz4"}, "CACHE_COMPRESSION"},
		{"bad revalidation switch", nil, map[string]string{"CACHE_REVALIDATE": "sometimes"}, "CACHE_REVALIDATE"},
		{"bad sharded switch", nil, map[string]string{"CACHE_SHARDED_PUBSUB": "maybe"}, "CACHE_SHARDED_PUBSUB"},
		{"sharded without a cluster", nil, map[string]string{"CACHE_SHARDED_PUBSUB": "on", "REDIS_HOST": "127.0.0.1"}, "REDIS_CLUSTER_ADDRS"},
		{"bad keys", nil, map[string]string{"API_KEYS": "abcdefgh"}, "API_KEYS"},
		{"short key", nil, map[string]string{"API_KEYS": "k=alice"}, "shorter than 8"},
		{"bad warm", nil, map[string]string{"WARM_RECENT": "-3"}, "WARM_RECENT"},
		{"bad max nodes", nil, map[string]string{"MAX_NODES_PER_SESSION": "-1"}, "MAX_NODES_PER_SESSION"},
		{"max nodes not a number", []string{"--max-nodes-per-session", "lots"}, nil, "MAX_NODES_PER_SESSION"},
		{"bad redis port", nil, map[string]string{"REDIS_HOST": "h", "REDIS_PORT": "x"}, "REDIS_PORT"},
		{"bad redis url flag", []string{"--redis-url", "http://x"}, nil, "REDIS_URL"},
		{"short ops key", nil, map[string]string{"OPS_KEY": "short"}, "OPS_KEY"},
		{"ops key is an api key", []string{"--ops-key", "abcdefgh"}, map[string]string{"API_KEYS": "abcdefgh=alice"}, "OPS_KEY"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := loadConfig(tt.args, env(tt.env), &strings.Builder{})
			if err == nil || !strings.Contains(err.Error(), tt.mention) {
				t.Errorf("loadConfig(%v, %v) = %v, want an error mentioning %q", tt.args, tt.env, err, tt.mention)
			}
		})
	}
}

// TestOperationalRoutes: /livez, /healthz, /readyz, /metrics, /dashboard and
// the benchmark baseline answer in L1-only mode; once not ready, /readyz
// answers 503 and /livez still 200.
func TestOperationalRoutes(t *testing.T) {
	t.Parallel()
	in := startInstance(t, instanceOptions{})
	s := createSession(t, in.URL, "", "s")
	chat(t, in.URL, "", s.ID, "x")
	getContext(t, in.URL, "", s.ID)
	for _, path := range []string{"/livez", "/healthz"} {
		var body struct{ Status string }
		if must(t, in.URL, req{Method: "GET", Path: path}, 200, &body); body.Status != "ok" {
			t.Errorf("GET %s status = %q, want \"ok\"", path, body.Status)
		}
	}
	must(t, in.URL, req{Method: "GET", Path: "/readyz"}, 200, nil)
	must(t, in.URL, req{Method: "POST", Path: "/livez"}, http.StatusMethodNotAllowed, nil)
	var h healthReport
	must(t, in.URL, req{Method: "GET", Path: "/api/health/redis"}, 200, &h)
	if h.Status != "l1-only" || h.Redis.Configured || h.Service.ActiveSessions != 1 || h.Service.Latency["context"].Count != 1 {
		t.Errorf("health = %+v", h)
	}
	m := must(t, in.URL, req{Method: "GET", Path: "/metrics"}, 200, nil)
	for _, want := range []string{`tiercache_lookups_total{namespace="` + in.ns + `",result="hit",tier="l1"}`, `contextd_http_request_duration_seconds_bucket{code="2xx",route="GET /api/sessions/{id}/context"`,
		"tiercache_l1_size_bytes", "contextd_active_sessions 1", `contextd_cache_state{state="l1-only"} 1`, "tiercache_l1_evictions_total"} {
		if !strings.Contains(string(m.Body), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	d := must(t, in.URL, req{Method: "GET", Path: "/dashboard"}, 200, nil)
	if !strings.Contains(string(d.Body), "/api/health/redis") {
		t.Error("dashboard does not poll /api/health/redis")
	}
	if r := must(t, in.URL, req{Method: "GET", Path: "/bench/hello"}, 200, nil); string(r.Body) != "hello, world\n" {
		t.Errorf("hello = %q", r.Body)
	}
	in.app.srv.ready.Store(false)
	must(t, in.URL, req{Method: "GET", Path: "/readyz"}, 503, nil)
	must(t, in.URL, req{Method: "GET", Path: "/livez"}, 200, nil)
}

// TestOpsKey: with OPS_KEY set, the operational routes answer only a caller
// with that key (bearer or Basic password); an API key is not enough, and
// /livez, /healthz and /readyz stay open for orchestrators.
func TestOpsKey(t *testing.T) {
	t.Parallel()
	const ops, api = "ops-secret-1", "api-key-alice"
	in := startInstance(t, instanceOptions{OpsKey: ops, APIKeys: map[string]string{api: "alice"}})
	basic := func(user, pw string) map[string]string {
		return map[string]string{"Authorization": "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pw))}
	}
	for _, path := range []string{"/api/health/redis", "/metrics", "/dashboard"} {
		r := must(t, in.URL, req{Method: "GET", Path: path}, http.StatusUnauthorized, nil)
		if !strings.HasPrefix(r.Header.Get("WWW-Authenticate"), "Basic ") || !strings.Contains(string(r.Body), "OPS_KEY") {
			t.Errorf("GET %s without a key: WWW-Authenticate %q, body %s; want a Basic challenge and an error naming OPS_KEY", path, r.Header.Get("WWW-Authenticate"), r.Body)
		}
		must(t, in.URL, req{Method: "GET", Path: path, Key: api}, http.StatusUnauthorized, nil)
		must(t, in.URL, req{Method: "GET", Path: path, Key: ops + "x"}, http.StatusUnauthorized, nil)
		must(t, in.URL, req{Method: "GET", Path: path, Header: basic("admin", "wrong-password")}, http.StatusUnauthorized, nil)
		must(t, in.URL, req{Method: "GET", Path: path, Key: ops}, http.StatusOK, nil)
		must(t, in.URL, req{Method: "GET", Path: path, Header: basic("anyone", ops)}, http.StatusOK, nil)
	}
	must(t, in.URL, req{Method: "GET", Path: "/livez"}, http.StatusOK, nil)
	must(t, in.URL, req{Method: "GET", Path: "/healthz"}, http.StatusOK, nil)
	must(t, in.URL, req{Method: "GET", Path: "/readyz"}, http.StatusOK, nil)
	// The ops key is no API key either.
	must(t, in.URL, req{Method: "GET", Path: "/api/sessions", Key: ops}, http.StatusUnauthorized, nil)
	must(t, in.URL, req{Method: "GET", Path: "/api/sessions", Key: api}, http.StatusOK, nil)
}
