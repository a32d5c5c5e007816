package main

import (
	"net/http"
	"strconv"
	"strings"

	"github.com/tiercache/tiercache/session"
)

// createNodeRequest is the body of POST /api/nodes. Refs are node IDs or
// short IDs ("n12", "#n12", "@n12").
type createNodeRequest struct {
	SessionID string         `json:"session_id"`
	Role      string         `json:"role"`
	Content   string         `json:"content"`
	Metadata  map[string]any `json:"metadata"`
	Refs      []string       `json:"refs"`
}

// handleCreateNode: POST /api/nodes -> 201 node, ETag "<version>".
func (s *server) handleCreateNode(w http.ResponseWriter, r *http.Request, owner string) {
	var req createNodeRequest
	if err := s.decodeBody(w, r, &req); err != nil {
		writeError(w, err)
		return
	}
	if req.Role == "" {
		req.Role = session.RoleNote
	}
	n, err := s.Service.CreateNode(r.Context(), owner, session.Node{
		SessionID: req.SessionID, Role: req.Role, Content: req.Content, Metadata: req.Metadata, Refs: req.Refs,
	})
	if err != nil {
		writeError(w, err)
		return
	}
	w.Header().Set("Location", "/api/nodes/"+n.ID)
	writeNode(w, http.StatusCreated, n)
}

func writeNode(w http.ResponseWriter, status int, n session.Node) {
	w.Header().Set("ETag", strconv.Quote(strconv.FormatInt(n.Version, 10)))
	writeJSON(w, status, n)
}

// handleGetNode: GET /api/nodes/{id} -> node, ETag "<version>".
func (s *server) handleGetNode(w http.ResponseWriter, r *http.Request, owner string) {
	id, err := pathID(r, "id", "node")
	if err != nil {
		writeError(w, err)
		return
	}
	n, err := s.Service.GetNode(r.Context(), owner, id)
	if err != nil {
		writeError(w, err)
		return
	}
	writeNode(w, http.StatusOK, n)
}

// ifMatch parses If-Match in one of its documented forms, "3", W/"3" or
// 3: the version of what (node, session), a decimal number from 1 without
// sign or leading zeros. Anything else ('3', `3`, "03", +3, "3", "4", *)
// is a 400 naming the header. Missing gives 0, false.
func ifMatch(r *http.Request, what string) (int64, bool, error) {
	raw := r.Header.Get("If-Match")
	if raw == "" {
		return 0, false, nil
	}
	v := strings.TrimSpace(raw)
	v = strings.TrimPrefix(v, "W/")
	if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
		v = v[1 : len(v)-1]
	} else if strings.HasPrefix(raw, "W/") {
		v = "" // a weak tag is always quoted
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 1 || v[0] < '1' || v[0] > '9' {
		return 0, true, &apiError{http.StatusBadRequest, "invalid_if_match", "If-Match " + quote(raw) + `: want the ` + what + ` version as "3", W/"3" or 3`}
	}
	return n, true, nil
}

// handleUpdateNode: PATCH /api/nodes/{id} with If-Match -> node; 428 without
// If-Match, 412 when it is stale (nothing changes).
func (s *server) handleUpdateNode(w http.ResponseWriter, r *http.Request, owner string) {
	id, err := pathID(r, "id", "node")
	if err != nil {
		writeError(w, err)
		return
	}
	ver, ok, err := ifMatch(r, "node")
	if err != nil {
		writeError(w, err)
		return
	}
	if !ok {
		writeError(w, &apiError{http.StatusPreconditionRequired, "if_match_required", `updates need If-Match with the node version (its ETag), like If-Match: "3"`})
		return
	}
	var upd session.NodeUpdate
	if err := s.decodeBody(w, r, &upd); err != nil {
		writeError(w, err)
		return
	}
	if upd.Empty() {
		writeError(w, &apiError{http.StatusUnprocessableEntity, "invalid_update", "update changes nothing: give content, role, metadata or refs"})
		return
	}
	n, err := s.Service.UpdateNode(r.Context(), owner, id, ver, upd)
	if err != nil {
		writeError(w, err)
		return
	}
	writeNode(w, http.StatusOK, n)
}

// handleDeleteNode: DELETE /api/nodes/{id} (If-Match optional; 412 when
// stale) -> 204.
func (s *server) handleDeleteNode(w http.ResponseWriter, r *http.Request, owner string) {
	id, err := pathID(r, "id", "node")
	if err != nil {
		writeError(w, err)
		return
	}
	ver, _, err := ifMatch(r, "node")
	if err != nil {
		writeError(w, err)
		return
	}
	if _, err := s.Service.DeleteNode(r.Context(), owner, id, ver); err != nil {
		writeError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// handleResolve: GET /api/nodes/resolve/{shortID} -> node; 400 for a
// malformed short ID, 404 for an unknown one (or another owner's).
func (s *server) handleResolve(w http.ResponseWriter, r *http.Request, owner string) {
	n, err := s.Service.Resolve(r.Context(), owner, r.PathValue("shortID"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeNode(w, http.StatusOK, n)
}
