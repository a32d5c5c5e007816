package main

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// goRedisLog routes go-redis's own log lines through slog. During an outage
// go-redis logs every failed dial, which would flood stderr; the connection
// events that matter (lost, reconnected) are logged and counted by
// tiercache's client hooks, so these lines are kept to one per every, with
// the number suppressed since the last one.
type goRedisLog struct {
	log   *slog.Logger
	every time.Duration

	mu         sync.Mutex
	last       time.Time
	suppressed int
}

func (g *goRedisLog) Printf(_ context.Context, format string, v ...any) {
	g.mu.Lock()
	now := time.Now()
	if !g.last.IsZero() && now.Sub(g.last) < g.every {
		g.suppressed++
		g.mu.Unlock()
		return
	}
	n := g.suppressed
	g.last, g.suppressed = now, 0
	g.mu.Unlock()
	g.log.Warn("go-redis: "+fmt.Sprintf(format, v...), "suppressed_since_last", n)
}
