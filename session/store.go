package session

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Sentinel errors returned by stores, wrapped with detail; test with
// [errors.Is].
var (
	// ErrNotFound reports a missing session, node or short ID, and also one
	// that belongs to another owner (stores never reveal that it exists).
	ErrNotFound = errors.New("session: not found")
	// ErrVersionMismatch reports a conditional update or delete whose
	// expected version is not the current one. The error is a
	// *[VersionMismatchError] carrying the current version.
	ErrVersionMismatch = errors.New("session: version mismatch")
	// ErrInvalid reports bad input. The error is an *[InvalidError] naming
	// the field.
	ErrInvalid = errors.New("session: invalid input")
	// ErrExists reports a create with a caller-chosen ID that is taken: a
	// session ID the same owner already uses (session IDs are unique per
	// owner, so another owner's sessions never cause it), or a node ID
	// (node IDs are unique across owners).
	ErrExists = errors.New("session: already exists")
	// ErrLimit reports a write refused because it would take something
	// past a configured limit, such as the nodes of one session. The error
	// is a *[LimitError].
	ErrLimit = errors.New("session: limit reached")
)

// DefaultMaxNodesPerSession is the number of nodes one session may hold
// when [ServiceOptions.MaxNodesPerSession] is zero.
const DefaultMaxNodesPerSession = 10000

// LimitError is the error for a write past a limit: What names what is
// limited ("nodes per session"), Limit its value and ID the session. It
// matches [ErrLimit] under [errors.Is].
type LimitError struct {
	What  string
	ID    string
	Limit int
}

// Error returns "session: <ID> holds the limit of <Limit> <What>".
func (e *LimitError) Error() string {
	return fmt.Sprintf("session: session %q already holds the limit of %d %s", e.ID, e.Limit, e.What)
}

// Is reports whether target is [ErrLimit].
func (e *LimitError) Is(target error) bool { return target == ErrLimit }

// InvalidError is the error for bad input: Field names the offending field
// (for example "title", "metadata", "refs", "short_id") and Reason says what
// is wrong with it. It matches [ErrInvalid] under [errors.Is].
type InvalidError struct {
	Field  string
	Reason string
}

// Error returns "session: invalid <field>: <reason>".
func (e *InvalidError) Error() string {
	return "session: invalid " + e.Field + ": " + e.Reason
}

// Is reports whether target is [ErrInvalid].
func (e *InvalidError) Is(target error) bool { return target == ErrInvalid }

func invalidf(field, format string, args ...any) error {
	return &InvalidError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// Invalidf returns an *[InvalidError] for field with a formatted reason; for
// store implementations and callers that validate their own input.
func Invalidf(field, format string, args ...any) error {
	return invalidf(field, format, args...)
}

// VersionMismatchError is the error for a conditional write whose expected
// version is stale. It matches [ErrVersionMismatch] under [errors.Is].
type VersionMismatchError struct {
	Kind    string // "node" (also when empty) or "session"
	ID      string // the node or session ID
	Want    int64  // the version the caller expected
	Current int64  // the version the store holds
}

// What returns Kind, "node" when empty.
func (e *VersionMismatchError) What() string {
	if e.Kind == "" {
		return "node"
	}
	return e.Kind
}

// Error returns a message naming the node or session and both versions.
func (e *VersionMismatchError) Error() string {
	return fmt.Sprintf("session: version mismatch: %s %q is at version %d, not %d", e.What(), e.ID, e.Current, e.Want)
}

// Is reports whether target is [ErrVersionMismatch].
func (e *VersionMismatchError) Is(target error) bool { return target == ErrVersionMismatch }

// SessionKey identifies one session: session IDs are unique per owner, so
// two owners may each have a session "trip", and only the pair names one.
type SessionKey struct {
	Owner string
	ID    string
}

// Key returns the key of s.
func (s Session) Key() SessionKey { return SessionKey{Owner: s.Owner, ID: s.ID} }

// NodeList is the ordered list of a session's node IDs together with the
// session's version at the moment it was read, so a cache can store the list
// under the database's version.
type NodeList struct {
	Owner     string   `json:"owner"`
	SessionID string   `json:"session_id"`
	Version   int64    `json:"version"`
	NodeIDs   []string `json:"node_ids"` // in Seq order; never nil
}

// DefaultPingTimeout bounds [Store.Ping] when its context has no deadline.
const DefaultPingTimeout = 2 * time.Second

// List limits for [Store.ListSessions] and [Store.RecentSessions].
const (
	// DefaultListLimit is used when limit <= 0.
	DefaultListLimit = 100
	// MaxListLimit caps limit.
	MaxListLimit = 10000
)

// ListLimit returns the limit a store applies for a requested limit:
// [DefaultListLimit] for limit <= 0, at most [MaxListLimit].
func ListLimit(limit int) int {
	switch {
	case limit <= 0:
		return DefaultListLimit
	case limit > MaxListLimit:
		return MaxListLimit
	}
	return limit
}

// Store is the store of record for sessions and nodes. It is batch-first, so
// a cache in front of it can load all its misses in one call, and
// owner-scoped: calls that take an owner return [ErrNotFound] for another
// owner's data. Session IDs are unique per owner (a session is named by its
// [SessionKey]), short IDs too, and node IDs across all owners. The batch
// reads of sessions (GetSessions, SessionNodeIDs) take session keys; the
// batch read of nodes by ID (GetNodes) takes no owner, and the caller
// filters on the returned Owner fields.
//
// Implementations are safe for concurrent use, also by several processes
// sharing one database. Every write is atomic: on error nothing is written.
// Validation errors wrap [ErrInvalid]; stale versions [ErrVersionMismatch].
// Returned values are fresh copies the caller may keep and modify.
type Store interface {
	// CreateSession stores s with a new ID (unless s.ID is set; an ID that
	// s.Owner already uses gives ErrExists, one that only other owners use
	// does not), Version 1 and both timestamps set to now.
	CreateSession(ctx context.Context, s Session) (Session, error)
	// GetSession returns the owner's session id, or ErrNotFound, also when
	// the session belongs to another owner.
	GetSession(ctx context.Context, owner, id string) (Session, error)
	// GetSessions returns the sessions with the given keys, which may name
	// several owners; missing ones are absent from the map.
	GetSessions(ctx context.Context, keys []SessionKey) (map[SessionKey]Session, error)
	// ListSessions returns up to limit of the owner's sessions, most
	// recently updated first (see [ListLimit]).
	ListSessions(ctx context.Context, owner string, limit int) ([]Session, error)
	// RecentSessions returns up to limit sessions of all owners, most
	// recently updated first, for warming a cache at start-up; callers
	// name each by its Key, as IDs may repeat across owners.
	RecentSessions(ctx context.Context, limit int) ([]Session, error)
	// UpdateSession sets the title of the owner's session when ifVersion
	// is its current Version (0 means unconditional) and bumps its Version
	// and UpdatedAt. A stale ifVersion gives a *VersionMismatchError (Kind
	// "session") and changes nothing.
	UpdateSession(ctx context.Context, owner, id string, ifVersion int64, title string) (Session, error)
	// DeleteSession deletes the owner's session and all its nodes when
	// ifVersion is its current Version (0 means unconditional), and returns
	// the deleted nodes in Seq order so a cache can drop their entries and
	// short IDs. A stale ifVersion gives a *VersionMismatchError (Kind
	// "session") and deletes nothing. Refs in other sessions to the deleted
	// nodes are left dangling.
	DeleteSession(ctx context.Context, owner, id string, ifVersion int64) ([]Node, error)

	// CreateNode appends n to session n.SessionID, which must belong to
	// n.Owner (else ErrNotFound). It assigns ID (when empty), ShortID from
	// the owner's sequence, Seq, Version 1 and timestamps, checks that every
	// ref names an existing node of the same owner (else ErrInvalid naming
	// the ref), and bumps the session's Version and UpdatedAt, all in one
	// transaction. When maxNodes > 0 and the session already holds maxNodes
	// nodes it writes nothing and returns a *LimitError; the count is taken
	// inside the transaction after the session row is locked, so concurrent
	// creates, from any number of processes, never exceed it.
	CreateNode(ctx context.Context, n Node, maxNodes int) (Node, error)
	// GetNodes returns the nodes with the given IDs, any owner; missing IDs
	// are absent from the map.
	GetNodes(ctx context.Context, ids []string) (map[string]Node, error)
	// SessionNodeIDs returns, for each given session key, its node IDs in
	// Seq order with the session's version. Missing sessions are absent; a
	// session with no nodes has an empty list.
	SessionNodeIDs(ctx context.Context, keys []SessionKey) (map[SessionKey]NodeList, error)
	// UpdateNode applies upd to the owner's node id when ifVersion is its
	// current version (0 means unconditional), increments Version and bumps
	// the session's Version and UpdatedAt. A stale ifVersion gives a
	// *VersionMismatchError and changes nothing; an empty update is invalid.
	UpdateNode(ctx context.Context, owner, id string, ifVersion int64, upd NodeUpdate) (Node, error)
	// DeleteNode deletes the owner's node id when ifVersion is its current
	// version (0 means unconditional), bumps the session's Version and
	// UpdatedAt, and returns the deleted node. Its short ID is not reused.
	DeleteNode(ctx context.Context, owner, id string, ifVersion int64) (Node, error)
	// ResolveShortID returns the owner's node with the given short ID
	// ("n12", "#n12" or "@n12"), searching all the owner's sessions.
	// A malformed short ID gives ErrInvalid, an unknown one ErrNotFound.
	ResolveShortID(ctx context.Context, owner, shortID string) (Node, error)
	// ResolveShortIDs is the batch form of ResolveShortID: the map is keyed
	// by normalized short ID ("n12"); unknown ones are absent. Any malformed
	// short ID gives ErrInvalid naming it.
	ResolveShortIDs(ctx context.Context, owner string, shortIDs []string) (map[string]Node, error)

	// Ping checks that the database answers, within ctx (and at most
	// [DefaultPingTimeout] when ctx has no deadline). The error names the
	// store. It fails after Close.
	Ping(ctx context.Context) error

	// Close releases the store's connections. It is safe to call more than
	// once; calls after Close fail.
	Close() error
}
