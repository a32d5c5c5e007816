// Package cachetest provides a history checker for the tiercache consistency
// contract: record every read and every acknowledged write that clients of a
// cache deployment perform, then [History.Check] counts the reads that were
// stale and by how much, and measures how long writes took to reach the other
// instances.
//
// It is pure bookkeeping: it does not talk to Redis or to the cache, so it
// works against any deployment (the library in a test, several contextd
// processes, a fault suite) as long as every value read or written carries
// its version.
//
// # Definitions
//
// Every value has a version, a uint64 that only grows per key. A write is
// acknowledged when the call that made it returned nil (Set, Delete,
// Invalidate, or a 2xx answer from the HTTP API); only acknowledged writes
// are recorded, and a write is taken to be acknowledged at its End time.
// A delete is a write of a tombstone: a delete with version v means "absent
// at version v".
//
// A read is stale by d if it returns a version older than the newest version
// acknowledged at least d before the read began. Concretely, for a read that
// began at s and returned version u, let a be the earliest acknowledgement
// time of any write to the same key with a version greater than u; if a < s
// the read is stale by s − a, otherwise it is fresh. A write whose
// acknowledgement came at or after s is concurrent with the read and never
// makes it stale, whatever its version.
//
// A read that found nothing returned the version of a tombstone it could
// have seen: the highest version of any recorded delete of the key that
// started no later than the read ended, or 0 (the key never existed) when
// there is none. So a not-found read after an acknowledged delete is fresh,
// a not-found read before any write is fresh, and a not-found read when the
// newest acknowledged write is a Set is stale from that Set's
// acknowledgement. A found read returning a version older than an
// acknowledged delete is stale.
//
// Propagation lag is measured per write and per other instance: for each
// acknowledged write of version v made by instance A, and each instance B ≠ A
// that read the key, the lag is the time from the write's acknowledgement to
// the start of B's first read (in start order) that returned v or a newer
// version; 0 if that read began before the acknowledgement. Writes whose
// version was already surpassed when they were acknowledged, and instances
// that never returned v or newer, give no sample. The lag includes the gap
// between B's reads of the key, so it is an upper bound of the true
// propagation time and is only meaningful when B reads the key often.
//
// # Using it against your own deployment
//
// Create one [History] per run and share it among all client goroutines.
// Around every operation take [History.Clock] before the call and after it
// returns, and record the operation:
//
//	start := h.Clock()
//	v, err := client.Set(ctx, key, value) // returns the version it wrote
//	end := h.Clock()
//	if err == nil { // only acknowledged writes
//		h.RecordWrite(cachetest.WriteOp{Instance: "a", Key: key, Version: v, Start: start, End: end})
//	}
//
//	start = h.Clock()
//	got, err := client.Get(ctx, key)
//	end = h.Clock()
//	switch {
//	case err == nil:
//		h.RecordRead(cachetest.ReadOp{Instance: "b", Key: key, Version: got.Version, Found: true, Start: start, End: end})
//	case errors.Is(err, tiercache.ErrNotFound):
//		h.RecordRead(cachetest.ReadOp{Instance: "b", Key: key, Start: start, End: end})
//	}
//
// Reads that failed with any other error returned nothing and are not
// recorded. Writes that failed may still have been applied; leaving them out
// is what makes the check strict (a reader that saw one is simply not
// stale).
//
// When clients run in several processes, give every process the same time
// origin: record [History.Offset] of wall-clock times on one machine, or
// shift each process's durations onto a common origin before merging, since
// staleness is computed from the differences between times recorded by
// different instances.
//
// After the load stops, call [History.Check] and read the [Report]:
//
//	r := h.Check(cachetest.CheckOptions{Bound: time.Second})
//	t.Log(r)
//	if err := r.Err(); err != nil {
//		t.Error(err)
//	}
package cachetest
