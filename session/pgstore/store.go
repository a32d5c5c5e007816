// Package pgstore is the PostgreSQL store of record for package session,
// built on pgx v5 and its connection pool. Schema migrations are embedded
// and applied by [Open] under an advisory lock, so many instances may start
// at once. All objects live in the first schema of the connection's
// search_path, so one database can hold several stores.
package pgstore

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tiercache/tiercache/session"
	"github.com/tiercache/tiercache/session/internal/sqlstore"
)

// Store is a [session.Store] backed by PostgreSQL. It is safe for
// concurrent use, also by several processes on one database: writes lock
// the session row first (then the node, then the owner's short-ID counter),
// always in that order, so concurrent writers queue instead of deadlocking.
type Store struct {
	pool *pgxpool.Pool
}

var _ session.Store = (*Store)(nil)

// Open connects to the database at url (a postgres:// URL or key=value
// DSN, as pgxpool.ParseConfig accepts, including pool_max_conns and
// search_path), checks the connection and applies pending migrations.
// Errors are prefixed "pgstore:".
func Open(ctx context.Context, url string) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("pgstore: parse database URL: %w", err)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("pgstore: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("pgstore: connect: %w", err)
	}
	s := &Store{pool: pool}
	if err := s.migrate(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("pgstore: %w", err)
	}
	return s, nil
}

// Close closes the pool, waiting for connections in use to be returned.
// It is safe to call more than once and always returns nil.
func (s *Store) Close() error {
	s.pool.Close()
	return nil
}

var drv = sqlstore.Driver{Store: "pgstore", NoRows: pgx.ErrNoRows}

// inTx runs fn in a transaction and returns its result once committed.
func inTx[T any](ctx context.Context, s *Store, fn func(pgx.Tx) (T, error)) (T, error) {
	return sqlstore.InTx(func(f func(pgx.Tx) error) error { return pgx.BeginFunc(ctx, s.pool, f) }, fn)
}

// isUniqueViolation reports whether err is a unique violation of the named
// constraint.
func isUniqueViolation(err error, constraint string) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "23505" && pe.ConstraintName == constraint
}

const sessionCols = `id, owner, title, version, created_at, updated_at`

func scanSession(r sqlstore.Scanner) (session.Session, error) {
	var s session.Session
	if err := r.Scan(&s.ID, &s.Owner, &s.Title, &s.Version, &s.CreatedAt, &s.UpdatedAt); err != nil {
		return session.Session{}, err
	}
	s.CreatedAt, s.UpdatedAt = s.CreatedAt.UTC(), s.UpdatedAt.UTC()
	return s, nil
}

const nodeCols = `id, session_id, owner, short_no, seq, role, content, metadata, refs, version, created_at, updated_at`

func scanNode(r sqlstore.Scanner) (session.Node, error) {
	var n session.Node
	var shortNo int64
	var meta []byte
	if err := r.Scan(&n.ID, &n.SessionID, &n.Owner, &shortNo, &n.Seq, &n.Role, &n.Content, &meta, &n.Refs, &n.Version, &n.CreatedAt, &n.UpdatedAt); err != nil {
		return session.Node{}, err
	}
	n.CreatedAt, n.UpdatedAt = n.CreatedAt.UTC(), n.UpdatedAt.UTC()
	if len(n.Refs) == 0 {
		n.Refs = nil
	}
	if err := sqlstore.DecodeNode(&n, shortNo, meta); err != nil {
		return session.Node{}, err
	}
	return n, nil
}

// CreateSession implements [session.Store.CreateSession].
func (s *Store) CreateSession(ctx context.Context, in session.Session) (session.Session, error) {
	t := sqlstore.Now()
	out, err := sqlstore.NewSession(in, t)
	if err != nil {
		return session.Session{}, err
	}
	_, err = s.pool.Exec(ctx, `INSERT INTO sessions (id, owner, title, version, created_at, updated_at)
		VALUES ($1, $2, $3, 1, $4, $4)`, out.ID, out.Owner, out.Title, t)
	if isUniqueViolation(err, "sessions_pkey") {
		return session.Session{}, sqlstore.Exists("session", out.ID)
	}
	if err != nil {
		return session.Session{}, drv.Err("create session", err)
	}
	return out, nil
}

// GetSession implements [session.Store.GetSession].
func (s *Store) GetSession(ctx context.Context, owner, id string) (session.Session, error) {
	out, err := scanSession(s.pool.QueryRow(ctx, `SELECT `+sessionCols+` FROM sessions WHERE id = $1 AND owner = $2`, id, owner))
	if err != nil {
		return session.Session{}, drv.RowErr("get session", err, sqlstore.NotFound("session", id))
	}
	return out, nil
}

type querier interface {
	Query(ctx context.Context, stmt string, args ...any) (pgx.Rows, error)
}

// query runs stmt on q and returns dst with the rows it selects appended,
// each read by scan; errors name op.
func query[T any](ctx context.Context, q querier, op string, dst []T, scan func(sqlstore.Scanner) (T, error), stmt string, args ...any) ([]T, error) {
	rows, err := q.Query(ctx, stmt, args...)
	if err != nil {
		return nil, drv.Err(op, err)
	}
	defer rows.Close()
	out, err := sqlstore.AppendRows(dst, rows, scan)
	if err != nil {
		return nil, drv.Err(op, err)
	}
	return out, nil
}

// querySessions returns the sessions stmt selects, none as an empty slice.
func (s *Store) querySessions(ctx context.Context, stmt string, args ...any) ([]session.Session, error) {
	return query(ctx, s.pool, "query sessions", []session.Session{}, scanSession, stmt, args...)
}

// queryNodes returns the nodes stmt selects, none as nil.
func queryNodes(ctx context.Context, q querier, stmt string, args ...any) ([]session.Node, error) {
	return query(ctx, q, "query nodes", nil, scanNode, stmt, args...)
}

// keyArrays splits session keys into parallel owner and ID arrays, for
// unnest($1::text[], $2::text[]).
func keyArrays(keys []session.SessionKey) (owners, ids []string) {
	owners, ids = make([]string, len(keys)), make([]string, len(keys))
	for i, k := range keys {
		owners[i], ids[i] = k.Owner, k.ID
	}
	return owners, ids
}

// GetSessions implements [session.Store.GetSessions].
func (s *Store) GetSessions(ctx context.Context, keys []session.SessionKey) (map[session.SessionKey]session.Session, error) {
	return sqlstore.ByKey(keys, func(keys []session.SessionKey) ([]session.Session, error) {
		owners, ids := keyArrays(keys)
		return s.querySessions(ctx, `SELECT `+sessionCols+` FROM sessions
			WHERE (owner, id) IN (SELECT * FROM unnest($1::text[], $2::text[]))`, owners, ids)
	}, session.Session.Key)
}

// ListSessions implements [session.Store.ListSessions].
func (s *Store) ListSessions(ctx context.Context, owner string, limit int) ([]session.Session, error) {
	return s.querySessions(ctx, `SELECT `+sessionCols+` FROM sessions WHERE owner = $1
		ORDER BY updated_at DESC, activity DESC LIMIT $2`, owner, session.ListLimit(limit))
}

// RecentSessions implements [session.Store.RecentSessions].
func (s *Store) RecentSessions(ctx context.Context, limit int) ([]session.Session, error) {
	return s.querySessions(ctx, `SELECT `+sessionCols+` FROM sessions
		ORDER BY updated_at DESC, activity DESC LIMIT $1`, session.ListLimit(limit))
}

// touchSession bumps the session's version, updated_at and activity,
// locking its row until tx ends, and returns it; ErrNotFound when owner has
// no session id.
func touchSession(ctx context.Context, tx pgx.Tx, owner, id string, t time.Time) (session.Session, error) {
	out, err := scanSession(tx.QueryRow(ctx, `UPDATE sessions SET version = version + 1, updated_at = $1,
		activity = nextval('session_activity')
		WHERE id = $2 AND owner = $3 RETURNING `+sessionCols, t, id, owner))
	if err != nil {
		return session.Session{}, drv.RowErr("touch session", err, sqlstore.NotFound("session", id))
	}
	return out, nil
}

// lockSession locks owner's session id until tx ends and checks its
// version: ErrNotFound when there is none, a *session.VersionMismatchError
// when ifVersion is set and stale.
func lockSession(ctx context.Context, tx pgx.Tx, owner, id string, ifVersion int64) error {
	var cur int64
	if err := tx.QueryRow(ctx, `SELECT version FROM sessions WHERE id = $1 AND owner = $2 FOR UPDATE`, id, owner).Scan(&cur); err != nil {
		return drv.RowErr("lock session", err, sqlstore.NotFound("session", id))
	}
	return sqlstore.CheckSessionVersion(id, ifVersion, cur)
}

// Ping implements [session.Store.Ping]: one round trip on a pooled
// connection.
func (s *Store) Ping(ctx context.Context) error {
	return drv.Ping(ctx, s.pool.Ping)
}

// UpdateSession implements [session.Store.UpdateSession].
func (s *Store) UpdateSession(ctx context.Context, owner, id string, ifVersion int64, title string) (session.Session, error) {
	if err := sqlstore.CheckSessionUpdate(owner, id, ifVersion, title); err != nil {
		return session.Session{}, err
	}
	return inTx(ctx, s, func(tx pgx.Tx) (session.Session, error) {
		if err := lockSession(ctx, tx, owner, id, ifVersion); err != nil {
			return session.Session{}, err
		}
		out, err := scanSession(tx.QueryRow(ctx, `UPDATE sessions SET title = $1, version = version + 1, updated_at = $2,
			activity = nextval('session_activity')
			WHERE owner = $3 AND id = $4 RETURNING `+sessionCols, title, sqlstore.Now(), owner, id))
		if err != nil {
			return session.Session{}, drv.Err("update session", err)
		}
		return out, nil
	})
}

// DeleteSession implements [session.Store.DeleteSession].
func (s *Store) DeleteSession(ctx context.Context, owner, id string, ifVersion int64) ([]session.Node, error) {
	if err := sqlstore.CheckIfVersion(ifVersion); err != nil {
		return nil, err
	}
	deleted, err := inTx(ctx, s, func(tx pgx.Tx) ([]session.Node, error) {
		if err := lockSession(ctx, tx, owner, id, ifVersion); err != nil {
			return nil, err
		}
		deleted, err := queryNodes(ctx, tx, `DELETE FROM nodes WHERE owner = $1 AND session_id = $2 RETURNING `+nodeCols, owner, id)
		if err != nil {
			return nil, err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM sessions WHERE owner = $1 AND id = $2`, owner, id); err != nil {
			return nil, drv.Err("delete session", err)
		}
		return deleted, nil
	})
	if err != nil {
		return nil, err
	}
	sortBySeq(deleted)
	return deleted, nil
}

// sortBySeq orders nodes by Seq: DELETE ... RETURNING has no ORDER BY.
func sortBySeq(nodes []session.Node) {
	slices.SortFunc(nodes, func(a, b session.Node) int { return cmp.Compare(a.Seq, b.Seq) })
}

// checkRefs returns an ErrInvalid error naming the first of refs that is not
// a node of owner.
func checkRefs(ctx context.Context, tx pgx.Tx, owner string, refs []string) error {
	if len(refs) == 0 {
		return nil
	}
	rows, err := tx.Query(ctx, `SELECT id FROM nodes WHERE owner = $1 AND id = ANY($2)`, owner, refs)
	if err != nil {
		return drv.Err("check refs", err)
	}
	found, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return drv.Err("check refs", err)
	}
	return sqlstore.CheckRefs(refs, found)
}

// CreateNode implements [session.Store.CreateNode].
func (s *Store) CreateNode(ctx context.Context, in session.Node, maxNodes int) (session.Node, error) {
	t := sqlstore.Now()
	n, meta, err := sqlstore.NewNode(in, t)
	if err != nil {
		return session.Node{}, err
	}
	return inTx(ctx, s, func(tx pgx.Tx) (session.Node, error) {
		// Lock order: session row, then the owner's short-ID row.
		err := tx.QueryRow(ctx, `UPDATE sessions SET next_seq = next_seq + 1, version = version + 1, updated_at = $1,
			activity = nextval('session_activity')
			WHERE id = $2 AND owner = $3 RETURNING next_seq`, t, n.SessionID, n.Owner).Scan(&n.Seq)
		if err != nil {
			return session.Node{}, drv.RowErr("create node", err, sqlstore.NotFound("session", n.SessionID))
		}
		// The UPDATE above holds the session row's lock until commit, so
		// concurrent creates in this session queue there, and under READ
		// COMMITTED this count (a new statement) sees every node they
		// committed: the limit holds across processes.
		if maxNodes > 0 {
			var count int
			if err := tx.QueryRow(ctx, `SELECT count(*) FROM nodes WHERE owner = $1 AND session_id = $2`, n.Owner, n.SessionID).Scan(&count); err != nil {
				return session.Node{}, drv.Err("create node: count", err)
			}
			if count >= maxNodes {
				return session.Node{}, &session.LimitError{What: "nodes", ID: n.SessionID, Limit: maxNodes}
			}
		}
		if err := checkRefs(ctx, tx, n.Owner, n.Refs); err != nil {
			return session.Node{}, err
		}
		var shortNo int64
		if err := tx.QueryRow(ctx, `INSERT INTO owner_short_ids (owner, last) VALUES ($1, 1)
			ON CONFLICT (owner) DO UPDATE SET last = owner_short_ids.last + 1 RETURNING last`, n.Owner).Scan(&shortNo); err != nil {
			return session.Node{}, drv.Err("create node: short ID", err)
		}
		n.ShortID = session.FormatShortID(shortNo)
		_, err = tx.Exec(ctx, `INSERT INTO nodes (`+nodeCols+`) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 1, $10, $10)`,
			n.ID, n.SessionID, n.Owner, shortNo, n.Seq, n.Role, n.Content, meta, n.Refs, t)
		if isUniqueViolation(err, "nodes_pkey") {
			return session.Node{}, sqlstore.Exists("node", n.ID)
		}
		if err != nil {
			return session.Node{}, drv.Err("create node", err)
		}
		return n, nil
	})
}

// GetNodes implements [session.Store.GetNodes].
func (s *Store) GetNodes(ctx context.Context, ids []string) (map[string]session.Node, error) {
	return sqlstore.ByKey(ids, func(ids []string) ([]session.Node, error) {
		return queryNodes(ctx, s.pool, `SELECT `+nodeCols+` FROM nodes WHERE id = ANY($1)`, ids)
	}, sqlstore.NodeID)
}

// SessionNodeIDs implements [session.Store.SessionNodeIDs]. One statement
// reads each list and its version from one snapshot.
func (s *Store) SessionNodeIDs(ctx context.Context, keys []session.SessionKey) (map[session.SessionKey]session.NodeList, error) {
	return sqlstore.ByKey(keys, func(keys []session.SessionKey) ([]session.NodeList, error) {
		owners, ids := keyArrays(keys)
		return query(ctx, s.pool, "session node IDs", nil, scanNodeList, `SELECT s.owner, s.id, s.version,
				coalesce(array_agg(n.id ORDER BY n.seq) FILTER (WHERE n.id IS NOT NULL), '{}')
			FROM sessions s LEFT JOIN nodes n ON n.owner = s.owner AND n.session_id = s.id
			WHERE (s.owner, s.id) IN (SELECT * FROM unnest($1::text[], $2::text[]))
			GROUP BY s.owner, s.id, s.version`, owners, ids)
	}, nodeListKey)
}

// scanNodeList reads a session's key, version and node IDs, none as an
// empty (non-nil) list.
func scanNodeList(r sqlstore.Scanner) (session.NodeList, error) {
	var l session.NodeList
	if err := r.Scan(&l.Owner, &l.SessionID, &l.Version, &l.NodeIDs); err != nil {
		return session.NodeList{}, err
	}
	if l.NodeIDs == nil {
		l.NodeIDs = []string{}
	}
	return l, nil
}

func nodeListKey(l session.NodeList) session.SessionKey {
	return session.SessionKey{Owner: l.Owner, ID: l.SessionID}
}

// lockForWrite locks the session row of the owner's node id, then the node
// row (the store's lock order), and checks ifVersion.
func lockForWrite(ctx context.Context, tx pgx.Tx, owner, id string, ifVersion int64) (session.Node, error) {
	var sessionID string
	if err := tx.QueryRow(ctx, `SELECT session_id FROM nodes WHERE id = $1 AND owner = $2`, id, owner).Scan(&sessionID); err != nil {
		return session.Node{}, drv.RowErr("load node", err, sqlstore.NotFound("node", id))
	}
	if _, err := tx.Exec(ctx, `SELECT 1 FROM sessions WHERE owner = $1 AND id = $2 FOR UPDATE`, owner, sessionID); err != nil {
		return session.Node{}, drv.Err("lock session", err)
	}
	cur, err := scanNode(tx.QueryRow(ctx, `SELECT `+nodeCols+` FROM nodes WHERE id = $1 AND owner = $2 FOR UPDATE`, id, owner))
	if err != nil { // no row: deleted while we waited for the lock
		return session.Node{}, drv.RowErr("load node", err, sqlstore.NotFound("node", id))
	}
	if err := sqlstore.CheckVersion(id, ifVersion, cur.Version); err != nil {
		return session.Node{}, err
	}
	return cur, nil
}

// UpdateNode implements [session.Store.UpdateNode].
func (s *Store) UpdateNode(ctx context.Context, owner, id string, ifVersion int64, upd session.NodeUpdate) (session.Node, error) {
	if err := sqlstore.CheckUpdate(ifVersion, upd); err != nil {
		return session.Node{}, err
	}
	return inTx(ctx, s, func(tx pgx.Tx) (session.Node, error) {
		cur, err := lockForWrite(ctx, tx, owner, id, ifVersion)
		if err != nil {
			return session.Node{}, err
		}
		n, meta, err := sqlstore.ApplyUpdate(cur, upd, sqlstore.Now())
		if err != nil {
			return session.Node{}, err
		}
		if upd.Refs != nil {
			if err := checkRefs(ctx, tx, owner, n.Refs); err != nil {
				return session.Node{}, err
			}
		}
		if _, err := tx.Exec(ctx, `UPDATE nodes SET role = $1, content = $2, metadata = $3, refs = $4, version = $5, updated_at = $6
			WHERE id = $7`, n.Role, n.Content, meta, n.Refs, n.Version, n.UpdatedAt, id); err != nil {
			return session.Node{}, drv.Err("update node", err)
		}
		if _, err := touchSession(ctx, tx, owner, n.SessionID, n.UpdatedAt); err != nil {
			return session.Node{}, err
		}
		return n, nil
	})
}

// DeleteNode implements [session.Store.DeleteNode].
func (s *Store) DeleteNode(ctx context.Context, owner, id string, ifVersion int64) (session.Node, error) {
	if err := sqlstore.CheckIfVersion(ifVersion); err != nil {
		return session.Node{}, err
	}
	return inTx(ctx, s, func(tx pgx.Tx) (session.Node, error) {
		cur, err := lockForWrite(ctx, tx, owner, id, ifVersion)
		if err != nil {
			return session.Node{}, err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM nodes WHERE id = $1`, id); err != nil {
			return session.Node{}, drv.Err("delete node", err)
		}
		if _, err := touchSession(ctx, tx, owner, cur.SessionID, sqlstore.Now()); err != nil {
			return session.Node{}, err
		}
		return cur, nil
	})
}

// ResolveShortID implements [session.Store.ResolveShortID].
func (s *Store) ResolveShortID(ctx context.Context, owner, shortID string) (session.Node, error) {
	num, err := session.ParseShortID(shortID)
	if err != nil {
		return session.Node{}, err
	}
	n, err := scanNode(s.pool.QueryRow(ctx, `SELECT `+nodeCols+` FROM nodes WHERE owner = $1 AND short_no = $2`, owner, num))
	if err != nil {
		return session.Node{}, drv.RowErr("resolve short ID", err, sqlstore.ShortIDNotFound(num))
	}
	return n, nil
}

// ResolveShortIDs implements [session.Store.ResolveShortIDs].
func (s *Store) ResolveShortIDs(ctx context.Context, owner string, shortIDs []string) (map[string]session.Node, error) {
	return sqlstore.ByKey(shortIDs, func(shortIDs []string) ([]session.Node, error) {
		nums, err := sqlstore.ParseShortIDs(shortIDs)
		if err != nil {
			return nil, err
		}
		return queryNodes(ctx, s.pool, `SELECT `+nodeCols+` FROM nodes WHERE owner = $1 AND short_no = ANY($2)`, owner, nums)
	}, sqlstore.NodeShortID)
}
