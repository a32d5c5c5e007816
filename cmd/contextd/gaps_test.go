package main

import (
	"net/http"
	"strings"
	"testing"

	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/session"
)

// TestSessionIfMatch: sessions take If-Match like nodes: an ETag on
// create, GET and PATCH; PATCH needs If-Match (428 without), a stale one is
// 412 naming the current version and changes nothing; DELETE takes an
// optional If-Match (412 when stale, nothing deleted).
func TestSessionIfMatch(t *testing.T) {
	t.Parallel()
	for name, db := range stores(t) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			in := startInstance(t, instanceOptions{Database: db(t)})
			var s session.Session
			r := must(t, in.URL, req{Method: "POST", Path: "/api/sessions", Body: map[string]any{"title": "t1"}}, http.StatusCreated, &s)
			if et := r.Header.Get("ETag"); et != `"1"` {
				t.Errorf("POST ETag = %q, want \"1\"", et)
			}
			path := "/api/sessions/" + s.ID
			chat(t, in.URL, "", s.ID, "a node bumps the session to version 2")
			r = must(t, in.URL, req{Method: "GET", Path: path}, http.StatusOK, nil)
			if et := r.Header.Get("ETag"); et != `"2"` {
				t.Fatalf("GET ETag = %q, want \"2\"", et)
			}

			r = do(t, in.URL, req{Method: "PATCH", Path: path, Body: map[string]any{"title": "no precondition"}})
			if r.Status != http.StatusPreconditionRequired || r.errCode(t) != "if_match_required" {
				t.Errorf("PATCH without If-Match = %d %s, want 428 if_match_required", r.Status, r.Body)
			}
			r = do(t, in.URL, req{Method: "PATCH", Path: path, Header: map[string]string{"If-Match": "two"}, Body: map[string]any{"title": "x"}})
			if r.Status != http.StatusBadRequest || r.errCode(t) != "invalid_if_match" || !strings.Contains(string(r.Body), "session version") {
				t.Errorf("PATCH with If-Match two = %d %s, want 400 invalid_if_match naming the session version", r.Status, r.Body)
			}
			r = do(t, in.URL, req{Method: "PATCH", Path: path, Header: map[string]string{"If-Match": `"1"`}, Body: map[string]any{"title": "stale"}})
			if r.Status != http.StatusPreconditionFailed || r.errCode(t) != "version_mismatch" ||
				!strings.Contains(string(r.Body), `session \"`+s.ID+`\" is at version 2, not 1`) {
				t.Errorf("PATCH with stale If-Match = %d %s, want 412 version_mismatch naming session %s at version 2", r.Status, r.Body, s.ID)
			}
			var got session.Session
			must(t, in.URL, req{Method: "GET", Path: path}, http.StatusOK, &got)
			if got.Title != "t1" || got.Version != 2 {
				t.Fatalf("session after refused PATCH = %+v, want title t1 at version 2", got)
			}

			var upd session.Session
			r = must(t, in.URL, req{Method: "PATCH", Path: path, Header: map[string]string{"If-Match": `W/"2"`}, Body: map[string]any{"title": "t3"}}, http.StatusOK, &upd)
			if upd.Title != "t3" || upd.Version != 3 || r.Header.Get("ETag") != `"3"` {
				t.Errorf("PATCH = %+v with ETag %q, want title t3, version 3, ETag \"3\"", upd, r.Header.Get("ETag"))
			}
			if r := do(t, in.URL, req{Method: "PATCH", Path: "/api/sessions/s_missing", Header: map[string]string{"If-Match": `"1"`}, Body: map[string]any{"title": "x"}}); r.Status != http.StatusNotFound {
				t.Errorf("PATCH of a missing session = %d %s, want 404", r.Status, r.Body)
			}

			r = do(t, in.URL, req{Method: "DELETE", Path: path, Header: map[string]string{"If-Match": `"2"`}})
			if r.Status != http.StatusPreconditionFailed || r.errCode(t) != "version_mismatch" || !strings.Contains(string(r.Body), "at version 3, not 2") {
				t.Errorf("DELETE with stale If-Match = %d %s, want 412 naming version 3", r.Status, r.Body)
			}
			if c := getContext(t, in.URL, "", s.ID); len(c.Nodes) != 1 || c.Session.Version != 3 {
				t.Fatalf("context after refused DELETE: %d nodes, version %d; want 1 node, version 3", len(c.Nodes), c.Session.Version)
			}
			must(t, in.URL, req{Method: "DELETE", Path: path, Header: map[string]string{"If-Match": `"3"`}}, http.StatusNoContent, nil)
			must(t, in.URL, req{Method: "GET", Path: path}, http.StatusNotFound, nil)
		})
	}
}

// TestReadyzChecksDatabase: /readyz answers 503 with a JSON error naming
// the database once the store cannot answer a ping; /livez and /healthz stay 200.
func TestReadyzChecksDatabase(t *testing.T) {
	t.Parallel()
	for name, db := range stores(t) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			in := startInstance(t, instanceOptions{Database: db(t)})
			must(t, in.URL, req{Method: "GET", Path: "/readyz"}, http.StatusOK, nil)
			if err := in.app.store.Close(); err != nil { // the database is gone
				t.Fatal(err)
			}
			r := do(t, in.URL, req{Method: "GET", Path: "/readyz"})
			if r.Status != http.StatusServiceUnavailable || r.errCode(t) != "database_unavailable" ||
				!strings.Contains(string(r.Body), "database ("+name+")") {
				t.Errorf("/readyz with the database closed = %d %s, want 503 database_unavailable naming the %s database", r.Status, r.Body, name)
			}
			var body struct{ Status string }
			r.decode(t, &body)
			if body.Status != "not ready" {
				t.Errorf("/readyz status = %q, want \"not ready\"", body.Status)
			}
			must(t, in.URL, req{Method: "GET", Path: "/livez"}, http.StatusOK, nil)
			must(t, in.URL, req{Method: "GET", Path: "/healthz"}, http.StatusOK, nil)
		})
	}
}

// TestHealthzNeedsNeitherRedisNorDatabase: with Redis killed and the
// database closed, /livez and /healthz are still 200 and /readyz 503.
func TestHealthzNeedsNeitherRedisNorDatabase(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t)
	in := startInstance(t, instanceOptions{Redis: rs})
	rs.Kill(t)
	if err := in.app.store.Close(); err != nil {
		t.Fatal(err)
	}
	must(t, in.URL, req{Method: "GET", Path: "/livez"}, http.StatusOK, nil)
	must(t, in.URL, req{Method: "GET", Path: "/healthz"}, http.StatusOK, nil)
	must(t, in.URL, req{Method: "GET", Path: "/readyz"}, http.StatusServiceUnavailable, nil)
}

// TestReadyzRedisIsSoft: Redis is a soft dependency of readiness. With
// Redis killed, once the health probe has seen it down (so /readyz judges a
// degraded cache, not the last healthy probe), /readyz is 200 and reports
// the degraded cache, /livez is 200, and a context read is still answered;
// after a restart /readyz reports the cache healthy again.
func TestReadyzRedisIsSoft(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t)
	in := startInstance(t, instanceOptions{Redis: rs})
	s := createSession(t, in.URL, "", "s")
	chat(t, in.URL, "", s.ID, "before the kill")
	readyz := func() (int, string) {
		r := do(t, in.URL, req{Method: "GET", Path: "/readyz"})
		var body struct{ Status, Cache string }
		r.decode(t, &body)
		return r.Status, body.Cache
	}
	if code, cache := readyz(); code != http.StatusOK || cache != "healthy" {
		t.Fatalf("/readyz with Redis up = %d, cache %q; want 200, healthy", code, cache)
	}
	rs.Kill(t)
	eventually(t, "the health probe to see Redis down", func() bool {
		_, cache := readyz()
		return cache == "degraded"
	})
	if code, _ := readyz(); code != http.StatusOK {
		t.Errorf("/readyz with Redis down = %d, want 200 (Redis is a soft dependency)", code)
	}
	must(t, in.URL, req{Method: "GET", Path: "/livez"}, http.StatusOK, nil)
	if got := getContext(t, in.URL, "", s.ID); len(got.Nodes) != 1 {
		t.Errorf("context with Redis down: %d nodes, want 1", len(got.Nodes))
	}
	rs.Restart(t)
	eventually(t, "/readyz to report the cache healthy after Redis restarts", func() bool {
		code, cache := readyz()
		return code == http.StatusOK && cache == "healthy"
	})
}

// TestSSEResumePastRetainedIsReset: over HTTP, a Last-Event-ID the server
// no longer covers starts the stream with a session.reset whose ID is a
// complete resume point; a covered one replays without a reset.
func TestSSEResumePastRetainedIsReset(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t)
	for name, o := range map[string]instanceOptions{"memory": {}, "redis": {Redis: rs}} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			in := startInstance(t, o)
			s := createSession(t, in.URL, "", "resume")
			live, _ := subscribe(t, in.URL, "", s.ID, "")
			chat(t, in.URL, "", s.ID, "one")
			first := nextEvent(t, live)
			chat(t, in.URL, "", s.ID, "two")
			second := nextEvent(t, live)

			// Covered: no reset.
			ch, stop := subscribe(t, in.URL, "", s.ID, first.ID)
			if ev := nextEvent(t, ch); ev.Type != session.EventNodeCreated || ev.ID != second.ID {
				t.Errorf("resume from %s: first event %s %s, want node.created %s", first.ID, ev.Type, ev.ID, second.ID)
			}
			stop()

			// An ID from before anything retained (another process's, or
			// trimmed long ago): reset first, then live events.
			ch, stop = subscribe(t, in.URL, "", s.ID, "1000-0")
			reset := nextEvent(t, ch)
			if reset.Type != session.EventSessionReset || reset.Data.Type != session.EventSessionReset || reset.Data.SessionID != s.ID || reset.ID != second.ID {
				t.Fatalf("resume from 1000-0: first event %+v, want session.reset with ID %s", reset, second.ID)
			}
			chat(t, in.URL, "", s.ID, "three")
			third := nextEvent(t, ch)
			if third.Type != session.EventNodeCreated {
				t.Fatalf("event after the reset = %s, want node.created", third.Type)
			}
			stop()
			ch, _ = subscribe(t, in.URL, "", s.ID, reset.ID)
			if ev := nextEvent(t, ch); ev.ID != third.ID || ev.Type != session.EventNodeCreated {
				t.Errorf("resume from the reset ID: first event %s %s, want node.created %s", ev.Type, ev.ID, third.ID)
			}
		})
	}
}

// TestSSEResetAfterRedisOutage: a change made while Redis is down cannot
// be published; once Redis is back, a subscriber connected before the
// outage receives a session.reset, and the instance reports no session
// waiting for one.
func TestSSEResetAfterRedisOutage(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t)
	in := startInstance(t, instanceOptions{Redis: rs, L2Timeout: -1})
	s := createSession(t, in.URL, "", "outage")
	ch, _ := subscribe(t, in.URL, "", s.ID, "")
	chat(t, in.URL, "", s.ID, "before")
	if ev := nextEvent(t, ch); ev.Type != session.EventNodeCreated {
		t.Fatalf("event before the outage = %s, want node.created", ev.Type)
	}
	rs.Kill(t)
	chat(t, in.URL, "", s.ID, "written while Redis was down")
	if st := in.app.svc.Stats().Events; st.PublishErrors == 0 || st.LostSessions != 1 {
		t.Fatalf("event stats during the outage = %+v, want a publish error and 1 lost session", st)
	}
	rs.Restart(t)
	for {
		ev := nextEvent(t, ch)
		if ev.Type == session.EventSessionReset {
			if ev.Data.SessionID != s.ID || ev.ID == "" {
				t.Fatalf("reset = %+v, want one of session %s with an ID", ev, s.ID)
			}
			break
		}
		t.Logf("before the reset: %s %s", ev.Type, ev.ID)
	}
	eventually(t, "no session waiting for a reset", func() bool {
		st := in.app.svc.Stats().Events
		return st.LostSessions == 0 && st.RecoveryResets >= 1
	})
	// The context a client refetches holds the change.
	if c := getContext(t, in.URL, "", s.ID); len(c.Nodes) != 2 {
		t.Errorf("context after the outage: %d nodes, want 2", len(c.Nodes))
	}
}
