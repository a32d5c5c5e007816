package sqlstore

import "github.com/tiercache/tiercache/session"

// Scanner is one result row: a pgx.Row or pgx.Rows, a *sql.Row or *sql.Rows.
type Scanner interface {
	Scan(dest ...any) error
}

// Rows is a result set as both pgx.Rows and *sql.Rows present it. Closing
// it stays with the caller, whose drivers disagree on Close's signature.
type Rows interface {
	Scanner
	Next() bool
	Err() error
}

// AppendRows scans every row with scan, appends the results to dst and
// returns it. It stops at the first scan error; a nil error means rows.Err
// was nil too. Callers pick nil or an empty dst for "no rows".
func AppendRows[T any](dst []T, rows Rows, scan func(Scanner) (T, error)) ([]T, error) {
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		dst = append(dst, v)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	return dst, nil
}

// ByKey looks up a batch: for a non-empty keys it calls query once with the
// whole batch and returns its results indexed by key. An empty batch returns
// an empty map without calling query. Errors from query are returned as
// they are.
func ByKey[K any, M comparable, T any](keys []K, query func([]K) ([]T, error), key func(T) M) (map[M]T, error) {
	out := make(map[M]T, len(keys))
	if len(keys) == 0 {
		return out, nil
	}
	list, err := query(keys)
	if err != nil {
		return nil, err
	}
	for _, v := range list {
		out[key(v)] = v
	}
	return out, nil
}

// NodeID is the key of [ByKey] for lookups by node ID.
func NodeID(n session.Node) string { return n.ID }

// NodeShortID is the key of [ByKey] for lookups by short ID.
func NodeShortID(n session.Node) string { return n.ShortID }
