package lock

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/redis/go-redis/v9"
)

// MaxNameLen is the longest accepted lock or resource name, in bytes.
const MaxNameLen = 512

// A Locker hands out leases on named locks held in one Redis, or in a
// majority of independent Redis servers (Redlock). It is safe for concurrent
// use and holds no resources of its own: there is nothing to close, and the
// Redis clients stay the caller's.
type Locker struct {
	c       config
	fenceTo *Fence // FencedSet's target: Clients[0]

	mu    sync.Mutex        // guards waits
	waits map[string]*waitq // names some Lock call of this Locker waits for

	acquired, busy, failed, lost atomic.Uint64 // see Stats
}

// Stats counts a Locker's lock attempts and leases since [New]. An attempt that ctx cut short
// counts in none of them: it says nothing about the lock or the servers.
type Stats struct {
	Acquired uint64 `json:"acquired"` // attempts that took the lock (each a lease)
	Busy     uint64 `json:"busy"`     // attempts refused because another owner held the lock
	Failed   uint64 `json:"failed"`   // attempts that failed for the servers: errors, no quorum, too slow for the validity window
	Lost     uint64 `json:"lost"`     // leases lost before their release: an extension refused, the validity deadline or MaxHold passed
}

// Stats returns the Locker's counters. It is safe to call concurrently and costs a few atomic
// loads.
func (l *Locker) Stats() Stats {
	return Stats{Acquired: l.acquired.Load(), Busy: l.busy.Load(), Failed: l.failed.Load(), Lost: l.lost.Load()}
}

// waitq coordinates the Lock calls of one Locker that wait for one name: only
// the goroutine holding turn polls Redis, the rest wait for it locally, so N
// waiting goroutines cost one poller instead of N (which under contention
// would crowd out the holder's own release). A Release through this Locker
// pokes wake so the poller retries at once instead of after its backoff.
type waitq struct {
	turn chan struct{} // capacity 1: held by the polling goroutine
	wake chan struct{} // capacity 1: a lease on this name was released
	refs int           // Lock calls using this waitq; guarded by Locker.mu
}

// New validates o and returns a Locker. It does no I/O. Errors wrap
// [ErrInvalid] and name the offending field.
func New(o Options) (*Locker, error) {
	c, err := o.config()
	if err != nil {
		return nil, err
	}
	return &Locker{
		c:       c,
		fenceTo: &Fence{rdb: c.clients[0], prefix: c.prefix},
		waits:   make(map[string]*waitq),
	}, nil
}

// Quorum returns how many servers must grant a lock: 1 for a single Redis,
// N/2+1 for Redlock over N servers.
func (l *Locker) Quorum() int { return l.c.quorum }

// TTL returns the effective lease lifetime in Redis.
func (l *Locker) TTL() time.Duration { return l.c.ttl }

// TryLock makes one attempt to take the lock name. It returns at once with an
// error wrapping [ErrNotLocked] if another owner holds it, [ErrQuorum] if too
// few Redlock servers answered, or the Redis error; if ctx ends before the
// attempt has its answer, an error wrapping both [ErrNotLocked] and the
// context's error. On success the returned
// lease is held until [Lease.Release] or until its context ends; ctx only
// bounds the attempt, and cancelling it later does not end the lease.
func (l *Locker) TryLock(ctx context.Context, name string) (*Lease, error) {
	if err := checkName("lock", name); err != nil {
		return nil, err
	}
	le, _, err := l.acquire(ctx, name)
	return le, err
}

// Lock takes the lock name, retrying with exponential backoff and jitter
// (Options.RetryMin to RetryMax) while it is held elsewhere or a quorum is
// out of reach, until ctx ends. Concurrent Lock calls of one Locker for one
// name queue locally and only one of them polls Redis at a time; a Release
// through the same Locker wakes it at once. There is no fairness between
// processes. When ctx ends it returns an error that wraps both the
// context's error and the verdict of the last attempt that had an answer
// ([ErrNotLocked], [ErrQuorum] or a Redis error); an attempt cut short by ctx
// counts as [ErrNotLocked]. Invalid names fail at once. Like [Locker.TryLock], ctx does
// not bound the lease.
func (l *Locker) Lock(ctx context.Context, name string) (*Lease, error) {
	if err := checkName("lock", name); err != nil {
		return nil, err
	}
	q := l.enter(name)
	defer l.leave(name, q)
	select {
	case q.turn <- struct{}{}:
		defer func() { <-q.turn }()
	case <-ctx.Done():
		return nil, fmt.Errorf("lock: waiting for %q: %w (%w)", name, context.Cause(ctx), ErrNotLocked)
	}

	backoff := l.c.retryMin
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	// last is the verdict of the latest attempt that ctx did not cut short;
	// an attempt cut short says nothing about the lock, so it is reported
	// only when no attempt finished (it wraps ErrNotLocked itself).
	var last error
	for {
		le, cut, err := l.acquire(ctx, name)
		if err == nil {
			return le, nil
		}
		if !cut || last == nil {
			last = err
		}
		if ctx.Err() != nil {
			return nil, gaveUp(ctx, name, last)
		}
		// Equal jitter: sleep in [backoff/2, backoff] so that waiters that
		// started together spread out but none spins.
		d := backoff/2 + rand.N(backoff/2+1)
		if timer == nil {
			timer = time.NewTimer(d)
		} else {
			timer.Reset(d)
		}
		select {
		case <-ctx.Done():
			return nil, gaveUp(ctx, name, last)
		case <-timer.C:
			backoff = min(backoff*2, l.c.retryMax)
		case <-q.wake:
			backoff = l.c.retryMin
		}
	}
}

// gaveUp is Lock's error when ctx ends: it wraps the context's cause and the
// last attempt's verdict.
func gaveUp(ctx context.Context, name string, last error) error {
	return fmt.Errorf("lock: waiting for %q: %w (last attempt: %w)", name, context.Cause(ctx), last)
}

// WithLock runs fn while holding the lock name, waiting for it as
// [Locker.Lock] does. fn receives the lease context, which ends if the lease
// is lost; fn must stop writing when it does (use a fenced write for
// anything that must not be overwritten by a paused former holder). The lease
// is released when fn returns, even if ctx has ended. The error joins fn's
// error and the release error.
func (l *Locker) WithLock(ctx context.Context, name string, fn func(ctx context.Context, token uint64) error) error {
	le, err := l.Lock(ctx, name)
	if err != nil {
		return err
	}
	ferr := fn(le.Context(), le.Token())
	rerr := le.Release(context.WithoutCancel(ctx))
	return errors.Join(ferr, rerr)
}

// FencedSet writes value under key on the first of Options.Clients, only if
// token is at least the highest token seen for resource. See [Fence.Set],
// which it calls; use a [Fence] directly to write to another Redis.
func (l *Locker) FencedSet(ctx context.Context, resource string, token uint64, key string, value []byte, ttl time.Duration) error {
	return l.fenceTo.Set(ctx, resource, token, key, value, ttl)
}

// Fence returns the [Fence] that FencedSet writes through.
func (l *Locker) Fence() *Fence { return l.fenceTo }

func (l *Locker) enter(name string) *waitq {
	l.mu.Lock()
	defer l.mu.Unlock()
	q := l.waits[name]
	if q == nil {
		q = &waitq{turn: make(chan struct{}, 1), wake: make(chan struct{}, 1)}
		l.waits[name] = q
	}
	q.refs++
	return q
}

func (l *Locker) leave(name string, q *waitq) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if q.refs--; q.refs == 0 {
		delete(l.waits, name)
	}
}

// poke wakes the goroutine polling for name, if any.
func (l *Locker) poke(name string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if q := l.waits[name]; q != nil {
		select {
		case q.wake <- struct{}{}:
		default:
		}
	}
}

// checkName rejects names that would break the key layout: empty, too long,
// invalid UTF-8, glob characters (names may be matched with SCAN), braces
// (the name is the hash tag), whitespace and control characters.
func checkName(what, name string) error {
	switch {
	case name == "":
		return invalidf("empty %s name", what)
	case len(name) > MaxNameLen:
		return invalidf("%s name of %d bytes is longer than %d", what, len(name), MaxNameLen)
	case !utf8.ValidString(name):
		return invalidf("%s name %q is not valid UTF-8", what, name)
	}
	for _, r := range name {
		switch {
		case r == '*' || r == '?' || r == '[' || r == ']':
			return invalidf("%s name %q contains the glob character %q", what, name, r)
		case r == '{' || r == '}':
			return invalidf("%s name %q contains the hash-tag character %q", what, name, r)
		case unicode.IsSpace(r) || unicode.IsControl(r):
			return invalidf("%s name %q contains whitespace or a control character", what, name)
		}
	}
	return nil
}

func (l *Locker) lockKey(name string) string  { return l.c.prefix + "{" + name + "}:lock" }
func (l *Locker) fenceKey(name string) string { return l.c.prefix + "{" + name + "}:fence" }

// LockKey returns the Redis key that holds the lock name (for operations and
// tests; do not write to it).
func (l *Locker) LockKey(name string) string { return l.lockKey(name) }

func randomValue() string {
	var b [16]byte
	_, _ = crand.Read(b[:]) // never fails (Go 1.24+ crashes the program instead)
	return hex.EncodeToString(b[:])
}

// reply is one server's answer to a script.
type reply struct {
	n   int64 // the script's integer reply
	nil bool  // the script returned nil
	err error
}

// callAll runs fn against every client: directly for a single client (bounded
// by ctx alone), in parallel with Options.ServerTimeout each for Redlock. It
// returns when every call has returned, so no goroutine outlives it.
func (l *Locker) callAll(ctx context.Context, fn func(ctx context.Context, c redis.UniversalClient) *redis.Cmd) []reply {
	out := make([]reply, len(l.c.clients))
	one := func(ctx context.Context, c redis.UniversalClient) reply {
		n, err := fn(ctx, c).Int64()
		if errors.Is(err, redis.Nil) {
			return reply{nil: true}
		}
		return reply{n: n, err: err}
	}
	if len(l.c.clients) == 1 {
		out[0] = one(ctx, l.c.clients[0])
		return out
	}
	var wg sync.WaitGroup
	for i, c := range l.c.clients {
		wg.Go(func() {
			sctx, cancel := context.WithTimeout(ctx, l.c.serverTimeout)
			defer cancel()
			out[i] = one(sctx, c)
			if out[i].err != nil {
				l.c.log.Debug("lock: server call failed", "server", i, "err", out[i].err)
			}
		})
	}
	wg.Wait()
	return out
}

// tally counts replies: ok with n == 1 (or any token, for acquire), refused
// (nil or 0), and errors, keeping the first error.
type tally struct {
	ok, refused, failed int
	firstErr            error
}

func count(rs []reply, ok func(reply) bool) tally {
	var t tally
	for _, r := range rs {
		switch {
		case r.err != nil:
			t.failed++
			if t.firstErr == nil {
				t.firstErr = r.err
			}
		case ok(r):
			t.ok++
		default:
			t.refused++
		}
	}
	return t
}

// acquire makes one attempt on all servers. cut reports that ctx ended
// before the attempt had its answer: the error then wraps both ErrNotLocked
// (the lock was not taken) and the context's cause, never a bare context
// error, unless the servers that did answer already rule a quorum out
// (ErrQuorum). A deadline that fires inside the call surfaces from go-redis
// as a context error or as an i/o timeout, so any failure once ctx has ended
// counts as cut short.
func (l *Locker) acquire(ctx context.Context, name string) (le *Lease, cut bool, err error) {
	if ctx.Err() != nil {
		return nil, true, interrupted(ctx, name)
	}
	value := randomValue()
	keys := []string{l.lockKey(name), l.fenceKey(name)}
	counterTTL := max(fenceCounterTTL, 2*l.c.ttl).Milliseconds()
	// The validity window starts before the request is sent: the key's TTL
	// in Redis starts later, so the local deadline is the earlier of the two.
	start := time.Now()
	rs := l.callAll(ctx, func(ctx context.Context, c redis.UniversalClient) *redis.Cmd {
		return acquireScript.Run(ctx, c, keys, value, l.c.ttlMs, counterTTL)
	})
	deadline := start.Add(l.c.ttl - l.c.drift)
	t := count(rs, func(r reply) bool { return !r.nil })
	var token uint64
	for _, r := range rs {
		if r.err == nil && !r.nil && uint64(r.n) > token {
			token = uint64(r.n)
		}
	}

	if t.ok >= l.c.quorum && len(rs) > 1 {
		if raised := l.raise(ctx, name, rs, token, counterTTL); raised < l.c.quorum {
			t.ok = raised // report the quorum failure below
			t.failed = len(rs) - raised
			if t.firstErr == nil {
				t.firstErr = errors.New("could not raise the token counters")
			}
		}
	}
	// Failures after ctx ended are ctx's doing, not the servers'.
	ended := ctx.Err() != nil
	switch {
	case t.ok >= l.c.quorum && time.Now().Before(deadline):
		l.acquired.Add(1)
		return l.newLease(ctx, name, value, token, start, deadline), false, nil
	case t.ok >= l.c.quorum:
		l.failed.Add(1)
		err = fmt.Errorf("%w: %q: acquisition took %v, longer than the validity window", ErrNotLocked, name, time.Since(start))
	case ended && t.failed > 0 && (len(rs) == 1 || !l.quorumRuledOut(rs)):
		cut, err = true, interrupted(ctx, name)
	case len(rs) == 1 && t.failed == 1:
		l.failed.Add(1)
		err = fmt.Errorf("lock: acquire %q: %w", name, t.firstErr)
	case len(rs) == 1:
		l.busy.Add(1)
		err = fmt.Errorf("%w: %q", ErrNotLocked, name)
	case t.failed > len(rs)-l.c.quorum:
		// Even if every server that answered had granted, there would be no
		// majority: the servers are the problem, not contention.
		l.failed.Add(1)
		err = fmt.Errorf("%w for %q: %d of %d servers granted, need %d (%d failed, first error: %w)",
			ErrQuorum, name, t.ok, len(rs), l.c.quorum, t.failed, t.firstErr)
	default:
		l.busy.Add(1)
		err = fmt.Errorf("%w: %q: %d of %d servers granted, need %d",
			ErrNotLocked, name, t.ok, len(rs), l.c.quorum)
	}
	if t.ok > 0 || t.failed > 0 {
		// Give back what we got (a failed call may have applied before its
		// reply was lost) so that others need not wait for the TTL. Bounded,
		// and independent of ctx, which may be what just ended.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), l.c.serverTimeout)
		l.releaseAll(rctx, name, value)
		cancel()
	}
	return nil, cut, err
}

// interrupted is acquire's error when ctx ended before the attempt had its
// answer.
func interrupted(ctx context.Context, name string) error {
	return fmt.Errorf("%w: %q: attempt cut short: %w", ErrNotLocked, name, context.Cause(ctx))
}

// quorumRuledOut reports whether the Redlock servers that failed for reasons
// of their own (not ctx ending: an error that is not a context or timeout
// error) are too many for any majority, whatever the cut-short ones would
// have answered.
func (l *Locker) quorumRuledOut(rs []reply) bool {
	own := 0
	for _, r := range rs {
		if r.err != nil && !errors.Is(r.err, context.Canceled) && !errors.Is(r.err, context.DeadlineExceeded) && !isTimeout(r.err) {
			own++
		}
	}
	return own > len(rs)-l.c.quorum
}

// isTimeout reports a network timeout (go-redis returns the connection's
// deadline error when ctx's deadline is set on the socket).
func isTimeout(err error) bool {
	var ne interface{ Timeout() bool }
	return errors.As(err, &ne) && ne.Timeout()
}

// raise makes Redlock tokens increase across leases. The token is the
// maximum of the granting servers' tokens; the servers that issued less lift
// their counters to it. Once a majority's counters are at least token, every
// later majority includes one of them, and so issues a larger token. It
// returns how many servers' counters are now at least token.
func (l *Locker) raise(ctx context.Context, name string, rs []reply, token uint64, counterTTL int64) int {
	keys := []string{l.fenceKey(name)}
	arg := strconv.FormatUint(token, 10)
	var (
		wg     sync.WaitGroup
		raised atomic.Int32
	)
	for i, r := range rs {
		switch {
		case r.err != nil || r.nil:
			continue
		case uint64(r.n) == token:
			raised.Add(1)
			continue
		}
		wg.Go(func() {
			sctx, cancel := context.WithTimeout(ctx, l.c.serverTimeout)
			defer cancel()
			err := raiseScript.Run(sctx, l.c.clients[i], keys, arg, counterTTL).Err()
			if err != nil {
				l.c.log.Debug("lock: raising the token counter failed", "server", i, "err", err)
				return
			}
			raised.Add(1)
		})
	}
	wg.Wait()
	return int(raised.Load())
}

func (l *Locker) releaseAll(ctx context.Context, name, value string) tally {
	keys := []string{l.lockKey(name)}
	rs := l.callAll(ctx, func(ctx context.Context, c redis.UniversalClient) *redis.Cmd {
		return releaseScript.Run(ctx, c, keys, value)
	})
	return count(rs, func(r reply) bool { return r.n == 1 })
}

func (l *Locker) extendAll(ctx context.Context, name, value string) tally {
	keys := []string{l.lockKey(name)}
	rs := l.callAll(ctx, func(ctx context.Context, c redis.UniversalClient) *redis.Cmd {
		return extendScript.Run(ctx, c, keys, value, l.c.ttlMs)
	})
	return count(rs, func(r reply) bool { return r.n == 1 })
}
