package main

import (
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/tiercache/tiercache/internal/redistest"
)

func TestTracingFromEnv(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		env      map[string]string
		on       bool
		endpoint string
		service  string
		err      string // the variable the error must name; "" for no error
	}{
		{name: "nothing set", env: nil},
		{name: "endpoint", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"},
			on: true, endpoint: "http://collector:4318/v1/traces"},
		{name: "endpoint with path", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "https://collector/otlp/"},
			on: true, endpoint: "https://collector/otlp/v1/traces"},
		{name: "traces endpoint as is", env: map[string]string{
			"OTEL_EXPORTER_OTLP_ENDPOINT": "http://base:4318", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://traces:4318/custom"},
			on: true, endpoint: "http://traces:4318/custom"},
		{name: "exporter otlp alone", env: map[string]string{"OTEL_TRACES_EXPORTER": "otlp"}, on: true, endpoint: defaultOTLPTracesURL},
		{name: "exporter upper case", env: map[string]string{"OTEL_TRACES_EXPORTER": " OTLP "}, on: true, endpoint: defaultOTLPTracesURL},
		{name: "exporter none wins over endpoint", env: map[string]string{
			"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}},
		{name: "sdk disabled", env: map[string]string{"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}},
		{name: "sdk not disabled", env: map[string]string{"OTEL_SDK_DISABLED": "false", "OTEL_TRACES_EXPORTER": "otlp"},
			on: true, endpoint: defaultOTLPTracesURL},
		{name: "service name", env: map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SERVICE_NAME": "chat-context"},
			on: true, endpoint: defaultOTLPTracesURL, service: "chat-context"},
		{name: "protocol http/protobuf", env: map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
			on: true, endpoint: defaultOTLPTracesURL},
		{name: "bad exporter", env: map[string]string{"OTEL_TRACES_EXPORTER": "jaeger"}, err: "OTEL_TRACES_EXPORTER"},
		{name: "endpoint without scheme", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"}, err: "OTEL_EXPORTER_OTLP_ENDPOINT"},
		{name: "traces endpoint not http", env: map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "ftp://collector/x"}, err: "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"},
		{name: "grpc protocol", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, err: "OTEL_EXPORTER_OTLP_PROTOCOL"},
		{name: "traces protocol wins", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
			"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"},
			on: true, endpoint: "http://c:4318/v1/traces"},
		{name: "bad sdk disabled", env: map[string]string{"OTEL_SDK_DISABLED": "maybe"}, err: "OTEL_SDK_DISABLED"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tc, err := tracingFromEnv(func(k string) string { return tt.env[k] })
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("tracingFromEnv(%v) error = %v, want one naming %s", tt.env, err, tt.err)
				}
				// serve reports it too, before building anything.
				env := map[string]string{"DATABASE_URL": filepath.Join(t.TempDir(), "c.db")}
				for k, v := range tt.env {
					env[k] = v
				}
				if _, err := loadConfig(nil, func(k string) string { return env[k] }, io.Discard); err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Errorf("loadConfig error = %v, want one naming %s", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("tracingFromEnv(%v): %v", tt.env, err)
			}
			if tc.Enabled != tt.on || tc.Endpoint != tt.endpoint {
				t.Errorf("tracingFromEnv(%v) = on %v, endpoint %q; want on %v, endpoint %q", tt.env, tc.Enabled, tc.Endpoint, tt.on, tt.endpoint)
			}
			if want := cmpOr(tt.service, "contextd"); tc.ServiceName != want {
				t.Errorf("service name = %q, want %q", tc.ServiceName, want)
			}
		})
	}
	t.Run("off builds nothing", func(t *testing.T) {
		t.Parallel()
		tp, err := startTracing(t.Context(), tracingConfig{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
		if tp != nil || err != nil {
			t.Errorf("startTracing(off) = %v, %v, want nil, nil", tp, err)
		}
		s := &server{}
		h := http.HandlerFunc(handleHello)
		if got := s.traced(h); fmt.Sprintf("%p", got) != fmt.Sprintf("%p", h) {
			t.Error("traced wrapped the handler with tracing off")
		}
	})
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// startTracedInstance is startInstance with tracing into a span recorder.
func startTracedInstance(tb testing.TB, rs *redistest.Server) (*instance, *tracetest.SpanRecorder) {
	tb.Helper()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	return startInstance(tb, instanceOptions{Redis: rs, TracerProvider: tp}), rec
}

// traceparent returns a W3C traceparent header for a new sampled remote span.
func traceparent() (string, trace.TraceID, trace.SpanID) {
	var tid trace.TraceID
	var sid trace.SpanID
	_, _ = rand.Read(tid[:])
	_, _ = rand.Read(sid[:])
	return fmt.Sprintf("00-%s-%s-01", tid, sid), tid, sid
}

// TestTracingTraceparent: a request carrying traceparent gets a server span, named after its
// route, in the caller's trace, with the cache's and Redis's spans below it; health checks and
// scrapes are not traced; SSE still streams through the tracing middleware.
func TestTracingTraceparent(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t)
	in, rec := startTracedInstance(t, rs)
	s := createSession(t, in.URL, "", "traced")
	events, _ := subscribe(t, in.URL, "", s.ID, "")

	tp, tid, parent := traceparent()
	must(t, in.URL, req{Method: "POST", Path: "/api/chat", Body: map[string]any{"session_id": s.ID, "content": "hello"},
		Header: map[string]string{"traceparent": tp}}, http.StatusCreated, nil)
	nextEvent(t, events)
	for _, p := range []string{"/livez", "/healthz", "/readyz", "/metrics"} {
		must(t, in.URL, req{Method: "GET", Path: p, Header: map[string]string{"traceparent": tp}}, http.StatusOK, nil)
	}

	var server sdktrace.ReadOnlySpan
	eventually(t, "the server span of POST /api/chat", func() bool {
		for _, sp := range rec.Ended() {
			if sp.SpanContext().TraceID() == tid && sp.SpanKind() == trace.SpanKindServer {
				server = sp
				return true
			}
		}
		return false
	})
	if server.Name() != "POST /api/chat" {
		t.Errorf("server span name = %q, want %q", server.Name(), "POST /api/chat")
	}
	if server.Parent().SpanID() != parent || !server.Parent().IsRemote() {
		t.Errorf("server span parent = %v (remote %v), want the traceparent's %v", server.Parent().SpanID(), server.Parent().IsRemote(), parent)
	}
	byID := map[trace.SpanID]sdktrace.ReadOnlySpan{}
	var inTrace []sdktrace.ReadOnlySpan
	for _, sp := range rec.Ended() {
		if sp.SpanContext().TraceID() == tid {
			byID[sp.SpanContext().SpanID()] = sp
			inTrace = append(inTrace, sp)
		}
	}
	under := func(sp sdktrace.ReadOnlySpan) bool {
		for p := sp.Parent().SpanID(); p.IsValid(); {
			if p == server.SpanContext().SpanID() {
				return true
			}
			x, ok := byID[p]
			if !ok {
				return false
			}
			p = x.Parent().SpanID()
		}
		return false
	}
	var cacheSpans, redisSpans, servers []string
	for _, sp := range inTrace {
		switch {
		case sp.SpanKind() == trace.SpanKindServer:
			servers = append(servers, sp.Name())
		case !under(sp):
			t.Errorf("span %s is in the trace but not below the server span", sp.Name())
		case sp.InstrumentationScope().Name == "github.com/tiercache/tiercache":
			cacheSpans = append(cacheSpans, sp.Name())
		case sp.InstrumentationScope().Name == "github.com/redis/go-redis/extra/redisotel":
			redisSpans = append(redisSpans, sp.Name())
		}
	}
	if len(servers) != 1 {
		t.Errorf("server spans in the trace = %v, want only POST /api/chat (health checks and scrapes are not traced)", servers)
	}
	if len(cacheSpans) == 0 || len(redisSpans) == 0 {
		t.Errorf("below the server span: cache spans %v, Redis spans %v; want both", cacheSpans, redisSpans)
	}
	t.Logf("trace: cache spans %v, Redis spans %v", cacheSpans, redisSpans)
}

// TestTracingExportsOTLP runs the real serve path with OTEL_EXPORTER_OTLP_ENDPOINT pointing at a
// loopback collector and checks that the spans arrive over OTLP/HTTP as protobuf, at the latest
// when graceful shutdown flushes them.
func TestTracingExportsOTLP(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t)
	var mu sync.Mutex
	var bodies [][]byte
	var contentTypes []string
	collector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/v1/traces" {
			http.Error(w, "want POST /v1/traces", http.StatusNotFound)
			return
		}
		b, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		mu.Lock()
		bodies, contentTypes = append(bodies, b), append(contentTypes, r.Header.Get("Content-Type"))
		mu.Unlock()
		resp, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
		w.Header().Set("Content-Type", "application/x-protobuf")
		_, _ = w.Write(resp)
	}))
	t.Cleanup(collector.Close)

	base, shutdown := serveInProcess(t, map[string]string{
		"REDIS_URL":                   "redis://" + rs.Addr() + "/0",
		"WARM_RECENT":                 "0",
		"OTEL_EXPORTER_OTLP_ENDPOINT": collector.URL,
		"OTEL_SERVICE_NAME":           "contextd-test",
	})
	tp, tid, _ := traceparent()
	must(t, base, req{Method: "POST", Path: "/api/sessions", Body: map[string]any{"title": "exported"},
		Header: map[string]string{"traceparent": tp}}, http.StatusCreated, nil)
	shutdown()

	mu.Lock()
	defer mu.Unlock()
	if len(bodies) == 0 {
		t.Fatal("the collector received no POST /v1/traces")
	}
	var spans []string
	var found bool
	for i, b := range bodies {
		if len(b) == 0 {
			t.Errorf("export %d: empty body", i)
		}
		if contentTypes[i] != "application/x-protobuf" {
			t.Errorf("export %d: Content-Type %q, want application/x-protobuf", i, contentTypes[i])
		}
		var msg coltracepb.ExportTraceServiceRequest
		if err := proto.Unmarshal(b, &msg); err != nil {
			t.Fatalf("export %d: not an ExportTraceServiceRequest: %v", i, err)
		}
		for _, rsp := range msg.GetResourceSpans() {
			service := ""
			for _, kv := range rsp.GetResource().GetAttributes() {
				if kv.GetKey() == "service.name" {
					service = kv.GetValue().GetStringValue()
				}
			}
			if service != "contextd-test" {
				t.Errorf("export %d: service.name = %q, want contextd-test (OTEL_SERVICE_NAME)", i, service)
			}
			for _, ss := range rsp.GetScopeSpans() {
				for _, sp := range ss.GetSpans() {
					spans = append(spans, sp.GetName())
					if trace.TraceID(sp.GetTraceId()) == tid && sp.GetName() == "POST /api/sessions" {
						found = true
					}
				}
			}
		}
	}
	if !found {
		t.Errorf("exported spans %v: none is POST /api/sessions in trace %v", spans, tid)
	}
}
