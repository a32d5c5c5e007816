package lock

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// Lease states.
const (
	held = iota
	lost
	released
)

// A Lease is one holding of a lock, returned by [Locker.TryLock] and
// [Locker.Lock]. While auto-extension is on (the default) a watchdog renews it
// every Options.ExtendEvery of the TTL. Its [Lease.Context] ends the moment the
// lease can no longer be trusted: an extension was refused, the local validity
// deadline passed before an extension succeeded, Options.MaxHold passed, or it
// was released. Methods are safe for concurrent use.
type Lease struct {
	l        *Locker
	name     string
	value    string // our random value, the same on every server
	token    uint64
	acquired time.Time // before the acquire request was sent (monotonic)
	holdEnd  time.Time // zero if no MaxHold

	ctx    context.Context
	cancel context.CancelCauseFunc

	mu       sync.Mutex // guards the fields below
	state    int
	deadline time.Time     // local validity deadline, moved by extensions
	cause    error         // why the lease was lost
	expiry   *time.Timer   // fires at min(deadline, holdEnd): onExpiry
	renew    *time.Timer   // the watchdog: fires every ExtendEvery*TTL; nil if off
	inflight chan struct{} // non-nil while the watchdog extends; closed after
}

func (l *Locker) newLease(parent context.Context, name, value string, token uint64, start, deadline time.Time) *Lease {
	// The lease outlives the acquiring call: keep parent's values (trace
	// spans, loggers), not its cancellation.
	ctx, cancel := context.WithCancelCause(context.WithoutCancel(parent))
	le := &Lease{
		l: l, name: name, value: value, token: token, acquired: start,
		ctx: ctx, cancel: cancel, deadline: deadline,
	}
	if l.c.maxHold > 0 {
		le.holdEnd = start.Add(l.c.maxHold)
	}
	le.mu.Lock()
	// Timers are created under mu: their callbacks take mu first, so they
	// cannot see a nil timer even if the delay is already over. Timers rather
	// than a goroutine per lease: nothing runs, and nothing can leak, between
	// renewals.
	end, _ := le.endLocked()
	le.expiry = time.AfterFunc(time.Until(end), le.onExpiry)
	if every := l.c.extendEvery; every > 0 {
		le.renew = time.AfterFunc(every-time.Since(start), le.watchdog)
	}
	le.mu.Unlock()
	return le
}

// Context returns a context that is cancelled when the lease ends, lost or
// released. [context.Cause] says why: [ErrReleased], [ErrExpired],
// [ErrMaxHold], or an error wrapping [ErrNotHeld] if an extension was
// refused. Work done under the lock should stop when it is done.
func (le *Lease) Context() context.Context { return le.ctx }

// Token returns the fencing token: larger than the token of every earlier
// lease on the same name on the same Redis (see docs/LOCKS.md for Redlock).
// Pass it to [Fence.Set] or to the store the lock protects.
func (le *Lease) Token() uint64 { return le.token }

// Name returns the lock name.
func (le *Lease) Name() string { return le.name }

// Validity returns the local deadline until which the lease is held, as last
// extended (on the monotonic clock; compare it with time.Now). It does not
// move after the lease ends.
func (le *Lease) Validity() time.Time {
	le.mu.Lock()
	defer le.mu.Unlock()
	end, _ := le.endLocked()
	return end
}

// endLocked returns when the lease ends locally, and the cause it will end with.
func (le *Lease) endLocked() (time.Time, error) {
	if !le.holdEnd.IsZero() && !le.holdEnd.After(le.deadline) {
		return le.holdEnd, ErrMaxHold
	}
	return le.deadline, ErrExpired
}

// onExpiry runs on the expiry timer. An extension may have moved the deadline
// since the timer was armed; then it re-arms.
func (le *Lease) onExpiry() {
	le.mu.Lock()
	defer le.mu.Unlock()
	if le.state != held {
		return
	}
	end, cause := le.endLocked()
	if d := time.Until(end); d > 0 {
		le.expiry.Reset(d)
		return
	}
	le.loseLocked(fmt.Errorf("%w: %q", cause, le.name))
}

func (le *Lease) loseLocked(cause error) {
	le.state = lost
	le.l.lost.Add(1)
	le.cause = cause
	le.stopTimersLocked()
	le.cancel(cause)
	le.l.c.log.Warn("lock: lease lost", "name", le.name, "token", le.token, "cause", cause)
}

// notHeldLocked describes why the lease is not held; mu must be held.
func (le *Lease) notHeldLocked() error {
	if le.state == released {
		return fmt.Errorf("%w: %q was already released", ErrNotHeld, le.name)
	}
	return fmt.Errorf("%w: %q was lost: %w", ErrNotHeld, le.name, le.cause)
}

func (le *Lease) stopTimersLocked() {
	le.expiry.Stop()
	if le.renew != nil {
		le.renew.Stop()
	}
}

// watchdog runs on the renew timer: it extends the lease and re-arms the
// timer, sooner after a failure, until the lease ends (onExpiry ends it if no
// extension lands in time). Release waits for a running watchdog through
// inflight, so none outlives the lease.
func (le *Lease) watchdog() {
	le.mu.Lock()
	if le.state != held || le.inflight != nil {
		le.mu.Unlock()
		return
	}
	if !le.holdEnd.IsZero() && !time.Now().Before(le.holdEnd) {
		le.mu.Unlock()
		return // MaxHold: no more extensions; onExpiry ends the lease
	}
	done := make(chan struct{})
	le.inflight = done
	end, _ := le.endLocked()
	le.mu.Unlock()

	err := le.extend(le.ctx)

	le.mu.Lock()
	defer le.mu.Unlock()
	le.inflight = nil
	close(done)
	if le.state != held {
		return
	}
	next := le.l.c.extendEvery
	if err != nil {
		le.l.c.log.Debug("lock: extension failed, retrying", "name", le.name, "err", err)
		next = max(le.l.c.retryMin, min(next/4, time.Until(end)/2))
	}
	le.renew.Reset(next)
}

// Extend renews the lease now, to a full TTL from the moment the request is
// sent, on a majority of servers. The watchdog does this on its own unless
// auto-extension is off. An error wraps [ErrNotHeld] if the lease was released
// or lost (including validity running out before this call, or Redis holding
// another value: then the lease ends), [ErrQuorum] if too few Redlock servers
// answered, or the Redis error; after the last two the lease stays held until
// its deadline and Extend may be retried.
func (le *Lease) Extend(ctx context.Context) error {
	return le.extend(ctx)
}

func (le *Lease) extend(ctx context.Context) error {
	le.mu.Lock()
	if le.state != held {
		err := le.notHeldLocked()
		le.mu.Unlock()
		return err
	}
	end, _ := le.endLocked()
	le.mu.Unlock()

	// An extension that lands after the deadline is worthless: bound the call.
	cctx, cancel := context.WithDeadline(ctx, end)
	defer cancel()
	start := time.Now()
	t := le.l.extendAll(cctx, le.name, le.value)
	n, q := len(le.l.c.clients), le.l.c.quorum

	le.mu.Lock()
	defer le.mu.Unlock()
	if le.state != held {
		return le.notHeldLocked()
	}
	now := time.Now()
	if end, cause := le.endLocked(); !now.Before(end) {
		// The timer has not run yet, but the deadline has passed.
		le.loseLocked(fmt.Errorf("%w: %q", cause, le.name))
		return le.notHeldLocked()
	}
	switch {
	case t.ok >= q:
		if d := start.Add(le.l.c.ttl - le.l.c.drift); d.After(le.deadline) {
			le.deadline = d
		}
		// onExpiry re-arms itself if it fires before the new deadline.
		return nil
	case t.refused > n-q:
		// A majority no longer holds our value: another owner may have the
		// lock already. End the lease now.
		le.loseLocked(fmt.Errorf("%w: %q: extension refused by %d of %d servers", ErrNotHeld, le.name, t.refused, n))
		return le.notHeldLocked()
	case n == 1:
		return fmt.Errorf("lock: extend %q: %w", le.name, t.firstErr)
	default:
		return fmt.Errorf("%w for %q: extension granted by %d of %d servers, need %d (first error: %w)",
			ErrQuorum, le.name, t.ok, n, q, t.firstErr)
	}
}

// Release ends the lease: it cancels the lease context first, stops the
// watchdog, then deletes the lock on every server where it still holds this
// lease's value. It returns nil if the lease was held until now and a
// majority confirmed the delete. It returns an error wrapping [ErrNotHeld]
// if the lease was already released, was lost before this call (the delete is
// still attempted, to free the lock early), or Redis no longer held its value;
// or a Redis error (the lock then expires after at most the TTL). After a
// network error go-redis may retry the delete, and a retry that finds the key
// already deleted reports ErrNotHeld. Release waits for a running renewal to
// return, so no goroutine outlives it.
func (le *Lease) Release(ctx context.Context) error {
	le.mu.Lock()
	if le.state == released {
		err := le.notHeldLocked()
		le.mu.Unlock()
		return err
	}
	var lostErr error
	if le.state == lost {
		lostErr = le.notHeldLocked()
	}
	le.state = released
	le.stopTimersLocked()
	wait := le.inflight
	le.mu.Unlock()
	le.cancel(ErrReleased) // no effect if already lost; ends a running extension
	if wait != nil {
		<-wait
	}

	t := le.l.releaseAll(ctx, le.name, le.value)
	if t.ok > 0 {
		le.l.poke(le.name)
	}
	n, q := len(le.l.c.clients), le.l.c.quorum
	switch {
	case lostErr != nil:
		return lostErr
	case t.ok >= q:
		return nil
	case t.refused > n-q:
		return fmt.Errorf("%w: %q: Redis no longer held this lease's value (%d of %d servers)", ErrNotHeld, le.name, t.refused, n)
	case n == 1:
		return fmt.Errorf("lock: release %q: %w", le.name, t.firstErr)
	default:
		return fmt.Errorf("%w for %q: release confirmed by %d of %d servers, need %d (first error: %w)",
			ErrQuorum, le.name, t.ok, n, q, t.firstErr)
	}
}
