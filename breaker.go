package tiercache

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/sony/gobreaker/v2"
)

// The breaker: every Redis call goes through l2do, which bounds it by the L2 budget and feeds
// the circuit breaker (gobreaker, held by guard in resilience.go). Opening needs failures spread
// over BreakerWindow and a confirming probe (confirmDown); docs/OPERATIONS.md gives the thresholds.

// l2do runs one Redis operation through the breaker within the L2 budget. A server's error reply
// (and redis.Nil) is an answer and counts as success; transport errors and timeouts count as
// failures and come back wrapped in ErrUnavailable, as does a refusal by the open breaker. When
// the caller's own context ends first (it cancels, or its deadline is earlier than the budget's),
// the caller gets its context's error and nothing is counted against Redis.
func (c *Cache) l2do(ctx context.Context, fn func(ctx context.Context) error) error {
	return c.l2doN(ctx, 1, fn)
}

// l2doN is l2do for a call carrying n commands (a pipeline): its budget grows by 1% of L2Timeout
// per command beyond the first.
//
// On a healthy Redis a call touches the breaker not at all (see guard.quiet): its lock and
// clock reads cost more than the rest of the call's own work.
func (c *Cache) l2doN(ctx context.Context, n int, fn func(ctx context.Context) error) error {
	g := c.g
	snap := g.state.Load()
	quiet := snap&stateMask == uint64(gobreaker.StateClosed) && !g.counted.Load()
	var done func(error)
	if !quiet {
		var err error
		if done, err = g.cb.Allow(); err != nil {
			return fmt.Errorf("%w: circuit breaker: %w", ErrUnavailable, errRefused)
		}
	}
	budget := c.cfg.L2Timeout + time.Duration(max(n-1, 0))*c.cfg.L2Timeout/100
	start := time.Now()
	cctx, cancel := g.ticks.withBudget(ctx, start, budget)
	var err error
	if c.ctxDeadlines {
		err = fn(cctx)
	} else {
		// The client ignores context deadlines on its sockets (ContextTimeoutEnabled is off), so
		// the budget is enforced here: the call is left to finish on its own, bounded by the
		// client's read timeout (Close waits for it). fn must hand its results out only through
		// variables the caller reads after a nil error.
		if !c.bg.add() {
			cancel()
			g.settle(done, snap, errCallerEnded)
			return ErrClosed
		}
		ch := make(chan error, 1)
		go func() {
			defer c.bg.done()
			ch <- fn(cctx)
		}()
		select {
		case err = <-ch:
		case <-cctx.Done():
			err = cctx.Err()
		}
	}
	cancel()
	c.observeL2(ctx, time.Since(start))
	if err != nil && callerEnded(ctx, start.Add(budget)) {
		// Neither a failure nor a success: a cancelled call must not reset a streak either.
		g.settle(done, snap, errCallerEnded)
		return ctx.Err()
	}
	if !transportFailure(err) {
		// Read before writing: every call passes here, and a store would bounce the cache line.
		if g.failingSince.Load() != 0 {
			g.failingSince.Store(0)
		}
		if g.confirmedDown.Load() {
			g.confirmedDown.Store(false)
		}
		g.settle(done, snap, nil)
		return err
	}
	g.failingSince.CompareAndSwap(0, start.UnixNano())
	if !isTimeout(err) {
		g.confirmedDown.Store(true) // Redis refused or dropped us: no probe needed
	}
	g.settle(done, snap, err)
	c.st.l2Errors.Add(1)
	if cc, ok := c.rdb.(*redis.ClusterClient); ok {
		// go-redis reloads its slot map only on MOVED, ASK or READONLY replies and every 60 s:
		// after a master's kill it would keep dialing the dead node for up to a minute past the
		// promotion of its replica. Reloads are rate-bounded by go-redis (one in flight, then a
		// 200 ms cooldown), so a storm of failures costs one CLUSTER SLOTS every 200 ms.
		cc.ReloadState(ctx)
	}
	return fmt.Errorf("%w: %w", ErrUnavailable, err)
}

// settle reports a call's outcome to the breaker: err nil for a success, errCallerEnded for a
// call that counts neither way, else a failure. done is the breaker's own report for a call it
// allowed; nil for a quiet call, which started without the breaker while its state was snap.
//
// A quiet call is reported only when the report changes something: a failure always, a
// success only when a failure may be counted (guard.counted), since it then ends the run of
// consecutive failures. Neither is reported when the breaker has changed state since the call
// began: the breaker ignores the reports of calls from an earlier state, and so does this.
func (g *guard) settle(done func(error), snap uint64, err error) {
	if done == nil {
		if errors.Is(err, errCallerEnded) || (err == nil && !g.counted.Load()) || g.state.Load() != snap {
			return
		}
		var aerr error
		if done, aerr = g.cb.Allow(); aerr != nil {
			return // opened meanwhile
		}
		if g.state.Load() != snap {
			// Changed state between the check and Allow: the report would land in a state
			// the call never saw.
			done(errCallerEnded)
			return
		}
	}
	switch {
	case err == nil:
		// Cleared before the report, so that a failure reported concurrently (which sets it
		// after its report) leaves it set: counted is false only when no failure is counted.
		g.counted.Store(false)
		done(nil)
	case errors.Is(err, errCallerEnded):
		done(err)
	default:
		done(err)
		g.counted.Store(true)
	}
}

// callerEnded reports whether a failed call was ended by its caller rather than by Redis: the
// caller cancelled, or its deadline came no later than the call's own budget (which ends at
// budgetEnd). A call whose budget expired first counts against Redis even if the caller's
// deadline has passed too by now.
func callerEnded(ctx context.Context, budgetEnd time.Time) bool {
	if ctx.Err() == nil {
		return false
	}
	d, ok := ctx.Deadline()
	return !ok || !errors.Is(ctx.Err(), context.DeadlineExceeded) || !d.After(budgetEnd)
}

// confirmWait is how long confirmDown's probe waits for Redis: longer than the scheduling stalls
// measured on a saturated host (see docs/OPERATIONS.md), short enough that a real outage opens
// the breaker within about a second and a half.
func (c *Cache) confirmWait() time.Duration { return max(time.Second, 20*c.cfg.L2Timeout) }

// confirmDown starts, unless one runs, a probe that decides whether a failure streak is Redis's:
// a PING through the breaker with confirmWait to answer. An answer (any reply) is a success,
// which resets the streak and the breaker's count; no answer marks Redis down and reports the
// failure, and ReadyToTrip then opens the breaker. It runs under the breaker's lock (from
// ReadyToTrip), so it only starts a goroutine.
func (g *guard) confirmDown() {
	if !g.confirming.CompareAndSwap(false, true) {
		return
	}
	c := g.c
	if !c.bg.add() {
		g.confirming.Store(false)
		return
	}
	go func() {
		defer c.bg.done()
		defer g.confirming.Store(false)
		ctx := g.ctx // ends when Close stops the guard
		done, err := g.cb.Allow()
		if err != nil {
			return // opened meanwhile
		}
		pctx, cancel := context.WithTimeout(ctx, c.confirmWait())
		err = c.rdb.Ping(pctx).Err()
		cancel()
		switch {
		case ctx.Err() != nil:
			done(errCallerEnded) // closing
		case !transportFailure(err):
			g.failingSince.Store(0)
			done(nil)
		default:
			g.confirmedDown.Store(true)
			done(err)
			g.counted.Store(true)
		}
	}()
}

// noConnections reports whether the client has no connection to Redis open.
func (g *guard) noConnections() bool {
	ps := g.c.rdb.PoolStats()
	return ps != nil && ps.TotalConns == 0
}

// streak is how long the current run of consecutive Redis failures has lasted, measured from
// the start of its first call.
func (g *guard) streak() time.Duration {
	since := g.failingSince.Load()
	if since == 0 {
		return 0
	}
	return time.Since(time.Unix(0, since))
}

// honorsDeadlines reports whether rdb applies context deadlines to its socket reads and writes.
func honorsDeadlines(rdb redis.UniversalClient) bool {
	switch r := rdb.(type) {
	case *redis.Client:
		return r.Options().ContextTimeoutEnabled
	case *redis.ClusterClient:
		return r.Options().ContextTimeoutEnabled
	case *redis.Ring:
		return r.Options().ContextTimeoutEnabled
	}
	return false
}

// isTimeout reports failures that only say no answer came in time, which a busy host produces
// as well as a Redis that is gone (see confirmDown).
func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, redis.ErrPoolTimeout) ||
		(errors.As(err, &ne) && ne.Timeout())
}

// transportFailure reports errors that say nothing came back from Redis in time.
func transportFailure(err error) bool {
	if err == nil || errors.Is(err, redis.Nil) {
		return false
	}
	var re redis.Error
	if errors.As(err, &re) {
		msg := re.Error()
		// Replies that mean the server cannot serve now.
		return strings.HasPrefix(msg, "LOADING") || strings.HasPrefix(msg, "MASTERDOWN") ||
			strings.HasPrefix(msg, "CLUSTERDOWN") || strings.HasPrefix(msg, "TRYAGAIN")
	}
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, redis.ErrClosed) ||
		errors.Is(err, redis.ErrPoolTimeout) || strings.Contains(err.Error(), "connection") || strings.Contains(err.Error(), "EOF")
}
