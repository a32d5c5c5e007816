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

func dbErr(op string, err error) error {
	return fmt.Errorf("pgstore: %s: %w", op, err)
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
		return session.Session{}, fmt.Errorf("%w: session %q", session.ErrExists, out.ID)
	}
	if err != nil {
		return session.Session{}, dbErr("create session", err)
	}
	return out, nil
}

// GetSession implements [session.Store.GetSession].
func (s *Store) GetSession(ctx context.Context, owner, id string) (session.Session, error) {
	out, err := scanSession(s.pool.QueryRow(ctx, `SELECT `+sessionCols+` FROM sessions WHERE id = $1 AND owner = $2`, id, owner))
	if errors.Is(err, pgx.ErrNoRows) {
		return session.Session{}, fmt.Errorf("%w: session %q", session.ErrNotFound, id)
	}
	if err != nil {
		return session.Session{}, dbErr("get session", err)
	}
	return out, nil
}

func (s *Store) querySessions(ctx context.Context, query string, args ...any) ([]session.Session, error) {
	rows, err := s.pool.Query(ctx, query, args...)
	if err != nil {
		return nil, dbErr("query sessions", err)
	}
	defer rows.Close()
	out, err := sqlstore.AppendRows([]session.Session{}, rows, scanSession)
	if err != nil {
		return nil, dbErr("query sessions", err)
	}
	return out, nil
}

func nodeID(n session.Node) string      { return n.ID }
func nodeShortID(n session.Node) string { return n.ShortID }

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
	out := make(map[session.SessionKey]session.Session, len(keys))
	if len(keys) == 0 {
		return out, nil
	}
	owners, ids := keyArrays(keys)
	list, err := s.querySessions(ctx, `SELECT `+sessionCols+` FROM sessions
		WHERE (owner, id) IN (SELECT * FROM unnest($1::text[], $2::text[]))`, owners, ids)
	if err != nil {
		return nil, err
	}
	for _, v := range list {
		out[v.Key()] = v
	}
	return out, nil
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
	if errors.Is(err, pgx.ErrNoRows) {
		return session.Session{}, fmt.Errorf("%w: session %q", session.ErrNotFound, id)
	}
	if err != nil {
		return session.Session{}, dbErr("touch session", err)
	}
	return out, nil
}

// lockSession locks owner's session id until tx ends and checks its
// version: ErrNotFound when there is none, a *session.VersionMismatchError
// when ifVersion is set and stale.
func lockSession(ctx context.Context, tx pgx.Tx, owner, id string, ifVersion int64) error {
	var cur int64
	err := tx.QueryRow(ctx, `SELECT version FROM sessions WHERE id = $1 AND owner = $2 FOR UPDATE`, id, owner).Scan(&cur)
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("%w: session %q", session.ErrNotFound, id)
	}
	if err != nil {
		return dbErr("lock session", err)
	}
	return sqlstore.CheckSessionVersion(id, ifVersion, cur)
}

// Ping implements [session.Store.Ping]: one round trip on a pooled
// connection.
func (s *Store) Ping(ctx context.Context) error {
	return sqlstore.Ping(ctx, "pgstore", s.pool.Ping)
}

// UpdateSession implements [session.Store.UpdateSession].
func (s *Store) UpdateSession(ctx context.Context, owner, id string, ifVersion int64, title string) (session.Session, error) {
	if err := (session.Session{ID: id, Owner: owner, Title: title}).Validate(); err != nil {
		return session.Session{}, err
	}
	if err := sqlstore.CheckIfVersion(ifVersion); err != nil {
		return session.Session{}, err
	}
	var out session.Session
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if err := lockSession(ctx, tx, owner, id, ifVersion); err != nil {
			return err
		}
		var err error
		out, err = scanSession(tx.QueryRow(ctx, `UPDATE sessions SET title = $1, version = version + 1, updated_at = $2,
			activity = nextval('session_activity')
			WHERE owner = $3 AND id = $4 RETURNING `+sessionCols, title, sqlstore.Now(), owner, id))
		if err != nil {
			return dbErr("update session", err)
		}
		return nil
	})
	if err != nil {
		return session.Session{}, err
	}
	return out, nil
}

// DeleteSession implements [session.Store.DeleteSession].
func (s *Store) DeleteSession(ctx context.Context, owner, id string, ifVersion int64) ([]session.Node, error) {
	if err := sqlstore.CheckIfVersion(ifVersion); err != nil {
		return nil, err
	}
	var deleted []session.Node
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if err := lockSession(ctx, tx, owner, id, ifVersion); err != nil {
			return err
		}
		var err error
		if deleted, err = queryNodes(ctx, tx, `DELETE FROM nodes WHERE owner = $1 AND session_id = $2 RETURNING `+nodeCols, owner, id); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM sessions WHERE owner = $1 AND id = $2`, owner, id); err != nil {
			return dbErr("delete session", err)
		}
		return nil
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

type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

func queryNodes(ctx context.Context, q querier, query string, args ...any) ([]session.Node, error) {
	rows, err := q.Query(ctx, query, args...)
	if err != nil {
		return nil, dbErr("query nodes", err)
	}
	defer rows.Close()
	out, err := sqlstore.AppendRows(nil, rows, scanNode)
	if err != nil {
		return nil, dbErr("query nodes", err)
	}
	return out, nil
}

// checkRefs returns an ErrInvalid error naming the first of refs that is not
// a node of owner.
func checkRefs(ctx context.Context, tx pgx.Tx, owner string, refs []string) error {
	if len(refs) == 0 {
		return nil
	}
	rows, err := tx.Query(ctx, `SELECT id FROM nodes WHERE owner = $1 AND id = ANY($2)`, owner, refs)
	if err != nil {
		return dbErr("check refs", err)
	}
	found, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return dbErr("check refs", err)
	}
	return sqlstore.CheckRefs(refs, found)
}

// CreateNode implements [session.Store.CreateNode].
func (s *Store) CreateNode(ctx context.Context, in session.Node) (session.Node, error) {
	t := sqlstore.Now()
	n, meta, err := sqlstore.NewNode(in, t)
	if err != nil {
		return session.Node{}, err
	}
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		// Lock order: session row, then the owner's short-ID row.
		err := tx.QueryRow(ctx, `UPDATE sessions SET next_seq = next_seq + 1, version = version + 1, updated_at = $1,
			activity = nextval('session_activity')
			WHERE id = $2 AND owner = $3 RETURNING next_seq`, t, n.SessionID, n.Owner).Scan(&n.Seq)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("%w: session %q", session.ErrNotFound, n.SessionID)
		}
		if err != nil {
			return dbErr("create node", err)
		}
		if err := checkRefs(ctx, tx, n.Owner, n.Refs); err != nil {
			return err
		}
		var shortNo int64
		if err := tx.QueryRow(ctx, `INSERT INTO owner_short_ids (owner, last) VALUES ($1, 1)
			ON CONFLICT (owner) DO UPDATE SET last = owner_short_ids.last + 1 RETURNING last`, n.Owner).Scan(&shortNo); err != nil {
			return dbErr("create node: short ID", err)
		}
		n.ShortID = session.FormatShortID(shortNo)
		_, err = tx.Exec(ctx, `INSERT INTO nodes (`+nodeCols+`) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 1, $10, $10)`,
			n.ID, n.SessionID, n.Owner, shortNo, n.Seq, n.Role, n.Content, meta, n.Refs, t)
		if isUniqueViolation(err, "nodes_pkey") {
			return fmt.Errorf("%w: node %q", session.ErrExists, n.ID)
		}
		if err != nil {
			return dbErr("create node", err)
		}
		return nil
	})
	if err != nil {
		return session.Node{}, err
	}
	return n, nil
}

// GetNodes implements [session.Store.GetNodes].
func (s *Store) GetNodes(ctx context.Context, ids []string) (map[string]session.Node, error) {
	return sqlstore.ByKey(ids, func(ids []string) ([]session.Node, error) {
		return queryNodes(ctx, s.pool, `SELECT `+nodeCols+` FROM nodes WHERE id = ANY($1)`, ids)
	}, nodeID)
}

// SessionNodeIDs implements [session.Store.SessionNodeIDs]. One statement
// reads each list and its version from one snapshot.
func (s *Store) SessionNodeIDs(ctx context.Context, keys []session.SessionKey) (map[session.SessionKey]session.NodeList, error) {
	out := make(map[session.SessionKey]session.NodeList, len(keys))
	if len(keys) == 0 {
		return out, nil
	}
	owners, ids := keyArrays(keys)
	rows, err := s.pool.Query(ctx, `SELECT s.owner, s.id, s.version,
			coalesce(array_agg(n.id ORDER BY n.seq) FILTER (WHERE n.id IS NOT NULL), '{}')
		FROM sessions s LEFT JOIN nodes n ON n.owner = s.owner AND n.session_id = s.id
		WHERE (s.owner, s.id) IN (SELECT * FROM unnest($1::text[], $2::text[]))
		GROUP BY s.owner, s.id, s.version`, owners, ids)
	if err != nil {
		return nil, dbErr("session node IDs", err)
	}
	defer rows.Close()
	for rows.Next() {
		l := session.NodeList{}
		if err := rows.Scan(&l.Owner, &l.SessionID, &l.Version, &l.NodeIDs); err != nil {
			return nil, dbErr("session node IDs", err)
		}
		if l.NodeIDs == nil {
			l.NodeIDs = []string{}
		}
		out[session.SessionKey{Owner: l.Owner, ID: l.SessionID}] = l
	}
	if err := rows.Err(); err != nil {
		return nil, dbErr("session node IDs", err)
	}
	return out, nil
}

// lockForWrite locks the session row of the owner's node id, then the node
// row (the store's lock order), and checks ifVersion.
func lockForWrite(ctx context.Context, tx pgx.Tx, owner, id string, ifVersion int64) (session.Node, error) {
	notFound := fmt.Errorf("%w: node %q", session.ErrNotFound, id)
	var sessionID string
	err := tx.QueryRow(ctx, `SELECT session_id FROM nodes WHERE id = $1 AND owner = $2`, id, owner).Scan(&sessionID)
	if errors.Is(err, pgx.ErrNoRows) {
		return session.Node{}, notFound
	}
	if err != nil {
		return session.Node{}, dbErr("load node", err)
	}
	if _, err := tx.Exec(ctx, `SELECT 1 FROM sessions WHERE owner = $1 AND id = $2 FOR UPDATE`, owner, sessionID); err != nil {
		return session.Node{}, dbErr("lock session", err)
	}
	cur, err := scanNode(tx.QueryRow(ctx, `SELECT `+nodeCols+` FROM nodes WHERE id = $1 AND owner = $2 FOR UPDATE`, id, owner))
	if errors.Is(err, pgx.ErrNoRows) { // deleted while we waited for the lock
		return session.Node{}, notFound
	}
	if err != nil {
		return session.Node{}, dbErr("load node", err)
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
	var out session.Node
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		cur, err := lockForWrite(ctx, tx, owner, id, ifVersion)
		if err != nil {
			return err
		}
		n, meta, err := sqlstore.ApplyUpdate(cur, upd)
		if err != nil {
			return err
		}
		if upd.Refs != nil {
			if err := checkRefs(ctx, tx, owner, n.Refs); err != nil {
				return err
			}
		}
		t := sqlstore.Now()
		n.Version, n.UpdatedAt = cur.Version+1, t
		if _, err := tx.Exec(ctx, `UPDATE nodes SET role = $1, content = $2, metadata = $3, refs = $4, version = $5, updated_at = $6
			WHERE id = $7`, n.Role, n.Content, meta, n.Refs, n.Version, t, id); err != nil {
			return dbErr("update node", err)
		}
		if _, err := touchSession(ctx, tx, owner, n.SessionID, t); err != nil {
			return err
		}
		out = n
		return nil
	})
	if err != nil {
		return session.Node{}, err
	}
	return out, nil
}

// DeleteNode implements [session.Store.DeleteNode].
func (s *Store) DeleteNode(ctx context.Context, owner, id string, ifVersion int64) (session.Node, error) {
	if err := sqlstore.CheckIfVersion(ifVersion); err != nil {
		return session.Node{}, err
	}
	var out session.Node
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		cur, err := lockForWrite(ctx, tx, owner, id, ifVersion)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM nodes WHERE id = $1`, id); err != nil {
			return dbErr("delete node", err)
		}
		if _, err := touchSession(ctx, tx, owner, cur.SessionID, sqlstore.Now()); err != nil {
			return err
		}
		out = cur
		return nil
	})
	if err != nil {
		return session.Node{}, err
	}
	return out, nil
}

// ResolveShortID implements [session.Store.ResolveShortID].
func (s *Store) ResolveShortID(ctx context.Context, owner, shortID string) (session.Node, error) {
	num, err := session.ParseShortID(shortID)
	if err != nil {
		return session.Node{}, err
	}
	n, err := scanNode(s.pool.QueryRow(ctx, `SELECT `+nodeCols+` FROM nodes WHERE owner = $1 AND short_no = $2`, owner, num))
	if errors.Is(err, pgx.ErrNoRows) {
		return session.Node{}, fmt.Errorf("%w: short ID %s", session.ErrNotFound, session.FormatShortID(num))
	}
	if err != nil {
		return session.Node{}, dbErr("resolve short ID", err)
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
	}, nodeShortID)
}
