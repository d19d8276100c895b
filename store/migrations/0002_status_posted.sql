-- Whether a finished deploy's final commit status reached the forge (or
-- needs none). A status still owed when flakeship stopped is posted again on
-- the next start.
ALTER TABLE deploys ADD COLUMN status_posted INTEGER NOT NULL DEFAULT 0;
CREATE INDEX deploys_unposted ON deploys (finished_at) WHERE status_posted = 0;
