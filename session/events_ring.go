package session

import (
	"cmp"
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// --- in-memory rings (no Redis) ---------------------------------------------

// ring keeps a session's last EventStreamLen events in memory. mu guards
// everything but subs (guarded by Events.mu) and used (atomic); notify is
// closed and replaced on every append, waking waiters. floor is the oldest
// position a resume is complete from: the ring's creation (events before it,
// if any, were another ring's or another process's) or the last event it
// dropped. versions holds the last version appended per node, so a node's
// events are appended in strictly increasing version order (as
// appendScript does with Redis). dropped is set when the ring was evicted
// from Events.rings; an append then looks the session's ring up again.
type ring struct {
	mu       sync.Mutex
	events   []Event
	bytes    int // sum of the events' eventSize, plus versionEntrySize per node in versions
	last     eventID
	floor    eventID
	notify   chan struct{}
	versions map[string]int64
	dropped  bool

	subs int          // subscribers holding the ring; under Events.mu
	used atomic.Int64 // unix nanoseconds of the last append or subscriber exit
}

// versionEntrySize estimates the memory of one entry of ring.versions.
const versionEntrySize = 64

// eventSize estimates an event's memory for the ring's byte bound.
func eventSize(ev Event) int {
	n := 256
	if ev.Node != nil {
		n += len(ev.Node.Content) + 64*len(ev.Node.Refs) + 256*len(ev.Node.Metadata)
	}
	return n
}

// ring returns session k's ring, creating it when missing; with subscribe,
// the ring is counted as held by one more subscriber in the same critical
// section, so it cannot be evicted between the lookup and the count.
func (e *Events) ring(k SessionKey, subscribe bool) *ring {
	e.mu.Lock()
	defer e.mu.Unlock()
	r, ok := e.rings[k]
	if !ok {
		born := eventID{ms: uint64(e.now().UnixMilli())}
		r = &ring{notify: make(chan struct{}), last: born, floor: born}
		r.used.Store(e.now().UnixNano())
		e.rings[k] = r
	}
	if subscribe {
		r.subs++
	}
	return r
}

// releaseRing counts a subscriber of r gone.
func (e *Events) releaseRing(r *ring) {
	e.mu.Lock()
	r.subs--
	r.used.Store(e.now().UnixNano())
	e.mu.Unlock()
}

// appendRing appends ev to session k's ring and returns its ID, or "" when
// the ring already holds an event of ev's node with ev's version or a newer
// one (superseded).
func (e *Events) appendRing(k SessionKey, ev Event) string {
	for {
		r := e.ring(k, false)
		id, delta, ok := r.append(ev, e.now())
		if !ok {
			continue // evicted between the lookup and the append
		}
		e.ringBytes.Add(int64(delta))
		if ev.Type == EventSessionDeleted {
			// Current subscribers hold the ring and still get the event; new
			// ones are refused by the owner check (the session is gone).
			e.mu.Lock()
			if e.rings[k] == r {
				e.dropRingLocked(k, r)
			}
			e.mu.Unlock()
		}
		e.boundRings()
		return id
	}
}

// append appends ev and returns its ID and the change of r.bytes; ok is
// false when r was dropped (nothing appended). A superseded node event gives
// an empty ID.
func (r *ring) append(ev Event, now time.Time) (id string, delta int, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.dropped {
		return "", 0, false
	}
	before := r.bytes
	if ev.NodeID != "" && ev.Version > 0 {
		last, seen := r.versions[ev.NodeID]
		if seen && last >= ev.Version {
			return "", 0, true
		}
		if r.versions == nil {
			r.versions = map[string]int64{}
		}
		if !seen {
			r.bytes += versionEntrySize
		}
		r.versions[ev.NodeID] = ev.Version
	}
	ms := uint64(now.UnixMilli())
	if ms > r.last.ms {
		// Sequence numbers start at 1: an ID with sequence 0 is only ever a ring's birth (see
		// Events.ring), which a reset hands out as a place to resume from. An event of an earlier
		// ring (another process, before a restart) given sequence 0 in the very millisecond a
		// new ring is born would read as that birth, and a resume from it would wait for events
		// after it instead of starting with the reset it needs.
		r.last = eventID{ms: ms, seq: 1}
	} else {
		r.last.seq++
	}
	ev.ID = r.last.String()
	size := eventSize(ev)
	r.dropOldestLocked(len(r.events) + 1 - EventStreamLen)
	for len(r.events) > 0 && r.eventBytes()+size > EventRingBytes {
		r.dropOldestLocked(1)
	}
	r.events = append(r.events, ev)
	r.bytes += size
	r.used.Store(now.UnixNano())
	close(r.notify)
	r.notify = make(chan struct{})
	return ev.ID, r.bytes - before, true
}

// eventBytes is r.bytes without the version entries. r.mu must be held.
func (r *ring) eventBytes() int { return r.bytes - versionEntrySize*len(r.versions) }

// dropOldestLocked drops the n oldest events (none when n <= 0) and raises
// the floor to the last one dropped. r.mu must be held.
func (r *ring) dropOldestLocked(n int) {
	n = min(n, len(r.events))
	if n <= 0 {
		return
	}
	for _, ev := range r.events[:n] {
		r.bytes -= eventSize(ev)
	}
	r.floor, _ = parseEventID(r.events[n-1].ID)
	clear(r.events[:n]) // release the nodes they point to
	r.events = append(r.events[:0], r.events[n:]...)
}

// trim drops the oldest events until at most keep bytes of events are left
// (the newest event always stays), wakes the waiters so that subscribers
// behind the new floor get their reset, and returns the bytes freed.
func (r *ring) trim(keep int) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	before := r.bytes
	n := 0
	for b := r.eventBytes(); n < len(r.events)-1 && b > keep; n++ {
		b -= eventSize(r.events[n])
	}
	if n == 0 {
		return 0
	}
	r.dropOldestLocked(n)
	close(r.notify)
	r.notify = make(chan struct{})
	return before - r.bytes
}

// dropRingLocked removes r (session k's ring) from e.rings and forgets its
// bytes. e.mu must be held. A later subscriber gets a new ring whose floor
// is its birth, so a resume from an event of r gets a session.reset.
func (e *Events) dropRingLocked(k SessionKey, r *ring) {
	r.mu.Lock()
	r.dropped = true
	freed := r.bytes
	r.mu.Unlock()
	delete(e.rings, k)
	e.ringBytes.Add(-int64(freed))
}

// boundRings keeps the rings within their bounds: every ringIdle/4 it drops
// the rings that have no subscriber and had no event for ringIdle; when the
// rings hold more than ringMax bytes, it drops rings without subscribers,
// least recently used first, then trims the oldest events of the others,
// least recently used first, down to 7/8 of ringMax (so that one append over
// the bound does not cost a scan each).
func (e *Events) boundRings() {
	now := e.now()
	over := e.ringBytes.Load() > e.ringMax
	if !over && now.Sub(time.Unix(0, e.ringSwept.Load())) < e.ringIdle/4 {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.ringSwept.Store(now.UnixNano())
	type cand struct {
		k    SessionKey
		r    *ring
		used int64
	}
	var idle, held []cand
	for k, r := range e.rings {
		c := cand{k, r, r.used.Load()}
		switch {
		case r.subs > 0:
			held = append(held, c)
		case now.Sub(time.Unix(0, c.used)) >= e.ringIdle:
			e.dropRingLocked(k, r)
			e.ringsDropped.Add(1)
		default:
			idle = append(idle, c)
		}
	}
	target := e.ringMax - e.ringMax/8
	if e.ringBytes.Load() <= e.ringMax {
		return
	}
	byUse := func(a, b cand) int { return cmp.Compare(a.used, b.used) }
	slices.SortFunc(idle, byUse)
	for _, c := range idle {
		if e.ringBytes.Load() <= target {
			return
		}
		e.dropRingLocked(c.k, c.r)
		e.ringsDropped.Add(1)
	}
	slices.SortFunc(held, byUse)
	for _, c := range held {
		excess := e.ringBytes.Load() - target
		if excess <= 0 {
			return
		}
		c.r.mu.Lock()
		keep := max(0, int64(c.r.eventBytes())-excess)
		c.r.mu.Unlock()
		if freed := c.r.trim(int(keep)); freed > 0 {
			e.ringBytes.Add(-int64(freed))
			e.ringsTrimmed.Add(1)
		}
	}
}

func (r *ring) lastID() eventID {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.last
}

// after returns the events after id and the channel closed by the next
// append. When the ring no longer holds every event after id (id is older
// than its floor, or newer than anything it gave out), it returns instead
// reset true and the ring's last ID, from which the caller continues; and
// when the ring's last event is session.deleted, that event alone (the
// session is gone: nothing to refetch).
func (r *ring) after(id eventID) (evs []Event, wait <-chan struct{}, reset bool, last eventID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if id.less(r.floor) || r.last.less(id) {
		if n := len(r.events); n > 0 && r.events[n-1].Type == EventSessionDeleted {
			return r.events[n-1:], r.notify, false, r.last
		}
		return nil, r.notify, true, r.last
	}
	for _, ev := range r.events {
		if evID, _ := parseEventID(ev.ID); id.less(evID) {
			evs = append(evs, ev)
		}
	}
	return evs, r.notify, false, r.last
}

func (e *Events) memorySubscriber(ctx context.Context, sessionID string, r *ring, last eventID, out chan<- Event, release func()) {
	defer e.wg.Done()
	defer release()
	defer e.releaseRing(r)
	defer close(out)
	for {
		evs, wait, reset, resetID := r.after(last)
		if reset {
			if !e.deliverReset(ctx, out, sessionID, resetID) {
				return
			}
			last = resetID
			continue
		}
		for _, ev := range evs {
			if !e.deliver(ctx, out, ev) {
				return
			}
			last, _ = parseEventID(ev.ID)
			if ev.Type == EventSessionDeleted {
				return
			}
		}
		select {
		case <-wait:
		case <-ctx.Done():
			return
		case <-e.closed:
			return
		}
	}
}
