-- The sessions of the pages (deploy.Session). A browser's cookie carries a
-- random id; only its SHA-256 is kept here (id_hash), so a copy of the
-- database opens no session. fingerprint is a MAC keyed by the token the
-- session was made with, never the token: a session whose token changed
-- since is refused. Times are as in deploys (0001_init.sql), so they sort
-- as text.
CREATE TABLE sessions (
	id_hash     BLOB NOT NULL PRIMARY KEY,
	role        TEXT NOT NULL,
	fingerprint BLOB NOT NULL,
	created_at  TEXT NOT NULL,
	last_seen   TEXT NOT NULL
) STRICT, WITHOUT ROWID;

-- Ending idle sessions, and the oldest beyond the bound.
CREATE INDEX sessions_last_seen ON sessions (last_seen);
-- Ending sessions past their lifetime.
CREATE INDEX sessions_created_at ON sessions (created_at);
