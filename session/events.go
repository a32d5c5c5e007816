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
	// SubscriberBuffer is the number of events a subscriber may fall behind
	// before it is dropped (its channel closed; it resumes by event ID).
	SubscriberBuffer = 256
	// MaxLostSessions bounds how many sessions an Events remembers whose
	// events could not be published (one entry per session); further ones
	// are counted in EventStats.LostOverflow and get no reset.
	MaxLostSessions = 10000
	// eventBlock is how long one XREAD blocks; it bounds how long a stopped
	// reader lingers.
	eventBlock = time.Second
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
}

// Events publishes session change events and delivers them to subscribers.
// A session is named by its owner and ID ([SessionKey]), since session IDs
// are unique per owner only: two owners' sessions "trip" have separate
// streams and rings and never see each other's events. With Redis, each
// session has a capped stream ("<ns>:ev:{<owner>:<session>}", see
// streamKey) that every instance reads, so subscribers on any instance
// receive every event; without Redis, each session has an in-memory ring on
// this process.
//
// Appends are made idempotent with a per-event token checked inside one Lua
// script, since go-redis retries commands on network errors and a plain XADD
// could be applied twice. Each session with local subscribers has one
// reader goroutine (XREAD BLOCK) that fans out to them.
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

	// mu guards rings, hubs, lost, lostGen and recovering, and orders
	// Close's close(closed) against the recovery goroutine's wg.Add.
	mu         sync.Mutex
	rings      map[SessionKey]*ring // memory mode
	hubs       map[SessionKey]*hub  // Redis mode
	lost       map[SessionKey]lostSession
	maxLost    int // MaxLostSessions; lowered by tests
	lostGen    uint64
	recovering bool
	closed     chan struct{}
	once       sync.Once
	wg         sync.WaitGroup

	published, publishErrs, delivered, dropped, readErrs atomic.Uint64
	resets, lostOverflow, recoveryResets                 atomic.Uint64
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
	return &Events{rdb: rdb, ns: ns, log: log, rings: map[SessionKey]*ring{}, hubs: map[SessionKey]*hub{},
		lost: map[SessionKey]lostSession{}, maxLost: MaxLostSessions, closed: make(chan struct{})}
}

// Close ends every subscription (their channels close), stops the recovery
// of lost events and waits for the readers to stop, which takes at most
// about one second. Sessions still waiting for a recovery reset are logged
// and forgotten. Publish fails after Close. It is safe to call more than
// once.
func (e *Events) Close() {
	e.mu.Lock()
	e.once.Do(func() { close(e.closed) })
	e.mu.Unlock()
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
	e.mu.Unlock()
	return EventStats{
		Published: e.published.Load(), PublishErrors: e.publishErrs.Load(), Delivered: e.delivered.Load(),
		Dropped: e.dropped.Load(), Subscribers: e.subscribers.Load(), ReadErrors: e.readErrs.Load(),
		Resets: e.resets.Load(), LostSessions: lost, LostOverflow: e.lostOverflow.Load(), RecoveryResets: e.recoveryResets.Load(),
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

// appendScript appends one event unless its token was seen: a retried call
// returns the ID of the first append instead of adding a duplicate. Both keys
// share the session's hash tag, so the script runs on one Cluster slot.
//
// A stream is born with a marker entry (field "m", never delivered) before
// its first event. The stream's first entry is then the oldest position a
// resume is known to be complete from: a client holding an ID older than
// the marker (from a stream that expired, or that Redis lost) is told to
// reset. Trimming never updates XINFO's max-deleted-entry-id (only XDEL
// does), so the first retained entry is what tells what is gone.
var appendScript = redis.NewScript(`
local id = redis.call('GET', KEYS[2])
if id then return id end
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('XADD', KEYS[1], '*', 'm', '1')
end
id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'e', ARGV[2])
redis.call('SET', KEYS[2], id, 'PX', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return id
`)

// markerScript creates a missing stream with only its marker entry and
// returns the marker's ID, so a reset sent for a lost stream has an ID that
// later resumes are complete from; nil when the stream exists.
var markerScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local id = redis.call('XADD', KEYS[1], '*', 'm', '1')
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return id
`)

// Publish appends ev to the events of owner's session ev.SessionID and
// returns its ID. ev.ID is ignored and ev.At set to now when zero. An empty
// owner or session ID gives ErrInvalid naming it; other errors name the
// session. Subscribers share ev.Node: do not modify it after Publish.
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
		id := e.ring(k).append(ev)
		if ev.Type == EventSessionDeleted {
			// Current subscribers hold the ring and still get the event; new
			// ones are refused by the owner check (the session is gone).
			e.mu.Lock()
			delete(e.rings, k)
			e.mu.Unlock()
		}
		e.published.Add(1)
		return id, nil
	}
	id, err := e.appendEvent(ctx, k, ev)
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
// returns its ID.
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
	return appendScript.Run(ctx, e.rdb, []string{key, key + ":t:" + hex.EncodeToString(tok[:])},
		EventStreamLen, data, ttl.Milliseconds(), time.Minute.Milliseconds()).Text()
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

// Subscribe returns a channel of the events of owner's session sessionID
// after lastEventID ("" for only events published from now on). The
// channel closes when ctx ends, after a session.deleted event, on Close, or
// when the subscriber falls more than SubscriberBuffer events behind; the
// caller then resumes with the last ID it received. When the events after
// lastEventID are no longer all retained (trimmed from the capped stream or
// ring, the stream expired or was lost), the first event is a
// [EventSessionReset] whose ID is the session's newest event ID, followed
// by the events after it; the caller must refetch the session's context. A
// malformed lastEventID gives ErrInvalid (field "last_event_id"), an empty
// owner or session ID too. Subscribe does not check that the session exists
// or that owner may read it; see [Service.Subscribe]. Another owner's
// session with the same ID is another session: its events never arrive
// here.
func (e *Events) Subscribe(ctx context.Context, owner, sessionID, lastEventID string) (<-chan Event, error) {
	k := SessionKey{Owner: owner, ID: sessionID}
	if err := checkEventKey(k); err != nil {
		return nil, err
	}
	var last eventID
	if lastEventID != "" {
		var ok bool
		if last, ok = parseEventID(lastEventID); !ok {
			return nil, Invalidf("last_event_id", "%q is not an event ID (like 1700000000000-0)", truncate(lastEventID))
		}
	}
	if e.isClosed() {
		return nil, fmt.Errorf("session: subscribe: %w", errEventsClosed)
	}
	out := make(chan Event, SubscriberBuffer)
	var run func()
	var h *hub
	var sub chan Event
	if e.rdb == nil {
		r := e.ring(k)
		if lastEventID == "" {
			last = r.lastID()
		}
		run = func() { e.memorySubscriber(ctx, sessionID, r, last, out) }
	} else {
		sub = make(chan Event, SubscriberBuffer)
		var err error
		if h, err = e.join(ctx, k, sub); err != nil {
			return nil, err
		}
		catchUp := lastEventID != ""
		if !catchUp {
			last = h.start
		}
		run = func() { e.redisSubscriber(ctx, sessionID, h, sub, last, catchUp, out) }
	}
	// Counted and started together under mu, unless Close began meanwhile:
	// Close then neither misses the reader nor sees a subscriber it did not
	// wait for.
	e.mu.Lock()
	started := !e.isClosed()
	if started {
		e.subscribers.Add(1)
		e.goLocked(run)
	}
	e.mu.Unlock()
	if !started {
		if h != nil {
			e.leave(h, sub)
		}
		return nil, fmt.Errorf("session: subscribe: %w", errEventsClosed)
	}
	return out, nil
}

// --- in-memory rings -------------------------------------------------------

// ring keeps a session's last EventStreamLen events in memory. mu guards
// everything; notify is closed and replaced on every append, waking waiters.
// floor is the oldest position a resume is complete from: the ring's
// creation (events before it, if any, were another ring's or another
// process's) or the last event it dropped.
type ring struct {
	mu     sync.Mutex
	events []Event
	bytes  int // sum of the events' eventSize
	last   eventID
	floor  eventID
	notify chan struct{}
}

// eventSize estimates an event's memory for the ring's byte bound.
func eventSize(ev Event) int {
	n := 256
	if ev.Node != nil {
		n += len(ev.Node.Content) + 64*len(ev.Node.Refs) + 256*len(ev.Node.Metadata)
	}
	return n
}

func (e *Events) ring(k SessionKey) *ring {
	e.mu.Lock()
	defer e.mu.Unlock()
	r, ok := e.rings[k]
	if !ok {
		born := eventID{ms: uint64(time.Now().UnixMilli())}
		r = &ring{notify: make(chan struct{}), last: born, floor: born}
		e.rings[k] = r
	}
	return r
}

func (r *ring) append(ev Event) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := uint64(time.Now().UnixMilli())
	if now > r.last.ms {
		r.last = eventID{ms: now}
	} else {
		r.last.seq++
	}
	ev.ID = r.last.String()
	size := eventSize(ev)
	drop := 0
	for drop < len(r.events) && (len(r.events)-drop >= EventStreamLen || r.bytes+size > EventRingBytes) {
		r.bytes -= eventSize(r.events[drop])
		drop++
	}
	if drop > 0 {
		r.floor, _ = parseEventID(r.events[drop-1].ID)
		r.events = append(r.events[:0], r.events[drop:]...)
	}
	r.events = append(r.events, ev)
	r.bytes += size
	close(r.notify)
	r.notify = make(chan struct{})
	return ev.ID
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

// resetEvent returns the session.reset event with the given ID.
func resetEvent(sessionID string, id eventID) Event {
	return Event{ID: id.String(), Type: EventSessionReset, SessionID: sessionID, At: time.Now().UTC()}
}

// deliver sends ev to a subscriber's out and counts it; false when ctx
// ended or Close was called first.
func (e *Events) deliver(ctx context.Context, out chan<- Event, ev Event) bool {
	select {
	case out <- ev:
		e.delivered.Add(1)
		return true
	case <-ctx.Done():
	case <-e.closed:
	}
	return false
}

// deliverReset delivers a session.reset with the given ID and counts it,
// whatever the subscriber received before: its position is not known to be
// complete, whether older or newer than id.
func (e *Events) deliverReset(ctx context.Context, out chan<- Event, sessionID string, id eventID) bool {
	if !e.deliver(ctx, out, resetEvent(sessionID, id)) {
		return false
	}
	e.resets.Add(1)
	return true
}

func (e *Events) memorySubscriber(ctx context.Context, sessionID string, r *ring, last eventID, out chan<- Event) {
	defer e.wg.Done()
	defer e.subscribers.Add(-1)
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

// --- Redis streams ---------------------------------------------------------

// hub is the one reader of a session's stream on this process. mu guards
// subs and dead; a hub with no subscribers marks itself dead and exits, and
// join then starts a new one. Each subscriber is a channel the hub sends
// to, and closes when it drops the subscriber or on Close.
type hub struct {
	session SessionKey
	key     string
	start   eventID // the stream's last ID when the hub started
	mu      sync.Mutex
	subs    map[chan Event]struct{}
	dead    bool
}

// join registers sub with the session's hub, starting one when needed. The
// hub's start ID is read before join returns, so a catch-up read made after
// join covers everything the hub will not deliver.
func (e *Events) join(ctx context.Context, k SessionKey, sub chan Event) (*hub, error) {
	e.mu.Lock()
	h := e.joinRunning(k, sub)
	e.mu.Unlock()
	if h != nil {
		return h, nil
	}
	key := e.streamKey(k)
	start, err := e.lastStreamID(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("session: subscribe to session %q of owner %q: %w", k.ID, k.Owner, err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if h := e.joinRunning(k, sub); h != nil { // another subscriber started one meanwhile
		return h, nil
	}
	h = &hub{session: k, key: key, start: start, subs: map[chan Event]struct{}{sub: {}}}
	if !e.goLocked(func() { e.runHub(h) }) {
		return nil, fmt.Errorf("session: subscribe to session %q of owner %q: %w", k.ID, k.Owner, errEventsClosed)
	}
	e.hubs[k] = h
	return h, nil
}

// joinRunning adds sub to the hub of session k and returns the hub, or
// returns nil when no hub of k is running. e.mu must be held.
func (e *Events) joinRunning(k SessionKey, sub chan Event) *hub {
	h, ok := e.hubs[k]
	if !ok {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.dead {
		return nil
	}
	h.subs[sub] = struct{}{}
	return h
}

func (e *Events) lastStreamID(ctx context.Context, key string) (eventID, error) {
	msgs, err := e.rdb.XRevRangeN(ctx, key, "+", "-", 1).Result()
	if err != nil {
		return eventID{}, err
	}
	if len(msgs) == 0 {
		return eventID{}, nil
	}
	id, _ := parseEventID(msgs[0].ID)
	return id, nil
}

func (e *Events) leave(h *hub, sub chan Event) {
	h.mu.Lock()
	delete(h.subs, sub)
	h.mu.Unlock()
}

// runHub reads the stream with XREAD BLOCK from the hub's start and fans out
// to the subscribers, dropping any whose buffer is full. It exits when no
// subscriber is left or on Close. After a read error (Redis restarted,
// the connection failed) it checks that the stream still holds everything
// after its cursor, and fans out a session.reset when not.
func (e *Events) runHub(h *hub) {
	defer e.wg.Done()
	cursor := h.start
	backoff := 50 * time.Millisecond
	check := false
	for {
		h.mu.Lock()
		if len(h.subs) == 0 {
			h.dead = true
		}
		dead := h.dead
		h.mu.Unlock()
		if dead {
			e.mu.Lock()
			if e.hubs[h.session] == h {
				delete(e.hubs, h.session)
			}
			e.mu.Unlock()
			return
		}
		select {
		case <-e.closed:
			h.mu.Lock()
			h.dead = true
			for s := range h.subs {
				close(s)
			}
			h.subs = nil
			h.mu.Unlock()
			continue
		default:
		}
		var err error
		if check {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			var sc scan
			sc, err = e.scanAfter(ctx, h.key, cursor, 0)
			cancel()
			if err == nil {
				check = false
				if !sc.covered {
					if sc.deleted != nil {
						e.fanOut(h, *sc.deleted) // the session is gone: end the subscriptions
					} else {
						e.fanOut(h, resetEvent(h.session.ID, sc.resetID))
					}
					cursor = sc.resetID
				}
			}
		}
		var res []redis.XStream
		if err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), eventBlock+5*time.Second)
			res, err = e.rdb.XRead(ctx, &redis.XReadArgs{Streams: []string{h.key, cursor.String()}, Block: eventBlock, Count: 256}).Result()
			cancel()
		}
		if err != nil && !errors.Is(err, redis.Nil) {
			e.readErrs.Add(1)
			check = true
			select {
			case <-time.After(backoff):
			case <-e.closed:
			}
			backoff = min(2*backoff, 2*time.Second)
			continue
		}
		backoff = 50 * time.Millisecond
		for _, st := range res {
			for _, m := range st.Messages {
				id, ok := parseEventID(m.ID)
				if !ok {
					continue
				}
				cursor = id // also past markers and undecodable entries
				if ev, ok := decodeMessage(m); ok {
					e.fanOut(h, ev)
				}
			}
		}
	}
}

func (e *Events) fanOut(h *hub, ev Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.subs {
		select {
		case s <- ev:
		default: // too slow: drop it; it resumes from its last ID
			e.dropped.Add(1)
			close(s)
			delete(h.subs, s)
		}
	}
}

// decodeMessage decodes a stream entry; markers and undecodable entries
// give false.
func decodeMessage(m redis.XMessage) (Event, bool) {
	if _, ok := parseEventID(m.ID); !ok {
		return Event{}, false
	}
	raw, ok := m.Values["e"].(string)
	if !ok {
		return Event{}, false
	}
	var ev Event
	if err := json.Unmarshal([]byte(raw), &ev); err != nil {
		return Event{}, false
	}
	ev.ID = m.ID
	return ev, true
}

// scan is what scanAfter found.
type scan struct {
	covered bool             // the stream holds every entry after the position
	resetID eventID          // when not covered: the ID to send a reset with and continue from
	deleted *Event           // when not covered: the stream's last event, when it is session.deleted
	msgs    []redis.XMessage // when covered: up to n entries after the position
}

// scanAfter tells whether the stream key still holds every entry after
// pos and, when it does, returns up to n of them (n = 0 reads none). XINFO
// STREAM and XRANGE run in one MULTI, so the check and the read see the
// same stream. The stream covers pos when pos is not older than its first
// entry (the entries before that were trimmed, or the stream's birth
// marker), not newer than its last generated ID, and not older than its
// max-deleted-entry-id (XDEL). Otherwise resetID is its last generated ID.
// A missing stream is recreated with a marker whose ID is resetID, so a
// resume from resetID is complete.
//
// The first entry is the oldest position known to be complete: a client
// whose position is exactly the last trimmed entry also gets a reset,
// which is harmless; one that missed an entry always does.
func (e *Events) scanAfter(ctx context.Context, key string, pos eventID, n int64) (scan, error) {
	for range 3 {
		var info *redis.XInfoStreamCmd
		var rng *redis.XMessageSliceCmd
		_, err := e.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
			info = p.XInfoStream(ctx, key)
			if n > 0 {
				rng = p.XRangeN(ctx, key, "("+pos.String(), "+", n)
			}
			return nil
		})
		if err != nil && info.Err() == nil && (rng == nil || rng.Err() == nil) {
			return scan{}, err // the transaction itself failed
		}
		if ierr := info.Err(); ierr != nil {
			if !strings.Contains(ierr.Error(), "no such key") {
				return scan{}, ierr
			}
			id, err := markerScript.Run(ctx, e.rdb, []string{key}, EventStreamTTL.Milliseconds()).Text()
			if errors.Is(err, redis.Nil) {
				continue // created meanwhile: look again
			}
			if err != nil {
				return scan{}, err
			}
			marker, ok := parseEventID(id)
			if !ok {
				return scan{}, fmt.Errorf("stream %s: marker ID %q", key, id)
			}
			return scan{resetID: marker}, nil
		}
		if rng != nil && rng.Err() != nil {
			return scan{}, rng.Err()
		}
		st := info.Val()
		lastGen, ok := parseEventID(st.LastGeneratedID)
		if !ok {
			return scan{}, fmt.Errorf("stream %s: last-generated-id %q", key, st.LastGeneratedID)
		}
		covered := !lastGen.less(pos)
		if maxDel, ok := parseEventID(st.MaxDeletedEntryID); ok && pos.less(maxDel) {
			covered = false
		}
		if st.Length == 0 {
			covered = covered && pos == lastGen
		} else if first, ok := parseEventID(st.FirstEntry.ID); !ok || pos.less(first) {
			covered = false
		}
		if !covered {
			out := scan{resetID: lastGen}
			if ev, ok := decodeMessage(st.LastEntry); ok && ev.Type == EventSessionDeleted {
				out.deleted = &ev
			}
			return out, nil
		}
		out := scan{covered: true}
		if rng != nil {
			out.msgs = rng.Val()
		}
		return out, nil
	}
	return scan{}, fmt.Errorf("stream %s: created and lost while checking it", key)
}

// redisSubscriber catches up from the stream (after last, to the end) when
// asked, then forwards the hub's events it has not sent yet. The
// subscriber joined the hub before the catch-up read, so every event is in
// one or both; the ID check drops the duplicates. Each catch-up read also
// checks that nothing after its position is gone; when something may be,
// it sends a session.reset and continues from the reset's ID (or, when the
// stream ends with session.deleted, sends that and stops).
func (e *Events) redisSubscriber(ctx context.Context, sessionID string, h *hub, sub chan Event, last eventID, catchUp bool, out chan<- Event) {
	defer e.wg.Done()
	defer e.subscribers.Add(-1)
	defer close(out)
	defer e.leave(h, sub)
	send := func(ev Event) bool {
		id, _ := parseEventID(ev.ID)
		if !last.less(id) {
			return true // already sent
		}
		if !e.deliver(ctx, out, ev) {
			return false
		}
		if ev.Type == EventSessionReset {
			e.resets.Add(1)
		}
		last = id
		return ev.Type != EventSessionDeleted
	}
	if catchUp {
		cursor := last
		for {
			sc, err := e.scanAfter(ctx, h.key, cursor, catchUpPage)
			if err != nil {
				e.readErrs.Add(1)
				return // the client resumes from its last ID
			}
			if !sc.covered {
				if sc.deleted != nil {
					send(*sc.deleted) // the session is gone: nothing to refetch
					return
				}
				if !e.deliverReset(ctx, out, sessionID, sc.resetID) {
					return
				}
				last, cursor = sc.resetID, sc.resetID
				continue
			}
			for _, m := range sc.msgs {
				if id, ok := parseEventID(m.ID); ok {
					cursor = id // also past markers
				}
				if ev, ok := decodeMessage(m); ok && !send(ev) {
					return
				}
			}
			if len(sc.msgs) < catchUpPage {
				break
			}
		}
	}
	for {
		select {
		case ev, ok := <-sub:
			if !ok || !send(ev) {
				return
			}
		case <-ctx.Done():
			return
		case <-e.closed:
			return
		}
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
