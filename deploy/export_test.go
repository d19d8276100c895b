package deploy

// IntakeLen is the number of submissions waiting for the next group commit.
func (q *Queue) IntakeLen() int {
	q.intakeMu.Lock()
	defer q.intakeMu.Unlock()
	return len(q.intake)
}
