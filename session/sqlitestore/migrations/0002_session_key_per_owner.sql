-- Session IDs become unique per owner: the key of sessions is (owner, id),
-- and nodes refer to their session by (owner, session_id). SQLite cannot
-- change a primary key or foreign key in place, so both tables are rebuilt
-- and their rows copied, inside the migration's transaction.
--
-- Foreign keys stay enforced (PRAGMA foreign_keys cannot change inside a
-- transaction), so the order matters: renaming sessions also repoints the
-- old nodes table's reference to the renamed table; the copies are made
-- while both old tables exist; the old nodes go before the old sessions, so
-- dropping sessions (an implicit DELETE) cascades into nothing. A node whose
-- owner is not its session's owner, which the store never writes, fails the
-- new foreign key and the migration, and nothing changes.
ALTER TABLE nodes RENAME TO nodes_0001;
ALTER TABLE sessions RENAME TO sessions_0001;

CREATE TABLE sessions (
    id         TEXT    NOT NULL,           -- unique per owner
    owner      TEXT    NOT NULL,
    title      TEXT    NOT NULL,
    version    INTEGER NOT NULL,           -- +1 on every change to the session or its nodes
    next_seq   INTEGER NOT NULL DEFAULT 0, -- last Seq given to a node of this session
    activity   INTEGER NOT NULL,           -- store-wide counter, breaks ties between equal updated_at
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (owner, id)
) STRICT;

CREATE TABLE nodes (
    id         TEXT    PRIMARY KEY,      -- unique across owners
    session_id TEXT    NOT NULL,
    owner      TEXT    NOT NULL,         -- the session's owner
    short_no   INTEGER NOT NULL,         -- the 12 of short ID n12
    seq        INTEGER NOT NULL,
    role       TEXT    NOT NULL,
    content    TEXT    NOT NULL,
    metadata   TEXT,                     -- JSON object, NULL when empty
    refs       TEXT,                     -- JSON array of node IDs, NULL when empty
    version    INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    FOREIGN KEY (owner, session_id) REFERENCES sessions (owner, id) ON DELETE CASCADE
) STRICT;

INSERT INTO sessions (id, owner, title, version, next_seq, activity, created_at, updated_at)
    SELECT id, owner, title, version, next_seq, activity, created_at, updated_at FROM sessions_0001;
INSERT INTO nodes (id, session_id, owner, short_no, seq, role, content, metadata, refs, version, created_at, updated_at)
    SELECT id, session_id, owner, short_no, seq, role, content, metadata, refs, version, created_at, updated_at FROM nodes_0001;

DROP TABLE nodes_0001;
DROP TABLE sessions_0001;

CREATE INDEX sessions_owner_recent ON sessions (owner, updated_at DESC, activity DESC);
CREATE INDEX sessions_recent ON sessions (updated_at DESC, activity DESC);
CREATE INDEX sessions_activity ON sessions (activity);
CREATE UNIQUE INDEX nodes_owner_short ON nodes (owner, short_no);
CREATE UNIQUE INDEX nodes_session_seq ON nodes (owner, session_id, seq);
