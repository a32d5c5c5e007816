package tiercache

import (
	"context"
	"errors"
	"fmt"
	"regexp"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// Tracing (Options.TracerProvider). A span is started only where an operation leaves the process
// (a Redis round trip) or runs a loader; an L1 hit never reaches this file, so it costs nothing
// with tracing on or off. With no TracerProvider the tracer is the zero value: starting a span
// returns the caller's context unchanged and a span whose methods do nothing, without allocating.
//
// Spans carry the cache's namespace and key counts, never keys or values (they may be sensitive).

// instrumentationName is the instrumentation scope of the cache's spans.
const instrumentationName = "github.com/tiercache/tiercache"

// Span names, following OTel's lower-case, dot-separated convention.
const (
	spanGet                 = "tiercache.get"         // Redis lookup after an L1 miss (Get, GetOrLoad, SkipL1 reads)
	spanGetOrLoad           = "tiercache.get_or_load" // a GetOrLoad that missed L1: lookup, lease, loader, fill
	spanLoad                = "tiercache.load"        // the loader call of GetOrLoad
	spanRefresh             = "tiercache.refresh"     // an eager refresh: loader call and write-through
	spanGetMany             = "tiercache.get_many"    // the Redis round trip of GetMany and GetOrLoadMany
	spanLoadMany            = "tiercache.load_many"   // the batch loader call of GetOrLoadMany
	spanSet                 = "tiercache.set"
	spanDelete              = "tiercache.delete"
	spanSetMany             = "tiercache.set_many"
	spanDeleteMany          = "tiercache.delete_many"
	spanInvalidateNamespace = "tiercache.invalidate_namespace"
	spanClear               = "tiercache.clear"
	spanRecover             = "tiercache.recover" // the replay of writes remembered during an outage
)

// Attribute keys.
const (
	attrNamespace   = attribute.Key("tiercache.namespace")    // Options.Namespace
	attrKeys        = attribute.Key("tiercache.keys")         // keys the operation covers
	attrHit         = attribute.Key("tiercache.hit")          // tiercache.get: Redis held a live entry
	attrHits        = attribute.Key("tiercache.hits")         // tiercache.get_many: keys Redis answered
	attrFound       = attribute.Key("tiercache.found")        // false when the answer is ErrNotFound
	attrShared      = attribute.Key("tiercache.shared")       // GetOrLoad joined another caller's flight
	attrLeaseWaited = attribute.Key("tiercache.lease_waited") // GetOrLoad waited for another instance's load
	attrStaleServed = attribute.Key("tiercache.stale_served") // a fail-safe value answered (ErrStale)
	attrSoftTimeout = attribute.Key("tiercache.soft_timeout") // the load passed SoftTimeout
	attrLoaded      = attribute.Key("tiercache.loaded")       // values a batch loader returned
	attrRemoved     = attribute.Key("tiercache.removed")      // Redis keys Clear removed
	attrReplayed    = attribute.Key("tiercache.replayed")     // writes a recovery replayed
	attrFlushed     = attribute.Key("tiercache.flushed")      // a recovery flushed L1 after an outage
)

// tracer starts the cache's spans. Its zero value (no TracerProvider) starts none.
type tracer struct {
	t  trace.Tracer
	ns attribute.KeyValue
}

func newTracer(tp trace.TracerProvider, namespace string) tracer {
	if tp == nil {
		return tracer{}
	}
	return tracer{t: tp.Tracer(instrumentationName), ns: attrNamespace.String(namespace)}
}

// span is a started span, or nothing when tracing is off: then every method returns at once.
type span struct{ s trace.Span }

// span starts the span name for an operation on n keys (n <= 0: no key count), as a child of
// ctx's span, and returns ctx carrying it.
func (c *Cache) span(ctx context.Context, name string, n int) (context.Context, span) {
	if c.tr.t == nil {
		return ctx, span{}
	}
	attrs := [2]attribute.KeyValue{c.tr.ns, attrKeys.Int(n)}
	kv := attrs[:1]
	if n > 0 {
		kv = attrs[:]
	}
	ctx, s := c.tr.t.Start(ctx, name, trace.WithAttributes(kv...))
	return ctx, span{s}
}

// l2span is span for operations that leave the process only when there is a Redis (writes,
// lookups): in L1-only mode they start nothing.
func (c *Cache) l2span(ctx context.Context, name string, n int) (context.Context, span) {
	if c.rdb == nil {
		return ctx, span{}
	}
	return c.span(ctx, name, n)
}

// end records err on the span and ends it; it returns err so that a call site can end with
// "return sp.end(err)". ErrNotFound is an answer, not a failure: it sets found=false. ErrStale
// means a value was served: it sets stale_served and records the error without failing the span.
func (s span) end(err error) error {
	if s.s == nil {
		return err
	}
	switch {
	case err == nil:
	case errors.Is(err, ErrNotFound):
		s.s.SetAttributes(attrFound.Bool(false))
	case errors.Is(err, ErrStale):
		s.s.SetAttributes(attrStaleServed.Bool(true))
		s.record(err)
	default:
		s.s.SetStatus(codes.Error, s.record(err))
	}
	s.s.End()
	return err
}

// quoted matches a Go-quoted string: how error messages of this package show keys and namespaces.
var quoted = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)

// record adds err as an exception event, as span.RecordError does, but with every quoted string
// in its message replaced by "…": errors name their key, and keys stay out of spans. It returns
// the message recorded.
func (s span) record(err error) string {
	msg := quoted.ReplaceAllLiteralString(err.Error(), `"…"`)
	s.s.AddEvent("exception", trace.WithAttributes(
		attribute.String("exception.type", fmt.Sprintf("%T", err)),
		attribute.String("exception.message", msg),
	))
	return msg
}

// endLoad ends a loader span: err is the loader's; hasStale says a fail-safe value exists, which
// then answers in place of a failed load (but not of ErrNotFound).
func (s span) endLoad(err error, hasStale bool) {
	if s.s == nil {
		return
	}
	s.s.SetAttributes(attrStaleServed.Bool(hasStale && err != nil && !errors.Is(err, ErrNotFound)))
	s.end(err)
}

// softTimeout marks a loader span whose load passed SoftTimeout: the stale value answered and
// the load goes on; the span ends when it does.
func (s span) softTimeout() {
	if s.s != nil {
		s.s.SetAttributes(attrSoftTimeout.Bool(true), attrStaleServed.Bool(true))
	}
}

func (s span) setBool(k attribute.Key, v bool) {
	if s.s != nil {
		s.s.SetAttributes(k.Bool(v))
	}
}

func (s span) setInt(k attribute.Key, v int64) {
	if s.s != nil {
		s.s.SetAttributes(k.Int64(v))
	}
}
