// Package session holds the chat-context domain of contextd: sessions, the
// context nodes inside them, per-owner short IDs ("n12") and the [Store]
// interface that the stores of record (session/sqlitestore and
// session/pgstore) implement.
//
// A [Session] belongs to one owner, and session IDs are unique per owner
// only: a session is named by its [SessionKey] (owner and ID). A [Node] is one piece of a session's
// context (a message, a note, a summary) with a role, content, metadata,
// references to other nodes of the same owner and a version kept by the
// store. Every node also gets a short ID, unique per owner, that users can
// type in chat text as "@n12"; see [ParseShortID] and [FindRefs].
package session

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
)

// Limits on what a store accepts. Validation errors name the field and the
// limit; nothing is written when a limit is exceeded.
const (
	// MaxContentBytes is the largest Node.Content, in bytes (256 KiB).
	MaxContentBytes = 256 << 10
	// MaxMetadataBytes is the largest JSON encoding of Node.Metadata, in bytes (16 KiB).
	MaxMetadataBytes = 16 << 10
	// MaxTitle is the longest Session.Title, in bytes.
	MaxTitle = 512
	// MaxRefs is the largest number of entries in Node.Refs.
	MaxRefs = 64
	// MaxIDBytes is the longest session or node ID, in bytes. IDs use only
	// the URL-safe characters A-Z, a-z, 0-9, '_' and '-'.
	MaxIDBytes = 64
	// MaxOwnerBytes is the longest owner name, in bytes.
	MaxOwnerBytes = 256
)

// Node roles. A node's Role must be one of these.
const (
	// RoleUser marks a message written by the user.
	RoleUser = "user"
	// RoleAssistant marks a message written by the assistant.
	RoleAssistant = "assistant"
	// RoleSystem marks a system prompt or instruction.
	RoleSystem = "system"
	// RoleNote marks a note attached to the session.
	RoleNote = "note"
	// RoleSummary marks a summary of other nodes.
	RoleSummary = "summary"
)

// ValidRole reports whether role is one of the Role* constants.
func ValidRole(role string) bool {
	switch role {
	case RoleUser, RoleAssistant, RoleSystem, RoleNote, RoleSummary:
		return true
	}
	return false
}

// Session is one chat session of an owner. ID is unique among the owner's
// sessions only; [Session.Key] names the session.
//
// Version starts at 1 and grows by one whenever the session or its node list
// changes (a node created, updated or deleted, the title changed), so a
// cached session entry or node list can carry the database's version.
// Timestamps are UTC with microsecond precision, set by the store.
type Session struct {
	ID        string    `json:"id"`
	Owner     string    `json:"owner"`
	Title     string    `json:"title"`
	Version   int64     `json:"version"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// Node is one piece of a session's context.
//
// ID, ShortID, Seq, Version and the timestamps are assigned by the store
// (ID only when left empty). ShortID ("n12") is unique per owner and never
// reused, also after a delete. Seq orders the nodes of one session. Version
// starts at 1 and grows by one on every update. Refs holds IDs of nodes of
// the same owner, possibly in other sessions; a ref may dangle after the
// referenced node is deleted, and readers skip such refs. Empty Metadata and
// Refs are returned as nil.
type Node struct {
	ID        string         `json:"id"`
	SessionID string         `json:"session_id"`
	Owner     string         `json:"owner"`
	ShortID   string         `json:"short_id"`
	Seq       int64          `json:"seq"`
	Role      string         `json:"role"`
	Content   string         `json:"content"`
	Metadata  map[string]any `json:"metadata,omitempty"`
	Refs      []string       `json:"refs,omitempty"`
	Version   int64          `json:"version"`
	CreatedAt time.Time      `json:"created_at"`
	UpdatedAt time.Time      `json:"updated_at"`
}

// SessionKey returns the key of n's session: its owner and SessionID.
func (n Node) SessionKey() SessionKey { return SessionKey{Owner: n.Owner, ID: n.SessionID} }

// NodeUpdate lists the fields of a node that [Store.UpdateNode] changes.
// A nil field is left as it is. A non-nil Metadata map, even an empty one,
// replaces the node's metadata; a non-nil Refs replaces its refs.
type NodeUpdate struct {
	Content  *string        `json:"content,omitempty"`
	Metadata map[string]any `json:"metadata,omitempty"`
	Refs     *[]string      `json:"refs,omitempty"`
	Role     *string        `json:"role,omitempty"`
}

// Empty reports whether u changes nothing.
func (u NodeUpdate) Empty() bool {
	return u.Content == nil && u.Metadata == nil && u.Refs == nil && u.Role == nil
}

// Apply returns n with the fields of u applied. It does not validate.
func (u NodeUpdate) Apply(n Node) Node {
	if u.Content != nil {
		n.Content = *u.Content
	}
	if u.Metadata != nil {
		n.Metadata = u.Metadata
	}
	if u.Refs != nil {
		n.Refs = *u.Refs
	}
	if u.Role != nil {
		n.Role = *u.Role
	}
	return n
}

// Validate checks the caller-supplied fields of s (ID when not empty,
// Owner, Title) and returns an error wrapping [ErrInvalid] that names the
// first bad field.
func (s Session) Validate() error {
	if s.ID != "" {
		if err := validateID("id", s.ID); err != nil {
			return err
		}
	}
	if err := validateOwner(s.Owner); err != nil {
		return err
	}
	return validateTitle(s.Title)
}

// Validate checks the caller-supplied fields of n (ID when not empty,
// SessionID, Owner, Role, Content, Metadata, Refs) against the limits and
// returns an error wrapping [ErrInvalid] that names the first bad field.
// Content must hold more than white space: chat messages, nodes added
// directly and updates all obey the same rule.
// Whether refs exist and belong to the owner is checked by the store.
func (n Node) Validate() error {
	if n.ID != "" {
		if err := validateID("id", n.ID); err != nil {
			return err
		}
	}
	if err := validateID("session_id", n.SessionID); err != nil {
		return err
	}
	if err := validateOwner(n.Owner); err != nil {
		return err
	}
	if !ValidRole(n.Role) {
		return invalidf("role", "%q is not one of user, assistant, system, note, summary", truncate(n.Role))
	}
	if err := validateText("content", n.Content, MaxContentBytes); err != nil {
		return err
	}
	if strings.TrimSpace(n.Content) == "" {
		return invalidf("content", "must not be empty")
	}
	if _, err := EncodeMetadata(n.Metadata); err != nil {
		return err
	}
	return validateRefs(n.ID, n.Refs)
}

// EncodeMetadata returns the JSON encoding stores keep for m: nil for an
// empty or nil map. It returns an error wrapping [ErrInvalid] (field
// "metadata") when m cannot be encoded, is larger than [MaxMetadataBytes]
// or contains a NUL character, which PostgreSQL cannot store.
func EncodeMetadata(m map[string]any) ([]byte, error) {
	if len(m) == 0 {
		return nil, nil
	}
	b, err := json.Marshal(m)
	if err != nil {
		return nil, invalidf("metadata", "not encodable as JSON: %v", err)
	}
	if len(b) > MaxMetadataBytes {
		return nil, invalidf("metadata", "JSON encoding is %d bytes, more than the limit of %d", len(b), MaxMetadataBytes)
	}
	if strings.Contains(string(b), `\u0000`) {
		return nil, invalidf("metadata", "contains a NUL character")
	}
	return b, nil
}

// DecodeMetadata decodes what [EncodeMetadata] produced; empty input and a
// JSON null or empty object give nil.
func DecodeMetadata(b []byte) (map[string]any, error) {
	if len(b) == 0 {
		return nil, nil
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("session: decode metadata: %w", err)
	}
	if len(m) == 0 {
		return nil, nil
	}
	return m, nil
}

// NewSessionID returns a new random session ID: "s_" and 16 hex digits.
func NewSessionID() string { return newID("s_") }

// NewNodeID returns a new random node ID: "nd_" and 16 hex digits.
func NewNodeID() string { return newID("nd_") }

func newID(prefix string) string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+).
	return prefix + hex.EncodeToString(b[:])
}

// ValidID reports whether id is a well-formed session or node ID: 1 to
// [MaxIDBytes] bytes of A-Z, a-z, 0-9, '_' and '-'.
func ValidID(id string) bool {
	if id == "" || len(id) > MaxIDBytes {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

func validateID(field, id string) error {
	if id == "" {
		return invalidf(field, "must not be empty")
	}
	if !ValidID(id) {
		return invalidf(field, "%q is not an ID (1 to %d bytes of A-Z a-z 0-9 _ -)", truncate(id), MaxIDBytes)
	}
	return nil
}

func validateOwner(owner string) error {
	if owner == "" {
		return invalidf("owner", "must not be empty")
	}
	return validateText("owner", owner, MaxOwnerBytes)
}

func validateTitle(title string) error {
	return validateText("title", title, MaxTitle)
}

// validateText checks size, UTF-8 and the absence of NUL (which PostgreSQL
// text cannot hold), so both stores accept exactly the same strings.
func validateText(field, s string, max int) error {
	if len(s) > max {
		return invalidf(field, "%d bytes, more than the limit of %d", len(s), max)
	}
	if !utf8.ValidString(s) {
		return invalidf(field, "not valid UTF-8")
	}
	if strings.IndexByte(s, 0) >= 0 {
		return invalidf(field, "contains a NUL character")
	}
	return nil
}

func validateRefs(self string, refs []string) error {
	if len(refs) > MaxRefs {
		return invalidf("refs", "%d refs, more than the limit of %d", len(refs), MaxRefs)
	}
	seen := make(map[string]struct{}, len(refs))
	for _, r := range refs {
		if !ValidID(r) {
			return invalidf("refs", "%q is not a node ID", truncate(r))
		}
		if r == self {
			return invalidf("refs", "node %q references itself", r)
		}
		if _, dup := seen[r]; dup {
			return invalidf("refs", "node %q listed twice", r)
		}
		seen[r] = struct{}{}
	}
	return nil
}

// truncate shortens s for error messages.
func truncate(s string) string {
	const max = 80
	if len(s) <= max {
		return s
	}
	return s[:max] + "…"
}
