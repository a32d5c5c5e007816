package session

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"

	"github.com/tiercache/tiercache"
)

// Cache key prefixes. Node entries ("node:<id>") are versioned by
// Node.Version, session entries ("sess:<owner>:<id>") and node lists
// ("list:<owner>:<id>") by Session.Version, so a fill from the database can
// never replace a newer write; short-ID entries map "sid:<owner>:<n12>" to a
// node ID and change only when the node is deleted. Node IDs are unique
// across owners; session IDs and short IDs only per owner, so their keys
// name the owner (see ownedKey). The cache escapes what Redis needs escaped.
const (
	keyNode    = "node:"
	keyList    = "list:"
	keySession = "sess:"
	keyShortID = "sid:"
)

// Service defaults applied by [NewService] to zero fields of [ServiceOptions].
const (
	// DefaultActiveWindow is how long a session counts as active after use.
	DefaultActiveWindow = 15 * time.Minute
	// DefaultWarmConcurrency is the number of warming batches run at once.
	DefaultWarmConcurrency = 4
	// DefaultWarmBatch is the number of sessions per warming batch.
	DefaultWarmBatch = 64
)

// CacheVersion returns n.Version, so a node loaded through the cache is
// stored under the database's version.
func (n Node) CacheVersion() uint64 { return uint64(n.Version) }

// CacheVersion returns s.Version.
func (s Session) CacheVersion() uint64 { return uint64(s.Version) }

// CacheVersion returns l.Version, the session's version when l was read.
func (l NodeList) CacheVersion() uint64 { return uint64(l.Version) }

// ServiceOptions configure a [Service]. Store and Cache are required.
type ServiceOptions struct {
	// Store is the store of record. The Service does not close it.
	Store Store
	// Cache holds node entries, node lists, sessions and the short-ID index.
	// The Service does not close it.
	Cache *tiercache.Cache
	// Redis carries change events (a capped stream per session). Nil keeps
	// events in an in-memory ring per session: subscribers on this process
	// only. Usually the client the Cache uses.
	Redis redis.UniversalClient
	// Namespace prefixes the event stream keys; default
	// tiercache.DefaultNamespace. Use the Cache's namespace.
	Namespace string
	// ActiveWindow is how long a session counts as active after it was last
	// read or written. Default 15 min.
	ActiveWindow time.Duration
	// WarmConcurrency bounds the batches Warm loads at once. Default 4.
	WarmConcurrency int
	// WarmBatch is the number of sessions per warming batch. Default 64.
	WarmBatch int
	// Logger receives cache fallbacks and event publishing failures.
	// Default slog.Default().
	Logger *slog.Logger
	// MaxNodesPerSession is the most nodes one session may hold; a create
	// past it (chat or node) gives a *LimitError and stores nothing. The
	// Store enforces it in the create's transaction, so it holds across
	// instances. Default DefaultMaxNodesPerSession (10000); negative: no
	// limit.
	MaxNodesPerSession int
}

// Service is the chat-context service: sessions and nodes read through a
// two-tier cache in front of a Store, with write-through on every change and
// change events for subscribers. Every method is scoped to an owner: another
// owner's sessions, nodes and short IDs are reported as ErrNotFound and never
// appear in a context.
//
// Writes go to the Store first; the cache entries they affect are then
// written through (or deleted) with the database's version, so this instance
// reads its own writes and, through the cache's invalidation, every instance
// converges. A cache write that fails after the Store write succeeded is
// logged and counted, not returned: the Store is the record. When the cache
// cannot reach Redis, reads fall back to the Store.
//
// Values returned by the Service (nodes, sessions, contexts) may be shared
// with the cache and other callers: do not modify them.
//
// A Service is safe for concurrent use.
type Service struct {
	store    Store
	nodes    *tiercache.TypedCache[Node]
	lists    *tiercache.TypedCache[NodeList]
	sessions *tiercache.TypedCache[Session]
	sids     *tiercache.TypedCache[string]
	events   *Events
	log      *slog.Logger

	activeWindow time.Duration
	warmConc     int
	warmBatch    int
	maxNodes     int // 0: no limit

	active     sync.Map // SessionKey -> *atomic.Int64 (unix nanoseconds of the last touch)
	encoded    *encodedCache
	activeAdds atomic.Uint64
	latency    latencySet
	fallbacks  atomic.Uint64 // reads served from the Store because the cache failed
	cacheErrs  atomic.Uint64 // write-throughs that failed after the Store write
	invalid    atomic.Uint64 // cache entries that were no valid record of their key (cachecheck.go)
}

// NewService returns a Service over opts.Store and opts.Cache. It returns an
// error naming the missing option. It does no I/O.
func NewService(opts ServiceOptions) (*Service, error) {
	if opts.Store == nil {
		return nil, errors.New("session: NewService: Store is nil")
	}
	if opts.Cache == nil {
		return nil, errors.New("session: NewService: Cache is nil")
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.ActiveWindow <= 0 {
		opts.ActiveWindow = DefaultActiveWindow
	}
	if opts.WarmConcurrency <= 0 {
		opts.WarmConcurrency = DefaultWarmConcurrency
	}
	if opts.WarmBatch <= 0 {
		opts.WarmBatch = DefaultWarmBatch
	}
	if opts.Namespace == "" {
		opts.Namespace = tiercache.DefaultNamespace
	}
	switch {
	case opts.MaxNodesPerSession == 0:
		opts.MaxNodesPerSession = DefaultMaxNodesPerSession
	case opts.MaxNodesPerSession < 0:
		opts.MaxNodesPerSession = 0
	}
	s := &Service{
		store:        opts.Store,
		events:       NewEvents(opts.Redis, opts.Namespace, opts.Logger),
		log:          opts.Logger,
		activeWindow: opts.ActiveWindow,
		warmConc:     opts.WarmConcurrency,
		warmBatch:    opts.WarmBatch,
		maxNodes:     opts.MaxNodesPerSession,
		encoded:      &encodedCache{seed: maphash.MakeSeed()},
	}
	s.nodes = tiercache.Typed(opts.Cache, checked(tiercache.JSON[Node](), &s.invalid, checkNodeEntry))
	s.lists = tiercache.Typed(opts.Cache, checked(tiercache.JSON[NodeList](), &s.invalid, checkListEntry))
	s.sessions = tiercache.Typed(opts.Cache, checked(tiercache.JSON[Session](), &s.invalid, checkSessionEntry))
	s.sids = tiercache.Typed(opts.Cache, checked(tiercache.String(), &s.invalid, checkShortIDEntry))
	return s, nil
}

// Close stops the event subscriptions of this Service; it closes neither the
// Store nor the Cache. It is safe to call more than once.
func (s *Service) Close() error {
	s.events.Close()
	return nil
}

// Ping checks that the Store answers (see [Store.Ping]); for readiness
// checks. It never touches the cache or Redis.
func (s *Service) Ping(ctx context.Context) error { return s.store.Ping(ctx) }

// Events returns the Service's event bus.
func (s *Service) Events() *Events { return s.events }

// Context is a session's context: its nodes in order plus the nodes they
// reference that are not in the session (one level deep, same owner only,
// in order of first reference). Dangling references are skipped.
type Context struct {
	Session Session `json:"session"`
	Nodes   []Node  `json:"nodes"`
	Refs    []Node  `json:"refs"`
}

// UnknownRefsError reports "@n12" references in chat text that name no node
// of the owner. It matches [ErrInvalid] under [errors.Is].
type UnknownRefsError struct {
	ShortIDs []string // canonical short IDs, in order of appearance
}

// Error names every unknown short ID.
func (e *UnknownRefsError) Error() string {
	return "session: unknown references: @" + strings.Join(e.ShortIDs, ", @")
}

// Is reports whether target is [ErrInvalid].
func (e *UnknownRefsError) Is(target error) bool { return target == ErrInvalid }

// --- sessions -------------------------------------------------------------

// CreateSession creates a session of owner with title and caches it with an
// empty node list. An empty id gets a new random ID; a caller-chosen id that
// owner already uses gives ErrExists. Session IDs are unique per owner:
// another owner's session with the same ID is neither revealed nor touched.
func (s *Service) CreateSession(ctx context.Context, owner, id, title string) (Session, error) {
	defer s.latency.since("create_session", time.Now())
	sess, err := s.store.CreateSession(ctx, Session{ID: id, Owner: owner, Title: title})
	if err != nil {
		return Session{}, err
	}
	k := sess.Key()
	s.touch(k)
	s.cacheSession(ctx, sess)
	s.cacheWrite("list", listKey(k), s.lists.Set(ctx, listKey(k),
		NodeList{Owner: sess.Owner, SessionID: sess.ID, Version: sess.Version, NodeIDs: []string{}}, tiercache.Version(uint64(sess.Version))))
	return sess, nil
}

// GetSession returns owner's session id through the cache, or ErrNotFound.
func (s *Service) GetSession(ctx context.Context, owner, id string) (Session, error) {
	defer s.latency.since("get_session", time.Now())
	return s.session(ctx, owner, id)
}

// session reads a session through the cache and checks its owner.
func (s *Service) session(ctx context.Context, owner, id string) (Session, error) {
	if !ValidID(id) {
		return Session{}, fmt.Errorf("%w: session %q", ErrNotFound, truncate(id))
	}
	k := SessionKey{Owner: owner, ID: id}
	load := func(ctx context.Context, key string) (Session, error) {
		m, err := s.store.GetSessions(ctx, []SessionKey{k})
		if err != nil {
			return Session{}, err
		}
		v, ok := m[k]
		if !ok {
			return Session{}, tiercache.ErrNotFound
		}
		return v, nil
	}
	sess, err := getOrLoad(ctx, s, s.sessions, sessionKey(k), load)
	if err == nil {
		sess, err = rebindOne(ctx, s, s.sessions, "session", sessionKey(k), sess, func(v Session) string {
			if v.Key() != k {
				return fmt.Sprintf("holds session %q of another owner or ID", v.ID)
			}
			return ""
		}, load)
	}
	if err != nil || sess.Owner != owner || sess.ID != id {
		if err == nil || errors.Is(err, tiercache.ErrNotFound) {
			return Session{}, fmt.Errorf("%w: session %q", ErrNotFound, id)
		}
		return Session{}, err
	}
	return sess, nil
}

// ListSessions returns up to limit of owner's sessions, most recently
// updated first, from the Store.
func (s *Service) ListSessions(ctx context.Context, owner string, limit int) ([]Session, error) {
	defer s.latency.since("list_sessions", time.Now())
	return s.store.ListSessions(ctx, owner, limit)
}

// UpdateSession sets the title of owner's session id when ifVersion is its
// current version (0: unconditional) and writes the session through the
// cache. A stale ifVersion gives a *VersionMismatchError (Kind "session")
// and changes nothing.
func (s *Service) UpdateSession(ctx context.Context, owner, id string, ifVersion int64, title string) (Session, error) {
	defer s.latency.since("update_session", time.Now())
	if !ValidID(id) {
		return Session{}, fmt.Errorf("%w: session %q", ErrNotFound, truncate(id))
	}
	sess, err := s.store.UpdateSession(ctx, owner, id, ifVersion, title)
	if err != nil {
		return Session{}, err
	}
	s.touch(sess.Key())
	s.cacheSession(ctx, sess)
	return sess, nil
}

// DeleteSession deletes owner's session id with all its nodes when
// ifVersion is its current version (0: unconditional), drops their cache
// entries (nodes, short IDs, the node list and the session) and publishes a
// session.deleted event. A stale ifVersion gives a *VersionMismatchError
// (Kind "session") and deletes nothing.
func (s *Service) DeleteSession(ctx context.Context, owner, id string, ifVersion int64) error {
	defer s.latency.since("delete_session", time.Now())
	if !ValidID(id) {
		return fmt.Errorf("%w: session %q", ErrNotFound, truncate(id))
	}
	deleted, err := s.store.DeleteSession(ctx, owner, id, ifVersion)
	if err != nil {
		return err
	}
	for _, n := range deleted {
		s.dropNode(ctx, n)
	}
	// The session never comes back, so automatic (clock) versions are safe
	// for its tombstones: they refuse every later fill of the old entries.
	k := SessionKey{Owner: owner, ID: id}
	s.cacheWrite("list", listKey(k), s.lists.Delete(ctx, listKey(k)))
	s.cacheWrite("session", sessionKey(k), s.sessions.Delete(ctx, sessionKey(k)))
	s.active.Delete(k)
	s.publish(ctx, owner, Event{Type: EventSessionDeleted, SessionID: id})
	return nil
}

// --- nodes ----------------------------------------------------------------

// CreateNode appends n to session n.SessionID of owner (n.Owner is set to
// owner). Refs may be node IDs or short IDs ("n12", "#n12", "@n12"); short
// IDs are resolved first, and an unknown one gives an *UnknownRefsError.
// The node, its short ID, the node list and the session are written through
// the cache and a node.created event is published.
func (s *Service) CreateNode(ctx context.Context, owner string, n Node) (Node, error) {
	defer s.latency.since("create_node", time.Now())
	n.Owner = owner
	if !ValidID(n.SessionID) {
		return Node{}, fmt.Errorf("%w: session %q", ErrNotFound, truncate(n.SessionID))
	}
	refs, err := s.resolveRefList(ctx, owner, n.Refs)
	if err != nil {
		return Node{}, err
	}
	n.Refs = refs
	return s.createNode(ctx, n)
}

func (s *Service) createNode(ctx context.Context, n Node) (Node, error) {
	created, err := s.store.CreateNode(ctx, n, s.maxNodes)
	if err != nil {
		return Node{}, err
	}
	s.touch(created.SessionKey())
	s.cacheWrite("node", keyNode+created.ID, s.nodes.Set(ctx, keyNode+created.ID, created, tiercache.Version(uint64(created.Version))))
	s.cacheWrite("short id", s.sidKey(created.Owner, created.ShortID), s.sids.Set(ctx, s.sidKey(created.Owner, created.ShortID), created.ID))
	s.refreshSession(ctx, created.SessionKey())
	s.publish(ctx, created.Owner, Event{Type: EventNodeCreated, SessionID: created.SessionID, NodeID: created.ID,
		ShortID: created.ShortID, Version: created.Version, Node: &created})
	return created, nil
}

// GetNode returns owner's node id through the cache, or ErrNotFound.
func (s *Service) GetNode(ctx context.Context, owner, id string) (Node, error) {
	defer s.latency.since("get_node", time.Now())
	return s.node(ctx, owner, id)
}

func (s *Service) node(ctx context.Context, owner, id string) (Node, error) {
	if !ValidID(id) {
		return Node{}, fmt.Errorf("%w: node %q", ErrNotFound, truncate(id))
	}
	load := func(ctx context.Context, key string) (Node, error) {
		m, err := s.store.GetNodes(ctx, []string{id})
		if err != nil {
			return Node{}, err
		}
		v, ok := m[id]
		if !ok {
			return Node{}, tiercache.ErrNotFound
		}
		return v, nil
	}
	n, err := getOrLoad(ctx, s, s.nodes, keyNode+id, load)
	if err == nil {
		n, err = rebindOne(ctx, s, s.nodes, "node", keyNode+id, n, func(v Node) string { return nodeBound(keyNode+id, v) }, load)
	}
	if err != nil || n.Owner != owner {
		if err == nil || errors.Is(err, tiercache.ErrNotFound) {
			return Node{}, fmt.Errorf("%w: node %q", ErrNotFound, id)
		}
		return Node{}, err
	}
	s.touch(n.SessionKey())
	return n, nil
}

// UpdateNode applies upd to owner's node id when ifVersion is its current
// version (0: unconditional). A stale ifVersion gives a
// *VersionMismatchError and changes nothing. Refs in upd may be node IDs or
// short IDs. The node, node list and session are written through and a
// node.updated event is published.
func (s *Service) UpdateNode(ctx context.Context, owner, id string, ifVersion int64, upd NodeUpdate) (Node, error) {
	defer s.latency.since("update_node", time.Now())
	if !ValidID(id) {
		return Node{}, fmt.Errorf("%w: node %q", ErrNotFound, truncate(id))
	}
	if upd.Refs != nil {
		refs, err := s.resolveRefList(ctx, owner, *upd.Refs)
		if err != nil {
			return Node{}, err
		}
		upd.Refs = &refs
	}
	n, err := s.store.UpdateNode(ctx, owner, id, ifVersion, upd)
	if err != nil {
		return Node{}, err
	}
	s.touch(n.SessionKey())
	s.cacheWrite("node", keyNode+n.ID, s.nodes.Set(ctx, keyNode+n.ID, n, tiercache.Version(uint64(n.Version))))
	s.refreshSession(ctx, n.SessionKey())
	s.publish(ctx, owner, Event{Type: EventNodeUpdated, SessionID: n.SessionID, NodeID: n.ID, ShortID: n.ShortID, Version: n.Version, Node: &n})
	return n, nil
}

// DeleteNode deletes owner's node id when ifVersion is its current version
// (0: unconditional), drops its node and short-ID entries, rewrites the node
// list and publishes a node.deleted event. It returns the deleted node.
func (s *Service) DeleteNode(ctx context.Context, owner, id string, ifVersion int64) (Node, error) {
	defer s.latency.since("delete_node", time.Now())
	if !ValidID(id) {
		return Node{}, fmt.Errorf("%w: node %q", ErrNotFound, truncate(id))
	}
	n, err := s.store.DeleteNode(ctx, owner, id, ifVersion)
	if err != nil {
		return Node{}, err
	}
	s.touch(n.SessionKey())
	s.dropNode(ctx, n)
	s.refreshSession(ctx, n.SessionKey())
	s.publish(ctx, owner, Event{Type: EventNodeDeleted, SessionID: n.SessionID, NodeID: n.ID, ShortID: n.ShortID, Version: n.Version + 1})
	return n, nil
}

// dropNode deletes a deleted node's cache entries. The node tombstone
// carries Version+1 so that a fill of the last live version, read before the
// delete, is refused.
func (s *Service) dropNode(ctx context.Context, n Node) {
	s.cacheWrite("node", keyNode+n.ID, s.nodes.Delete(ctx, keyNode+n.ID, tiercache.Version(uint64(n.Version+1))))
	s.cacheWrite("short id", s.sidKey(n.Owner, n.ShortID), s.sids.Delete(ctx, s.sidKey(n.Owner, n.ShortID)))
}

// refreshSession rereads a session and its node list from the Store after a
// change and writes both through the cache under the database's version.
func (s *Service) refreshSession(ctx context.Context, k SessionKey) {
	lists, err := s.store.SessionNodeIDs(ctx, []SessionKey{k})
	if err == nil {
		if l, ok := lists[k]; ok {
			s.cacheWrite("list", listKey(k), s.lists.Set(ctx, listKey(k), l, tiercache.Version(uint64(l.Version))))
		}
	}
	sessions, err2 := s.store.GetSessions(ctx, []SessionKey{k})
	if err2 == nil {
		if sess, ok := sessions[k]; ok {
			s.cacheSession(ctx, sess)
		}
	}
	if err := errors.Join(err, err2); err != nil {
		// The entries may now be stale until they expire; drop this
		// instance's copies at least.
		s.cacheErrs.Add(1)
		s.log.Warn("session: reread after write failed; evicting cached list and session", "owner", k.Owner, "session", k.ID, "err", err)
		_ = s.lists.Delete(ctx, listKey(k), tiercache.SkipL1())
		_ = s.sessions.Delete(ctx, sessionKey(k), tiercache.SkipL1())
	}
}

func (s *Service) cacheSession(ctx context.Context, sess Session) {
	k := sessionKey(sess.Key())
	s.cacheWrite("session", k, s.sessions.Set(ctx, k, sess, tiercache.Version(uint64(sess.Version))))
}

// cacheWrite logs a failed write-through. A stale-version refusal means a
// newer value is already cached, which is what we want.
func (s *Service) cacheWrite(what, key string, err error) {
	if err == nil || errors.Is(err, tiercache.ErrStaleVersion) {
		return
	}
	s.cacheErrs.Add(1)
	s.log.Warn("session: cache write-through failed; the store holds the change", "entry", what, "key", key, "err", err)
}

func (s *Service) sidKey(owner, shortID string) string {
	return ownedKey(keyShortID, owner, shortID)
}

// ownedKey is the cache key prefix + "<owner>:<id>" of something whose ID
// is unique per owner only (a session, a node list, a short ID). IDs never
// contain ':', so the ID is what follows the last ':' and no two (owner,
// ID) pairs share a key, whatever the owner holds; the cache escapes
// characters Redis keys cannot hold in a hash tag.
func ownedKey(prefix, owner, id string) string {
	return prefix + owner + ":" + id
}

// sessionKey is the cache key of session k's entry: "sess:<owner>:<id>".
func sessionKey(k SessionKey) string { return ownedKey(keySession, k.Owner, k.ID) }

// listKey is the cache key of session k's node list: "list:<owner>:<id>".
func listKey(k SessionKey) string { return ownedKey(keyList, k.Owner, k.ID) }

// --- short IDs ------------------------------------------------------------

// Resolve returns owner's node with the short ID written as "n12", "#n12" or
// "@n12", searching all the owner's sessions. A malformed short ID gives
// ErrInvalid (field "short_id"), an unknown one ErrNotFound.
func (s *Service) Resolve(ctx context.Context, owner, shortID string) (Node, error) {
	defer s.latency.since("resolve", time.Now())
	sid, err := NormalizeShortID(shortID)
	if err != nil {
		return Node{}, err
	}
	m, err := s.resolveShortIDs(ctx, owner, []string{sid})
	if err != nil {
		return Node{}, err
	}
	n, ok := m[sid]
	if !ok {
		return Node{}, fmt.Errorf("%w: short ID %q", ErrNotFound, sid)
	}
	return n, nil
}

// resolveShortIDs maps canonical short IDs of owner to nodes: one batch get
// of the index, one batch load of its misses, then one batch get of the
// nodes. Unknown short IDs are absent.
func (s *Service) resolveShortIDs(ctx context.Context, owner string, sids []string) (map[string]Node, error) {
	if len(sids) == 0 {
		return map[string]Node{}, nil
	}
	keys := make([]string, len(sids))
	for i, id := range sids {
		keys[i] = s.sidKey(owner, id)
	}
	// resolve resolves index keys with the store; keep, when not nil,
	// receives the nodes it found.
	resolve := func(ctx context.Context, missing []string, keep map[string]Node) (map[string]string, error) {
		want := make([]string, len(missing))
		for i, k := range missing {
			want[i] = k[strings.LastIndexByte(k, ':')+1:]
		}
		found, err := s.store.ResolveShortIDs(ctx, owner, want)
		if err != nil {
			return nil, err
		}
		out := make(map[string]string, len(found))
		for sid, n := range found {
			out[s.sidKey(owner, sid)] = n.ID
			if keep != nil {
				keep[n.ID] = n
			}
		}
		return out, nil
	}
	idx, err := getOrLoadMany(ctx, s, s.sids, keys, func(ctx context.Context, missing []string) (map[string]string, error) {
		return resolve(ctx, missing, nil)
	})
	if err != nil {
		return nil, err
	}
	nodeIDs := make([]string, 0, len(idx))
	for _, id := range idx {
		nodeIDs = append(nodeIDs, id)
	}
	nodes, err := s.nodesByID(ctx, nodeIDs)
	if err != nil {
		return nil, err
	}
	// The index entry is checked against the node itself: one that names a
	// missing node, a node of another owner or one with another short ID is
	// dropped and the short ID resolved by the store, so a bad entry never
	// hides the node nor returns the wrong one.
	bound := func(k string, id string) string {
		n, ok := nodes[id]
		if !ok {
			return fmt.Sprintf("names node %q, which does not exist", id)
		}
		if n.Owner != owner || s.sidKey(owner, n.ShortID) != k {
			return fmt.Sprintf("names node %q of another owner or short ID", id)
		}
		return ""
	}
	fromStore := make(map[string]Node)
	if idx, err = rebind(ctx, s, s.sids, "short id", idx, bound, func(ctx context.Context, bad []string) (map[string]string, error) {
		return resolve(ctx, bad, fromStore)
	}); err != nil {
		return nil, err
	}
	for id, n := range fromStore {
		nodes[id] = n
	}
	out := make(map[string]Node, len(sids))
	for i, sid := range sids {
		id, ok := idx[keys[i]]
		if !ok {
			continue
		}
		if n, ok := nodes[id]; ok && n.Owner == owner && n.ShortID == sid {
			out[sid] = n
		}
	}
	return out, nil
}

// resolveRefList turns refs given as node IDs or short IDs into node IDs,
// resolving all short IDs in one batch; unknown short IDs give an
// *UnknownRefsError naming them all. Node IDs are passed on for the Store to
// check.
func (s *Service) resolveRefList(ctx context.Context, owner string, refs []string) ([]string, error) {
	// sids[i] is refs[i] as a canonical short ID, "" for a node ID.
	sids := make([]string, len(refs))
	var want []string
	for i, r := range refs {
		if looksShort(r) {
			sid, err := NormalizeShortID(r)
			if err != nil {
				return nil, err
			}
			sids[i] = sid
			want = append(want, sid)
		}
	}
	if len(want) == 0 {
		return refs, nil
	}
	found, err := s.resolveShortIDs(ctx, owner, want)
	if err != nil {
		return nil, err
	}
	var unknown []string
	out := make([]string, 0, len(refs))
	for i, r := range refs {
		sid := sids[i]
		if sid == "" {
			out = append(out, r)
			continue
		}
		n, ok := found[sid]
		if !ok {
			unknown = append(unknown, sid)
			continue
		}
		out = append(out, n.ID)
	}
	if len(unknown) > 0 {
		return nil, &UnknownRefsError{ShortIDs: unknown}
	}
	return out, nil
}

// looksShort reports whether a ref is written as a short ID rather than a
// node ID: "#…", "@…" or "n" followed by digits only.
func looksShort(r string) bool {
	if strings.HasPrefix(r, "#") || strings.HasPrefix(r, "@") {
		return true
	}
	if len(r) < 2 || r[0] != 'n' {
		return false
	}
	for i := 1; i < len(r); i++ {
		if r[i] < '0' || r[i] > '9' {
			return false
		}
	}
	return true
}

// --- chat and context -------------------------------------------------------

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

// Context assembles owner's session sessionID: the session and its node
// list through the cache, then one batch get of the listed nodes (one batch
// load of the misses), then one batch get of the nodes they reference that
// are not in the session, keeping only the owner's.
func (s *Service) Context(ctx context.Context, owner, sessionID string) (Context, error) {
	defer s.latency.since("context", time.Now())
	return s.context(ctx, owner, sessionID)
}

func (s *Service) context(ctx context.Context, owner, sessionID string) (Context, error) {
	sess, err := s.session(ctx, owner, sessionID)
	if err != nil {
		return Context{}, err
	}
	k := sess.Key()
	s.touch(k)
	loadList := func(ctx context.Context, key string) (NodeList, error) {
		m, err := s.store.SessionNodeIDs(ctx, []SessionKey{k})
		if err != nil {
			return NodeList{}, err
		}
		l, ok := m[k]
		if !ok {
			return NodeList{}, tiercache.ErrNotFound
		}
		return l, nil
	}
	list, err := getOrLoad(ctx, s, s.lists, listKey(k), loadList)
	if err == nil {
		list, err = rebindOne(ctx, s, s.lists, "list", listKey(k), list, func(l NodeList) string { return listBound(k, l) }, loadList)
	}
	if err != nil {
		if errors.Is(err, tiercache.ErrNotFound) {
			return Context{}, fmt.Errorf("%w: session %q", ErrNotFound, sessionID)
		}
		return Context{}, err
	}
	keys := nodeKeys(list.NodeIDs)
	nodes, err := s.nodesByKey(ctx, keys)
	if err != nil {
		return Context{}, err
	}
	c := Context{Session: sess, Nodes: make([]Node, 0, len(keys)), Refs: []Node{}}
	hasRefs := false
	for i := range keys {
		n, ok := nodes[keys[i]]
		if !ok || n.Owner != owner || n.SessionID != sessionID {
			continue // deleted since the list was cached, or not this session's
		}
		c.Nodes = append(c.Nodes, n)
		hasRefs = hasRefs || len(n.Refs) > 0
	}
	if !hasRefs {
		return c, nil
	}
	// Referenced nodes not in the session, one level, each once, in order of
	// first reference.
	seen := make(map[string]struct{}, len(c.Nodes))
	for _, n := range c.Nodes {
		seen[n.ID] = struct{}{}
	}
	var refIDs []string
	for _, n := range c.Nodes {
		for _, r := range n.Refs {
			if _, ok := seen[r]; ok {
				continue
			}
			seen[r] = struct{}{}
			refIDs = append(refIDs, r)
		}
	}
	if len(refIDs) > 0 {
		refKeys := nodeKeys(refIDs)
		refs, err := s.nodesByKey(ctx, refKeys)
		if err != nil {
			return Context{}, err
		}
		for i := range refKeys {
			if n, ok := refs[refKeys[i]]; ok && n.Owner == owner {
				c.Refs = append(c.Refs, n)
			}
		}
	}
	return c, nil
}

// nodeKeys returns the cache keys of node IDs.
func nodeKeys(ids []string) []string {
	keys := make([]string, len(ids))
	for i, id := range ids {
		keys[i] = keyNode + id
	}
	return keys
}

// nodesByKey returns the nodes with the given cache keys ("node:<id>"), any
// owner, keyed by cache key, from the cache with one batch load of the
// misses. Missing nodes are absent.
func (s *Service) nodesByKey(ctx context.Context, keys []string) (map[string]Node, error) {
	if len(keys) == 0 {
		return map[string]Node{}, nil
	}
	if out, ok := s.nodesFromL1(ctx, keys); ok {
		return out, nil
	}
	load := func(ctx context.Context, missing []string) (map[string]Node, error) {
		want := make([]string, len(missing))
		for i, k := range missing {
			want[i] = strings.TrimPrefix(k, keyNode)
		}
		found, err := s.store.GetNodes(ctx, want)
		if err != nil {
			return nil, err
		}
		out := make(map[string]Node, len(found))
		for id, n := range found {
			out[keyNode+id] = n
		}
		return out, nil
	}
	m, err := getOrLoadMany(ctx, s, s.nodes, keys, load)
	if err != nil {
		return nil, err
	}
	return rebind(ctx, s, s.nodes, "node", m, nodeBound, load)
}

// nodeBound says why node n is not the record of cache key "node:<id>", or
// "" when it is.
func nodeBound(key string, n Node) string {
	if id, ok := strings.CutPrefix(key, keyNode); !ok || id != n.ID { // no concatenation: this runs on L1 hits
		return fmt.Sprintf("holds node %q", n.ID)
	}
	return ""
}

// listBound says why l is not the node list of session k, or "".
func listBound(k SessionKey, l NodeList) string {
	if l.Owner != k.Owner || l.SessionID != k.ID {
		return fmt.Sprintf("holds the node list of session %q of another owner or ID", l.SessionID)
	}
	return ""
}

// nodesFromL1 is the fast path of a warm read: when L1 holds every key it
// returns them through Get's allocation-free L1 path (which counts the
// hits), skipping the batch machinery. It reports false, having counted
// nothing, when any key is missing; a key evicted between the check and
// the Get is read from Redis by Get, and any error also reports false.
func (s *Service) nodesFromL1(ctx context.Context, keys []string) (map[string]Node, bool) {
	for _, k := range keys {
		if _, ok := s.nodes.Peek(k); !ok {
			return nil, false
		}
	}
	out := make(map[string]Node, len(keys))
	for _, k := range keys {
		n, err := s.nodes.Get(ctx, k)
		if err != nil || nodeBound(k, n) != "" {
			return nil, false
		}
		out[k] = n
	}
	return out, true
}

// nodesByID is nodesByKey keyed by node ID.
func (s *Service) nodesByID(ctx context.Context, ids []string) (map[string]Node, error) {
	m, err := s.nodesByKey(ctx, nodeKeys(ids))
	if err != nil {
		return nil, err
	}
	out := make(map[string]Node, len(m))
	for k, n := range m {
		out[strings.TrimPrefix(k, keyNode)] = n
	}
	return out, nil
}

// --- cache fallbacks ----------------------------------------------------------

// loaderError marks an error returned by a loader, so it is told apart from
// a cache (Redis) failure.
type loaderError struct{ err error }

func (e *loaderError) Error() string { return e.err.Error() }
func (e *loaderError) Unwrap() error { return e.err }

// getOrLoad reads key through tc. When the cache itself fails (Redis
// unreachable, closed) it calls load directly, so reads keep being answered
// from the Store; loader errors are returned unchanged.
func getOrLoad[V any](ctx context.Context, s *Service, tc *tiercache.TypedCache[V], key string, load func(context.Context, string) (V, error)) (V, error) {
	v, err := tc.GetOrLoad(ctx, key, func(ctx context.Context, k string) (V, error) {
		v, err := load(ctx, k)
		if err != nil && !errors.Is(err, tiercache.ErrNotFound) {
			err = &loaderError{err}
		}
		return v, err
	})
	var le *loaderError
	switch {
	case err == nil:
		return v, nil
	case errors.Is(err, tiercache.ErrStale):
		// Fail-safe: the store failed or was slow and the cache served its
		// last value; usable, and counted by the cache (Stats.StaleServed).
		return v, nil
	case errors.As(err, &le):
		return v, le.err
	case errors.Is(err, tiercache.ErrNotFound) || ctx.Err() != nil:
		return v, err
	}
	s.fallback(key, err)
	return load(ctx, key)
}

// getOrLoadMany is the batch form of getOrLoad: on a cache failure it keeps
// what L1 returned and loads the rest from the Store.
func getOrLoadMany[V any](ctx context.Context, s *Service, tc *tiercache.TypedCache[V], keys []string, load func(context.Context, []string) (map[string]V, error)) (map[string]V, error) {
	var loadErr error
	out, err := tc.GetOrLoadMany(ctx, keys, func(ctx context.Context, missing []string) (map[string]V, error) {
		m, err := load(ctx, missing)
		loadErr = err
		return m, err
	})
	if err == nil {
		return out, nil
	}
	if loadErr != nil || ctx.Err() != nil {
		return nil, err
	}
	s.fallback(keys[0], err)
	var missing []string
	for _, k := range keys {
		if _, ok := out[k]; !ok {
			missing = append(missing, k)
		}
	}
	if out == nil {
		out = make(map[string]V, len(keys))
	}
	if len(missing) == 0 {
		return out, nil
	}
	m, err := load(ctx, missing)
	if err != nil {
		return nil, err
	}
	for k, v := range m {
		out[k] = v
	}
	return out, nil
}

// fallback counts a read served by the Store because the cache failed, and
// logs the first of every 1000.
func (s *Service) fallback(key string, err error) {
	if s.fallbacks.Add(1)%1000 == 1 {
		s.log.Warn("session: cache unavailable, reading from the store", "key", key, "err", err)
	}
}

// --- warming ------------------------------------------------------------------

// WarmResult counts what Warm loaded into (or found in) the cache.
type WarmResult struct {
	Sessions int `json:"sessions"` // sessions found and warmed
	Nodes    int `json:"nodes"`    // node entries warmed
	Missing  int `json:"missing"`  // session IDs not found (or not the owner's)
}

// Warm fills the cache (both tiers) with owner's sessions sessionIDs, their
// node lists and nodes, in batches of WarmBatch sessions, WarmConcurrency
// batches at once; each batch costs three pipelined cache reads and at most
// three batch loads. Session IDs are unique per owner only: IDs owner has no
// session under count as missing, also when another owner uses them. An
// empty owner gives ErrInvalid (field "owner"); [Service.WarmRecent] warms
// the sessions of all owners.
func (s *Service) Warm(ctx context.Context, owner string, sessionIDs []string) (WarmResult, error) {
	if owner == "" {
		return WarmResult{}, invalidf("owner", "must not be empty: Warm warms one owner's sessions")
	}
	keys := make([]SessionKey, len(sessionIDs))
	for i, id := range sessionIDs {
		keys[i] = SessionKey{Owner: owner, ID: id}
	}
	return s.warm(ctx, keys)
}

// warm is Warm for sessions of any owners, each named by its key.
func (s *Service) warm(ctx context.Context, keys []SessionKey) (WarmResult, error) {
	defer s.latency.since("warm", time.Now())
	var (
		mu  sync.Mutex
		res WarmResult
	)
	keys = slices.Compact(slices.SortedFunc(slices.Values(keys), func(a, b SessionKey) int {
		return cmp.Or(strings.Compare(a.Owner, b.Owner), strings.Compare(a.ID, b.ID))
	}))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(s.warmConc)
	for batch := range slices.Chunk(keys, s.warmBatch) {
		g.Go(func() error {
			r, err := s.warmBatchOf(gctx, batch)
			mu.Lock()
			res.Sessions += r.Sessions
			res.Nodes += r.Nodes
			res.Missing += r.Missing
			mu.Unlock()
			return err
		})
	}
	err := g.Wait()
	return res, err
}

func (s *Service) warmBatchOf(ctx context.Context, keys []SessionKey) (WarmResult, error) {
	var res WarmResult
	// byKey maps the cache keys of this batch's sessions and node lists
	// back to their session keys, for the loaders.
	byKey := make(map[string]SessionKey, 2*len(keys))
	var skeys []string
	for _, k := range keys {
		if !ValidID(k.ID) || k.Owner == "" {
			res.Missing++
			continue
		}
		byKey[sessionKey(k)], byKey[listKey(k)] = k, k
		skeys = append(skeys, sessionKey(k))
	}
	if len(skeys) == 0 {
		return res, nil
	}
	want := func(missing []string) []SessionKey {
		out := make([]SessionKey, len(missing))
		for i, ck := range missing {
			out[i] = byKey[ck]
		}
		return out
	}
	loadSessions := func(ctx context.Context, missing []string) (map[string]Session, error) {
		found, err := s.store.GetSessions(ctx, want(missing))
		if err != nil {
			return nil, err
		}
		out := make(map[string]Session, len(found))
		for k, v := range found {
			out[sessionKey(k)] = v
		}
		return out, nil
	}
	sessions, err := getOrLoadMany(ctx, s, s.sessions, skeys, loadSessions)
	if err == nil {
		sessions, err = rebind(ctx, s, s.sessions, "session", sessions, func(ck string, v Session) string {
			if v.Key() != byKey[ck] {
				return fmt.Sprintf("holds session %q of another owner or ID", v.ID)
			}
			return ""
		}, loadSessions)
	}
	if err != nil {
		return res, fmt.Errorf("session: warm sessions: %w", err)
	}
	var lkeys []string
	for _, sk := range skeys {
		k := byKey[sk]
		sess, ok := sessions[sk]
		if !ok || sess.Key() != k {
			res.Missing++
			continue
		}
		lkeys = append(lkeys, listKey(k))
	}
	if len(lkeys) == 0 {
		return res, nil
	}
	loadLists := func(ctx context.Context, missing []string) (map[string]NodeList, error) {
		found, err := s.store.SessionNodeIDs(ctx, want(missing))
		if err != nil {
			return nil, err
		}
		out := make(map[string]NodeList, len(found))
		for k, v := range found {
			out[listKey(k)] = v
		}
		return out, nil
	}
	lists, err := getOrLoadMany(ctx, s, s.lists, lkeys, loadLists)
	if err == nil {
		lists, err = rebind(ctx, s, s.lists, "list", lists, func(ck string, l NodeList) string { return listBound(byKey[ck], l) }, loadLists)
	}
	if err != nil {
		return res, fmt.Errorf("session: warm node lists: %w", err)
	}
	var nodeIDs []string
	for _, l := range lists {
		res.Sessions++
		nodeIDs = append(nodeIDs, l.NodeIDs...)
	}
	nodes, err := s.nodesByID(ctx, nodeIDs)
	if err != nil {
		return res, fmt.Errorf("session: warm nodes: %w", err)
	}
	res.Nodes = len(nodes)
	return res, nil
}

// WarmRecent warms the n most recently updated sessions of all owners; for
// start-up. n <= 0 warms nothing.
func (s *Service) WarmRecent(ctx context.Context, n int) (WarmResult, error) {
	if n <= 0 {
		return WarmResult{}, nil
	}
	recent, err := s.store.RecentSessions(ctx, n)
	if err != nil {
		return WarmResult{}, fmt.Errorf("session: warm recent: %w", err)
	}
	keys := make([]SessionKey, len(recent))
	for i, r := range recent {
		keys[i] = r.Key()
	}
	return s.warm(ctx, keys)
}

// --- figures --------------------------------------------------------------------

// touch records that session k was used now.
func (s *Service) touch(k SessionKey) {
	now := time.Now().UnixNano()
	if v, ok := s.active.Load(k); ok {
		v.(*atomic.Int64).Store(now)
		return
	}
	v := new(atomic.Int64)
	v.Store(now)
	if _, loaded := s.active.LoadOrStore(k, v); !loaded && s.activeAdds.Add(1)%4096 == 0 {
		s.ActiveSessions() // prune now and then, so the map stays bounded without readers
	}
}

// ActiveSessions returns the number of sessions read or written in the last
// ActiveWindow, forgetting older ones.
func (s *Service) ActiveSessions() int {
	cutoff := time.Now().Add(-s.activeWindow).UnixNano()
	n := 0
	s.active.Range(func(k, v any) bool {
		if v.(*atomic.Int64).Load() < cutoff {
			s.active.Delete(k)
		} else {
			n++
		}
		return true
	})
	return n
}

// ServiceStats are the Service's own figures.
type ServiceStats struct {
	ActiveSessions  int                       `json:"active_sessions"`
	Latency         map[string]LatencySummary `json:"latency"`           // per operation
	StoreFallbacks  uint64                    `json:"store_fallbacks"`   // reads served by the Store because the cache failed
	CacheWriteFails uint64                    `json:"cache_write_fails"` // write-throughs that failed after the Store write
	// InvalidEntries counts cache entries that decoded but were no valid
	// record of their key (JSON null, missing fields, another node's or
	// session's record): each was treated as a miss, deleted and read from
	// the Store. Bytes that do not decode at all count in the cache's
	// Stats.Corrupt, which also includes these.
	InvalidEntries uint64     `json:"invalid_entries"`
	Events         EventStats `json:"events"`
}

// Stats returns the Service's figures: active sessions, per-operation
// latency percentiles, fallbacks and event counters.
func (s *Service) Stats() ServiceStats {
	return ServiceStats{
		ActiveSessions:  s.ActiveSessions(),
		Latency:         s.latency.summaries(),
		StoreFallbacks:  s.fallbacks.Load(),
		CacheWriteFails: s.cacheErrs.Load(),
		InvalidEntries:  s.invalid.Load(),
		Events:          s.events.Stats(),
	}
}

// publish sends an event of owner's session ev.SessionID, logging (not
// returning) a failure: the change is stored, and subscribers that miss it
// see the next one.
func (s *Service) publish(ctx context.Context, owner string, ev Event) {
	if _, err := s.events.Publish(ctx, owner, ev); err != nil {
		s.log.Warn("session: publish event failed", "type", ev.Type, "owner", owner, "session", ev.SessionID, "err", err)
	}
}

// Subscribe returns the events of owner's session sessionID after
// lastEventID ("" for new events only) until ctx ends or the session is
// deleted; see [Events.Subscribe]. Another owner's session gives ErrNotFound.
func (s *Service) Subscribe(ctx context.Context, owner, sessionID, lastEventID string) (<-chan Event, error) {
	if _, err := s.session(ctx, owner, sessionID); err != nil {
		return nil, err
	}
	return s.events.Subscribe(ctx, owner, sessionID, lastEventID)
}
