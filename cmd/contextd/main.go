// Command contextd is the chat-session context service: an HTTP API over
// sessions and context nodes stored in SQLite or PostgreSQL and cached in a
// two-tier tiercache (process memory in front of Redis).
//
// Usage:
//
//	contextd [serve] [flags]   run the service (the default)
//	contextd load [flags]      simulated chat users against running contextd instances on loopback,
//	                           with a summary, -json and an HTML -report (-mode bench: context vs hello)
//	contextd verify [flags]    check the consistency contract against running instances
//
// Run "contextd <command> -h" for the flags; docs/API.md describes the routes.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

func main() {
	// Set once here, not in serve: go-redis's logger is process-wide.
	redis.SetLogger(&goRedisLog{log: slog.New(slog.NewTextHandler(os.Stderr, nil)), every: 10 * time.Second})
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv)
	stop()
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "contextd:", err)
		os.Exit(1)
	}
}

// run dispatches to a subcommand; serve is the default.
func run(ctx context.Context, args []string, getenv func(string) string) error {
	cmd := "serve"
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "serve":
		return serve(ctx, args, getenv)
	case "load":
		return load(ctx, args, os.Stdout)
	case "verify":
		return verify(ctx, args, os.Stdout)
	case "help":
		fmt.Println("usage: contextd [serve|load|verify] [flags]")
		return nil
	}
	return fmt.Errorf("unknown command %q (want serve, load or verify)", cmd)
}
