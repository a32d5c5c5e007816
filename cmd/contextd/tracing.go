package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// Tracing: OpenTelemetry, configured by the standard OTel environment variables (no flags).
// Tracing is on when OTEL_TRACES_EXPORTER=otlp, or when OTEL_EXPORTER_OTLP_ENDPOINT or
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set and OTEL_TRACES_EXPORTER is not "none";
// OTEL_SDK_DISABLED=true turns it off. Spans go over OTLP/HTTP (protobuf) in batches; the
// exporter also reads the other OTEL_EXPORTER_OTLP_* variables (headers, timeout, TLS,
// compression) and the SDK reads OTEL_TRACES_SAMPLER, OTEL_BSP_* and OTEL_RESOURCE_ATTRIBUTES.
// Off, nothing is built and requests pay nothing.

// defaultOTLPTracesURL is where OTLP/HTTP traces go when only OTEL_TRACES_EXPORTER=otlp is set.
const defaultOTLPTracesURL = "http://localhost:4318/v1/traces"

// tracingConfig is what the environment asks of tracing.
type tracingConfig struct {
	Enabled     bool
	Endpoint    string // the OTLP/HTTP traces URL, e.g. http://collector:4318/v1/traces
	ServiceName string // service.name; "contextd" unless OTEL_SERVICE_NAME says otherwise

	// provider, when set (tests), is used instead of building an exporting provider.
	provider *sdktrace.TracerProvider
}

// tracingFromEnv reads the OTel environment through getenv. Errors name the variable.
func tracingFromEnv(getenv func(string) string) (tracingConfig, error) {
	get := func(k string) string { return strings.TrimSpace(getenv(k)) }
	tc := tracingConfig{ServiceName: "contextd"}
	if v := get("OTEL_SERVICE_NAME"); v != "" {
		tc.ServiceName = v
	}
	if v := get("OTEL_SDK_DISABLED"); v != "" {
		off, err := strconv.ParseBool(v)
		if err != nil {
			return tracingConfig{}, fmt.Errorf("OTEL_SDK_DISABLED=%q: want true or false", v)
		}
		if off {
			return tc, nil
		}
	}
	base, traces := get("OTEL_EXPORTER_OTLP_ENDPOINT"), get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
	switch v := strings.ToLower(get("OTEL_TRACES_EXPORTER")); v {
	case "none":
		return tc, nil
	case "otlp":
		tc.Enabled = true
	case "":
		tc.Enabled = base != "" || traces != ""
	default:
		return tracingConfig{}, fmt.Errorf("OTEL_TRACES_EXPORTER=%q: contextd exports traces with otlp, or none", v)
	}
	if !tc.Enabled {
		return tc, nil
	}
	for _, k := range []string{"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"} {
		if v := get(k); v != "" {
			if v != "http/protobuf" {
				return tracingConfig{}, fmt.Errorf("%s=%q: contextd exports traces over OTLP/HTTP only (http/protobuf)", k, v)
			}
			break // the traces-specific variable wins
		}
	}
	var err error
	switch {
	case traces != "": // used as is
		tc.Endpoint, err = otlpURL("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", traces, "")
	case base != "": // the base URL of every signal: traces go to <base>/v1/traces
		tc.Endpoint, err = otlpURL("OTEL_EXPORTER_OTLP_ENDPOINT", base, "v1/traces")
	default:
		tc.Endpoint = defaultOTLPTracesURL
	}
	if err != nil {
		return tracingConfig{}, err
	}
	return tc, nil
}

// otlpURL checks that v, the value of variable, is an http(s) URL and appends path to it.
func otlpURL(variable, v, path string) (string, error) {
	u, err := url.Parse(v)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("%s=%q: want an http:// or https:// URL such as http://localhost:4318", variable, v)
	}
	if path != "" {
		u.Path = strings.TrimSuffix(u.Path, "/") + "/" + path
	}
	return u.String(), nil
}

// startTracing builds the TracerProvider tc asks for and sets the W3C trace-context propagator,
// or returns nil when tracing is off. It logs one line either way. It does no network I/O: the
// exporter connects when it first sends.
func startTracing(ctx context.Context, tc tracingConfig, log *slog.Logger) (*sdktrace.TracerProvider, error) {
	if !tc.Enabled && tc.provider == nil {
		log.Info("tracing off (set OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_TRACES_EXPORTER=otlp to export OpenTelemetry traces)")
		return nil, nil
	}
	otel.SetTextMapPropagator(propagation.TraceContext{})
	if tc.provider != nil {
		log.Info("tracing on", "exporter", "provided")
		return tc.provider, nil
	}
	exp, err := otlptracehttp.New(ctx, otlptracehttp.WithEndpointURL(tc.Endpoint))
	if err != nil {
		return nil, fmt.Errorf("tracing: OTLP exporter for %s: %w", redactURL(tc.Endpoint), err)
	}
	// Later sources win: OTEL_RESOURCE_ATTRIBUTES may rename the default service, and
	// OTEL_SERVICE_NAME wins over both.
	opts := []resource.Option{resource.WithAttributes(semconv.ServiceName("contextd")), resource.WithFromEnv(), resource.WithTelemetrySDK()}
	if tc.ServiceName != "contextd" {
		opts = append(opts, resource.WithAttributes(semconv.ServiceName(tc.ServiceName)))
	}
	res, err := resource.New(ctx, opts...)
	if err != nil {
		_ = exp.Shutdown(ctx)
		return nil, fmt.Errorf("tracing: resource: %w", err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	name, _ := res.Set().Value(semconv.ServiceNameKey)
	log.Info("tracing on: exporting OpenTelemetry traces over OTLP/HTTP", "endpoint", redactURL(tc.Endpoint), "service", name.AsString())
	return tp, nil
}

// stopTracing flushes the spans still queued and shuts tp down, within 5 s. Safe with nil.
func stopTracing(tp *sdktrace.TracerProvider, log *slog.Logger) {
	if tp == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := tp.Shutdown(ctx); err != nil {
		log.Warn("tracing: flushing spans at shutdown failed", "err", err)
	}
}

// traced wraps h with otelhttp when tracing is on: one server span per request, named after its
// route pattern ("GET /api/sessions/{id}"), continuing the caller's trace from a traceparent
// header. Health checks and metrics scrapes are not traced. Off, h is returned as is.
func (s *server) traced(h http.Handler) http.Handler {
	if s.TracerProvider == nil {
		return h
	}
	return otelhttp.NewHandler(h, "contextd",
		otelhttp.WithTracerProvider(s.TracerProvider),
		otelhttp.WithPropagators(propagation.TraceContext{}),
		otelhttp.WithFilter(func(r *http.Request) bool {
			switch r.URL.Path {
			case "/livez", "/healthz", "/readyz", "/metrics":
				return false
			}
			return true
		}),
	)
}

// redactURL hides a password in u, for logs.
func redactURL(u string) string {
	if p, err := url.Parse(u); err == nil {
		return p.Redacted()
	}
	return u
}

// tracerProvider returns tp as a trace.TracerProvider, nil when tp is nil (a nil pointer in an
// interface would read as "tracing on").
func tracerProvider(tp *sdktrace.TracerProvider) trace.TracerProvider {
	if tp == nil {
		return nil
	}
	return tp
}
