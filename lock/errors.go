package lock

import "errors"

// Sentinel errors. Every error this package returns wraps one of them with
// [fmt.Errorf] and %w, together with the lock or resource name, so callers test
// with [errors.Is] and log the message as is.
var (
	// ErrInvalid reports bad input: an invalid name, option or token.
	ErrInvalid = errors.New("lock: invalid argument")

	// ErrNotLocked is returned by [Locker.TryLock] when another owner holds
	// the lock, and wrapped by [Locker.Lock] when its context ends while waiting.
	ErrNotLocked = errors.New("lock: not acquired, held by another owner")

	// ErrNotHeld reports that a [Lease] no longer holds its lock: it was
	// released already, its validity ran out, its maximum hold time passed, or
	// Redis holds another owner's value (or none) under the lock key.
	ErrNotHeld = errors.New("lock: lease not held")

	// ErrQuorum reports that Redlock could not reach a majority of its servers,
	// for acquisition or extension. The message names how many granted and how
	// many were needed.
	ErrQuorum = errors.New("lock: quorum not reached")

	// ErrFenced is returned by a fenced write whose token is older than the
	// highest token already seen for the resource: its writer has been
	// superseded and must stop. The message names both tokens.
	ErrFenced = errors.New("lock: fenced write refused")

	// ErrExpired is the cause (see [context.Cause]) of a lease context that
	// ended because the local validity deadline passed before an extension
	// succeeded.
	ErrExpired = errors.New("lock: lease validity ran out")

	// ErrMaxHold is the cause of a lease context that ended because
	// [Options.MaxHold] passed since acquisition.
	ErrMaxHold = errors.New("lock: maximum hold time reached")

	// ErrReleased is the cause of a lease context that ended because
	// [Lease.Release] was called.
	ErrReleased = errors.New("lock: lease released")
)
