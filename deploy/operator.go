package deploy

import (
	"errors"
	"time"

	"github.com/flakeship/flakeship/config"
	"github.com/flakeship/flakeship/forge"
)

// ErrInvalid is returned (wrapped with the reason) for a manual request
// whose ref or sha is not acceptable.
var ErrInvalid = errors.New("invalid request")

// ErrNothingToRollBack is returned by Rollback when the target has no
// earlier build to go back to.
var ErrNothingToRollBack = errors.New("nothing to roll back to")

// ManualRequest is what an operator asks to deploy: the branch head (both
// empty), the head of a branch (Ref), or one commit (SHA). The commit must be
// on the target's configured branch, as for a push.
type ManualRequest struct {
	Ref string `json:"ref,omitempty"`
	SHA string `json:"sha,omitempty"`
}

// TargetStatus is one target as the operator pages and GET /api/targets show
// it.
type TargetStatus struct {
	Name       string            `json:"name"`
	Forge      forge.Kind        `json:"forge"`
	Repo       string            `json:"repo"`
	Branch     string            `json:"branch"`
	Activate   config.Activation `json:"activate"`
	Unit       string            `json:"unit,omitempty"`
	CurrentSHA string            `json:"current_sha"` // commit of the build that runs, "" before the first deploy
	Generation int               `json:"generation"`  // its profile generation, 0 before the first deploy
	LastDeploy *Deploy           `json:"last_deploy"` // newest deploy of any state, nil if none
	Running    *Deploy           `json:"running"`     // the deploy being worked on, nil if none
	Queued     *Deploy           `json:"queued"`      // the deploy waiting for it, nil if none
}

// Observer is told about what the queue does, for metrics. Its methods must
// be quick, safe for concurrent use, and not call back: Waiting is called
// with the scheduler's lock held, Transition by the deploy's owner after the
// change is stored (in order for each deploy, concurrently for different
// ones).
type Observer interface {
	// Transition is called after d moved from state from to d.State and
	// was recorded.
	Transition(d *Deploy, from State)
	// Waiting is called with the number of deploys queued behind running
	// ones whenever it may have changed.
	Waiting(n int)
}

// IntakeObserver is what an Observer may also implement to be told of each
// group commit of the intake (see Queue.commitBatch), for metrics. It is
// separate from Observer so that observers without it keep working; the
// queue finds it by a type assertion on Options.Observer. It is called on
// the intake's committer, after each commit: it must be quick and not call
// back.
type IntakeObserver interface {
	// IntakeCommit is called after a commit of n submissions (new
	// deploys and redeliveries alike) that took took, whether the commit
	// succeeded or not.
	IntakeCommit(n int, took time.Duration)
}

// observeCommit tells the observer, if it is an IntakeObserver, of a
// commit of n submissions that started at start.
func (q *Queue) observeCommit(n int, start time.Time) {
	if o, ok := q.observer.(IntakeObserver); ok {
		o.IntakeCommit(n, time.Since(start))
	}
}
