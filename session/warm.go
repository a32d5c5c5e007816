package session

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
)

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
