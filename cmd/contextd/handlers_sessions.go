package main

import (
	"net/http"
	"strconv"

	"github.com/tiercache/tiercache/session"
)

// createSessionRequest is the body of POST /api/sessions; ID is optional
// (1-64 of A-Z a-z 0-9 _ -), generated when empty.
type createSessionRequest struct {
	ID    string `json:"id"`
	Title string `json:"title"`
}

// handleCreateSession: POST /api/sessions {"title"} -> 201 session.
func (s *server) handleCreateSession(w http.ResponseWriter, r *http.Request, owner string) {
	var req createSessionRequest
	if err := s.decodeBody(w, r, &req); err != nil {
		writeError(w, err)
		return
	}
	sess, err := s.Service.CreateSession(r.Context(), owner, req.ID, req.Title)
	if err != nil {
		writeError(w, err)
		return
	}
	w.Header().Set("Location", "/api/sessions/"+sess.ID)
	writeSession(w, http.StatusCreated, sess)
}

// writeSession writes sess with its version as ETag, like writeNode.
func writeSession(w http.ResponseWriter, status int, sess session.Session) {
	w.Header().Set("ETag", strconv.Quote(strconv.FormatInt(sess.Version, 10)))
	writeJSON(w, status, sess)
}

// handleListSessions: GET /api/sessions?limit=N -> {"sessions": [...]}.
func (s *server) handleListSessions(w http.ResponseWriter, r *http.Request, owner string) {
	limit := 0
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > session.MaxListLimit {
			writeError(w, &apiError{http.StatusBadRequest, "invalid_limit", "limit " + quote(v) + ": want 1 to " + strconv.Itoa(session.MaxListLimit)})
			return
		}
		limit = n
	}
	list, err := s.Service.ListSessions(r.Context(), owner, limit)
	if err != nil {
		writeError(w, err)
		return
	}
	if list == nil {
		list = []session.Session{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"sessions": list})
}

// handleGetSession: GET /api/sessions/{id} -> session.
func (s *server) handleGetSession(w http.ResponseWriter, r *http.Request, owner string) {
	id, err := pathID(r, "id", "session")
	if err != nil {
		writeError(w, err)
		return
	}
	sess, err := s.Service.GetSession(r.Context(), owner, id)
	if err != nil {
		writeError(w, err)
		return
	}
	writeSession(w, http.StatusOK, sess)
}

type updateSessionRequest struct {
	Title *string `json:"title"`
}

// handleUpdateSession: PATCH /api/sessions/{id} {"title"} with If-Match ->
// session, ETag "<version>"; 428 without If-Match, 412 when it is stale
// (nothing changes), as for nodes.
func (s *server) handleUpdateSession(w http.ResponseWriter, r *http.Request, owner string) {
	id, err := pathID(r, "id", "session")
	if err != nil {
		writeError(w, err)
		return
	}
	ver, ok, err := ifMatch(r, "session")
	if err != nil {
		writeError(w, err)
		return
	}
	if !ok {
		writeError(w, &apiError{http.StatusPreconditionRequired, "if_match_required", `updates need If-Match with the session version (its ETag), like If-Match: "3"`})
		return
	}
	var req updateSessionRequest
	if err := s.decodeBody(w, r, &req); err != nil {
		writeError(w, err)
		return
	}
	if req.Title == nil {
		writeError(w, &apiError{http.StatusUnprocessableEntity, "invalid_title", "title: required"})
		return
	}
	sess, err := s.Service.UpdateSession(r.Context(), owner, id, ver, *req.Title)
	if err != nil {
		writeError(w, err)
		return
	}
	writeSession(w, http.StatusOK, sess)
}

// handleDeleteSession: DELETE /api/sessions/{id} (If-Match optional; 412
// when stale, nothing deleted) -> 204.
func (s *server) handleDeleteSession(w http.ResponseWriter, r *http.Request, owner string) {
	id, err := pathID(r, "id", "session")
	if err != nil {
		writeError(w, err)
		return
	}
	ver, _, err := ifMatch(r, "session")
	if err != nil {
		writeError(w, err)
		return
	}
	if err := s.Service.DeleteSession(r.Context(), owner, id, ver); err != nil {
		writeError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// handleContext: GET /api/sessions/{id}/context -> {"session","nodes","refs"},
// with an ETag; If-None-Match with it gives 304.
func (s *server) handleContext(w http.ResponseWriter, r *http.Request, owner string) {
	id, err := pathID(r, "id", "session")
	if err != nil {
		writeError(w, err)
		return
	}
	body, etag, err := s.Service.ContextJSON(r.Context(), owner, id)
	if err != nil {
		writeError(w, err)
		return
	}
	h := w.Header()
	h.Set("ETag", etag)
	h.Set("Cache-Control", "no-cache")
	if inm := r.Header.Get("If-None-Match"); inm != "" && inm == etag {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	_, _ = w.Write(body)
}
