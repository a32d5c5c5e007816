-- Sessions and their context nodes. Every object lives in the schema that
-- search_path selects, so one database can hold several isolated stores.
CREATE SEQUENCE session_activity;

CREATE TABLE sessions (
    id         text        PRIMARY KEY,
    owner      text        NOT NULL,
    title      text        NOT NULL,
    version    bigint      NOT NULL,           -- +1 on every change to the session or its nodes
    next_seq   bigint      NOT NULL DEFAULT 0, -- last Seq given to a node of this session
    activity   bigint      NOT NULL DEFAULT nextval('session_activity'), -- breaks ties between equal updated_at
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);

CREATE INDEX sessions_owner_recent ON sessions (owner, updated_at DESC, activity DESC);
CREATE INDEX sessions_recent ON sessions (updated_at DESC, activity DESC);

-- The per-owner short-ID sequence: last is the number of the newest short ID.
-- Rows are never deleted, so short IDs are never reused.
CREATE TABLE owner_short_ids (
    owner text   PRIMARY KEY,
    last  bigint NOT NULL
);

CREATE TABLE nodes (
    id         text        PRIMARY KEY,
    session_id text        NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    owner      text        NOT NULL,
    short_no   bigint      NOT NULL, -- the 12 of short ID n12
    seq        bigint      NOT NULL,
    role       text        NOT NULL,
    content    text        NOT NULL,
    metadata   jsonb,                -- NULL when empty
    refs       text[],               -- NULL when empty
    version    bigint      NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);

CREATE UNIQUE INDEX nodes_owner_short ON nodes (owner, short_no);
CREATE UNIQUE INDEX nodes_session_seq ON nodes (session_id, seq);
