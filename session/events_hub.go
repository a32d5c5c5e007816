package session

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// --- hub: subscriptions, limits and fan-out ----------------------------------

// EventLimits bound the subscriptions an [Events] serves at once. Zero
// fields mean the defaults; a negative field means no bound.
type EventLimits struct {
	// MaxSubscriptions bounds the open subscriptions of the process.
	// Default DefaultMaxSubscriptions.
	MaxSubscriptions int
	// MaxSubscriptionsPerOwner bounds the open subscriptions of one owner.
	// Default DefaultMaxSubscriptionsPerOwner.
	MaxSubscriptionsPerOwner int
}

// ErrTooManySubscriptions is returned (wrapped, naming the limit) by
// Subscribe when a subscription limit is reached; the caller may retry once
// other subscriptions ended.
var ErrTooManySubscriptions = errors.New("session: too many event subscriptions")

// SetLimits replaces the subscription limits (zero fields: the defaults).
// Subscriptions already open stay open; new ones are refused while the
// count is at a limit.
func (e *Events) SetLimits(l EventLimits) {
	e.mu.Lock()
	e.limits = l.withDefaults()
	e.mu.Unlock()
}

func (l EventLimits) withDefaults() EventLimits {
	if l.MaxSubscriptions == 0 {
		l.MaxSubscriptions = DefaultMaxSubscriptions
	}
	if l.MaxSubscriptionsPerOwner == 0 {
		l.MaxSubscriptionsPerOwner = DefaultMaxSubscriptionsPerOwner
	}
	return l
}

// reserve counts one more subscription of owner, or returns an error
// wrapping ErrTooManySubscriptions when a limit is reached. The returned
// func releases the reservation; it must be called exactly once.
func (e *Events) reserve(owner string) (func(), error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	l := e.limits
	if l.MaxSubscriptions > 0 && e.open >= l.MaxSubscriptions {
		e.refused.Add(1)
		return nil, fmt.Errorf("%w: this instance serves its limit of %d subscriptions", ErrTooManySubscriptions, l.MaxSubscriptions)
	}
	if l.MaxSubscriptionsPerOwner > 0 && e.perOwner[owner] >= l.MaxSubscriptionsPerOwner {
		e.refused.Add(1)
		return nil, fmt.Errorf("%w: owner %q has its limit of %d subscriptions open on this instance", ErrTooManySubscriptions, owner, l.MaxSubscriptionsPerOwner)
	}
	e.open++
	e.perOwner[owner]++
	var once sync.Once
	return func() {
		once.Do(func() {
			e.mu.Lock()
			e.open--
			if e.perOwner[owner]--; e.perOwner[owner] <= 0 {
				delete(e.perOwner, owner)
			}
			e.mu.Unlock()
		})
	}, nil
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
// here. Past a limit ([Events.SetLimits]) it returns an error wrapping
// [ErrTooManySubscriptions].
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
	release, err := e.reserve(owner)
	if err != nil {
		return nil, fmt.Errorf("session: subscribe to session %q: %w", truncate(sessionID), err)
	}
	out := make(chan Event, SubscriberBuffer)
	var run func()
	var undo func() // undoes what was set up when the subscriber does not start
	done := func() { e.subscribers.Add(-1); release() }
	if e.rdb == nil {
		r := e.ring(k, true)
		e.boundRings()
		if lastEventID == "" {
			last = r.lastID()
		}
		run = func() { e.memorySubscriber(ctx, sessionID, r, last, out, done) }
		undo = func() { e.releaseRing(r) }
	} else {
		sub := make(chan Event, SubscriberBuffer)
		h, err := e.join(ctx, k, sub)
		if err != nil {
			release()
			return nil, err
		}
		catchUp := lastEventID != ""
		if !catchUp {
			last = h.start
		}
		run = func() { e.redisSubscriber(ctx, sessionID, h, sub, last, catchUp, out, done) }
		undo = func() { e.leave(h, sub) }
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
		undo()
		release()
		return nil, fmt.Errorf("session: subscribe: %w", errEventsClosed)
	}
	return out, nil
}

// hub is the fan-out point of one session's stream on this process. mu
// guards subs and dead. A hub is in Events.hubs (and byKey) while it has
// subscribers; the last one leaving marks it dead and removes it, and the
// next subscriber starts a new one. cursor, the ID of the last entry the
// reader fanned out, is owned by the fetch goroutine.
type hub struct {
	session SessionKey
	key     string
	start   eventID // the stream's last ID when the hub started
	cursor  eventID
	mu      sync.Mutex
	subs    map[chan Event]struct{}
	dead    bool
}

func (h *hub) isDead() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.dead
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
	if !e.rd.startLocked() {
		return nil, fmt.Errorf("session: subscribe to session %q of owner %q: %w", k.ID, k.Owner, errEventsClosed)
	}
	h = &hub{session: k, key: key, start: start, cursor: start, subs: map[chan Event]struct{}{sub: {}}}
	e.hubs[k] = h
	e.byKey[key] = h
	// Read once now: events appended between the start read and this point
	// were announced before the hub could hear of them.
	e.rd.add(h, workRead)
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

// leave removes sub from h; the last subscriber leaving retires the hub.
func (e *Events) leave(h *hub, sub chan Event) {
	e.mu.Lock()
	defer e.mu.Unlock()
	h.mu.Lock()
	delete(h.subs, sub)
	retire := len(h.subs) == 0 && !h.dead
	if retire {
		h.dead = true
	}
	h.mu.Unlock()
	if retire && e.hubs[h.session] == h {
		delete(e.hubs, h.session)
		delete(e.byKey, h.key)
	}
}

// fanOut sends ev to every subscriber of h, dropping (closing) any whose
// buffer is full: it resumes from its last ID.
func (e *Events) fanOut(h *hub, ev Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.subs {
		select {
		case s <- ev:
		default:
			e.dropped.Add(1)
			close(s)
			delete(h.subs, s)
		}
	}
}

// --- delivery ------------------------------------------------------------------

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
