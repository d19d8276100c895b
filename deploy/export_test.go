package deploy

// IntakeLen is the number of submissions waiting for the next group commit.
func (q *Queue) IntakeLen() int { return q.intake.len() }

// SetPruneBatch makes Prune delete at most n deploys per store transaction
// and call after with the ids of each batch once it is committed.
func (q *Queue) SetPruneBatch(n int, after func(ids []int64)) {
	q.pruner.mu.Lock()
	defer q.pruner.mu.Unlock()
	q.pruner.batch, q.pruner.hook = n, after
}

// LogPath returns the file that holds deploy id's log.
func (q *Queue) LogPath(id int64) string { return logPath(q.cfg.StateDir, id) }
