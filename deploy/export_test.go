package deploy

// IntakeLen is the number of submissions waiting for the next group commit.
func (q *Queue) IntakeLen() int {
	q.intakeMu.Lock()
	defer q.intakeMu.Unlock()
	return len(q.intake)
}

// SetPruneBatch makes Prune delete at most n deploys per store transaction
// and call after with the ids of each batch once it is committed.
func (q *Queue) SetPruneBatch(n int, after func(ids []int64)) {
	q.pruneMu.Lock()
	defer q.pruneMu.Unlock()
	q.pruneBatch, q.pruneHook = n, after
}
