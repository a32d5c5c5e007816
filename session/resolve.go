package session

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// --- short IDs ------------------------------------------------------------

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
