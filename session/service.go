package session

import (
	"context"
	"errors"
	"hash/maphash"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

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

// postCommitTimeout bounds what follows a committed store write (afterCommit).
const postCommitTimeout = 5 * time.Second

// afterCommit is the context of what follows a committed store write: the cache write-through,
// the reread of the session and the change event. It keeps ctx's values (trace spans) but not its
// cancellation, bounded by postCommitTimeout: a client that gives up once the write is stored
// must not leave peers' caches and subscribers without the change (Redis would keep the old
// entries until they expire, and subscribers would miss the event).
func afterCommit(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), postCommitTimeout)
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
