package tiercache

import (
	"sync/atomic"
	"time"
	"unsafe"
)

// Stats is a snapshot of a cache's counters since [New]. Every field only grows, except
// L1Entries, L1Bytes, PendingWrites, Breaker and Subscribed, which describe the cache now.
// docs/OPERATIONS.md lists the metrics built from them (promcache, Options.MeterProvider).
type Stats struct {
	L1Hits           uint64 `json:"l1_hits"` // lookups answered, and not answered, by process memory
	L1Misses         uint64 `json:"l1_misses"`
	L2Hits           uint64 `json:"l2_hits"` // lookups answered, and not answered, by Redis
	L2Misses         uint64 `json:"l2_misses"`
	L2Errors         uint64 `json:"l2_errors"`   // Redis calls that failed
	Loads            uint64 `json:"loads"`       // loader calls that returned values
	LoadErrors       uint64 `json:"load_errors"` // loader calls that failed
	Sets             uint64 `json:"sets"`        // acknowledged writes and deletes (per key)
	Deletes          uint64 `json:"deletes"`
	StaleRefused     uint64 `json:"stale_refused"`     // writes and fills refused because Redis held a newer version
	Evictions        uint64 `json:"evictions"`         // L1 entries evicted for size
	L1Entries        uint64 `json:"l1_entries"`        // entries in L1 now (estimate), with those kept past their L1 lifetime for revalidation
	L1Bytes          uint64 `json:"l1_bytes"`          // weighted bytes in L1 now
	CompressionSaved uint64 `json:"compression_saved"` // bytes saved by compression over all writes
	Corrupt          uint64 `json:"corrupt"`           // unreadable entries found in Redis (treated as misses and deleted)
	Revalidated      uint64 `json:"revalidated"`       // L2 hits answered by L1's copy, past its L1 lifetime, after Redis said it still held its version

	InvalidationsSent     uint64 `json:"invalidations_sent"`     // messages published by this instance
	InvalidationsReceived uint64 `json:"invalidations_received"` // peers' messages applied by this instance
	Gaps                  uint64 `json:"gaps"`                   // lost subscriptions and sequence holes: times L1 could not be vouched for
	Flushes               uint64 `json:"flushes"`                // whole-L1 flushes (gaps, resubscriptions, peers' namespace flushes)
	// InvalidationsCoalesced counts the messages saved by sending the invalidations of several
	// keys as one (batch writes, CoalesceWindow): a message for n keys counts n-1.
	InvalidationsCoalesced uint64 `json:"invalidations_coalesced"`

	StaleServed   uint64 `json:"stale_served"`   // fail-safe values served (flagged with ErrStale)
	LeaseWaits    uint64 `json:"lease_waits"`    // misses that waited for another instance's load
	Leases        uint64 `json:"leases"`         // load leases this instance acquired in Redis
	Refreshes     uint64 `json:"refreshes"`      // eager background refreshes
	Outages       uint64 `json:"outages"`        // times the circuit breaker opened
	Recoveries    uint64 `json:"recoveries"`     // completed recoveries (L1 flushed, remembered writes replayed)
	Replayed      uint64 `json:"replayed"`       // writes replayed after an outage
	PendingWrites uint64 `json:"pending_writes"` // writes remembered now, waiting for Redis

	ReplaySuperseded uint64 `json:"replay_superseded"` // replays refused because Redis already held a newer version
	ReplayDropped    uint64 `json:"replay_dropped"`    // remembered writes Redis rejected for good (WRONGTYPE, script error): lost, logged
	ReplayExpired    uint64 `json:"replay_expired"`    // remembered writes whose lifetime ended before Redis would take them (it refused them for memory, or stayed unreachable)
	SequenceFillers  uint64 `json:"sequence_fillers"`  // sequence numbers given an "n" filler because their message may not have gone out
	LoaderPanics     uint64 `json:"loader_panics"`     // loader calls that panicked (also counted in LoadErrors)

	// Degraded is the time the circuit breaker was not closed (Redis avoided), summed over
	// every outage since New, the current one included.
	Degraded time.Duration `json:"degraded_ns"`
	// Breaker is the circuit breaker's state now: "closed", "half-open" or "open"; empty in
	// L1-only mode.
	Breaker string `json:"breaker,omitempty"`
	// Subscribed reports whether the invalidation subscriber is subscribed now (false in
	// L1-only mode).
	Subscribed bool `json:"subscribed"`
}

// HitRatio is the fraction of lookups answered by either tier.
func (s Stats) HitRatio() float64 {
	total := s.L1Hits + s.L1Misses
	if total == 0 {
		return 0
	}
	return float64(s.L1Hits+s.L2Hits) / float64(total)
}

// stripes spreads a hot counter over cache lines so parallel L1 hits do not contend on one word.
const stripes = 16

type paddedUint64 struct {
	atomic.Uint64
	_ [56]byte
}

// counter is a striped counter: one atomic add per increment. The stripe comes from the address
// of the calling goroutine's stack: goroutines running at the same time on different CPUs have
// different stacks, so they land on different stripes most of the time (one time in 16 two
// share one), and a goroutine keeps its stripe's cache line while it runs. A random stripe per
// add passed lines back and forth and halved parallel L1 throughput; a token from a sync.Pool
// (per-P, like the stack) cost a pin and an unpin, about a tenth of a hit.
type counter struct{ s [stripes]paddedUint64 }

func (c *counter) add(n uint64) {
	var here byte
	// Stacks are at least 2 KiB apart; Fibonacci hashing spreads neighbouring stacks.
	h := uint64(uintptr(unsafe.Pointer(&here))>>11) * 0x9E3779B97F4A7C15
	c.s[h>>(64-4)].Add(n) // the top 4 bits: 16 stripes
}
func (c *counter) inc() { c.add(1) }
func (c *counter) load() uint64 {
	var t uint64
	for i := range c.s {
		t += c.s[i].Load()
	}
	return t
}

// counters holds the cache's statistics. The hit counters are striped; the others are on slow
// paths and plain atomics suffice.
type counters struct {
	l1Hits, l1Misses counter
	l2Hits, l2Misses atomic.Uint64
	l2Errors         atomic.Uint64
	loads            atomic.Uint64
	loadErrors       atomic.Uint64
	loadPanics       atomic.Uint64
	sets, deletes    atomic.Uint64
	staleRefused     atomic.Uint64
	evictions        atomic.Uint64
	saved            atomic.Uint64
	corrupt          atomic.Uint64
	staleServed      atomic.Uint64
	revalidated      atomic.Uint64
	leaseWaits       atomic.Uint64
	refreshes        atomic.Uint64
}
