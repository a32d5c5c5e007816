// Package sqlitestore is the SQLite store of record for package session,
// built on the pure-Go driver modernc.org/sqlite (no cgo). It is the
// default store of contextd: one database file, WAL mode, schema migrations
// embedded in the binary and applied by [Open].
package sqlitestore

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/tiercache/tiercache/session"
	"github.com/tiercache/tiercache/session/internal/sqlstore"
	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver
)

// BusyTimeout is how long a write waits for another process holding the
// database's write lock before it fails with SQLITE_BUSY.
const BusyTimeout = 10 * time.Second

// Store is a [session.Store] backed by one SQLite database. It is safe for
// concurrent use, and several processes may open the same file: every write
// runs in a BEGIN IMMEDIATE transaction, so writers are serialized by
// SQLite and wait up to [BusyTimeout] for each other.
type Store struct {
	db *sql.DB
	// wsem (capacity 1) serializes this process's write transactions.
	// SQLite admits one writer at a time anyway; queueing here, with
	// context cancellation, avoids the busy handler's sleep-and-retry
	// polling between goroutines of one process.
	wsem      chan struct{}
	closeOnce sync.Once
	closeErr  error
}

var _ session.Store = (*Store)(nil)

// Open opens (creating if needed) the SQLite database at path and applies
// pending migrations. path is a file name, ":memory:" for a private
// in-memory database (one connection, lost on Close), or a "file:" URI;
// Open adds its own DSN parameters (WAL, foreign keys, busy timeout,
// immediate transactions). Errors are prefixed "sqlitestore:".
func Open(ctx context.Context, path string) (*Store, error) {
	if path == "" {
		return nil, errors.New("sqlitestore: empty database path")
	}
	params := "_txlock=immediate&_busy_timeout=" + fmt.Sprint(BusyTimeout.Milliseconds()) +
		"&_foreign_keys=1&_synchronous=NORMAL"
	memory := path == ":memory:" || strings.Contains(path, "mode=memory")
	if !memory {
		params += "&_journal_mode=WAL"
	}
	sep := "?"
	if strings.Contains(path, "?") {
		sep = "&"
	}
	db, err := sql.Open("sqlite", path+sep+params)
	if err != nil {
		return nil, fmt.Errorf("sqlitestore: open %s: %w", path, err)
	}
	if memory {
		// Every connection to ":memory:" is a separate database: keep one
		// connection, forever.
		db.SetMaxOpenConns(1)
		db.SetConnMaxLifetime(0)
		db.SetConnMaxIdleTime(0)
	} else {
		db.SetMaxOpenConns(8)
		db.SetMaxIdleConns(8)
	}
	s := &Store{db: db, wsem: make(chan struct{}, 1)}
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("sqlitestore: open %s: %w", path, err)
	}
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("sqlitestore: %w", err)
	}
	return s, nil
}

// Close closes the database. Later calls return the first call's result.
func (s *Store) Close() error {
	s.closeOnce.Do(func() { s.closeErr = s.db.Close() })
	return s.closeErr
}

// write runs fn in a write transaction and commits it; on any error the
// transaction is rolled back and nothing is written.
func (s *Store) write(ctx context.Context, fn func(tx *sql.Tx) error) error {
	select {
	case s.wsem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-s.wsem }()
	tx, err := s.db.BeginTx(ctx, nil) // BEGIN IMMEDIATE, from _txlock
	if err != nil {
		return fmt.Errorf("sqlitestore: begin: %w", err)
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("sqlitestore: commit: %w", err)
	}
	return nil
}

func fromMicros(us int64) time.Time { return time.UnixMicro(us).UTC() }

var drv = sqlstore.Driver{Store: "sqlitestore", NoRows: sql.ErrNoRows}

// inTx runs fn in a write transaction, as [Store.write], and returns its
// result once committed.
func inTx[T any](ctx context.Context, s *Store, fn func(*sql.Tx) (T, error)) (T, error) {
	return sqlstore.InTx(func(f func(*sql.Tx) error) error { return s.write(ctx, f) }, fn)
}

// jsonList encodes ids for json_each, which lets one bound parameter carry a
// batch of any size.
func jsonList[T any](ids []T) string {
	b, _ := json.Marshal(ids) // strings and ints always encode
	return string(b)
}

const sessionCols = `id, owner, title, version, created_at, updated_at`

func scanSession(r sqlstore.Scanner) (session.Session, error) {
	var s session.Session
	var created, updated int64
	if err := r.Scan(&s.ID, &s.Owner, &s.Title, &s.Version, &created, &updated); err != nil {
		return session.Session{}, err
	}
	s.CreatedAt, s.UpdatedAt = fromMicros(created), fromMicros(updated)
	return s, nil
}

const nodeCols = `id, session_id, owner, short_no, seq, role, content, metadata, refs, version, created_at, updated_at`

func scanNode(r sqlstore.Scanner) (session.Node, error) {
	var n session.Node
	var shortNo, created, updated int64
	var meta, refs sql.NullString
	if err := r.Scan(&n.ID, &n.SessionID, &n.Owner, &shortNo, &n.Seq, &n.Role, &n.Content, &meta, &refs, &n.Version, &created, &updated); err != nil {
		return session.Node{}, err
	}
	n.CreatedAt, n.UpdatedAt = fromMicros(created), fromMicros(updated)
	if err := sqlstore.DecodeNode(&n, shortNo, []byte(meta.String)); err != nil {
		return session.Node{}, err
	}
	if refs.String != "" {
		if err := json.Unmarshal([]byte(refs.String), &n.Refs); err != nil {
			return session.Node{}, fmt.Errorf("node %s: decode refs: %w", n.ID, err)
		}
		if len(n.Refs) == 0 {
			n.Refs = nil
		}
	}
	return n, nil
}

// storedArgs returns the bound parameters for the metadata and refs of n,
// as encoded by sqlstore.EncodeNode: TEXT, or NULL when empty.
func storedArgs(n session.Node, meta []byte) (metaArg, refsArg any) {
	if meta != nil {
		metaArg = string(meta)
	}
	if n.Refs != nil {
		refsArg = jsonList(n.Refs)
	}
	return metaArg, refsArg
}

// CreateSession implements [session.Store.CreateSession].
func (s *Store) CreateSession(ctx context.Context, in session.Session) (session.Session, error) {
	t := sqlstore.Now()
	out, err := sqlstore.NewSession(in, t)
	if err != nil {
		return session.Session{}, err
	}
	return inTx(ctx, s, func(tx *sql.Tx) (session.Session, error) {
		var exists int
		if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM sessions WHERE owner = ? AND id = ?`, out.Owner, out.ID).Scan(&exists); err != nil {
			return session.Session{}, drv.Err("create session", err)
		}
		if exists > 0 {
			return session.Session{}, sqlstore.Exists("session", out.ID)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO sessions (id, owner, title, version, next_seq, activity, created_at, updated_at)
			VALUES (?, ?, ?, 1, 0, (SELECT coalesce(max(activity), 0) + 1 FROM sessions), ?, ?)`,
			out.ID, out.Owner, out.Title, t.UnixMicro(), t.UnixMicro()); err != nil {
			return session.Session{}, drv.Err("create session", err)
		}
		return out, nil
	})
}

// GetSession implements [session.Store.GetSession].
func (s *Store) GetSession(ctx context.Context, owner, id string) (session.Session, error) {
	out, err := scanSession(s.db.QueryRowContext(ctx, `SELECT `+sessionCols+` FROM sessions WHERE id = ? AND owner = ?`, id, owner))
	if err != nil {
		return session.Session{}, drv.RowErr("get session", err, sqlstore.NotFound("session", id))
	}
	return out, nil
}

// GetSessions implements [session.Store.GetSessions].
func (s *Store) GetSessions(ctx context.Context, keys []session.SessionKey) (map[session.SessionKey]session.Session, error) {
	return sqlstore.ByKey(keys, func(keys []session.SessionKey) ([]session.Session, error) {
		return s.querySessions(ctx, "get sessions", `SELECT `+sessionCols+` FROM sessions
			WHERE (owner, id) IN (SELECT value ->> 0, value ->> 1 FROM json_each(?))`, keyList(keys))
	}, session.Session.Key)
}

// keyList encodes session keys for json_each as [[owner, id], ...], one
// bound parameter for a batch of any size.
func keyList(keys []session.SessionKey) string {
	pairs := make([][2]string, len(keys))
	for i, k := range keys {
		pairs[i] = [2]string{k.Owner, k.ID}
	}
	return jsonList(pairs)
}

type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// query runs stmt on q and returns dst with the rows it selects appended,
// each read by scan; errors name op.
func query[T any](ctx context.Context, q querier, op string, dst []T, scan func(sqlstore.Scanner) (T, error), stmt string, args ...any) ([]T, error) {
	rows, err := q.QueryContext(ctx, stmt, args...)
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

// querySessions returns the sessions stmt selects, none as an empty slice;
// errors name op.
func (s *Store) querySessions(ctx context.Context, op, stmt string, args ...any) ([]session.Session, error) {
	return query(ctx, s.db, op, []session.Session{}, scanSession, stmt, args...)
}

// queryNodes returns the nodes stmt selects, none as nil.
func queryNodes(ctx context.Context, q querier, stmt string, args ...any) ([]session.Node, error) {
	return query(ctx, q, "query nodes", nil, scanNode, stmt, args...)
}

// ListSessions implements [session.Store.ListSessions].
func (s *Store) ListSessions(ctx context.Context, owner string, limit int) ([]session.Session, error) {
	return s.querySessions(ctx, "list sessions", `SELECT `+sessionCols+` FROM sessions WHERE owner = ?
		ORDER BY updated_at DESC, activity DESC LIMIT ?`, owner, session.ListLimit(limit))
}

// RecentSessions implements [session.Store.RecentSessions].
func (s *Store) RecentSessions(ctx context.Context, limit int) ([]session.Session, error) {
	return s.querySessions(ctx, "list sessions", `SELECT `+sessionCols+` FROM sessions
		ORDER BY updated_at DESC, activity DESC LIMIT ?`, session.ListLimit(limit))
}

// touchSession bumps the session's version, updated_at and activity and
// returns it, or ErrNotFound when owner has no session id.
func touchSession(ctx context.Context, tx *sql.Tx, owner, id string, t time.Time) (session.Session, error) {
	out, err := scanSession(tx.QueryRowContext(ctx, `UPDATE sessions SET version = version + 1, updated_at = ?,
		activity = (SELECT coalesce(max(activity), 0) + 1 FROM sessions)
		WHERE id = ? AND owner = ? RETURNING `+sessionCols, t.UnixMicro(), id, owner))
	if err != nil {
		return session.Session{}, drv.RowErr("touch session", err, sqlstore.NotFound("session", id))
	}
	return out, nil
}

// checkSessionVersion reads the version of owner's session id inside tx:
// ErrNotFound when there is none, a *session.VersionMismatchError when
// ifVersion is set and stale.
func checkSessionVersion(ctx context.Context, tx *sql.Tx, owner, id string, ifVersion int64) error {
	var cur int64
	if err := tx.QueryRowContext(ctx, `SELECT version FROM sessions WHERE id = ? AND owner = ?`, id, owner).Scan(&cur); err != nil {
		return drv.RowErr("load session", err, sqlstore.NotFound("session", id))
	}
	return sqlstore.CheckSessionVersion(id, ifVersion, cur)
}

// Ping implements [session.Store.Ping]: one read of the schema table.
func (s *Store) Ping(ctx context.Context) error {
	return drv.Ping(ctx, func(ctx context.Context) error {
		var v int64
		return s.db.QueryRowContext(ctx, `SELECT count(*) FROM schema_migrations`).Scan(&v)
	})
}

// UpdateSession implements [session.Store.UpdateSession].
func (s *Store) UpdateSession(ctx context.Context, owner, id string, ifVersion int64, title string) (session.Session, error) {
	if err := sqlstore.CheckSessionUpdate(owner, id, ifVersion, title); err != nil {
		return session.Session{}, err
	}
	return inTx(ctx, s, func(tx *sql.Tx) (session.Session, error) {
		if err := checkSessionVersion(ctx, tx, owner, id, ifVersion); err != nil {
			return session.Session{}, err
		}
		out, err := touchSession(ctx, tx, owner, id, sqlstore.Now())
		if err != nil {
			return session.Session{}, err
		}
		if _, err := tx.ExecContext(ctx, `UPDATE sessions SET title = ? WHERE owner = ? AND id = ?`, title, owner, id); err != nil {
			return session.Session{}, drv.Err("update session", err)
		}
		out.Title = title
		return out, nil
	})
}

// DeleteSession implements [session.Store.DeleteSession].
func (s *Store) DeleteSession(ctx context.Context, owner, id string, ifVersion int64) ([]session.Node, error) {
	if err := sqlstore.CheckIfVersion(ifVersion); err != nil {
		return nil, err
	}
	return inTx(ctx, s, func(tx *sql.Tx) ([]session.Node, error) {
		if err := checkSessionVersion(ctx, tx, owner, id, ifVersion); err != nil {
			return nil, err
		}
		deleted, err := queryNodes(ctx, tx, `SELECT `+nodeCols+` FROM nodes WHERE owner = ? AND session_id = ? ORDER BY seq`, owner, id)
		if err != nil {
			return nil, err
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM nodes WHERE owner = ? AND session_id = ?`, owner, id); err != nil {
			return nil, drv.Err("delete session", err)
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM sessions WHERE owner = ? AND id = ?`, owner, id); err != nil {
			return nil, drv.Err("delete session", err)
		}
		return deleted, nil
	})
}

// checkRefs returns an ErrInvalid error naming the first of refs that is not
// a node of owner.
func checkRefs(ctx context.Context, tx *sql.Tx, owner string, refs []string) error {
	if len(refs) == 0 {
		return nil
	}
	found, err := query(ctx, tx, "check refs", make([]string, 0, len(refs)), scanString,
		`SELECT id FROM nodes WHERE owner = ? AND id IN (SELECT value FROM json_each(?))`, owner, jsonList(refs))
	if err != nil {
		return err
	}
	return sqlstore.CheckRefs(refs, found)
}

func scanString(r sqlstore.Scanner) (string, error) {
	var v string
	err := r.Scan(&v)
	return v, err
}

// CreateNode implements [session.Store.CreateNode].
func (s *Store) CreateNode(ctx context.Context, in session.Node, maxNodes int) (session.Node, error) {
	t := sqlstore.Now()
	n, meta, err := sqlstore.NewNode(in, t)
	if err != nil {
		return session.Node{}, err
	}
	metaArg, refsArg := storedArgs(n, meta)
	return inTx(ctx, s, func(tx *sql.Tx) (session.Node, error) {
		if _, err := touchSession(ctx, tx, n.Owner, n.SessionID, t); err != nil {
			return session.Node{}, err
		}
		// The write transaction holds SQLite's write lock: no other create
		// can add a node between this count and the insert.
		if maxNodes > 0 {
			var count int
			if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM nodes WHERE owner = ? AND session_id = ?`, n.Owner, n.SessionID).Scan(&count); err != nil {
				return session.Node{}, drv.Err("create node: count", err)
			}
			if count >= maxNodes {
				return session.Node{}, &session.LimitError{What: "nodes", ID: n.SessionID, Limit: maxNodes}
			}
		}
		if err := tx.QueryRowContext(ctx, `UPDATE sessions SET next_seq = next_seq + 1 WHERE owner = ? AND id = ? RETURNING next_seq`, n.Owner, n.SessionID).Scan(&n.Seq); err != nil {
			return session.Node{}, drv.Err("create node", err)
		}
		if err := checkRefs(ctx, tx, n.Owner, n.Refs); err != nil {
			return session.Node{}, err
		}
		var exists int
		if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM nodes WHERE id = ?`, n.ID).Scan(&exists); err != nil {
			return session.Node{}, drv.Err("create node", err)
		}
		if exists > 0 {
			return session.Node{}, sqlstore.Exists("node", n.ID)
		}
		var shortNo int64
		if err := tx.QueryRowContext(ctx, `INSERT INTO owner_short_ids (owner, last) VALUES (?, 1)
			ON CONFLICT (owner) DO UPDATE SET last = last + 1 RETURNING last`, n.Owner).Scan(&shortNo); err != nil {
			return session.Node{}, drv.Err("create node: short ID", err)
		}
		n.ShortID = session.FormatShortID(shortNo)
		if _, err := tx.ExecContext(ctx, `INSERT INTO nodes (`+nodeCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?)`,
			n.ID, n.SessionID, n.Owner, shortNo, n.Seq, n.Role, n.Content, metaArg, refsArg, t.UnixMicro(), t.UnixMicro()); err != nil {
			return session.Node{}, drv.Err("create node", err)
		}
		return n, nil
	})
}

// GetNodes implements [session.Store.GetNodes].
func (s *Store) GetNodes(ctx context.Context, ids []string) (map[string]session.Node, error) {
	return sqlstore.ByKey(ids, func(ids []string) ([]session.Node, error) {
		return queryNodes(ctx, s.db, `SELECT `+nodeCols+` FROM nodes WHERE id IN (SELECT value FROM json_each(?))`, jsonList(ids))
	}, sqlstore.NodeID)
}

// SessionNodeIDs implements [session.Store.SessionNodeIDs]. One statement
// reads each list and its version from one snapshot.
func (s *Store) SessionNodeIDs(ctx context.Context, keys []session.SessionKey) (map[session.SessionKey]session.NodeList, error) {
	out := make(map[session.SessionKey]session.NodeList, len(keys))
	if len(keys) == 0 {
		return out, nil
	}
	rows, err := s.db.QueryContext(ctx, `SELECT s.owner, s.id, s.version, n.id FROM sessions s
		LEFT JOIN nodes n ON n.owner = s.owner AND n.session_id = s.id
		WHERE (s.owner, s.id) IN (SELECT value ->> 0, value ->> 1 FROM json_each(?))
		ORDER BY s.owner, s.id, n.seq`, keyList(keys))
	if err != nil {
		return nil, drv.Err("session node IDs", err)
	}
	defer rows.Close()
	for rows.Next() {
		var k session.SessionKey
		var version int64
		var nid sql.NullString
		if err := rows.Scan(&k.Owner, &k.ID, &version, &nid); err != nil {
			return nil, drv.Err("session node IDs", err)
		}
		l, ok := out[k]
		if !ok {
			l = session.NodeList{Owner: k.Owner, SessionID: k.ID, Version: version, NodeIDs: []string{}}
		}
		if nid.Valid {
			l.NodeIDs = append(l.NodeIDs, nid.String)
		}
		out[k] = l
	}
	if err := rows.Err(); err != nil {
		return nil, drv.Err("session node IDs", err)
	}
	return out, nil
}

// loadForWrite reads the owner's node id inside tx and checks ifVersion.
func loadForWrite(ctx context.Context, tx *sql.Tx, owner, id string, ifVersion int64) (session.Node, error) {
	cur, err := scanNode(tx.QueryRowContext(ctx, `SELECT `+nodeCols+` FROM nodes WHERE id = ? AND owner = ?`, id, owner))
	if err != nil {
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
	return inTx(ctx, s, func(tx *sql.Tx) (session.Node, error) {
		cur, err := loadForWrite(ctx, tx, owner, id, ifVersion)
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
		metaArg, refsArg := storedArgs(n, meta)
		res, err := tx.ExecContext(ctx, `UPDATE nodes SET role = ?, content = ?, metadata = ?, refs = ?, version = ?, updated_at = ?
			WHERE id = ? AND version = ?`, n.Role, n.Content, metaArg, refsArg, n.Version, n.UpdatedAt.UnixMicro(), id, cur.Version)
		if err != nil {
			return session.Node{}, drv.Err("update node", err)
		}
		if k, err := res.RowsAffected(); err != nil || k != 1 {
			return session.Node{}, drv.Err("update node", fmt.Errorf("%d rows changed (%v)", k, err))
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
	return inTx(ctx, s, func(tx *sql.Tx) (session.Node, error) {
		cur, err := loadForWrite(ctx, tx, owner, id, ifVersion)
		if err != nil {
			return session.Node{}, err
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM nodes WHERE id = ?`, id); err != nil {
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
	n, err := scanNode(s.db.QueryRowContext(ctx, `SELECT `+nodeCols+` FROM nodes WHERE owner = ? AND short_no = ?`, owner, num))
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
		return queryNodes(ctx, s.db, `SELECT `+nodeCols+` FROM nodes WHERE owner = ? AND short_no IN (SELECT value FROM json_each(?))`, owner, jsonList(nums))
	}, sqlstore.NodeShortID)
}
