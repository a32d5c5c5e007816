package session

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	mrand "math/rand/v2"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// --- Redis streams -------------------------------------------------------------
//
// One reader per Events serves every watched session, so the Redis
// connections held for events do not grow with the sessions watched, and
// no blocking command ever runs on the client's pool (which the cache
// shares):
//
//   - listen owns one pub/sub connection (go-redis's pub/sub pool, never the
//     command pool) subscribed to "<ns>:ev:notify", on which appendScript
//     publishes the key of every stream it appends to. On Cluster it is
//     classic pub/sub, which every node broadcasts, so one connection
//     hears every master.
//   - fetch reads the streams that were announced, each from its hub's
//     cursor, with non-blocking XREADs of one key each, pipelined (go-redis
//     groups a Cluster pipeline by node; one key per XREAD means one slot per
//     command), and fans the entries out to the hubs' subscribers.
//
// The message only says "look"; the stream carries the event, so a lost
// message costs latency, never an event. A (re)subscription after the
// first, a connection that fails or an unanswered ping may have lost
// messages or hidden a Redis restart: every hub is then checked (does the
// stream still hold everything after its cursor? scanAfter) and read. A
// sweep reads every hub every eventSweep as well, which bounds the delay of
// an event appended by a contextd older than this reader (no PUBLISH).

// Reader timings.
const (
	// eventHeartbeat is how long the notification subscription may be
	// silent before it is pinged; unanswered for two, it is replaced.
	eventHeartbeat = time.Second
	// eventSweep is how often every watched stream is read whether or not
	// it was announced.
	eventSweep = 5 * time.Second
	// eventReadTimeout bounds one pipelined read or check.
	eventReadTimeout = 5 * time.Second
)

// work is what the reader must do for a hub.
type work uint8

const (
	workRead  work = 1 << iota // read the stream after the cursor
	workCheck                  // first check that the stream still covers the cursor
)

// reader is the Events' one stream reader (see above). mu guards pending,
// started and ps; lock order: Events.mu, then reader.mu.
type reader struct {
	e       *Events
	channel string
	mu      sync.Mutex
	pending map[*hub]work
	started bool
	ps      *redis.PubSub // the current subscription, closed by Close to end listen at once
	wake    chan struct{} // 1-buffered: pending has work
}

func newReader(e *Events) *reader {
	return &reader{e: e, channel: e.ns + ":ev:notify", pending: map[*hub]work{}, wake: make(chan struct{}, 1)}
}

// startLocked starts the reader's goroutines unless they run; false after
// Close. Events.mu must be held (see goLocked).
func (r *reader) startLocked() bool {
	if r.started {
		return !r.e.isClosed()
	}
	if !r.e.goLocked(r.listen) {
		return false
	}
	r.e.goLocked(r.fetch) // cannot fail: Close waits for e.mu
	r.started = true
	return true
}

// add queues w for h and wakes fetch.
func (r *reader) add(h *hub, w work) {
	r.mu.Lock()
	r.pending[h] |= w
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// addAll queues w for every hub.
func (r *reader) addAll(w work) {
	r.e.mu.Lock()
	defer r.e.mu.Unlock()
	for _, h := range r.e.hubs {
		r.add(h, w)
	}
}

// take returns the pending work and clears it.
func (r *reader) take() map[*hub]work {
	r.mu.Lock()
	defer r.mu.Unlock()
	p := r.pending
	r.pending = make(map[*hub]work, len(p))
	return p
}

// stop ends the current subscription so that listen returns without
// waiting for its heartbeat. Called by Close after e.closed is closed.
func (r *reader) stop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ps != nil {
		_ = r.ps.Close()
	}
}

// listen keeps the notification subscription up until Close.
func (r *reader) listen() {
	defer r.e.wg.Done()
	backoff := 10 * time.Millisecond
	first := true
	for !r.e.isClosed() {
		ps := r.e.rdb.Subscribe(r.e.ctx)
		r.mu.Lock()
		if r.e.isClosed() {
			r.mu.Unlock()
			_ = ps.Close()
			return
		}
		r.ps = ps
		r.mu.Unlock()
		err := ps.Subscribe(r.e.ctx, r.channel)
		if err == nil {
			backoff = 10 * time.Millisecond
			err = r.receive(ps, &first)
		}
		r.mu.Lock()
		r.ps = nil
		r.mu.Unlock()
		_ = ps.Close()
		if r.e.isClosed() {
			return
		}
		r.e.readErrs.Add(1)
		if backoff == 10*time.Millisecond { // not while failing again and again (Redis down)
			r.e.log.Warn("session: event notifications lost; re-subscribing, then checking every watched stream", "err", err)
		}
		r.addAll(workRead | workCheck) // messages may have been lost meanwhile
		if !r.pause(backoff) {
			return
		}
		backoff = min(2*backoff, time.Second)
	}
}

// receive reads one subscription until it fails and returns why.
func (r *reader) receive(ps *redis.PubSub, first *bool) error {
	var pingSent time.Time
	for {
		msg, err := ps.ReceiveTimeout(r.e.ctx, eventHeartbeat)
		now := time.Now()
		if err != nil {
			if r.e.isClosed() {
				return err
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				if !pingSent.IsZero() && now.Sub(pingSent) >= 2*eventHeartbeat {
					return errors.New("no answer to ping")
				}
				if pingSent.IsZero() {
					if err := ps.Ping(r.e.ctx); err != nil {
						return err
					}
					pingSent = now
				}
				continue
			}
			return err
		}
		pingSent = time.Time{}
		switch m := msg.(type) {
		case *redis.Subscription:
			if m.Kind != "subscribe" {
				continue
			}
			// Every hub started before this point may have missed messages;
			// after the first subscription, Redis may also have restarted.
			w := workRead
			if !*first {
				w |= workCheck
			}
			*first = false
			r.addAll(w)
		case *redis.Message:
			r.e.mu.Lock()
			if h := r.e.byKey[m.Payload]; h != nil {
				r.add(h, workRead)
			}
			r.e.mu.Unlock()
		}
	}
}

// fetch does the pending work until Close: on a wake, every eventSweep
// (every hub), and after a failed round with capped exponential backoff.
func (r *reader) fetch() {
	defer r.e.wg.Done()
	sweep := time.NewTicker(eventSweep)
	defer sweep.Stop()
	var backoff time.Duration
	for {
		if backoff > 0 {
			if !r.pause(backoff) {
				return
			}
		} else {
			select {
			case <-r.wake:
			case <-sweep.C:
				r.addAll(workRead)
			case <-r.e.closed:
				return
			}
		}
		if r.round(r.take()) {
			backoff = 0
		} else {
			backoff = min(max(2*backoff, 50*time.Millisecond), 2*time.Second)
		}
	}
}

// round checks and reads the hubs in todo; false when something failed
// (that work is queued again).
func (r *reader) round(todo map[*hub]work) bool {
	ok := true
	reads := make([]*hub, 0, len(todo))
	for h, w := range todo {
		if h.isDead() {
			continue
		}
		if w&workCheck != 0 && !r.check(h) {
			r.add(h, w)
			ok = false
			continue
		}
		reads = append(reads, h)
	}
	for len(reads) > 0 {
		n := min(len(reads), catchUpPage)
		if !r.read(reads[:n]) {
			ok = false
		}
		reads = reads[n:]
	}
	return ok
}

// check makes sure h's stream still holds every entry after h's cursor;
// when it does not (Redis restarted empty, the stream expired or was
// trimmed past the cursor), it fans out a session.reset (or the stream's
// final session.deleted) and moves the cursor to the reset's ID.
func (r *reader) check(h *hub) bool {
	ctx, cancel := context.WithTimeout(r.e.ctx, eventReadTimeout)
	defer cancel()
	sc, err := r.e.scanAfter(ctx, h.key, h.session.ID, h.cursor, 0)
	if err != nil {
		r.e.readErrs.Add(1)
		return false
	}
	if !sc.covered {
		if sc.deleted != nil {
			r.e.fanOut(h, *sc.deleted) // the session is gone: end the subscriptions
		} else {
			r.e.fanOut(h, resetEvent(h.session.ID, sc.resetID))
		}
		h.cursor = sc.resetID
	}
	return true
}

// read reads the hubs' streams after their cursors in one pipeline of
// non-blocking XREADs and fans the events out.
func (r *reader) read(hubs []*hub) bool {
	ctx, cancel := context.WithTimeout(r.e.ctx, eventReadTimeout)
	defer cancel()
	cmds := make([]*redis.XStreamSliceCmd, len(hubs))
	_, _ = r.e.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, h := range hubs {
			cmds[i] = p.XRead(ctx, &redis.XReadArgs{Streams: []string{h.key, h.cursor.String()}, Count: catchUpPage, Block: -1})
		}
		return nil
	})
	ok := true
	for i, h := range hubs {
		res, err := cmds[i].Result()
		if errors.Is(err, redis.Nil) {
			continue
		}
		if err != nil {
			r.e.readErrs.Add(1)
			r.add(h, workRead|workCheck) // the failure may hide a lost stream
			ok = false
			continue
		}
		n := 0
		for _, st := range res {
			for _, m := range st.Messages {
				id, valid := parseEventID(m.ID)
				if !valid {
					continue
				}
				n++
				h.cursor = id // also past markers and malformed entries
				if ev, kind := r.e.decodeEntry(m, h.session.ID); kind == entryEvent {
					r.e.fanOut(h, ev)
				}
			}
		}
		if n >= catchUpPage {
			r.add(h, workRead) // more to read
		}
	}
	return ok
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

// entryKind is what a stream entry holds.
type entryKind uint8

const (
	entryEvent     entryKind = iota
	entryMarker              // the stream's birth marker: never delivered
	entryMalformed           // not an event of this session: skipped and counted
)

// decodeEntry decodes a stream entry of session sessionID. An entry that is
// not a well-formed event of that session (undecodable JSON, no type, another
// or no session ID) is malformed: it is counted in EventStats.Malformed and
// never delivered.
func (e *Events) decodeEntry(m redis.XMessage, sessionID string) (Event, entryKind) {
	raw, ok := m.Values["e"].(string)
	if !ok {
		if _, marker := m.Values["m"]; marker && len(m.Values) == 1 {
			return Event{}, entryMarker
		}
		e.malformed.Add(1)
		return Event{}, entryMalformed
	}
	var ev Event
	if err := json.Unmarshal([]byte(raw), &ev); err != nil || ev.Type == "" || ev.SessionID != sessionID {
		e.malformed.Add(1)
		return Event{}, entryMalformed
	}
	ev.ID = m.ID
	return ev, entryEvent
}

// scan is what scanAfter found.
type scan struct {
	covered bool             // the stream holds every entry after the position
	resetID eventID          // when not covered: the ID to send a reset with and continue from
	deleted *Event           // when not covered: the stream's last event, when it is session.deleted
	msgs    []redis.XMessage // when covered: up to n entries after the position
}

// maxEventID is the largest stream ID. No entry follows it, and Redis
// refuses an exclusive range from it, so scanAfter never asks for one.
var maxEventID = eventID{math.MaxUint64, math.MaxUint64}

// scanAfter tells whether the stream key of session sessionID still holds
// every entry after pos and, when it does, returns up to n of them (n = 0
// reads none). XINFO STREAM and XRANGE run in one MULTI, so the check and
// the read see the same stream. The stream covers pos when pos is not older
// than its first entry (the entries before that were trimmed, or the
// stream's birth marker), not newer than its last generated ID, and not
// older than its max-deleted-entry-id (XDEL). Otherwise resetID is its last
// generated ID. A missing stream is recreated with a marker whose ID is
// resetID, so a resume from resetID is complete.
//
// The first entry is the oldest position known to be complete: a client
// whose position is exactly the last trimmed entry also gets a reset,
// which is harmless; one that missed an entry always does.
func (e *Events) scanAfter(ctx context.Context, key, sessionID string, pos eventID, n int64) (scan, error) {
	if pos == maxEventID {
		n = 0 // nothing can follow it; not covered unless the stream ends there
	}
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
			if ev, kind := e.decodeEntry(st.LastEntry, sessionID); kind == entryEvent && ev.Type == EventSessionDeleted {
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
func (e *Events) redisSubscriber(ctx context.Context, sessionID string, h *hub, sub chan Event, last eventID, catchUp bool, out chan<- Event, release func()) {
	defer e.wg.Done()
	defer release()
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
			sc, err := e.scanAfter(ctx, h.key, sessionID, cursor, catchUpPage)
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
				if ev, kind := e.decodeEntry(m, sessionID); kind == entryEvent && !send(ev) {
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

// pause waits for a jittered backoff (between half of it and all of it); false when the events
// close meanwhile.
func (r *reader) pause(backoff time.Duration) bool {
	t := time.NewTimer(backoff/2 + time.Duration(mrand.Int64N(int64(backoff/2)+1)))
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-r.e.closed:
		return false
	}
}
