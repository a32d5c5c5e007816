// Package lock provides distributed locks on Redis with fencing tokens,
// automatic extension and Redlock over independent servers.
//
// A [Locker] takes named locks. [Locker.TryLock] makes one attempt and fails
// with [ErrNotLocked] when the lock is held; [Locker.Lock] waits with backoff
// and jitter until its context ends. Both return a [Lease]:
//
//   - [Lease.Context] is cancelled the moment the lease can no longer be
//     trusted: an extension was refused, the local validity deadline passed
//     before an extension succeeded, [Options.MaxHold] passed, or
//     [Lease.Release] was called. [context.Cause] says which.
//   - [Lease.Token] is a fencing token, larger than the token of every earlier
//     lease on the same name. A store that refuses writes carrying a token
//     smaller than one it has seen is safe even from a holder that was paused
//     past its lease; [Fence] does that for Redis keys.
//
// A watchdog renews each lease every [Options.ExtendEvery] of the TTL. The
// validity deadline is computed on Go's monotonic clock from the moment before
// the acquire (or extend) request was sent: TTL minus elapsed time minus a
// drift allowance.
//
// With one client the lock lives in one Redis (standalone, Sentinel or
// Cluster: each script touches keys of one hash slot). With three or more
// clients, an odd number of independent servers, the Locker runs Redlock: it
// needs a majority to acquire and to extend, bounds each server call by
// [Options.ServerTimeout], and releases on all.
//
// Locks give mutual exclusion only under timing assumptions (bounded pauses,
// bounded clock drift, no lost writes on failover). docs/LOCKS.md says what is
// guaranteed, what is not, and when fencing is required.
package lock
