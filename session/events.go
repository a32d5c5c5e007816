package session

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
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
	// eventBlock is how long one XREAD blocks; it bounds how long a stopped
	// reader lingers.
	eventBlock = time.Second
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
}

// Events publishes session change events and delivers them to subscribers.
// With Redis, each session has a capped stream ("<ns>:ev:{<session>}") that
// every instance reads, so subscribers on any instance receive every event;
// without Redis, each session has an in-memory ring on this process.
//
// Appends are made idempotent with a per-event token checked inside one Lua
// script, since go-redis retries commands on network errors and a plain XADD
// could be applied twice. Each session with local subscribers has one
// reader goroutine (XREAD BLOCK) that fans out to them.
//
// An Events is safe for concurrent use.
type Events struct {
	rdb redis.UniversalClient
	ns  string
	log *slog.Logger

	mu     sync.Mutex
	rings  map[string]*ring // memory mode
	hubs   map[string]*hub  // Redis mode
	closed chan struct{}
	once   sync.Once
	wg     sync.WaitGroup

	published, publishErrs, delivered, dropped, readErrs atomic.Uint64
	subscribers                                          atomic.Int64
}

// NewEvents returns an event bus on rdb (nil: in-memory rings) with stream
// keys under namespace ns. It does no I/O.
func NewEvents(rdb redis.UniversalClient, ns string, log *slog.Logger) *Events {
	if log == nil {
		log = slog.Default()
	}
	return &Events{rdb: rdb, ns: ns, log: log, rings: map[string]*ring{}, hubs: map[string]*hub{}, closed: make(chan struct{})}
}

// Close ends every subscription (their channels close) and waits for the
// readers to stop, which takes at most about one second. Publish fails
// after Close. It is safe to call more than once.
func (e *Events) Close() {
	e.once.Do(func() { close(e.closed) })
	e.wg.Wait()
}

// Stats returns the event counters.
func (e *Events) Stats() EventStats {
	return EventStats{
		Published: e.published.Load(), PublishErrors: e.publishErrs.Load(), Delivered: e.delivered.Load(),
		Dropped: e.dropped.Load(), Subscribers: e.subscribers.Load(), ReadErrors: e.readErrs.Load(),
	}
}

func (e *Events) streamKey(sessionID string) string { return e.ns + ":ev:{" + sessionID + "}" }

// appendScript appends one event unless its token was seen: a retried call
// returns the ID of the first append instead of adding a duplicate. Both keys
// share the session's hash tag, so the script runs on one Cluster slot.
var appendScript = redis.NewScript(`
local id = redis.call('GET', KEYS[2])
if id then return id end
id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'e', ARGV[2])
redis.call('SET', KEYS[2], id, 'PX', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return id
`)

// Publish appends ev to its session's events and returns its ID. ev.ID is
// ignored and ev.At set to now when zero. The error names the session.
func (e *Events) Publish(ctx context.Context, ev Event) (string, error) {
	select {
	case <-e.closed:
		return "", errors.New("session: publish: events closed")
	default:
	}
	if ev.At.IsZero() {
		ev.At = time.Now().UTC()
	}
	ev.ID = ""
	if e.rdb == nil {
		id := e.ring(ev.SessionID).append(ev)
		if ev.Type == EventSessionDeleted {
			// Current subscribers hold the ring and still get the event; new
			// ones are refused by the owner check (the session is gone).
			e.mu.Lock()
			delete(e.rings, ev.SessionID)
			e.mu.Unlock()
		}
		e.published.Add(1)
		return id, nil
	}
	data, err := json.Marshal(ev)
	if err != nil {
		return "", fmt.Errorf("session: publish event for session %q: %w", ev.SessionID, err)
	}
	var tok [12]byte
	_, _ = rand.Read(tok[:])
	key := e.streamKey(ev.SessionID)
	ttl := EventStreamTTL
	if ev.Type == EventSessionDeleted {
		ttl = time.Minute
	}
	id, err := appendScript.Run(ctx, e.rdb, []string{key, key + ":t:" + hex.EncodeToString(tok[:])},
		EventStreamLen, data, ttl.Milliseconds(), time.Minute.Milliseconds()).Text()
	if err != nil {
		e.publishErrs.Add(1)
		return "", fmt.Errorf("session: publish event for session %q: %w", ev.SessionID, err)
	}
	e.published.Add(1)
	return id, nil
}

// Subscribe returns a channel of sessionID's events after lastEventID (""
// for only events published from now on). The channel closes when ctx ends,
// after a session.deleted event, on Close, or when the subscriber falls
// more than SubscriberBuffer events behind; the caller then resumes with the
// last ID it received. A malformed lastEventID gives ErrInvalid (field
// "last_event_id"). Subscribe does not check who owns the session; see
// [Service.Subscribe].
func (e *Events) Subscribe(ctx context.Context, sessionID, lastEventID string) (<-chan Event, error) {
	var last eventID
	if lastEventID != "" {
		var ok bool
		if last, ok = parseEventID(lastEventID); !ok {
			return nil, Invalidf("last_event_id", "%q is not an event ID (like 1700000000000-0)", truncate(lastEventID))
		}
	}
	select {
	case <-e.closed:
		return nil, errors.New("session: subscribe: events closed")
	default:
	}
	out := make(chan Event, SubscriberBuffer)
	e.subscribers.Add(1)
	if e.rdb == nil {
		r := e.ring(sessionID)
		if lastEventID == "" {
			last = r.lastID()
		}
		e.wg.Add(1)
		go e.memorySubscriber(ctx, r, last, out)
		return out, nil
	}
	sub := &subscriber{ch: make(chan Event, SubscriberBuffer)}
	h, err := e.join(ctx, sessionID, sub)
	if err != nil {
		e.subscribers.Add(-1)
		return nil, err
	}
	catchUp := lastEventID != ""
	if !catchUp {
		last = h.start
	}
	e.wg.Add(1)
	go e.redisSubscriber(ctx, h, sub, last, catchUp, out)
	return out, nil
}

// --- in-memory rings -------------------------------------------------------

// ring keeps a session's last EventStreamLen events in memory. mu guards
// everything; notify is closed and replaced on every append, waking waiters.
type ring struct {
	mu     sync.Mutex
	events []Event
	sizes  []int // estimated bytes of each event
	bytes  int   // sum of sizes
	last   eventID
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

func (e *Events) ring(sessionID string) *ring {
	e.mu.Lock()
	defer e.mu.Unlock()
	r, ok := e.rings[sessionID]
	if !ok {
		r = &ring{notify: make(chan struct{})}
		e.rings[sessionID] = r
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
		r.bytes -= r.sizes[drop]
		drop++
	}
	if drop > 0 {
		r.events = append(r.events[:0], r.events[drop:]...)
		r.sizes = append(r.sizes[:0], r.sizes[drop:]...)
	}
	r.events = append(r.events, ev)
	r.sizes = append(r.sizes, size)
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

// after returns the events after id and the channel closed by the next append.
func (r *ring) after(id eventID) ([]Event, <-chan struct{}) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Event
	for _, ev := range r.events {
		if evID, _ := parseEventID(ev.ID); id.less(evID) {
			out = append(out, ev)
		}
	}
	return out, r.notify
}

func (e *Events) memorySubscriber(ctx context.Context, r *ring, last eventID, out chan<- Event) {
	defer e.wg.Done()
	defer e.subscribers.Add(-1)
	defer close(out)
	for {
		evs, wait := r.after(last)
		for _, ev := range evs {
			select {
			case out <- ev:
				e.delivered.Add(1)
			case <-ctx.Done():
				return
			case <-e.closed:
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
// join then starts a new one.
type hub struct {
	key   string
	start eventID // the stream's last ID when the hub started
	mu    sync.Mutex
	subs  map[*subscriber]struct{}
	dead  bool
}

// subscriber receives a hub's events; gone is set when it was dropped.
type subscriber struct {
	ch   chan Event
	gone atomic.Bool
}

// join registers sub with the session's hub, starting one when needed. The
// hub's start ID is read before join returns, so a catch-up read made after
// join covers everything the hub will not deliver.
func (e *Events) join(ctx context.Context, sessionID string, sub *subscriber) (*hub, error) {
	key := e.streamKey(sessionID)
	e.mu.Lock()
	h, ok := e.hubs[sessionID]
	if ok {
		h.mu.Lock()
		if !h.dead {
			h.subs[sub] = struct{}{}
			h.mu.Unlock()
			e.mu.Unlock()
			return h, nil
		}
		h.mu.Unlock()
	}
	e.mu.Unlock()

	start, err := e.lastStreamID(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("session: subscribe to session %q: %w", sessionID, err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if h, ok := e.hubs[sessionID]; ok { // another subscriber started one meanwhile
		h.mu.Lock()
		if !h.dead {
			h.subs[sub] = struct{}{}
			h.mu.Unlock()
			return h, nil
		}
		h.mu.Unlock()
	}
	h = &hub{key: key, start: start, subs: map[*subscriber]struct{}{sub: {}}}
	e.hubs[sessionID] = h
	e.wg.Add(1)
	go e.runHub(sessionID, h)
	return h, nil
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

func (e *Events) leave(h *hub, sub *subscriber) {
	h.mu.Lock()
	delete(h.subs, sub)
	h.mu.Unlock()
}

// runHub reads the stream with XREAD BLOCK from the hub's start and fans out
// to the subscribers, dropping any whose buffer is full. It exits when no
// subscriber is left or on Close.
func (e *Events) runHub(sessionID string, h *hub) {
	defer e.wg.Done()
	cursor := h.start
	backoff := 50 * time.Millisecond
	for {
		h.mu.Lock()
		if len(h.subs) == 0 {
			h.dead = true
		}
		dead := h.dead
		h.mu.Unlock()
		if dead {
			e.mu.Lock()
			if e.hubs[sessionID] == h {
				delete(e.hubs, sessionID)
			}
			e.mu.Unlock()
			return
		}
		select {
		case <-e.closed:
			h.mu.Lock()
			h.dead = true
			for s := range h.subs {
				s.gone.Store(true)
				close(s.ch)
			}
			h.subs = nil
			h.mu.Unlock()
			continue
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), eventBlock+5*time.Second)
		res, err := e.rdb.XRead(ctx, &redis.XReadArgs{Streams: []string{h.key, cursor.String()}, Block: eventBlock, Count: 256}).Result()
		cancel()
		if err != nil && !errors.Is(err, redis.Nil) {
			e.readErrs.Add(1)
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
				ev, id, ok := decodeMessage(m)
				if !ok {
					continue
				}
				cursor = id
				e.fanOut(h, ev)
			}
		}
	}
}

func (e *Events) fanOut(h *hub, ev Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.subs {
		select {
		case s.ch <- ev:
		default: // too slow: drop it; it resumes from its last ID
			e.dropped.Add(1)
			s.gone.Store(true)
			close(s.ch)
			delete(h.subs, s)
		}
	}
}

func decodeMessage(m redis.XMessage) (Event, eventID, bool) {
	id, ok := parseEventID(m.ID)
	if !ok {
		return Event{}, id, false
	}
	raw, _ := m.Values["e"].(string)
	var ev Event
	if err := json.Unmarshal([]byte(raw), &ev); err != nil {
		return Event{}, id, false
	}
	ev.ID = m.ID
	return ev, id, true
}

// redisSubscriber catches up from the stream (XRANGE after last, to the
// end) when asked, then forwards the hub's events it has not sent yet. The
// subscriber joined the hub before the catch-up read, so every event is in
// one or both; the ID check drops the duplicates.
func (e *Events) redisSubscriber(ctx context.Context, h *hub, sub *subscriber, last eventID, catchUp bool, out chan<- Event) {
	defer e.wg.Done()
	defer e.subscribers.Add(-1)
	defer close(out)
	defer e.leave(h, sub)
	send := func(ev Event) bool {
		id, _ := parseEventID(ev.ID)
		if !last.less(id) {
			return true // already sent
		}
		select {
		case out <- ev:
			e.delivered.Add(1)
		case <-ctx.Done():
			return false
		case <-e.closed:
			return false
		}
		last = id
		return ev.Type != EventSessionDeleted
	}
	if catchUp {
		for {
			msgs, err := e.rdb.XRangeN(ctx, h.key, "("+last.String(), "+", 256).Result()
			if err != nil {
				e.readErrs.Add(1)
				return // the client resumes from its last ID
			}
			for _, m := range msgs {
				ev, _, ok := decodeMessage(m)
				if ok && !send(ev) {
					return
				}
			}
			if len(msgs) < 256 {
				break
			}
		}
	}
	for {
		select {
		case ev, ok := <-sub.ch:
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
