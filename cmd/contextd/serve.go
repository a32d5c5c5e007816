package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/tiercache/tiercache"
	"github.com/tiercache/tiercache/internal/testhook"
	"github.com/tiercache/tiercache/redisconfig"
	"github.com/tiercache/tiercache/session"
	"github.com/tiercache/tiercache/session/pgstore"
	"github.com/tiercache/tiercache/session/sqlitestore"
)

// serve runs the HTTP service until ctx ends (SIGINT/SIGTERM), then shuts
// down gracefully.
func serve(ctx context.Context, args []string, getenv func(string) string) error {
	cfg, err := loadConfig(args, getenv, os.Stderr)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	app, err := newApp(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer app.Close()

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.Listen, err)
	}
	srv := &http.Server{
		Handler:           app.srv.Handler(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		// No WriteTimeout: SSE streams are long; handlers bound their own work.
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	log.Info("contextd listening", "addr", "http://"+ln.Addr().String(), "dashboard", "http://"+ln.Addr().String()+"/dashboard")
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()

	go app.warmRecent(ctx, cfg.WarmRecent)
	app.srv.ready.Store(true)

	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	log.Info("contextd shutting down")
	app.srv.ready.Store(false)
	app.srv.stopStreams()
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}

// app holds what serve builds: the store, the Redis client, the cache, the
// service and the HTTP server state. Close releases them in reverse order.
type app struct {
	store session.Store
	rdb   redis.UniversalClient
	cache *tiercache.Cache
	svc   *session.Service
	srv   *server
	log   *slog.Logger
	tp    *sdktrace.TracerProvider // nil with tracing off
}

// newApp opens the store, connects Redis (or not), builds the cache and the
// service, and logs which mode it runs in.
func newApp(ctx context.Context, cfg config, log *slog.Logger) (*app, error) {
	a := &app{log: log}
	var err error
	if a.tp, err = startTracing(ctx, cfg.Tracing, log); err != nil {
		return nil, err
	}
	tp := tracerProvider(a.tp)
	cfg.Redis.TracerProvider = tp
	if a.store, err = openStore(ctx, cfg.DatabaseURL); err != nil {
		a.Close()
		return nil, err
	}
	mode := "l1-only"
	if cfg.Redis.Configured() {
		if a.rdb, err = redisconfig.NewClient(cfg.Redis); err != nil {
			a.Close()
			return nil, err
		}
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		perr := a.rdb.Ping(pctx).Err()
		cancel()
		if perr != nil {
			mode = "degraded"
			log.Warn("Redis is configured but unreachable at start: serving from process memory (L1) and the store until it answers",
				"redis", cfg.Redis.Mode(), "err", perr)
		} else {
			mode = "two-tier"
			log.Info("cache runs two-tier: process memory (L1) in front of Redis (L2)", "redis", cfg.Redis.Mode())
		}
	} else {
		log.Warn("no Redis configured (REDIS_URL, REDIS_HOST, ...): cache runs on process memory (L1) alone; one instance only")
	}
	opts := tiercache.Options{
		Redis: a.rdb, Namespace: cfg.Namespace, TTL: cfg.TTL, L1TTL: cfg.L1TTL, NoRevalidate: !cfg.Revalidate, ShardedPubSub: cfg.Sharded, L2Timeout: cfg.L2Timeout,
		Compression: cfg.Compression, Logger: log, TracerProvider: tp,
	}
	if cfg.noInvalidation {
		testhook.NoInvalidation(&opts)
	}
	if a.cache, err = tiercache.New(opts); err != nil {
		a.Close()
		return nil, err
	}
	if a.svc, err = session.NewService(session.ServiceOptions{
		Store: a.store, Cache: a.cache, Redis: a.rdb, Namespace: cfg.Namespace, Logger: log,
		MaxNodesPerSession: maxNodesOption(cfg.MaxNodes),
	}); err != nil {
		a.Close()
		return nil, err
	}
	a.svc.Events().SetLimits(cfg.Events)
	if len(cfg.APIKeys) == 0 {
		log.Warn("no API_KEYS configured: every request acts as the single owner \"local\"; do not expose this listener")
	} else if cfg.OpsKey == "" {
		log.Warn("API_KEYS set but no OPS_KEY: /api/health/redis, /metrics and /dashboard answer anyone who reaches the listener")
	}
	a.srv = newServer(serverOptions{
		Service: a.svc, Cache: a.cache, Redis: a.rdb, APIKeys: cfg.APIKeys, OpsKey: cfg.OpsKey, Logger: log, MaxBody: cfg.MaxBody,
		Mode: mode, Store: storeKind(cfg.DatabaseURL), TracerProvider: tp,
	})
	return a, nil
}

// warmRecent warms the most recently active sessions at start-up.
func (a *app) warmRecent(ctx context.Context, n int) {
	if n <= 0 {
		return
	}
	start := time.Now()
	res, err := a.svc.WarmRecent(ctx, n)
	if err != nil {
		a.log.Warn("start-up warming failed", "err", err)
		return
	}
	a.log.Info("warmed recent sessions", "sessions", res.Sessions, "nodes", res.Nodes, "took", time.Since(start).Round(time.Millisecond))
}

// Close releases everything newApp built. Safe on a partly built app.
func (a *app) Close() {
	if a.srv != nil {
		a.srv.Close()
	}
	if a.svc != nil {
		a.svc.Close()
	}
	if a.cache != nil {
		a.cache.Close()
	}
	if a.rdb != nil {
		a.rdb.Close()
	}
	if a.store != nil {
		a.store.Close()
	}
	stopTracing(a.tp, a.log) // last: the spans of everything above are flushed
}

// openStore opens PostgreSQL for postgres:// URLs and SQLite otherwise
// (a path, optionally prefixed sqlite:).
func openStore(ctx context.Context, u string) (session.Store, error) {
	switch storeKind(u) {
	case "postgres":
		st, err := pgstore.Open(ctx, u)
		if err != nil {
			return nil, fmt.Errorf("DATABASE_URL: %w", err)
		}
		return st, nil
	default:
		path := strings.TrimPrefix(u, "sqlite:")
		if path == "" {
			return nil, errors.New("DATABASE_URL: empty SQLite path")
		}
		st, err := sqlitestore.Open(ctx, path)
		if err != nil {
			return nil, fmt.Errorf("DATABASE_URL: %w", err)
		}
		return st, nil
	}
}

func storeKind(u string) string {
	if strings.HasPrefix(u, "postgres://") || strings.HasPrefix(u, "postgresql://") {
		return "postgres"
	}
	return "sqlite"
}

// maxNodesOption maps MAX_NODES_PER_SESSION (0: no limit) to
// ServiceOptions.MaxNodesPerSession (0: the default, negative: no limit).
func maxNodesOption(n int) int {
	if n == 0 {
		return -1
	}
	return n
}
