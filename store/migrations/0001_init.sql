-- Deploys, and the webhook deliveries that created them.
--
-- Times are RFC 3339 text in UTC with nine fraction digits (fixed width, so
-- they sort as text and round-trip to the nanosecond); steps is the JSON
-- array of deploy.Step ('null' when the deploy has none yet).

CREATE TABLE deploys (
	-- AUTOINCREMENT: an id is in links posted to forges, so it is never
	-- reused, even if old deploys are deleted one day.
	id            INTEGER PRIMARY KEY AUTOINCREMENT,
	target        TEXT    NOT NULL,
	forge         TEXT    NOT NULL,
	repo          TEXT    NOT NULL,
	branch        TEXT    NOT NULL,
	sha           TEXT    NOT NULL,
	"trigger"     TEXT    NOT NULL,
	state         TEXT    NOT NULL,
	generation    INTEGER NOT NULL,
	created_at    TEXT    NOT NULL,
	started_at    TEXT,
	finished_at   TEXT,
	steps         TEXT    NOT NULL,
	error         TEXT    NOT NULL,
	superseded_by INTEGER REFERENCES deploys (id) ON DELETE SET NULL,
	url           TEXT    NOT NULL,
	author        TEXT    NOT NULL,
	message       TEXT    NOT NULL,
	pusher        TEXT    NOT NULL,
	delivery_id   TEXT    NOT NULL,
	out_path      TEXT    NOT NULL,
	retry_of      INTEGER REFERENCES deploys (id) ON DELETE SET NULL
) STRICT;

-- List by target, and LastSucceeded / List by target and state; newest
-- first is a backwards walk of the id column.
CREATE INDEX deploys_target ON deploys (target, id);
CREATE INDEX deploys_target_state ON deploys (target, state, id);
-- List by state, and Unfinished.
CREATE INDEX deploys_state ON deploys (state, id);

-- One row per accepted delivery and target: the idempotency key of a
-- webhook. A forge redelivers with the same id; one delivery may deploy
-- several targets that follow the same repository and branch.
CREATE TABLE deliveries (
	forge       TEXT    NOT NULL,
	delivery_id TEXT    NOT NULL,
	target      TEXT    NOT NULL,
	deploy_id   INTEGER NOT NULL REFERENCES deploys (id) ON DELETE CASCADE,
	received_at TEXT    NOT NULL,
	UNIQUE (forge, delivery_id, target)
) STRICT;
