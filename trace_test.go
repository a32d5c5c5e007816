package tiercache

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/redisconfig"
)

const redisotelScope = "github.com/redis/go-redis/extra/redisotel"

// newRecorder returns a real SDK TracerProvider whose spans land in the returned recorder.
func newRecorder(tb testing.TB) (*sdktrace.TracerProvider, *tracetest.SpanRecorder) {
	tb.Helper()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	tb.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return tp, rec
}

// newTracedCache returns a cache traced by tp on a traced client (redisconfig.NewClient) to srv.
func newTracedCache(tb testing.TB, srv *redistest.Server, tp trace.TracerProvider, o Options) *Cache {
	tb.Helper()
	rdb, err := redisconfig.NewClient(redisconfig.Config{URL: "redis://" + srv.Addr(), ReadTimeout: time.Second, WriteTimeout: time.Second, TracerProvider: tp})
	if err != nil {
		tb.Fatalf("redisconfig.NewClient: %v", err)
	}
	tb.Cleanup(func() { rdb.Close() })
	o.Redis, o.TracerProvider = rdb, tp
	if o.L2Timeout == 0 {
		o.L2Timeout = 500 * time.Millisecond // -race on two shared cores; these tests are about spans
	}
	if o.Logger == nil {
		o.Logger = quietLogger()
	}
	return newCache(tb, nil, o)
}

// spanList indexes ended spans for assertions.
type spanList []sdktrace.ReadOnlySpan

func (ss spanList) named(tb testing.TB, name string) sdktrace.ReadOnlySpan {
	tb.Helper()
	var found sdktrace.ReadOnlySpan
	for _, s := range ss {
		if s.Name() == name {
			if found != nil {
				tb.Fatalf("more than one span named %q", name)
			}
			found = s
		}
	}
	if found == nil {
		tb.Fatalf("no span named %q among %v", name, ss.names())
	}
	return found
}

func (ss spanList) names() []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = s.Name()
	}
	return out
}

// descends reports whether s descends from the span with id anc.
func (ss spanList) descends(s sdktrace.ReadOnlySpan, anc trace.SpanID) bool {
	byID := map[trace.SpanID]sdktrace.ReadOnlySpan{}
	for _, x := range ss {
		byID[x.SpanContext().SpanID()] = x
	}
	for p := s.Parent().SpanID(); p.IsValid(); {
		if p == anc {
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

func (ss spanList) redis() spanList {
	var out spanList
	for _, s := range ss {
		if s.InstrumentationScope().Name == redisotelScope {
			out = append(out, s)
		}
	}
	return out
}

func attr(s sdktrace.ReadOnlySpan, k attribute.Key) (attribute.Value, bool) {
	for _, kv := range s.Attributes() {
		if kv.Key == k {
			return kv.Value, true
		}
	}
	return attribute.Value{}, false
}

func wantAttr(tb testing.TB, s sdktrace.ReadOnlySpan, k attribute.Key, want any) {
	tb.Helper()
	v, ok := attr(s, k)
	if !ok {
		tb.Errorf("span %s: no attribute %s, want %v", s.Name(), k, want)
		return
	}
	if got := v.AsInterface(); got != want {
		tb.Errorf("span %s: %s = %v, want %v", s.Name(), k, got, want)
	}
}

// noSecrets fails if any attribute or event of any span mentions secret.
func noSecrets(tb testing.TB, ss spanList, secret string) {
	tb.Helper()
	for _, s := range ss {
		for _, kv := range s.Attributes() {
			if strings.Contains(kv.Value.Emit(), secret) {
				tb.Errorf("span %s: attribute %s = %q mentions %q", s.Name(), kv.Key, kv.Value.Emit(), secret)
			}
		}
		for _, e := range s.Events() {
			for _, kv := range e.Attributes {
				if strings.Contains(kv.Value.Emit(), secret) {
					tb.Errorf("span %s: event %s attribute %s = %q mentions %q", s.Name(), e.Name, kv.Key, kv.Value.Emit(), secret)
				}
			}
		}
		if strings.Contains(s.Status().Description, secret) {
			tb.Errorf("span %s: status %q mentions %q", s.Name(), s.Status().Description, secret)
		}
	}
}

// TestTraceGetOrLoadMiss: a miss gives one trace under the caller's span: get_or_load, its Redis
// lookup and its loader call, with the Redis commands as descendants; the loader's ctx carries
// the loader span; no key or value appears in any span; and every Redis span belongs to the
// caller's trace (background commands start no trace of their own).
func TestTraceGetOrLoadMiss(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	tp, rec := newRecorder(t)
	c := newTracedCache(t, srv, tp, Options{Namespace: "trmiss"})

	ctx, caller := tp.Tracer("test").Start(t.Context(), "caller")
	var loaderSpan trace.SpanContext
	got, err := c.GetOrLoad(ctx, "user:secret-42", func(ctx context.Context, key string) ([]byte, error) {
		loaderSpan = trace.SpanContextFromContext(ctx)
		return []byte("value-secret"), nil
	})
	caller.End()
	if err != nil || string(got) != "value-secret" {
		t.Fatalf("GetOrLoad = %q, %v, want value-secret", got, err)
	}
	// The lease is released in the background, after GetOrLoad returned: wait for its span.
	waitFor(t, "the lease release", 10*time.Second, func() bool {
		n := 0
		c.ownLeases.Range(func(any, any) bool { n++; return true })
		return n == 0
	})
	ss := spanList(rec.Ended())
	trID := caller.SpanContext().TraceID()

	gl := ss.named(t, spanGetOrLoad)
	if gl.Parent().SpanID() != caller.SpanContext().SpanID() || gl.SpanContext().TraceID() != trID {
		t.Errorf("get_or_load: parent %v in trace %v, want the caller's span %v in %v",
			gl.Parent().SpanID(), gl.SpanContext().TraceID(), caller.SpanContext().SpanID(), trID)
	}
	wantAttr(t, gl, attrNamespace, "trmiss")
	wantAttr(t, gl, attrKeys, int64(1))
	wantAttr(t, gl, attrShared, false)
	get := ss.named(t, spanGet)
	if get.Parent().SpanID() != gl.SpanContext().SpanID() {
		t.Errorf("tiercache.get: parent %v, want get_or_load %v", get.Parent().SpanID(), gl.SpanContext().SpanID())
	}
	wantAttr(t, get, attrHit, false)
	load := ss.named(t, spanLoad)
	if load.Parent().SpanID() != gl.SpanContext().SpanID() {
		t.Errorf("tiercache.load: parent %v, want get_or_load %v", load.Parent().SpanID(), gl.SpanContext().SpanID())
	}
	if loaderSpan.SpanID() != load.SpanContext().SpanID() {
		t.Errorf("the loader's ctx carries span %v, want the load span %v", loaderSpan.SpanID(), load.SpanContext().SpanID())
	}
	wantAttr(t, load, attrStaleServed, false)
	wantAttr(t, load, attrLeaseWaited, false)
	if load.Status().Code != codes.Unset {
		t.Errorf("tiercache.load status = %v, want unset", load.Status())
	}

	rs := ss.redis()
	var lookup, fill bool
	for _, s := range rs {
		if s.SpanContext().TraceID() != trID {
			t.Errorf("Redis span %s in trace %v, want the caller's %v", s.Name(), s.SpanContext().TraceID(), trID)
		}
		if s.SpanKind() != trace.SpanKindClient {
			t.Errorf("Redis span %s kind %v, want client", s.Name(), s.SpanKind())
		}
		if _, ok := attr(s, "db.statement"); ok {
			t.Errorf("Redis span %s records db.statement; command arguments must stay out of spans", s.Name())
		}
		switch {
		case s.Name() == "get" && s.Parent().SpanID() == get.SpanContext().SpanID():
			lookup = true
		case strings.HasPrefix(s.Name(), "eval") && ss.descends(s, gl.SpanContext().SpanID()):
			fill = true
		}
	}
	if !lookup || !fill {
		t.Errorf("Redis spans %v: want a get under tiercache.get (%v) and an eval of the fill under get_or_load (%v)", rs.names(), lookup, fill)
	}
	for _, s := range ss {
		if s.SpanContext().TraceID() != trID {
			t.Errorf("span %s in trace %v, want every span in the caller's trace %v", s.Name(), s.SpanContext().TraceID(), trID)
		}
	}
	noSecrets(t, ss, "secret")
}

// TestTraceL1HitNoSpan: hits start no span, with tracing on, and still allocate nothing. Not
// parallel: AllocsPerRun.
func TestTraceL1HitNoSpan(t *testing.T) {
	srv := redistest.Start(t)
	tp, rec := newRecorder(t)
	c := newTracedCache(t, srv, tp, Options{LeaseTTL: -1})
	users := Typed(c, JSON[benchUser]())
	ctx, caller := tp.Tracer("test").Start(t.Context(), "caller")
	defer caller.End()
	if err := c.Set(ctx, "k", []byte("v")); err != nil {
		t.Fatalf("Set: %v", err)
	}
	if err := users.Set(ctx, "u", benchUser{ID: 1}); err != nil {
		t.Fatalf("Set: %v", err)
	}
	before := len(rec.Started())
	load := func(context.Context, string) ([]byte, error) { return nil, errors.New("loader called on an L1 hit") }
	for range 3 {
		if _, err := c.Get(ctx, "k"); err != nil {
			t.Fatalf("Get: %v", err)
		}
		if _, err := c.GetOrLoad(ctx, "k", load); err != nil {
			t.Fatalf("GetOrLoad: %v", err)
		}
		if _, err := users.Get(ctx, "u"); err != nil {
			t.Fatalf("typed Get: %v", err)
		}
		if m, err := c.GetMany(ctx, []string{"k"}); err != nil || len(m) != 1 {
			t.Fatalf("GetMany = %v, %v", m, err)
		}
	}
	if n := len(rec.Started()) - before; n != 0 {
		t.Errorf("L1 hits started %d spans, want 0: %v", n, spanList(rec.Ended()[len(rec.Ended())-n:]).names())
	}
	if a := testing.AllocsPerRun(100, func() { _, _ = c.Get(ctx, "k") }); a != 0 {
		t.Errorf("an L1 hit with tracing on allocates %v times, want 0", a)
	}
	if a := testing.AllocsPerRun(100, func() { _, _ = c.GetOrLoad(ctx, "k", load) }); a != 0 {
		t.Errorf("a GetOrLoad L1 hit with tracing on allocates %v times, want 0", a)
	}
}

// TestTraceLoaderError: the loader's error is recorded on the load span and fails it and the
// get_or_load span; messages the cache builds keep their keys out of the span.
func TestTraceLoaderError(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	tp, rec := newRecorder(t)
	c := newTracedCache(t, srv, tp, Options{MaxValueLen: 64})
	errDB := errors.New("database down")
	_, err := c.GetOrLoad(t.Context(), "secret-key", func(context.Context, string) ([]byte, error) { return nil, errDB })
	if !errors.Is(err, errDB) {
		t.Fatalf("GetOrLoad error = %v, want %v", err, errDB)
	}
	waitFor(t, "the get_or_load span to end", 10*time.Second, func() bool {
		for _, s := range rec.Ended() {
			if s.Name() == spanGetOrLoad {
				return true
			}
		}
		return false
	})
	ss := spanList(rec.Ended())
	for _, name := range []string{spanLoad, spanGetOrLoad} {
		s := ss.named(t, name)
		if s.Status().Code != codes.Error || s.Status().Description != "database down" {
			t.Errorf("%s status = %v, want error %q", name, s.Status(), "database down")
		}
		var msg string
		for _, e := range s.Events() {
			if e.Name == "exception" {
				for _, kv := range e.Attributes {
					if kv.Key == "exception.message" {
						msg = kv.Value.AsString()
					}
				}
			}
		}
		if msg != "database down" {
			t.Errorf("%s exception.message = %q, want %q", name, msg, "database down")
		}
	}
	wantAttr(t, ss.named(t, spanLoad), attrStaleServed, false)

	// An error the cache words itself names the key; the span must not.
	err = c.Set(t.Context(), "secret-key", []byte(strings.Repeat("x", 200)), TTL(time.Minute))
	if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "secret-key") {
		t.Fatalf("Set of a value over MaxValueLen = %v, want ErrTooLarge naming the key", err)
	}
	set := spanList(rec.Ended()).named(t, spanSet)
	if set.Status().Code != codes.Error || !strings.Contains(set.Status().Description, "too large") {
		t.Errorf("tiercache.set status = %v, want an error saying too large", set.Status())
	}
	noSecrets(t, rec.Ended(), "secret")
}

// TestTraceNilProvider: without Options.TracerProvider nothing is traced, even with a global OTel
// provider installed: the cache never falls back to it. Not parallel: it sets the global.
func TestTraceNilProvider(t *testing.T) {
	srv := redistest.Start(t)
	tp, rec := newRecorder(t)
	prev := otel.GetTracerProvider()
	otel.SetTracerProvider(tp)
	t.Cleanup(func() { otel.SetTracerProvider(prev) })
	c := newCache(t, srv, Options{NamespaceOf: func(k string) string { ns, _, _ := strings.Cut(k, "/"); return ns }, L2Timeout: 500 * time.Millisecond})
	if c.tr.t != nil {
		t.Fatal("the tracer is set without Options.TracerProvider")
	}
	if a := testing.AllocsPerRun(100, func() {
		ctx, sp := c.span(t.Context(), spanGetMany, 3)
		sp.setInt(attrHits, 2)
		_ = sp.end(ctx.Err())
	}); a != 0 {
		t.Errorf("a span with tracing off allocates %v times, want 0", a)
	}
	ctx := t.Context()
	load := func(_ context.Context, k string) ([]byte, error) { return []byte(k), nil }
	if _, err := c.GetOrLoad(ctx, "a/1", load); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetOrLoad(ctx, "a/1", load); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(ctx, "a/2"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get(a/2) = %v, want ErrNotFound", err)
	}
	if err := c.SetMany(ctx, map[string][]byte{"a/3": []byte("x"), "a/4": []byte("y")}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetOrLoadMany(ctx, []string{"a/5", "a/6"}, func(_ context.Context, ks []string) (map[string][]byte, error) {
		return map[string][]byte{ks[0]: nil}, nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteMany(ctx, []string{"a/3", "a/4"}); err != nil {
		t.Fatal(err)
	}
	if err := c.InvalidateNamespace(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Clear(ctx); err != nil {
		t.Fatal(err)
	}
	if n := len(rec.Started()); n != 0 {
		t.Errorf("with TracerProvider nil, %d spans were started, want 0: %v", n, spanList(rec.Ended()).names())
	}
}

// TestTraceOperations: every traced operation names its span, carries the namespace and its key
// count, and parents its Redis commands; in L1-only mode only loaders are traced.
func TestTraceOperations(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	tp, rec := newRecorder(t)
	c := newTracedCache(t, srv, tp, Options{Namespace: "trops", NamespaceOf: func(k string) string { ns, _, _ := strings.Cut(k, "/"); return ns }})
	ctx := t.Context()
	tests := []struct {
		name  string
		op    func(ctx context.Context) error
		span  string
		keys  int64 // 0: no key count
		attrs map[attribute.Key]any
		redis bool // Redis commands under the span
	}{
		{"Set", func(ctx context.Context) error { return c.Set(ctx, "s/1", []byte("v")) }, spanSet, 1, nil, true},
		{"Delete", func(ctx context.Context) error { return c.Delete(ctx, "s/1") }, spanDelete, 1, nil, true},
		{"SetMany", func(ctx context.Context) error {
			return c.SetMany(ctx, map[string][]byte{"s/2": []byte("a"), "s/3": []byte("b"), "s/4": []byte("c")})
		}, spanSetMany, 3, nil, true},
		{"Get SkipL1", func(ctx context.Context) error { _, err := c.Get(ctx, "s/2", SkipL1()); return err }, spanGet, 1,
			map[attribute.Key]any{attrHit: true}, true},
		{"Get miss", func(ctx context.Context) error {
			if _, err := c.Get(ctx, "s/9"); !errors.Is(err, ErrNotFound) {
				return err
			}
			return nil
		}, spanGet, 1, map[attribute.Key]any{attrHit: false}, true},
		{"GetMany", func(ctx context.Context) error {
			_, err := c.GetMany(ctx, []string{"s/2", "s/3", "s/8"}, SkipL1())
			return err
		}, spanGetMany, 3, map[attribute.Key]any{attrHits: int64(2)}, true},
		{"GetOrLoadMany", func(ctx context.Context) error {
			_, err := c.GetOrLoadMany(ctx, []string{"s/2", "s/5", "s/6"}, func(_ context.Context, ks []string) (map[string][]byte, error) {
				return map[string][]byte{ks[0]: []byte("l")}, nil
			})
			return err
		}, spanLoadMany, 2, map[attribute.Key]any{attrLoaded: int64(1)}, false},
		{"DeleteMany", func(ctx context.Context) error { return c.DeleteMany(ctx, []string{"s/2", "s/3"}) }, spanDeleteMany, 2, nil, true},
		{"InvalidateNamespace", func(ctx context.Context) error { return c.InvalidateNamespace(ctx, "s") }, spanInvalidateNamespace, 0, nil, true},
		{"Clear", func(ctx context.Context) error { _, err := c.Clear(ctx); return err }, spanClear, 0, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, caller := tp.Tracer("test").Start(ctx, tt.name)
			err := tt.op(ctx)
			caller.End()
			if err != nil {
				t.Fatalf("%s: %v", tt.name, err)
			}
			var ss spanList
			for _, s := range rec.Ended() {
				if s.SpanContext().TraceID() == caller.SpanContext().TraceID() {
					ss = append(ss, s)
				}
			}
			s := ss.named(t, tt.span)
			if s.Parent().SpanID() != caller.SpanContext().SpanID() {
				t.Errorf("%s: parent %v, want the caller's %v", tt.span, s.Parent().SpanID(), caller.SpanContext().SpanID())
			}
			if s.Status().Code == codes.Error {
				t.Errorf("%s: status %v, want ok", tt.span, s.Status())
			}
			wantAttr(t, s, attrNamespace, "trops")
			if tt.keys > 0 {
				wantAttr(t, s, attrKeys, tt.keys)
			} else if v, ok := attr(s, attrKeys); ok {
				t.Errorf("%s: %s = %v, want none", tt.span, attrKeys, v.Emit())
			}
			for k, v := range tt.attrs {
				wantAttr(t, s, k, v)
			}
			under := 0
			for _, r := range ss.redis() {
				if ss.descends(r, s.SpanContext().SpanID()) {
					under++
				}
			}
			if tt.redis && under == 0 {
				t.Errorf("%s: no Redis span under it; trace holds %v", tt.span, ss.names())
			}
		})
	}
	if s := spanList(rec.Ended()).named(t, spanClear); s != nil {
		if v, ok := attr(s, attrRemoved); !ok || v.AsInt64() < 1 {
			t.Errorf("tiercache.clear: %s = %v, want at least 1", attrRemoved, v.Emit())
		}
	}

	t.Run("L1-only", func(t *testing.T) {
		tp, rec := newRecorder(t)
		c := newCache(t, nil, Options{TracerProvider: tp})
		ctx := t.Context()
		if err := c.Set(ctx, "k", []byte("v")); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Get(ctx, "missing"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Get(missing) = %v, want ErrNotFound", err)
		}
		if n := len(rec.Started()); n != 0 {
			t.Errorf("L1-only Set and Get started %d spans, want 0 (nothing leaves the process)", n)
		}
		if _, err := c.GetOrLoad(ctx, "l", func(context.Context, string) ([]byte, error) { return []byte("x"), nil }); err != nil {
			t.Fatal(err)
		}
		got := spanList(rec.Ended()).names()
		if strings.Join(got, ",") != spanLoad+","+spanGetOrLoad {
			t.Errorf("L1-only GetOrLoad miss spans = %v, want [%s %s]", got, spanLoad, spanGetOrLoad)
		}
	})
}

// TestTraceRecover: the replay after an outage is one root span counting the replayed writes,
// with its Redis commands under it.
func TestTraceRecover(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	tp, rec := newRecorder(t)
	c := newTracedCache(t, srv, tp, Options{L2Timeout: 100 * time.Millisecond})
	ctx := t.Context()
	if err := c.Set(ctx, "k", []byte("before")); err != nil {
		t.Fatal(err)
	}
	srv.Kill(t)
	keys := keyRange("k", 5)
	for _, k := range keys {
		if err := c.Set(ctx, k, []byte("during")); err != nil {
			t.Fatalf("Set(%q) with Redis down = %v, want nil (remembered)", k, err)
		}
	}
	srv.Restart(t)
	waitFor(t, "the replay", slack(10*time.Second), func() bool {
		return c.Stats().PendingWrites == 0 && c.Health(ctx).State == StateHealthy
	})
	var replayed int64
	var spans spanList
	for _, s := range rec.Ended() {
		if s.Name() == spanRecover {
			spans = append(spans, s)
			if s.Parent().IsValid() {
				t.Errorf("tiercache.recover has parent %v, want a root span", s.Parent().SpanID())
			}
			if v, ok := attr(s, attrReplayed); ok {
				replayed += v.AsInt64()
			}
		}
	}
	if replayed < int64(len(keys)) {
		t.Fatalf("tiercache.recover spans (%d) replayed %d writes, want at least %d", len(spans), replayed, len(keys))
	}
	last := spans[len(spans)-1]
	if _, ok := attr(last, attrFlushed); !ok {
		t.Errorf("tiercache.recover has no %s attribute", attrFlushed)
	}
	if last.Status().Code == codes.Error {
		t.Errorf("the last tiercache.recover failed: %v", last.Status())
	}
	ss := spanList(rec.Ended())
	under := 0
	for _, r := range ss.redis() {
		if ss.descends(r, last.SpanContext().SpanID()) {
			under++
		}
	}
	if under == 0 {
		t.Errorf("no Redis span under the successful tiercache.recover")
	}
}
