package main

import (
	"net/http"
	"strings"
	"unicode/utf8"
)

// chatRequest is the body of POST /api/chat. An empty SessionID starts a new
// session titled after the message.
type chatRequest struct {
	SessionID string         `json:"session_id"`
	Role      string         `json:"role"`
	Content   string         `json:"content"`
	Metadata  map[string]any `json:"metadata"`
}

// handleChat: POST /api/chat -> 201 {"node", "context"}.
func (s *server) handleChat(w http.ResponseWriter, r *http.Request, owner string) {
	var req chatRequest
	if err := s.decodeBody(w, r, &req); err != nil {
		writeError(w, err)
		return
	}
	if strings.TrimSpace(req.Content) == "" {
		writeError(w, &apiError{http.StatusUnprocessableEntity, "invalid_content", "content: must not be empty"})
		return
	}
	if req.SessionID == "" {
		// Validate before creating the session, so a bad message stores nothing.
		if err := s.Service.ValidateChat(r.Context(), owner, req.Role, req.Content, req.Metadata); err != nil {
			writeError(w, err)
			return
		}
		sess, err := s.Service.CreateSession(r.Context(), owner, "", titleOf(req.Content))
		if err != nil {
			writeError(w, err)
			return
		}
		req.SessionID = sess.ID
	}
	res, err := s.Service.Chat(r.Context(), owner, req.SessionID, req.Role, req.Content, req.Metadata)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, res)
}

// titleOf makes a session title from the first line of a message.
func titleOf(text string) string {
	line, _, _ := strings.Cut(strings.TrimSpace(text), "\n")
	const max = 80
	if len(line) > max {
		line = line[:max]
		for !utf8.ValidString(line) {
			line = line[:len(line)-1]
		}
		line += "…"
	}
	return line
}
