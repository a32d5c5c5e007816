package redisconfig

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/extra/redisotel/v9"
	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/embedded"
)

// instrumentRedis adds go-redis's redisotel tracing hook to rdb when tp is set. Commands become
// client spans only inside a traced operation (see childOnly); the hook records neither command
// arguments (keys and values may be sensitive) nor the calling line (a stack walk per command).
// On error rdb is closed.
func instrumentRedis(rdb redis.UniversalClient, tp trace.TracerProvider) (redis.UniversalClient, error) {
	if tp == nil {
		return rdb, nil
	}
	err := redisotel.InstrumentTracing(rdb, redisotel.WithTracerProvider(childOnly{tp: tp}),
		redisotel.WithDBStatement(false), redisotel.WithCallerEnabled(false))
	if err != nil {
		_ = rdb.Close()
		return nil, fmt.Errorf("redisconfig: Redis tracing: %w", err)
	}
	return rdb, nil
}

// childOnly is a TracerProvider whose tracers start spans only under an existing (local or remote)
// span: background commands with no trace (the invalidation subscriber's setup, health probes,
// the outage prober) would otherwise each start a one-span trace of their own.
type childOnly struct {
	embedded.TracerProvider
	tp trace.TracerProvider
}

func (p childOnly) Tracer(name string, opts ...trace.TracerOption) trace.Tracer {
	return childOnlyTracer{t: p.tp.Tracer(name, opts...)}
}

type childOnlyTracer struct {
	embedded.Tracer
	t trace.Tracer
}

func (t childOnlyTracer) Start(ctx context.Context, name string, opts ...trace.SpanStartOption) (context.Context, trace.Span) {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return ctx, trace.SpanFromContext(ctx) // a non-recording span; ending it does nothing
	}
	return t.t.Start(ctx, name, opts...)
}
