package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/tiercache/tiercache/session"
)

// sseHeartbeat is how often an idle event stream sends a comment line, so
// proxies and clients notice dead connections.
const sseHeartbeat = 15 * time.Second

// handleEvents: GET /api/sessions/{id}/events, a text/event-stream of the
// session's change events. Each event carries its stream ID as the SSE id;
// a client resumes with Last-Event-ID (or ?last_event_id=). Past the
// subscription limits (EVENTS_MAX_SUBSCRIPTIONS, ..._PER_OWNER) it answers
// 503 too_many_subscriptions with Retry-After.
func (s *server) handleEvents(w http.ResponseWriter, r *http.Request, owner string) {
	id, err := pathID(r, "id", "session")
	if err != nil {
		writeError(w, err)
		return
	}
	last := r.Header.Get("Last-Event-ID")
	if last == "" {
		last = r.URL.Query().Get("last_event_id")
	}
	ch, err := s.Service.Subscribe(r.Context(), owner, id, last)
	if err != nil {
		if errors.Is(err, session.ErrTooManySubscriptions) {
			w.Header().Set("Retry-After", "5")
			writeError(w, &apiError{http.StatusServiceUnavailable, "too_many_subscriptions", err.Error()})
			return
		}
		if ae := toAPIError(err); ae.Status == http.StatusInternalServerError {
			err = &apiError{http.StatusServiceUnavailable, "events_unavailable", "event stream unavailable: " + err.Error()}
		}
		writeError(w, err)
		return
	}
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	_, _ = fmt.Fprint(w, ": subscribed\nretry: 1000\n\n")
	if rc.Flush() != nil {
		return
	}
	tick := time.NewTicker(sseHeartbeat)
	defer tick.Stop()
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				return
			}
			data, _ := json.Marshal(ev)
			if _, err := fmt.Fprintf(w, "id: %s\nevent: %s\ndata: %s\n\n", ev.ID, ev.Type, data); err != nil {
				return
			}
			if rc.Flush() != nil {
				return
			}
		case <-tick.C:
			if _, err := fmt.Fprint(w, ": ping\n\n"); err != nil || rc.Flush() != nil {
				return
			}
		case <-r.Context().Done():
			return
		case <-s.stopping:
			return
		}
	}
}
