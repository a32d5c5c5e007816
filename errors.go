package tiercache

import (
	"errors"
	"fmt"
)

// prefix starts every error and log message of the package; errorf adds it to an error.
const prefix = "tiercache: "

// errorf is fmt.Errorf with the package's prefix.
func errorf(format string, args ...any) error { return fmt.Errorf(prefix+format, args...) }

var (
	// ErrNotFound reports a key that neither tier (nor the loader) has.
	ErrNotFound = errors.New(prefix + "not found")
	// ErrClosed is returned by every call made after [Cache.Close].
	ErrClosed = errors.New(prefix + "closed")
	// ErrTooLarge reports a key or value over a configured limit; the error names the limit.
	// Nothing is written when it is returned.
	ErrTooLarge = errors.New(prefix + "too large")
	// ErrStaleVersion reports a write whose version is older than the one stored in Redis; the
	// stored entry is kept and the caller's local copy is dropped.
	ErrStaleVersion = errors.New(prefix + "stale version")
	// ErrStale accompanies a value served past its logical expiry because the loader failed or
	// was slow (fail-safe); the value returned with it is usable, and the error wraps the cause.
	ErrStale = errors.New(prefix + "stale value served")
	// ErrInvalidKey reports an empty key.
	ErrInvalidKey = errors.New(prefix + "invalid key")
	// ErrUnavailable reports that Redis could not be used within the call's L2 budget, or that the
	// circuit breaker is open. Reads that can fall back (GetOrLoad) do; it reaches callers of Get and
	// of writes only when a write cannot be remembered for replay.
	ErrUnavailable = errors.New(prefix + "redis unavailable")
	// ErrLoaderPanicked is returned, wrapped with the key and the panic value, to every caller of a
	// GetOrLoad flight or GetOrLoadMany call whose loader panicked. The panic is logged with its stack
	// and counted (Stats.LoaderPanics); the process goes on.
	ErrLoaderPanicked = errors.New(prefix + "loader panicked")
)

// Errors that never leave the package: they mark how a call failed, for the code that handles it.
var (
	// errCallerEnded is what the breaker is told of a call whose caller's context ended first: it
	// is excluded, neither a success nor a failure of Redis.
	errCallerEnded = errors.New(prefix + "the caller's context ended")
	// errRefused marks an ErrUnavailable for which nothing was sent: the breaker refused the call.
	errRefused = errors.New("open, call not sent")
	// errPendingSame says the same version of the key is already remembered: like Redis answering a
	// retried write (status 2), nothing changes and the write is acknowledged.
	errPendingSame = errors.New("same version already remembered")
	// errFenced is the error of an automatic write that Redis ran past its fence: as good as a
	// timeout (the write did not happen), so it is remembered for the replay like one.
	errFenced = fmt.Errorf("%w: automatic write ran past its fence", ErrUnavailable)
	// errBumpFenced is the error of a namespace bump that Redis ran past its fence: nothing changed.
	errBumpFenced = fmt.Errorf("%w: namespace bump ran past its fence", ErrUnavailable)
)
