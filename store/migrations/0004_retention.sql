-- Retention (Store.Prune) deletes old deploys. Deleting a deploy makes
-- SQLite find the rows that refer to it: its deliveries (ON DELETE CASCADE)
-- and the deploys it superseded or retried (ON DELETE SET NULL). Without an
-- index on each referring column every deleted deploy would scan both
-- tables whole.
CREATE INDEX deliveries_deploy ON deliveries (deploy_id);
CREATE INDEX deploys_superseded_by ON deploys (superseded_by);
CREATE INDEX deploys_retry_of ON deploys (retry_of);
