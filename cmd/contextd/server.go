package main

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/trace"

	"github.com/tiercache/tiercache"
	"github.com/tiercache/tiercache/session"
)

// serverOptions are what the HTTP layer needs.
type serverOptions struct {
	Service *session.Service
	Cache   *tiercache.Cache
	Redis   redis.UniversalClient // nil in L1-only mode
	APIKeys map[string]string     // key -> owner; empty: every request is owner "local"
	OpsKey  string                // guards the operational routes (opsOnly); empty: open
	Logger  *slog.Logger
	MaxBody int64
	Mode    string // how the cache started: two-tier, degraded or l1-only
	Store   string // sqlite or postgres
	// TracerProvider, when set, traces every request but health checks and scrapes (tracing.go).
	TracerProvider trace.TracerProvider
}

// server is contextd's HTTP layer. ready gates /readyz; stopping is closed
// on shutdown so SSE streams end and the HTTP server can drain.
type server struct {
	serverOptions
	metrics  *metrics
	ready    atomic.Bool
	started  time.Time
	stopping chan struct{}
	stopOnce sync.Once
	health   atomic.Pointer[tiercache.Health] // last background probe
	probeWG  sync.WaitGroup
}

func newServer(o serverOptions) *server {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.MaxBody <= 0 {
		o.MaxBody = defaultMaxBody
	}
	s := &server{serverOptions: o, started: time.Now(), stopping: make(chan struct{})}
	s.metrics = newMetrics(s)
	h := o.Cache.Health(context.Background()) // no Redis I/O: Health pings within a short ctx below
	s.health.Store(&h)
	s.probeWG.Add(1)
	go s.probe()
	return s
}

// probe refreshes the cached health every two seconds, for /metrics and
// /readyz, so scrapes never wait on Redis.
func (s *server) probe() {
	defer s.probeWG.Done()
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		h := s.Cache.Health(ctx)
		cancel()
		s.health.Store(&h)
		select {
		case <-t.C:
		case <-s.stopping:
			return
		}
	}
}

// stopStreams ends SSE streams and the health probe.
func (s *server) stopStreams() { s.stopOnce.Do(func() { close(s.stopping) }) }

// Close stops the background probe.
func (s *server) Close() {
	s.stopStreams()
	s.probeWG.Wait()
}

// Handler returns the HTTP handler with every route.
func (s *server) Handler() http.Handler {
	mux := http.NewServeMux()
	// API (authenticated).
	mux.HandleFunc("POST /api/chat", s.authed(s.handleChat))
	mux.HandleFunc("POST /api/sessions", s.authed(s.handleCreateSession))
	mux.HandleFunc("GET /api/sessions", s.authed(s.handleListSessions))
	mux.HandleFunc("GET /api/sessions/{id}", s.authed(s.handleGetSession))
	mux.HandleFunc("PATCH /api/sessions/{id}", s.authed(s.handleUpdateSession))
	mux.HandleFunc("DELETE /api/sessions/{id}", s.authed(s.handleDeleteSession))
	mux.HandleFunc("GET /api/sessions/{id}/context", s.authed(s.handleContext))
	mux.HandleFunc("GET /api/sessions/{id}/events", s.authed(s.handleEvents))
	mux.HandleFunc("POST /api/nodes", s.authed(s.handleCreateNode))
	mux.HandleFunc("GET /api/nodes/{id}", s.authed(s.handleGetNode))
	mux.HandleFunc("PATCH /api/nodes/{id}", s.authed(s.handleUpdateNode))
	mux.HandleFunc("DELETE /api/nodes/{id}", s.authed(s.handleDeleteNode))
	mux.HandleFunc("GET /api/nodes/resolve/{shortID}", s.authed(s.handleResolve))
	mux.HandleFunc("POST /api/cache/warm", s.authed(s.handleWarm))
	// Operations (no owner data; unauthenticated, loopback by default).
	mux.Handle("GET /api/health/redis", s.opsOnly(http.HandlerFunc(s.handleHealthRedis)))
	mux.HandleFunc("GET /livez", s.handleLivez)
	mux.HandleFunc("GET /healthz", s.handleLivez)
	mux.HandleFunc("GET /readyz", s.handleReadyz)
	mux.Handle("GET /metrics", s.opsOnly(s.metrics.handler()))
	mux.Handle("GET /dashboard", s.opsOnly(http.HandlerFunc(s.handleDashboard)))
	mux.HandleFunc("GET /bench/hello", handleHello)
	mux.HandleFunc("/", notFoundOrMethod(mux))
	return s.traced(s.requestIDs(s.recoverer(guardPath(s.metrics.instrument(mux)))))
}

// --- errors ---------------------------------------------------------------

// apiError is an error with an HTTP status and a stable code.
type apiError struct {
	Status  int
	Code    string
	Message string
}

func (e *apiError) Error() string { return e.Message }

// errorBody is the JSON shape of every error response.
type errorBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
		// RequestID is set on 500s: the ID the server logged the error under.
		RequestID string `json:"request_id,omitempty"`
	} `json:"error"`
}

// writeError writes err as {"error":{"code","message"}} with the status its
// kind calls for. A 500 carries no internal error text: the error is logged
// with the request's ID (see requestIDs), and the response names only that
// ID, in the message, in "request_id" and in the X-Request-ID header.
func writeError(w http.ResponseWriter, err error) {
	ae := toAPIError(err)
	var b errorBody
	b.Error.Code, b.Error.Message = ae.Code, ae.Message
	if ae.Status == http.StatusInternalServerError {
		rw := requestOf(w)
		log, id := slog.Default(), ""
		if rw != nil {
			log, id = rw.log, rw.id
		}
		log.Error("internal error", "request_id", id, "method", rw.method(), "path", rw.path(), "err", err)
		b.Error.Message = "internal error; the server log has the details under request ID " + id
		b.Error.RequestID = id
	}
	writeJSON(w, ae.Status, b)
}

func toAPIError(err error) *apiError {
	var ae *apiError
	var ie *session.InvalidError
	var vm *session.VersionMismatchError
	var ur *session.UnknownRefsError
	var mb *http.MaxBytesError
	var le *session.LimitError
	switch {
	case errors.As(err, &ae):
		return ae
	case errors.As(err, &mb):
		return &apiError{http.StatusRequestEntityTooLarge, "body_too_large", fmt.Sprintf("request body is larger than %d bytes", mb.Limit)}
	case errors.As(err, &ur):
		return &apiError{http.StatusUnprocessableEntity, "unknown_refs", err.Error()}
	case errors.As(err, &vm):
		return &apiError{http.StatusPreconditionFailed, "version_mismatch", fmt.Sprintf("%s %q is at version %d, not %d", vm.What(), vm.ID, vm.Current, vm.Want)}
	case errors.As(err, &ie):
		if ie.Field == "short_id" || ie.Field == "last_event_id" {
			return &apiError{http.StatusBadRequest, "invalid_" + ie.Field, err.Error()}
		}
		return &apiError{http.StatusUnprocessableEntity, "invalid_" + ie.Field, err.Error()}
	case errors.Is(err, session.ErrNotFound):
		return &apiError{http.StatusNotFound, "not_found", strings.TrimPrefix(err.Error(), "session: ")}
	case errors.Is(err, session.ErrExists):
		return &apiError{http.StatusConflict, "exists", err.Error()}
	case errors.As(err, &le):
		return &apiError{http.StatusConflict, "too_many_" + le.What, strings.TrimPrefix(err.Error(), "session: ") + "; delete nodes or start a new session"}
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return &apiError{http.StatusServiceUnavailable, "timeout", "the request was cancelled or timed out"}
	}
	return &apiError{http.StatusInternalServerError, "internal", "internal error"}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, `{"error":{"code":"internal","message":"encode response"}}`, http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)+1))
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

// Request decoding is in decode.go.

// --- middleware -------------------------------------------------------------

// authed resolves the caller's owner from "Authorization: Bearer <key>" or
// "X-API-Key: <key>" (401 otherwise); with no keys configured every caller
// is owner "local".
func (s *server) authed(h func(w http.ResponseWriter, r *http.Request, owner string)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if len(s.APIKeys) == 0 {
			h(w, r, localOwner)
			return
		}
		key := r.Header.Get("X-API-Key")
		if a := r.Header.Get("Authorization"); key == "" && a != "" {
			scheme, token, ok := strings.Cut(a, " ")
			if ok && strings.EqualFold(scheme, "Bearer") {
				key = strings.TrimSpace(token)
			}
		}
		owner := ""
		for k, o := range s.APIKeys { // constant time per key: no early exit on a prefix match
			if subtle.ConstantTimeCompare([]byte(k), []byte(key)) == 1 {
				owner = o
			}
		}
		if key == "" || owner == "" {
			w.Header().Set("WWW-Authenticate", `Bearer realm="contextd"`)
			writeError(w, &apiError{http.StatusUnauthorized, "unauthorized", "missing or unknown API key (Authorization: Bearer <key> or X-API-Key)"})
			return
		}
		h(w, r, owner)
	}
}

// opsOnly guards an operational route with OpsKey, when one is set: the
// caller sends it as a bearer token (Prometheus's authorization setting) or
// as the password of HTTP Basic auth with any user name, which a browser
// prompts for and then also sends with the dashboard's own requests.
// /livez, /healthz and /readyz stay open for orchestrators.
func (s *server) opsOnly(h http.Handler) http.Handler {
	if s.OpsKey == "" {
		return h
	}
	want := []byte(s.OpsKey)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got := ""
		if _, pw, ok := r.BasicAuth(); ok {
			got = pw
		} else if scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " "); ok && strings.EqualFold(scheme, "Bearer") {
			got = strings.TrimSpace(token)
		}
		if got == "" || subtle.ConstantTimeCompare([]byte(got), want) != 1 {
			w.Header().Set("WWW-Authenticate", `Basic realm="contextd operations", charset="UTF-8"`)
			writeError(w, &apiError{http.StatusUnauthorized, "unauthorized", "this operational route needs OPS_KEY (Authorization: Bearer <key>, or Basic auth with it as the password)"})
			return
		}
		h.ServeHTTP(w, r)
	})
}

// guardPath rejects encoded slashes, backslashes and dot segments with 400
// before routing, so no path trick can reach another resource (ServeMux
// would otherwise redirect "/a/../b" to "/b").
func guardPath(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		raw := strings.ToLower(r.URL.EscapedPath())
		bad := strings.Contains(raw, "%2f") || strings.Contains(raw, "%5c") || strings.Contains(raw, "%2e") ||
			strings.Contains(raw, "%00") || strings.ContainsRune(r.URL.Path, '\\') || strings.Contains(r.URL.Path, "//")
		if !bad {
			for _, seg := range strings.Split(r.URL.Path, "/") {
				if seg == "." || seg == ".." {
					bad = true
					break
				}
			}
		}
		if bad || !strings.HasPrefix(r.URL.Path, "/") {
			writeError(w, &apiError{http.StatusBadRequest, "bad_path", fmt.Sprintf("path %s: encoded slashes, dot segments and empty segments are not allowed", quote(r.URL.EscapedPath()))})
			return
		}
		next.ServeHTTP(w, r)
	})
}

// notFoundOrMethod is the catch-all route: a JSON 405 when the path has a
// route for another method (ServeMux's own 405 never fires, since the
// catch-all matches every method), else a JSON 404. Only unmatched requests
// pay for the probing.
func notFoundOrMethod(mux *http.ServeMux) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var allow []string
		for _, m := range []string{http.MethodGet, http.MethodPost, http.MethodPatch, http.MethodDelete} {
			if m == r.Method {
				continue
			}
			probe := r.Clone(r.Context())
			probe.Method = m
			if _, p := mux.Handler(probe); p != "" && p != "/" {
				allow = append(allow, m)
			}
		}
		if len(allow) > 0 {
			w.Header().Set("Allow", strings.Join(allow, ", "))
			writeError(w, &apiError{http.StatusMethodNotAllowed, "method_not_allowed", fmt.Sprintf("%s is not allowed on %s (allowed: %s)", r.Method, quote(r.URL.Path), strings.Join(allow, ", "))})
			return
		}
		writeError(w, &apiError{http.StatusNotFound, "not_found", "no route for " + clip(r.Method) + " " + quote(r.URL.Path)})
	}
}

// recoverer turns a handler panic into a 500 JSON error and a log line.
func (s *server) recoverer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				writeError(w, fmt.Errorf("handler panic: %v", v))
			}
		}()
		next.ServeHTTP(w, r)
	})
}

// requestIDs gives every request an ID, sent back in the X-Request-ID
// header and logged with any internal error (writeError), so a caller who
// reports a 500 gives the operator the log line. IDs are a random
// per-process prefix and a counter: unique across instances with high
// probability, and cheap on the hot path.
func (s *server) requestIDs(next http.Handler) http.Handler {
	var b [4]byte
	_, _ = rand.Read(b[:])
	prefix := hex.EncodeToString(b[:]) + "-"
	var n atomic.Uint64
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := prefix + strconv.FormatUint(n.Add(1), 36)
		w.Header().Set("X-Request-ID", id)
		next.ServeHTTP(&requestWriter{ResponseWriter: w, id: id, log: s.Logger, r: r}, r)
	})
}

// requestWriter carries the request's ID and logger to writeError.
type requestWriter struct {
	http.ResponseWriter
	id  string
	log *slog.Logger
	r   *http.Request
}

func (w *requestWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *requestWriter) method() string {
	if w == nil {
		return ""
	}
	return w.r.Method
}

func (w *requestWriter) path() string {
	if w == nil {
		return ""
	}
	return w.r.URL.Path
}

// requestOf finds the requestWriter under w's wrappers, or nil.
func requestOf(w http.ResponseWriter) *requestWriter {
	for {
		switch x := w.(type) {
		case *requestWriter:
			return x
		case interface{ Unwrap() http.ResponseWriter }:
			w = x.Unwrap()
		default:
			return nil
		}
	}
}

// statusWriter records the status code; Unwrap lets http.ResponseController
// reach the underlying writer (Flush for SSE).
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// handleHello is the benchmark baseline: the smallest handler on the same
// server, middleware and all.
func handleHello(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = io.WriteString(w, "hello, world\n")
}

// pathID returns the path value name, which must be a well-formed ID; a
// malformed one is reported as not found (it cannot exist).
func pathID(r *http.Request, name, what string) (string, error) {
	id := r.PathValue(name)
	if !session.ValidID(id) {
		return "", &apiError{http.StatusNotFound, "not_found", fmt.Sprintf("%s %s not found", what, quote(id))}
	}
	return id, nil
}
