package sqlstore

import (
	"context"
	"errors"
	"fmt"

	"github.com/tiercache/tiercache/session"
)

// Driver is what the shared code knows of a store's database driver: the
// name its errors carry and how it reports a one-row query that found none.
type Driver struct {
	Store  string // the store's package name, "pgstore" or "sqlitestore"
	NoRows error  // pgx.ErrNoRows, sql.ErrNoRows
}

// Err wraps err, which the database returned for op, as "store: op: err".
func (d Driver) Err(op string, err error) error {
	return fmt.Errorf("%s: %s: %w", d.Store, op, err)
}

// RowErr maps the non-nil error of a one-row query run for op: notFound
// when the query found no row, otherwise as [Driver.Err].
func (d Driver) RowErr(op string, err, notFound error) error {
	if errors.Is(err, d.NoRows) {
		return notFound
	}
	return d.Err(op, err)
}

// Ping runs query, the store's cheapest round trip to its database, under
// ctx, bounded by [session.DefaultPingTimeout] when ctx has no deadline,
// and names the store in the error.
func (d Driver) Ping(ctx context.Context, query func(context.Context) error) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, session.DefaultPingTimeout)
		defer cancel()
	}
	if err := query(ctx); err != nil {
		return fmt.Errorf("%s: ping database: %w", d.Store, err)
	}
	return nil
}

// NotFound returns the ErrNotFound error for the missing session or node
// (kind) id.
func NotFound(kind, id string) error {
	return fmt.Errorf("%w: %s %q", session.ErrNotFound, kind, id)
}

// ShortIDNotFound returns the ErrNotFound error for short-ID number num.
func ShortIDNotFound(num int64) error {
	return fmt.Errorf("%w: short ID %s", session.ErrNotFound, session.FormatShortID(num))
}

// Exists returns the ErrExists error for the session or node (kind) id a
// create found taken.
func Exists(kind, id string) error {
	return fmt.Errorf("%w: %s %q", session.ErrExists, kind, id)
}

// InTx runs fn inside run, a store's way to run one transaction, and
// returns what fn returned once run has committed; on any error, the zero
// T and the error.
func InTx[Tx, T any](run func(func(Tx) error) error, fn func(Tx) (T, error)) (T, error) {
	var out T
	err := run(func(tx Tx) error {
		var err error
		out, err = fn(tx)
		return err
	})
	if err != nil {
		var zero T
		return zero, err
	}
	return out, nil
}
