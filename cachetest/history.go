package cachetest

import (
	"fmt"
	"hash/maphash"
	"slices"
	"sync"
	"time"
)

// numShards is the number of independently locked shards of a History.
// Operations are sharded by key, so every key's operations live in one shard
// and Check can process shards in parallel without merging per-key state.
const numShards = 64

// WriteOp is one acknowledged write: a Set (or fill) that stored Version, or,
// when Delete is set, a Delete or Invalidate that left a tombstone with
// Version. Start is when the call began and End when it returned nil; End is
// the acknowledgement time.
type WriteOp struct {
	Instance string // the instance (process, client) that made the call
	Key      string
	Version  uint64
	Delete   bool
	Start    time.Duration // from History.Clock, before the call
	End      time.Duration // from History.Clock, after the call returned nil
}

// ReadOp is one read that returned an answer: the value with Version when
// Found is set, or "not found" (Version is then ignored). Reads that failed
// with an error returned nothing and should not be recorded.
type ReadOp struct {
	Instance string // the instance (process, client) that made the call
	Key      string
	Version  uint64 // the version returned; ignored when !Found
	Found    bool
	Start    time.Duration // from History.Clock, before the call
	End      time.Duration // from History.Clock, after the call returned
}

// opKind tells what an op records.
type opKind uint8

const (
	kindWrite opKind = iota
	kindDelete
	kindReadFound
	kindReadMissing
)

// op is the stored form of a WriteOp or ReadOp.
type op struct {
	instance string
	key      string
	version  uint64
	start    time.Duration
	end      time.Duration
	kind     opKind
}

func (o *op) writeOp() WriteOp {
	return WriteOp{Instance: o.instance, Key: o.key, Version: o.version, Delete: o.kind == kindDelete, Start: o.start, End: o.end}
}

// chunkSize is the number of ops per storage chunk. Ops are stored in
// fixed-size chunks rather than one growing slice so that recording never
// copies what was recorded before (a 64 MB memmove at a million ops).
const chunkSize = 1024

// shard holds the ops of the keys that hash to it.
type shard struct {
	mu     sync.Mutex // guards chunks
	chunks [][]op     // full chunks, then the current one; append-only, so Check reads a prefix without locks
	_      [32]byte   // keep neighbouring shards' mutexes off one cache line
}

// History records the operations of a run. It is safe for concurrent use by
// any number of goroutines: recording takes one short per-key-shard lock and
// an amortised slice append, and Check may run while recording continues (it
// sees the operations recorded before it started). The zero value is not
// usable; call NewHistory.
type History struct {
	origin time.Time // carries a monotonic clock reading
	seed   maphash.Seed
	shards [numShards]shard
}

// NewHistory returns an empty History whose Clock starts now.
func NewHistory() *History {
	return &History{origin: time.Now(), seed: maphash.MakeSeed()}
}

// Clock returns the time elapsed since NewHistory, read from the monotonic
// clock. Use it for the Start and End of every recorded operation.
func (h *History) Clock() time.Duration {
	return time.Since(h.origin)
}

// Offset converts t into the History's time base: the duration from the
// History's origin to t (negative if t is earlier). If t carries a monotonic
// clock reading from this process (as values from time.Now do) the result
// equals what Clock returned at that instant.
func (h *History) Offset(t time.Time) time.Duration {
	return t.Sub(h.origin)
}

// RecordWrite records an acknowledged write. Call it only when the write
// returned nil. It panics if w.End is before w.Start.
func (h *History) RecordWrite(w WriteOp) {
	if w.End < w.Start {
		panic(fmt.Sprintf("cachetest: RecordWrite(%q): End %v before Start %v", w.Key, w.End, w.Start))
	}
	k := kindWrite
	if w.Delete {
		k = kindDelete
	}
	h.record(op{instance: w.Instance, key: w.Key, version: w.Version, start: w.Start, end: w.End, kind: k})
}

// RecordRead records a read that returned a value or "not found". It panics
// if r.End is before r.Start.
func (h *History) RecordRead(r ReadOp) {
	if r.End < r.Start {
		panic(fmt.Sprintf("cachetest: RecordRead(%q): End %v before Start %v", r.Key, r.End, r.Start))
	}
	o := op{instance: r.Instance, key: r.Key, version: r.Version, start: r.Start, end: r.End, kind: kindReadFound}
	if !r.Found {
		o.version, o.kind = 0, kindReadMissing
	}
	h.record(o)
}

func (h *History) record(o op) {
	s := &h.shards[maphash.String(h.seed, o.key)%numShards]
	s.mu.Lock()
	n := len(s.chunks)
	if n == 0 || len(s.chunks[n-1]) == chunkSize {
		s.chunks = append(s.chunks, make([]op, 0, chunkSize))
		n++
	}
	s.chunks[n-1] = append(s.chunks[n-1], o)
	s.mu.Unlock()
}

// snapshot returns the chunks of ops recorded so far, per shard. The
// returned chunks share memory with the shards, but recording only appends
// past their lengths, so they can be read without locks.
func (h *History) snapshot() [][][]op {
	out := make([][][]op, numShards)
	for i := range h.shards {
		s := &h.shards[i]
		s.mu.Lock()
		out[i] = slices.Clone(s.chunks) // copies the slice headers, fixing each chunk's length
		s.mu.Unlock()
	}
	return out
}
