-- Sessions and their context nodes. Times are Unix microseconds, UTC.
CREATE TABLE sessions (
    id         TEXT    PRIMARY KEY,
    owner      TEXT    NOT NULL,
    title      TEXT    NOT NULL,
    version    INTEGER NOT NULL,           -- +1 on every change to the session or its nodes
    next_seq   INTEGER NOT NULL DEFAULT 0, -- last Seq given to a node of this session
    activity   INTEGER NOT NULL,           -- store-wide counter, breaks ties between equal updated_at
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;

CREATE INDEX sessions_owner_recent ON sessions (owner, updated_at DESC, activity DESC);
CREATE INDEX sessions_recent ON sessions (updated_at DESC, activity DESC);
CREATE INDEX sessions_activity ON sessions (activity);

-- The per-owner short-ID sequence: last is the number of the newest short ID.
-- Rows are never deleted, so short IDs are never reused.
CREATE TABLE owner_short_ids (
    owner TEXT    PRIMARY KEY,
    last  INTEGER NOT NULL
) STRICT;

CREATE TABLE nodes (
    id         TEXT    PRIMARY KEY,
    session_id TEXT    NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    owner      TEXT    NOT NULL,
    short_no   INTEGER NOT NULL, -- the 12 of short ID n12
    seq        INTEGER NOT NULL,
    role       TEXT    NOT NULL,
    content    TEXT    NOT NULL,
    metadata   TEXT,             -- JSON object, NULL when empty
    refs       TEXT,             -- JSON array of node IDs, NULL when empty
    version    INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;

CREATE UNIQUE INDEX nodes_owner_short ON nodes (owner, short_no);
CREATE UNIQUE INDEX nodes_session_seq ON nodes (session_id, seq);
