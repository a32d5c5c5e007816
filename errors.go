package tiercache

import "errors"

var (
	// ErrNotFound reports a key that neither tier (nor the loader) has.
	ErrNotFound = errors.New("tiercache: not found")
	// ErrClosed is returned by every call made after [Cache.Close].
	ErrClosed = errors.New("tiercache: closed")
	// ErrTooLarge reports a key or value over a configured limit; the error names the limit.
	// Nothing is written when it is returned.
	ErrTooLarge = errors.New("tiercache: too large")
	// ErrStaleVersion reports a write whose version is older than the one stored in Redis; the
	// stored entry is kept and the caller's local copy is dropped.
	ErrStaleVersion = errors.New("tiercache: stale version")
	// ErrStale accompanies a value served past its logical expiry because the loader failed or
	// was slow (fail-safe); the value returned with it is usable, and the error wraps the cause.
	ErrStale = errors.New("tiercache: stale value served")
	// ErrInvalidKey reports an empty key.
	ErrInvalidKey = errors.New("tiercache: invalid key")
)
