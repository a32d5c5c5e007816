package session

import (
	"context"
	"fmt"
	"time"
)

// --- chat --------------------------------------------------------------------

// ChatResult is what Chat returns: the appended node and the session's
// context after it.
type ChatResult struct {
	Node    Node    `json:"node"`
	Context Context `json:"context"`
}

// Chat appends a message node with role (default "user") and text to
// owner's session sessionID, resolving every "@n12" reference in text (see
// [FindRefs]) into the node's Refs. Unknown references give an
// *UnknownRefsError naming them all, and nothing is stored. It returns the
// node and the assembled context.
func (s *Service) Chat(ctx context.Context, owner, sessionID, role, text string, metadata map[string]any) (ChatResult, error) {
	defer s.latency.since("chat", time.Now())
	if !ValidID(sessionID) {
		return ChatResult{}, fmt.Errorf("%w: session %q", ErrNotFound, truncate(sessionID))
	}
	n, refs, err := chatNode(owner, sessionID, role, text, metadata)
	if err != nil {
		return ChatResult{}, err
	}
	if _, err := s.session(ctx, owner, sessionID); err != nil {
		return ChatResult{}, err
	}
	ids, err := s.resolveRefList(ctx, owner, refs)
	if err != nil {
		return ChatResult{}, err
	}
	n.Refs = ids
	created, err := s.createNode(ctx, n)
	if err != nil {
		return ChatResult{}, err
	}
	c, err := s.context(ctx, owner, sessionID)
	if err != nil {
		return ChatResult{}, err
	}
	return ChatResult{Node: created, Context: c}, nil
}

// ValidateChat checks a chat message as Chat would, without a session:
// role, content and metadata against the limits, and every "@n12" reference
// against owner's nodes (an *UnknownRefsError names the unknown ones). It
// lets a caller that creates a session for the message fail before storing
// anything.
func (s *Service) ValidateChat(ctx context.Context, owner, role, text string, metadata map[string]any) error {
	_, refs, err := chatNode(owner, "s_validate", role, text, metadata)
	if err != nil {
		return err
	}
	_, err = s.resolveRefList(ctx, owner, refs)
	return err
}

// chatNode returns the message node Chat stores (role defaults to "user")
// and the "@n12" references found in text, unresolved; an error when there
// are more than MaxRefs or the node is not valid.
func chatNode(owner, sessionID, role, text string, metadata map[string]any) (Node, []string, error) {
	if role == "" {
		role = RoleUser
	}
	refs := FindRefs(text)
	if len(refs) > MaxRefs {
		return Node{}, nil, Invalidf("refs", "%d references, more than the limit of %d", len(refs), MaxRefs)
	}
	n := Node{SessionID: sessionID, Owner: owner, Role: role, Content: text, Metadata: metadata}
	if err := n.Validate(); err != nil {
		return Node{}, nil, err
	}
	return n, refs, nil
}
