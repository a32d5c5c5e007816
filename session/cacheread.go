package session

import (
	"context"
	"errors"

	"github.com/tiercache/tiercache"
)

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
