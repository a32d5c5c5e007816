package session

import (
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestRingsBoundedInTotal: without Redis, the rings of many sessions stay
// within the total bound: rings without subscribers are dropped first, and
// a resume from one of their events gets a reset; a ring with a subscriber
// is kept, and its subscriber is told (reset) of what was trimmed under it.
func TestRingsBoundedInTotal(t *testing.T) {
	t.Parallel()
	e := NewEvents(nil, "b", nil)
	defer e.Close()
	e.ringMax = 1 << 20
	big := &Node{Content: strings.Repeat("x", 10<<10)}
	held := make(chan Event, 10000)
	ch, err := e.Subscribe(t.Context(), "o", "held", "")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for ev := range ch {
			held <- ev
		}
	}()
	var firstID string
	for i := range 500 {
		sid := "s" + string(rune('a'+i%26)) + strings.Repeat("z", i/26)
		if i%5 == 0 {
			sid = "held"
		}
		id, err := e.Publish(t.Context(), "o", Event{Type: EventNodeCreated, SessionID: sid, Node: big})
		if err != nil {
			t.Fatal(err)
		}
		if i == 1 {
			firstID = id
		}
		if got := e.Stats().RingBytes; got > e.ringMax+int64(eventSize(Event{Node: big})) {
			t.Fatalf("after %d publishes the rings hold %d bytes, bound %d", i+1, got, e.ringMax)
		}
	}
	st := e.Stats()
	if st.RingsDropped == 0 {
		t.Errorf("stats = %+v: no ring dropped although 500 × 10 KiB were published under a 1 MiB bound", st)
	}
	e.mu.Lock()
	_, kept := e.rings[SessionKey{Owner: "o", ID: "held"}]
	e.mu.Unlock()
	if !kept {
		t.Error("the ring with a subscriber was dropped")
	}
	// The subscriber of the held ring got every event or a reset for what it missed.
	n, resets := 0, 0
	for n+resets < 100 {
		select {
		case ev := <-held:
			if ev.Type == EventSessionReset {
				resets++
				n = 100 // a reset covers the rest
			} else {
				n++
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("held subscriber: %d events, %d resets, want 100 events or a reset", n, resets)
		}
	}
	// A resume from an event of a dropped ring is a reset.
	ch2, err := e.Subscribe(t.Context(), "o", "sb", firstID)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case ev := <-ch2:
		if ev.Type != EventSessionReset {
			t.Fatalf("resume from a dropped ring: first event %+v, want session.reset", ev)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("resume from a dropped ring: no event within 10s")
	}
}

// TestIdleRingsDropped: a ring without subscribers is dropped once it had no
// event for the idle time; one with a subscriber is kept.
func TestIdleRingsDropped(t *testing.T) {
	t.Parallel()
	e := NewEvents(nil, "i", nil)
	defer e.Close()
	var now atomic.Int64
	now.Store(time.Now().UnixNano())
	e.now = func() time.Time { return time.Unix(0, now.Load()) }
	ch, err := e.Subscribe(t.Context(), "o", "watched", "")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"s1", "s2", "s3", "watched"} {
		if _, err := e.Publish(t.Context(), "o", Event{Type: EventNodeCreated, SessionID: s}); err != nil {
			t.Fatal(err)
		}
	}
	<-ch
	now.Add(int64(EventRingIdle + time.Second))
	if _, err := e.Publish(t.Context(), "o", Event{Type: EventNodeCreated, SessionID: "s4"}); err != nil {
		t.Fatal(err)
	}
	e.mu.Lock()
	var left []string
	for k := range e.rings {
		left = append(left, k.ID)
	}
	e.mu.Unlock()
	if len(left) != 2 {
		t.Errorf("rings left after the idle time: %v, want watched and s4", left)
	}
	if st := e.Stats(); st.RingsDropped != 3 || st.RingBytes != int64(2*eventSize(Event{})) {
		t.Errorf("stats = %+v, want 3 rings dropped and two events' bytes", st)
	}
}

// TestRingBornInTheMillisecondOfAnEarlierEvent: a ring born in the very millisecond in which an
// earlier ring (another process, before a restart) gave out an event: a resume from that event
// starts with a reset, and a resume from the reset's ID does not. (A ring's first event in a new
// millisecond once took sequence 0, the ID of a ring's birth, and the resume waited for events
// after it: the reset never came.)
func TestRingBornInTheMillisecondOfAnEarlierEvent(t *testing.T) {
	t.Parallel()
	frozen := time.UnixMilli(1_800_000_000_000)
	clock := func() time.Time { return frozen }
	before := NewEvents(nil, "r", nil)
	before.now = func() time.Time { return frozen.Add(-time.Millisecond) } // the ring is born
	if _, err := before.Publish(t.Context(), "o", Event{Type: EventNodeUpdated, SessionID: "s"}); err != nil {
		t.Fatal(err)
	}
	before.now = clock // its next event is the first of a new millisecond
	old, err := before.Publish(t.Context(), "o", Event{Type: EventNodeUpdated, SessionID: "s"})
	if err != nil {
		t.Fatal(err)
	}
	before.Close()

	e := NewEvents(nil, "r", nil)
	defer e.Close()
	e.now = clock // born in the millisecond of old
	ch, err := e.Subscribe(t.Context(), "o", "s", old)
	if err != nil {
		t.Fatal(err)
	}
	var reset Event
	select {
	case reset = <-ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("resume from %s, an event of an earlier ring: no event within 10s, want a reset", old)
	}
	if reset.Type != EventSessionReset || reset.ID == old {
		t.Fatalf("resume from %s: first event %+v, want a session.reset with another ID", old, reset)
	}
	next, err := e.Publish(t.Context(), "o", Event{Type: EventNodeUpdated, SessionID: "s"})
	if err != nil {
		t.Fatal(err)
	}
	ch2, err := e.Subscribe(t.Context(), "o", "s", reset.ID)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-ch2:
		if got.ID != next || got.Type != EventNodeUpdated {
			t.Fatalf("resume from the reset's ID %s: first event %+v, want %s", reset.ID, got, next)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("resume from the reset's ID %s: no event within 10s", reset.ID)
	}
}
