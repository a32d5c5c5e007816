-- Session IDs become unique per owner: the key of sessions is (owner, id),
-- and nodes refer to their session by (owner, session_id). Rows stay where
-- they are. A node whose owner is not its session's owner, which the store
-- never writes, fails the new foreign key and the migration, and nothing
-- changes.
ALTER TABLE nodes DROP CONSTRAINT nodes_session_id_fkey;
ALTER TABLE sessions DROP CONSTRAINT sessions_pkey;
ALTER TABLE sessions ADD CONSTRAINT sessions_pkey PRIMARY KEY (owner, id);
ALTER TABLE nodes ADD CONSTRAINT nodes_session_fkey
    FOREIGN KEY (owner, session_id) REFERENCES sessions (owner, id) ON DELETE CASCADE;
DROP INDEX nodes_session_seq;
CREATE UNIQUE INDEX nodes_session_seq ON nodes (owner, session_id, seq);
