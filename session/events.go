package session

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/rediskey"
)

// Event types.
const (
	// EventNodeCreated: a node was appended; Event.Node holds it.
	EventNodeCreated = "node.created"
	// EventNodeUpdated: a node changed; Event.Node holds the new version.
	EventNodeUpdated = "node.updated"
	// EventNodeDeleted: a node was deleted; Event.Version is its tombstone version.
	EventNodeDeleted = "node.deleted"
	// EventSessionDeleted: the session and its nodes were deleted; the
	// session's subscriptions end after this event.
	EventSessionDeleted = "session.deleted"
	// EventSessionReset: events of the session may have been lost, so the
	// subscriber must refetch what it holds (the context). It is delivered
	// first to a subscriber that resumes from an ID older than the oldest
	// event still retained (the capped stream or ring dropped some, the
	// stream expired, Redis lost it), to a connected subscriber whose stream
	// was lost under it, and published to every subscriber of a session
	// whose event could not be published while Redis was down. Its ID is
	// the newest event ID of the session at that moment: resuming from it
	// skips nothing published after it.
	EventSessionReset = "session.reset"
)

// Event limits and timings.
const (
	// EventStreamLen is the approximate number of events kept per session
	// (XADD MAXLEN ~), and exactly the size of the in-memory ring.
	EventStreamLen = 1000
	// EventStreamTTL is how long a session's stream lives after its last
	// event; after session.deleted, one minute, for late resumers.
	EventStreamTTL = 24 * time.Hour
	// EventRingBytes bounds the estimated size of one in-memory ring; older
	// events are dropped first.
	EventRingBytes = 8 << 20
	// EventRingsMaxBytes bounds the estimated size of all in-memory rings of
	// an Events together. Past it, rings without subscribers are dropped
	// (least recently used first), then the oldest events of the others are
	// trimmed; a resume from a dropped position gets a session.reset.
	EventRingsMaxBytes = 64 << 20
	// EventRingIdle is how long an in-memory ring without subscribers is
	// kept after its last event (or its last subscriber left).
	EventRingIdle = 10 * time.Minute
	// DefaultMaxSubscriptions bounds the open subscriptions of one Events
	// (process); see [EventLimits].
	DefaultMaxSubscriptions = 10000
	// DefaultMaxSubscriptionsPerOwner bounds the open subscriptions of one
	// owner on one Events (process); see [EventLimits].
	DefaultMaxSubscriptionsPerOwner = 2000
	// SubscriberBuffer is the number of events a subscriber may fall behind
	// before it is dropped (its channel closed; it resumes by event ID).
	SubscriberBuffer = 256
	// MaxLostSessions bounds how many sessions an Events remembers whose
	// events could not be published (one entry per session); further ones
	// are counted in EventStats.LostOverflow and get no reset.
	MaxLostSessions = 10000
	// catchUpPage is the number of stream entries read per catch-up read.
	catchUpPage = 256
	// recoverMinBackoff and recoverMaxBackoff bound the wait between
	// attempts to publish the resets of lost events while Redis is down.
	recoverMinBackoff = 100 * time.Millisecond
	recoverMaxBackoff = 2 * time.Second
)

// Event is one change of a session. ID is the Redis stream ID ("ms-seq"),
// also used for in-memory rings; IDs of one session grow strictly and a
// subscriber resumes after the last ID it saw (the SSE Last-Event-ID).
type Event struct {
	ID        string    `json:"id"`
	Type      string    `json:"type"`
	SessionID string    `json:"session_id"`
	NodeID    string    `json:"node_id,omitempty"`
	ShortID   string    `json:"short_id,omitempty"`
	Version   int64     `json:"version,omitempty"`
	Node      *Node     `json:"node,omitempty"` // the node after the change (created, updated)
	At        time.Time `json:"at"`
}

// EventStats counts event traffic of one process.
type EventStats struct {
	Published     uint64 `json:"published"`
	PublishErrors uint64 `json:"publish_errors"`
	Delivered     uint64 `json:"delivered"`
	Dropped       uint64 `json:"dropped"` // subscribers dropped for falling behind
	Subscribers   int64  `json:"subscribers"`
	ReadErrors    uint64 `json:"read_errors"`
	// Resets counts session.reset events delivered to subscribers of this
	// process: after a resume from a position whose successors are no
	// longer all retained, a stream lost under a connected subscriber, or
	// a recovery reset after lost publishes.
	Resets uint64 `json:"resets"`
	// LostSessions is the number of sessions whose events could not be
	// published and that still wait for their recovery reset.
	LostSessions int64 `json:"lost_sessions"`
	// LostOverflow counts failed publishes not remembered because
	// MaxLostSessions other sessions were already waiting.
	LostOverflow uint64 `json:"lost_overflow"`
	// RecoveryResets counts the session.reset (or repeated session.deleted)
	// events published once Redis answered again after lost publishes.
	RecoveryResets uint64 `json:"recovery_resets"`
	// Superseded counts node events not appended because the session
	// already held an event of the same node with that version or a newer
	// one (concurrent writers publishing out of order).
	Superseded uint64 `json:"superseded"`
	// Malformed counts stream entries read that were not an event of their
	// session (undecodable, no type, another session's ID); they are
	// skipped, never delivered.
	Malformed uint64 `json:"malformed"`
	// Refused counts subscriptions refused by the limits ([EventLimits]).
	Refused uint64 `json:"refused"`
	// Watched is the number of sessions this process reads events of
	// (Redis: streams its one reader follows).
	Watched int `json:"watched"`
	// RingBytes is the estimated size of the in-memory rings (no Redis);
	// RingsDropped counts rings dropped for being idle or over
	// EventRingsMaxBytes, RingsTrimmed the trims of rings with subscribers
	// over that bound.
	RingBytes    int64  `json:"ring_bytes"`
	RingsDropped uint64 `json:"rings_dropped"`
	RingsTrimmed uint64 `json:"rings_trimmed"`
}

// Events publishes session change events and delivers them to subscribers.
// A session is named by its owner and ID ([SessionKey]), since session IDs
// are unique per owner only: two owners' sessions "trip" have separate
// streams and rings and never see each other's events. With Redis, each
// session has a capped stream ("<ns>:ev:{<owner>:<session>}", see
// streamKey) that every instance reads, so subscribers on any instance
// receive every event; without Redis, each session has an in-memory ring on
// this process (bounded: EventRingBytes each, EventRingsMaxBytes together,
// dropped after EventRingIdle without subscribers).
//
// Appends are made idempotent with a per-event token checked inside one Lua
// script, since go-redis retries commands on network errors and a plain XADD
// could be applied twice. The same script appends a node's event only if its
// version is above the last one appended for that node, so the events of
// one node reach every subscriber in strictly increasing version order.
// One reader per Events follows every watched stream (events_redis.go): it
// holds one pub/sub connection and never blocks a connection of the
// client's pool, however many sessions are watched.
//
// Gaps are never silent: a subscriber that resumes from an ID whose
// successors are no longer all retained, or whose stream was lost under it,
// first receives a [EventSessionReset]. A publish that fails (Redis down)
// remembers the session, and a background loop publishes a reset to it
// once Redis answers again.
//
// An Events is safe for concurrent use.
type Events struct {
	rdb redis.UniversalClient
	ns  string
	log *slog.Logger

	// ctx ends at Close, for the reader's Redis calls.
	ctx    context.Context
	cancel context.CancelFunc
	rd     *reader // Redis mode

	// mu guards rings, ring.subs, hubs, byKey, lost, lostGen, recovering,
	// limits and perOwner, and orders Close's close(closed) against every
	// goroutine's wg.Add.
	mu         sync.Mutex
	rings      map[SessionKey]*ring // memory mode
	hubs       map[SessionKey]*hub  // Redis mode
	byKey      map[string]*hub      // Redis mode: hubs by stream key
	lost       map[SessionKey]lostSession
	maxLost    int // MaxLostSessions; lowered by tests
	lostGen    uint64
	recovering bool
	limits     EventLimits
	perOwner   map[string]int // open subscriptions per owner
	open       int            // open subscriptions
	closed     chan struct{}
	once       sync.Once
	wg         sync.WaitGroup

	// Ring bounds (EventRingsMaxBytes, EventRingIdle) and clock; changed by tests.
	ringMax   int64
	ringIdle  time.Duration
	now       func() time.Time
	ringBytes atomic.Int64
	ringSwept atomic.Int64 // unix nanoseconds of the last idle sweep

	published, publishErrs, delivered, dropped, readErrs atomic.Uint64
	resets, lostOverflow, recoveryResets                 atomic.Uint64
	superseded, malformed, refused                       atomic.Uint64
	ringsDropped, ringsTrimmed                           atomic.Uint64
	subscribers                                          atomic.Int64
}

// lostSession is a session whose event could not be published. gen tells a
// later failure apart from the one a recovery reset covered; deleted means
// the lost event was session.deleted, which is published again instead of
// a reset so subscriptions end.
type lostSession struct {
	gen     uint64
	deleted bool
}

// NewEvents returns an event bus on rdb (nil: in-memory rings) with stream
// keys under namespace ns. It does no I/O.
func NewEvents(rdb redis.UniversalClient, ns string, log *slog.Logger) *Events {
	if log == nil {
		log = slog.Default()
	}
	e := &Events{rdb: rdb, ns: ns, log: log, rings: map[SessionKey]*ring{}, hubs: map[SessionKey]*hub{},
		byKey: map[string]*hub{}, lost: map[SessionKey]lostSession{}, maxLost: MaxLostSessions,
		perOwner: map[string]int{}, closed: make(chan struct{}),
		ringMax: EventRingsMaxBytes, ringIdle: EventRingIdle, now: time.Now}
	e.limits = e.limits.withDefaults()
	e.ctx, e.cancel = context.WithCancel(context.Background())
	if rdb != nil {
		e.rd = newReader(e)
	}
	return e
}

// Close ends every subscription (their channels close), stops the recovery
// of lost events and waits for the readers to stop, which takes at most
// a moment. Sessions still waiting for a recovery reset are logged
// and forgotten. Publish fails after Close. It is safe to call more than
// once.
func (e *Events) Close() {
	e.mu.Lock()
	e.once.Do(func() { close(e.closed) })
	e.mu.Unlock()
	e.cancel()
	if e.rd != nil {
		e.rd.stop()
	}
	e.wg.Wait()
	e.mu.Lock()
	n := len(e.lost)
	clear(e.lost)
	e.mu.Unlock()
	if n > 0 {
		e.log.Warn("session: events closed with lost events not yet announced; their subscribers get no reset", "sessions", n)
	}
}

// Stats returns the event counters.
func (e *Events) Stats() EventStats {
	e.mu.Lock()
	lost := int64(len(e.lost))
	watched := len(e.hubs)
	e.mu.Unlock()
	return EventStats{
		Published: e.published.Load(), PublishErrors: e.publishErrs.Load(), Delivered: e.delivered.Load(),
		Dropped: e.dropped.Load(), Subscribers: e.subscribers.Load(), ReadErrors: e.readErrs.Load(),
		Resets: e.resets.Load(), LostSessions: lost, LostOverflow: e.lostOverflow.Load(), RecoveryResets: e.recoveryResets.Load(),
		Superseded: e.superseded.Load(), Malformed: e.malformed.Load(), Refused: e.refused.Load(), Watched: watched,
		RingBytes: e.ringBytes.Load(), RingsDropped: e.ringsDropped.Load(), RingsTrimmed: e.ringsTrimmed.Load(),
	}
}

// streamKey is the Redis key of session k's stream:
// "<ns>:ev:{<owner>:<session>}". The braces make owner and session the
// Cluster hash tag, shared by the stream and its token keys
// ("<stream>:t:<token>"), which one script touches together. The owner is
// escaped as the cache escapes its keys ('%', '{' and '}' percent-encoded),
// so an owner can never end the hash tag early; session IDs hold neither
// those characters nor ':', so no two sessions share a stream.
func (e *Events) streamKey(k SessionKey) string {
	return e.ns + ":ev:{" + rediskey.Escape(k.Owner) + ":" + k.ID + "}"
}

// Publish appends ev to the events of owner's session ev.SessionID and
// returns its ID. ev.ID is ignored and ev.At set to now when zero. An event
// of a node (NodeID set, Version above 0) is appended only if the session
// holds no event of that node with this version or a newer one: otherwise
// it is dropped as superseded (counted in EventStats.Superseded) and
// Publish returns "" and nil. An empty owner or session ID gives ErrInvalid
// naming it; other errors name the session. Subscribers share ev.Node: do
// not modify it after Publish.
func (e *Events) Publish(ctx context.Context, owner string, ev Event) (string, error) {
	if e.isClosed() {
		return "", fmt.Errorf("session: publish: %w", errEventsClosed)
	}
	k := SessionKey{Owner: owner, ID: ev.SessionID}
	if err := checkEventKey(k); err != nil {
		return "", err
	}
	if ev.At.IsZero() {
		ev.At = time.Now().UTC()
	}
	ev.ID = ""
	if e.rdb == nil {
		id := e.appendRing(k, ev)
		if id == "" {
			e.superseded.Add(1)
			return "", nil
		}
		e.published.Add(1)
		return id, nil
	}
	id, err := e.appendEvent(ctx, k, ev)
	if errors.Is(err, redis.Nil) {
		e.superseded.Add(1)
		return "", nil
	}
	if err != nil {
		e.publishErrs.Add(1)
		e.rememberLost(k, ev.Type == EventSessionDeleted)
		return "", fmt.Errorf("session: publish event for session %q of owner %q: %w", k.ID, k.Owner, err)
	}
	e.published.Add(1)
	return id, nil
}

// isClosed reports whether Close was called.
// errEventsClosed is what Publish and Subscribe return after Close.
var errEventsClosed = errors.New("session: events closed")

// goLocked starts fn, which must call e.wg.Done when it returns, as a
// goroutine Close waits for, unless Close has begun; it reports whether fn
// started. e.mu must be held: Close closes e.closed under it, so no
// goroutine is added once Close's wg.Wait may have begun.
func (e *Events) goLocked(fn func()) bool {
	if e.isClosed() {
		return false
	}
	e.wg.Add(1)
	go fn()
	return true
}

func (e *Events) isClosed() bool {
	select {
	case <-e.closed:
		return true
	default:
		return false
	}
}

// checkEventKey rejects an empty owner or session ID: events of a session
// are kept under both.
func checkEventKey(k SessionKey) error {
	if k.Owner == "" {
		return invalidf("owner", "must not be empty: events are kept per owner and session")
	}
	if k.ID == "" {
		return invalidf("session_id", "must not be empty")
	}
	return nil
}

// appendEvent appends ev to the stream of session k (appendScript) and
// returns its ID; redis.Nil when the event is superseded.
func (e *Events) appendEvent(ctx context.Context, k SessionKey, ev Event) (string, error) {
	data, err := json.Marshal(ev)
	if err != nil {
		return "", err
	}
	var tok [12]byte
	_, _ = rand.Read(tok[:])
	key := e.streamKey(k)
	ttl := EventStreamTTL
	if ev.Type == EventSessionDeleted {
		ttl = time.Minute
	}
	nodeID, version := "", "0"
	if ev.NodeID != "" && ev.Version > 0 {
		nodeID, version = ev.NodeID, strconv.FormatInt(ev.Version, 10)
	}
	return appendScript.Run(ctx, e.rdb, []string{key, key + ":t:" + hex.EncodeToString(tok[:]), key + ":v"},
		EventStreamLen, data, ttl.Milliseconds(), time.Minute.Milliseconds(), nodeID, version, e.rd.channel).Text()
}

// --- lost events --------------------------------------------------------------

// rememberLost records that an event of session k could not be published
// and starts the recovery loop when it is not running. Beyond
// MaxLostSessions sessions the failure is only counted.
func (e *Events) rememberLost(k SessionKey, deleted bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.isClosed() {
		return
	}
	cur, ok := e.lost[k]
	if !ok && len(e.lost) >= e.maxLost {
		if e.lostOverflow.Add(1)%1000 == 1 {
			e.log.Warn("session: too many sessions with lost events; this one gets no reset", "owner", k.Owner, "session", k.ID, "limit", e.maxLost)
		}
		return
	}
	e.lostGen++
	e.lost[k] = lostSession{gen: e.lostGen, deleted: deleted || cur.deleted}
	if !e.recovering {
		e.recovering = e.goLocked(e.recoverLost)
	}
}

// recoverLost publishes a session.reset (session.deleted for a deleted
// session) to every remembered session, retrying with capped exponential
// backoff and jitter while Redis does not answer, until none is left or
// Close. An entry is forgotten only when no failure was recorded for its
// session after the snapshot the reset was published for.
func (e *Events) recoverLost() {
	defer e.wg.Done()
	backoff := recoverMinBackoff
	for {
		e.mu.Lock()
		if len(e.lost) == 0 || e.isClosed() {
			e.recovering = false
			e.mu.Unlock()
			return
		}
		batch := make(map[SessionKey]lostSession, min(len(e.lost), 256))
		for k, l := range e.lost {
			batch[k] = l
			if len(batch) == 256 {
				break
			}
		}
		e.mu.Unlock()
		failed := false
		for k, l := range batch {
			if e.isClosed() {
				break // the loop's next turn returns
			}
			typ := EventSessionReset
			if l.deleted {
				typ = EventSessionDeleted
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_, err := e.appendEvent(ctx, k, Event{Type: typ, SessionID: k.ID, At: time.Now().UTC()})
			cancel()
			if err != nil {
				failed = true
				break
			}
			e.recoveryResets.Add(1)
			e.mu.Lock()
			if cur, ok := e.lost[k]; ok && cur.gen == l.gen {
				delete(e.lost, k)
			}
			e.mu.Unlock()
		}
		if !failed {
			backoff = recoverMinBackoff
			continue
		}
		wait := backoff/2 + time.Duration(mrand.Int64N(int64(backoff/2)+1))
		select {
		case <-time.After(wait):
		case <-e.closed: // the loop's next turn returns
		}
		backoff = min(2*backoff, recoverMaxBackoff)
	}
}

// --- event IDs ---------------------------------------------------------------

// eventID is a parsed stream ID "ms-seq".
type eventID struct{ ms, seq uint64 }

func parseEventID(s string) (eventID, bool) {
	a, b, ok := strings.Cut(s, "-")
	if !ok {
		return eventID{}, false
	}
	ms, err1 := strconv.ParseUint(a, 10, 64)
	seq, err2 := strconv.ParseUint(b, 10, 64)
	if err1 != nil || err2 != nil {
		return eventID{}, false
	}
	return eventID{ms, seq}, true
}

func (id eventID) String() string {
	return strconv.FormatUint(id.ms, 10) + "-" + strconv.FormatUint(id.seq, 10)
}

func (id eventID) less(o eventID) bool {
	return id.ms < o.ms || id.ms == o.ms && id.seq < o.seq
}
