package session

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/tiercache/tiercache"
)

// The cache's entries are checked on the way out, so a bad entry in Redis
// (written by a bug, an older release or by hand) can never hide what the
// store holds. Two checks:
//
//   - shape, in the codecs below: the payload must decode to a record of its
//     kind with its required fields (JSON null, {} or an object of another
//     shape decode without error into a zero record and are refused). A
//     refused decode is the cache's corrupt path: counted in
//     tiercache.Stats.Corrupt, deleted if nobody replaced it, and reported as a
//     miss, so the loader reads the store.
//   - binding, in the Service (checkedGet and friends): a valid record under
//     the key of another ID, session or owner. The codec cannot see the key,
//     so the Service deletes such an entry itself and reads the store.
//
// Both count in Service.invalid (ServiceStats.InvalidEntries).

// errInvalidEntry marks a cached record that failed a check.
var errInvalidEntry = errors.New("session: invalid cache entry")

// checkedCodec wraps the JSON codec of V with a check of the decoded record.
// It keeps the JSON codec's ID, so entries written before the check existed
// stay readable.
type checkedCodec[V any] struct {
	inner   tiercache.Codec[V]
	check   func(V) error
	invalid *atomic.Uint64
}

func (c checkedCodec[V]) ID() uint8                  { return c.inner.ID() }
func (c checkedCodec[V]) Encode(v V) ([]byte, error) { return c.inner.Encode(v) }
func (c checkedCodec[V]) Decode(b []byte) (V, error) {
	v, err := c.inner.Decode(b)
	if err == nil {
		err = c.check(v)
	}
	if err != nil {
		c.invalid.Add(1)
		var zero V
		return zero, err
	}
	return v, nil
}

func checked[V any](inner tiercache.Codec[V], invalid *atomic.Uint64, check func(V) error) tiercache.Codec[V] {
	return checkedCodec[V]{inner: inner, check: check, invalid: invalid}
}

func entryErr(kind, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", errInvalidEntry, kind, fmt.Sprintf(format, args...))
}

// checkNodeEntry: what every stored node has. Content may be empty (older
// releases accepted it) and Metadata and Refs are optional.
func checkNodeEntry(n Node) error {
	switch {
	case !ValidID(n.ID):
		return entryErr("node", "id %q is not an ID", truncate(n.ID))
	case !ValidID(n.SessionID):
		return entryErr("node", "session_id %q is not an ID", truncate(n.SessionID))
	case n.Owner == "":
		return entryErr("node", "no owner")
	case !ValidRole(n.Role):
		return entryErr("node", "role %q", truncate(n.Role))
	case n.Version < 1 || n.Seq < 1:
		return entryErr("node", "version %d, seq %d", n.Version, n.Seq)
	}
	if _, err := ParseShortID(n.ShortID); err != nil {
		return entryErr("node", "short_id %q", truncate(n.ShortID))
	}
	return nil
}

func checkListEntry(l NodeList) error {
	switch {
	case l.Owner == "":
		return entryErr("node list", "no owner")
	case !ValidID(l.SessionID):
		return entryErr("node list", "session_id %q is not an ID", truncate(l.SessionID))
	case l.Version < 1:
		return entryErr("node list", "version %d", l.Version)
	case l.NodeIDs == nil:
		return entryErr("node list", "no node_ids")
	}
	for _, id := range l.NodeIDs {
		if !ValidID(id) {
			return entryErr("node list", "node ID %q", truncate(id))
		}
	}
	return nil
}

func checkSessionEntry(s Session) error {
	switch {
	case !ValidID(s.ID):
		return entryErr("session", "id %q is not an ID", truncate(s.ID))
	case s.Owner == "":
		return entryErr("session", "no owner")
	case s.Version < 1:
		return entryErr("session", "version %d", s.Version)
	}
	return nil
}

func checkShortIDEntry(id string) error {
	if !ValidID(id) {
		return entryErr("short ID index", "node ID %q", truncate(id))
	}
	return nil
}

// dropInvalid deletes the entry under key after its record was found bound
// to another key, and counts it. The delete takes an automatic version, so
// it replaces whatever version the bad entry carries; its tombstone refuses
// fills of this key for the cache's TombstoneTTL, during which reads of it
// go to the store. Failures are logged by cacheWrite: the caller reads the
// store either way.
func dropInvalid[V any](ctx context.Context, s *Service, tc *tiercache.TypedCache[V], what, key string, why string) {
	if s.invalid.Add(1)%1000 == 1 {
		s.log.Warn("session: cache entry bound to another record; deleted, reading the store", "entry", what, "key", key, "why", why)
	}
	s.cacheWrite(what, key, tc.Delete(ctx, key))
}

// rebind checks every entry of m (read through tc) with bound, which reports
// why an entry is bound to another key than the one it was read under ("" if
// it is not). Bad entries are dropped from the cache and from m and read
// again with load, straight from the store, so m holds what the store holds.
func rebind[V any](ctx context.Context, s *Service, tc *tiercache.TypedCache[V], what string, m map[string]V,
	bound func(key string, v V) string, load func(context.Context, []string) (map[string]V, error)) (map[string]V, error) {
	var bad []string
	for k, v := range m {
		if why := bound(k, v); why != "" {
			dropInvalid(ctx, s, tc, what, k, why)
			bad = append(bad, k)
		}
	}
	if len(bad) == 0 {
		return m, nil
	}
	for _, k := range bad {
		delete(m, k)
	}
	found, err := load(ctx, bad)
	if err != nil {
		return nil, err
	}
	for k, v := range found {
		m[k] = v
	}
	return m, nil
}

// rebindOne is rebind for one entry read by a single get: v when it is
// bound to key, else the store's record (or its error).
func rebindOne[V any](ctx context.Context, s *Service, tc *tiercache.TypedCache[V], what, key string, v V,
	bound func(V) string, load func(context.Context, string) (V, error)) (V, error) {
	why := bound(v)
	if why == "" {
		return v, nil
	}
	dropInvalid(ctx, s, tc, what, key, why)
	return load(ctx, key)
}
