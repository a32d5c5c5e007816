package main

import "net/http"

// warmRequest is the body of POST /api/cache/warm: session IDs, or the
// caller's Recent most recently updated sessions, or both.
type warmRequest struct {
	SessionIDs []string `json:"session_ids"`
	Recent     int      `json:"recent"`
}

// maxWarm bounds the sessions one warm request may name.
const maxWarm = 1000

// handleWarm: POST /api/cache/warm -> {"sessions","nodes","missing"}.
func (s *server) handleWarm(w http.ResponseWriter, r *http.Request, owner string) {
	var req warmRequest
	if err := s.decodeBody(w, r, &req); err != nil {
		writeError(w, err)
		return
	}
	if req.Recent < 0 || req.Recent > maxWarm || len(req.SessionIDs) > maxWarm {
		writeError(w, &apiError{http.StatusUnprocessableEntity, "invalid_warm", "recent and session_ids may name at most 1000 sessions"})
		return
	}
	if len(req.SessionIDs) == 0 && req.Recent == 0 {
		writeError(w, &apiError{http.StatusUnprocessableEntity, "invalid_warm", "give session_ids or recent"})
		return
	}
	ids := req.SessionIDs
	if req.Recent > 0 {
		recent, err := s.Service.ListSessions(r.Context(), owner, req.Recent)
		if err != nil {
			writeError(w, err)
			return
		}
		for _, ss := range recent {
			ids = append(ids, ss.ID)
		}
	}
	res, err := s.Service.Warm(r.Context(), owner, ids)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}
