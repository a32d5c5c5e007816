// Package sqlstore holds what the SQL stores of record (pgstore and
// sqlitestore) do alike and is not SQL: loading the embedded migrations,
// draining result rows, batching lookups by key, preparing sessions and
// nodes for a write, the errors both return, and carrying a result out of
// a transaction. Each store keeps its own SQL, transactions and locking,
// and names its driver in a [Driver]; nothing here talks to a database.
package sqlstore
