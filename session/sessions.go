package session

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/tiercache/tiercache"
)

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
	ctx, cancel := afterCommit(ctx)
	defer cancel()
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
	ctx, cancel := afterCommit(ctx)
	defer cancel()
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
	ctx, cancel := afterCommit(ctx)
	defer cancel()
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

func (s *Service) cacheSession(ctx context.Context, sess Session) {
	k := sessionKey(sess.Key())
	s.cacheWrite("session", k, s.sessions.Set(ctx, k, sess, tiercache.Version(uint64(sess.Version))))
}
