// Package sqlstore holds what the SQL stores of record (pgstore and
// sqlitestore) do alike and is not SQL: loading the embedded migrations,
// draining result rows, batching lookups by key, and preparing sessions and
// nodes for a write. Each store keeps its own SQL, transactions, locking and
// driver error mapping; nothing here talks to a database.
package sqlstore
