package session

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/tiercache/tiercache"
)

// --- context assembly --------------------------------------------------------

// Context is a session's context: its nodes in order plus the nodes they
// reference that are not in the session (one level deep, same owner only,
// in order of first reference). Dangling references are skipped.
type Context struct {
	Session Session `json:"session"`
	Nodes   []Node  `json:"nodes"`
	Refs    []Node  `json:"refs"`
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
