package session

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/tiercache/tiercache"
)

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
	ctx, cancel := afterCommit(ctx)
	defer cancel()
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
	ctx, cancel := afterCommit(ctx)
	defer cancel()
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
	ctx, cancel := afterCommit(ctx)
	defer cancel()
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
