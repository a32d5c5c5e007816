package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"time"

	"github.com/tiercache/tiercache/session"
)

// user is one simulated chat user. It owns its sessions (most recent
// first), remembers its last nodes with their versions (only it edits
// them, so its If-Match is always current), holds one SSE stream on its
// active session (the most recent) through its home instance, and sends
// every request to the next instance in turn.
type user struct {
	r        *loadRun
	id       int
	rng      *rand.Rand
	key      string
	home     int
	next     int // the instance of the next request
	sessions []string
	nodes    []userNode // the last maxUserNodes, oldest first
	zipf     *rand.Zipf
	stream   context.CancelFunc
	streamWG chan struct{}
}

type userNode struct {
	id, short string
	version   int64
}

const maxUserNodes = 32

// The actions a user schedules, each with its own think time.
const (
	actMessage = iota
	actRead
	actEdit
	actSession
	numActs
)

func newUser(r *loadRun, id int) *user {
	u := &user{r: r, id: id, home: id % len(r.o.URLs)}
	// Each user's schedule derives from the seed and its index alone, so a
	// run with the same seed and flags repeats every user's choices.
	u.rng = rand.New(rand.NewPCG(r.o.Seed, uint64(id)))
	u.next = u.home
	if len(r.o.APIKeys) > 0 {
		u.key = r.o.APIKeys[id%len(r.o.APIKeys)]
	}
	return u
}

// draw returns a think time within sp.
func (u *user) draw(sp span) time.Duration {
	if sp.Max == sp.Min {
		return sp.Min
	}
	return sp.Min + time.Duration(u.rng.Int64N(int64(sp.Max-sp.Min)+1))
}

// url returns the base URL of the next request's instance.
func (u *user) url() string {
	base := u.r.o.URLs[u.next]
	u.next = (u.next + 1) % len(u.r.o.URLs)
	return base
}

// run is the user's life: wait for its turn in the ramp-up, open a session,
// then act until ctx ends.
func (u *user) run(ctx context.Context, start time.Duration) {
	defer u.closeStream()
	if !sleepCtx(ctx, start) {
		return
	}
	u.r.started.Add(1)
	for !u.newSession(ctx) {
		if !sleepCtx(ctx, u.draw(u.r.o.Message)) {
			return
		}
	}
	u.message(ctx) // the first message right away: a session starts with one
	now := time.Now()
	spans := [numActs]span{u.r.o.Message, u.r.o.Read, u.r.o.Edit, u.r.o.NewSession}
	var due [numActs]time.Time
	for a := range due {
		due[a] = now.Add(u.draw(spans[a]))
	}
	for ctx.Err() == nil {
		a := 0
		for b := 1; b < numActs; b++ {
			if due[b].Before(due[a]) {
				a = b
			}
		}
		if !sleepCtx(ctx, time.Until(due[a])) {
			return
		}
		switch a {
		case actMessage:
			u.message(ctx)
		case actRead:
			u.read(ctx)
		case actEdit:
			u.edit(ctx)
		case actSession:
			if len(u.sessions) < u.r.o.MaxSessions {
				u.newSession(ctx)
			}
		}
		due[a] = time.Now().Add(u.draw(spans[a]))
	}
}

// sleepCtx waits d or until ctx ends; false when ctx ended.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// pick returns one of the user's sessions, Zipf-skewed towards the most
// recent.
func (u *user) pick() string {
	if len(u.sessions) == 1 {
		return u.sessions[0]
	}
	return u.sessions[u.zipf.Uint64()]
}

// newSession creates a session, makes it the active one and moves the
// user's SSE stream to it; false when the create failed.
func (u *user) newSession(ctx context.Context) bool {
	var s session.Session
	title := fmt.Sprintf("load user %d session %d", u.id, len(u.sessions)+1)
	if !u.r.do(ctx, opSessionCreate, func(ctx context.Context) error {
		return call(ctx, u.r.client, http.MethodPost, u.url()+"/api/sessions", u.key, map[string]any{"title": title}, &s)
	}) {
		return false
	}
	u.sessions = append([]string{s.ID}, u.sessions...)
	if len(u.sessions) > 1 {
		u.zipf = rand.NewZipf(u.rng, u.r.o.Zipf, 1, uint64(len(u.sessions)-1))
	}
	u.closeStream()
	sctx, cancel := context.WithCancel(ctx)
	u.stream, u.streamWG = cancel, make(chan struct{})
	go func(done chan struct{}) {
		defer close(done)
		u.r.holdStream(sctx, u.r.o.URLs[u.home], u.key, s.ID)
	}(u.streamWG)
	return true
}

func (u *user) closeStream() {
	if u.stream != nil {
		u.stream()
		<-u.streamWG
		u.stream = nil
	}
}

// message posts a chat message to a Zipf-picked session; some reference
// one of the user's earlier nodes, in any of its sessions.
func (u *user) message(ctx context.Context) {
	sid := u.pick()
	text := u.text()
	if len(u.nodes) > 0 && u.rng.Float64() < u.r.o.RefProb {
		text += " As in @" + u.nodes[u.rng.IntN(len(u.nodes))].short + "."
	}
	var res session.ChatResult
	if u.r.do(ctx, opChat, func(ctx context.Context) error {
		return call(ctx, u.r.client, http.MethodPost, u.url()+"/api/chat", u.key, map[string]any{"session_id": sid, "content": text}, &res)
	}) {
		u.remember(userNode{id: res.Node.ID, short: res.Node.ShortID, version: res.Node.Version})
	}
}

// loadWords are the vocabulary of the messages: prose-like text, so that
// compression sees what chat text gives it, not random bytes or one
// repeated letter.
var loadWords = strings.Fields(`the a to of and in is it that for on with as this be at by from or an are
plan trip budget hotel flight train day week city museum dinner lunch morning evening price ticket book
should could would we you I they can will need want maybe also about before after near around between
question answer context session message note summary reference earlier later first second next last
cache redis instance server latency memory request response version update edit read write node user`)

// text returns a message of -message-bytes, from the user's schedule.
func (u *user) text() string {
	n := u.r.o.MsgMin
	if d := u.r.o.MsgMax - u.r.o.MsgMin; d > 0 {
		n += u.rng.IntN(d + 1)
	}
	var b strings.Builder
	b.Grow(n + 16)
	fmt.Fprintf(&b, "User %d:", u.id)
	for b.Len() < n {
		b.WriteByte(' ')
		b.WriteString(loadWords[u.rng.IntN(len(loadWords))])
	}
	return b.String()[:n]
}

func (u *user) remember(n userNode) {
	if len(u.nodes) == maxUserNodes {
		u.nodes = append(u.nodes[:0], u.nodes[1:]...)
	}
	u.nodes = append(u.nodes, n)
}

// read reads the context of a Zipf-picked session.
func (u *user) read(ctx context.Context) {
	sid := u.pick()
	var c session.Context
	u.r.do(ctx, opContextRead, func(ctx context.Context) error {
		return call(ctx, u.r.client, http.MethodGet, u.url()+"/api/sessions/"+sid+"/context", u.key, nil, &c)
	})
}

// edit changes one of the user's recent nodes with If-Match.
func (u *user) edit(ctx context.Context) {
	if len(u.nodes) == 0 {
		return
	}
	i := u.rng.IntN(len(u.nodes))
	n := u.nodes[i]
	var got session.Node
	if u.r.do(ctx, opEdit, func(ctx context.Context) error {
		var err error
		got, err = patchNode(ctx, u.r.client, u.url(), u.key, n.id, n.version, fmt.Sprintf("edited by user %d, version %d", u.id, n.version+1))
		return err
	}) {
		u.nodes[i].version = got.Version
	}
}

// do runs one request of op within the per-request timeout and records it.
// It reports whether the request succeeded; it refuses once -requests are
// spent or the run has ended. A request in flight when the run ends is not
// cancelled (that would look like a client disconnect to the server, which
// then logs failed write-throughs) but finishes within -timeout and counts.
func (r *loadRun) do(ctx context.Context, op string, f func(context.Context) error) bool {
	if ctx.Err() != nil || !r.take() {
		return false
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.o.Timeout)
	defer cancel()
	start := time.Now()
	err := f(rctx)
	d := time.Since(start)
	if err != nil {
		r.rec.fail(op, err)
		return false
	}
	r.rec.ok(op, d)
	return true
}

// take counts one request against -requests; when the budget is spent it
// stops the run and returns false.
func (r *loadRun) take() bool {
	if r.o.Requests == 0 {
		return true
	}
	if n := r.issued.Add(1); n <= r.o.Requests {
		return true
	}
	r.stop.stop("requests")
	return false
}

// holdStream keeps an SSE stream of the session open on base until ctx
// ends, reconnecting (with Last-Event-ID) when it drops; it records the
// connect latency and counts events.
func (r *loadRun) holdStream(ctx context.Context, base, key, sid string) {
	last := ""
	for ctx.Err() == nil && r.take() {
		start := time.Now()
		opened := false
		err := readEvents(ctx, r.client, base, key, sid, last, func() {
			opened = true
			r.rec.ok(opSSEConnect, time.Since(start))
			r.streams.Add(1)
		}, func(ev sseEvent) {
			last = ev.ID
			r.events.Add(1)
		})
		if opened {
			r.streams.Add(-1)
		}
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			err = fmt.Errorf("event stream of %s ended", sid)
		}
		if opened {
			r.rec.failKind(opSSEConnect, "sse dropped", err.Error())
		} else {
			r.rec.fail(opSSEConnect, err)
		}
		if !sleepCtx(ctx, time.Second) {
			return
		}
	}
}

// sseEvent is one event of a stream.
type sseEvent struct {
	ID, Type string
	Data     session.Event
}

// readEvents reads the SSE stream of session sid on base from lastID
// (empty: new events only), calling opened once the server accepted it and
// onEvent for each event, until the stream ends or ctx does. It returns
// nil when the server ended the stream.
func readEvents(ctx context.Context, client *http.Client, base, key, sid, lastID string, opened func(), onEvent func(sseEvent)) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/api/sessions/"+sid+"/events", nil)
	if err != nil {
		return err
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var body strings.Builder
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() && body.Len() < 512 {
			body.WriteString(sc.Text())
		}
		return &statusError{Method: req.Method, Path: req.URL.Path, Code: resp.StatusCode, Status: resp.Status, Body: body.String()}
	}
	opened()
	// The buffer starts small and grows for long events: 10,000 streams
	// that each started at 64 KiB held 640 MiB.
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 4<<10), 4<<20)
	var ev sseEvent
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if ev.ID != "" {
				onEvent(ev)
			}
			ev = sseEvent{}
		case strings.HasPrefix(line, "id: "):
			ev.ID = strings.TrimPrefix(line, "id: ")
		case strings.HasPrefix(line, "event: "):
			ev.Type = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			_ = json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &ev.Data)
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return sc.Err()
}
