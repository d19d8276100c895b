package deploy

import (
	"fmt"
	"time"

	"github.com/flakeship/flakeship/forge"
)

// State is where a deploy is in its life (DESIGN.md "Deploy states").
type State string

// The deploy states. Succeeded, Failed, RolledBack, Superseded, Cancelled and
// Interrupted are terminal.
const (
	Queued      State = "queued"
	Fetching    State = "fetching"
	Building    State = "building"
	Activating  State = "activating"
	Verifying   State = "verifying"
	Succeeded   State = "succeeded"
	Failed      State = "failed"
	RolledBack  State = "rolled_back"
	Superseded  State = "superseded"
	Cancelled   State = "cancelled"
	Interrupted State = "interrupted"
)

// next is the single source of truth for transitions.
var next = map[State][]State{
	// Activating: a rollback deploy, which has nothing to fetch or build.
	Queued: {Fetching, Activating, Superseded, Cancelled, Interrupted},
	// Superseded: a push of a commit older than the one deployed.
	Fetching:   {Building, Failed, Superseded, Cancelled, Interrupted},
	Building:   {Activating, Failed, Cancelled, Interrupted},
	Activating: {Verifying, Failed, RolledBack, Interrupted},
	// Failed: unhealthy with no earlier generation to roll back to.
	Verifying: {Succeeded, Failed, RolledBack, Interrupted},
}

// States lists every state, in pipeline order then the ends.
func States() []State {
	return []State{Queued, Fetching, Building, Activating, Verifying,
		Succeeded, Failed, RolledBack, Superseded, Cancelled, Interrupted}
}

// ParseState turns a state name into a State.
func ParseState(s string) (State, error) {
	for _, st := range States() {
		if string(st) == s {
			return st, nil
		}
	}
	return "", fmt.Errorf("unknown deploy state %q", s)
}

// Terminal reports whether s is an end state.
func (s State) Terminal() bool {
	_, moves := next[s]
	return !moves
}

// CanMove reports whether a deploy in state s may move to t.
func (s State) CanMove(t State) bool {
	for _, n := range next[s] {
		if n == t {
			return true
		}
	}
	return false
}

// CommitState maps a deploy state to the commit status posted for it.
func (s State) CommitState() forge.CommitState {
	switch s {
	case Succeeded:
		return forge.Success
	case Failed, RolledBack:
		return forge.Failure
	case Superseded, Cancelled, Interrupted:
		return forge.Error
	default:
		return forge.Pending
	}
}

// step names the pipeline step a running state belongs to.
func (s State) step() string {
	switch s {
	case Fetching:
		return "fetch"
	case Building:
		return "build"
	case Activating:
		return "activate"
	case Verifying:
		return "verify"
	}
	return ""
}

// TransitionError is returned by Advance for a move the state table forbids.
type TransitionError struct {
	From, To State
}

func (e *TransitionError) Error() string {
	return fmt.Sprintf("deploy cannot move from %s to %s", e.From, e.To)
}

// Advance moves d to state s at time now: it stamps started_at on the first
// move out of queued, closes the running step (ok unless s is a failure) and
// opens the step of s, and stamps finished_at on an end state. It returns a
// *TransitionError for a move the table forbids and leaves d unchanged then.
func (d *Deploy) Advance(s State, now time.Time) error {
	if !d.State.CanMove(s) {
		return &TransitionError{From: d.State, To: s}
	}
	now = now.UTC()
	if d.StartedAt == nil && s != Superseded && s != Cancelled && s != Interrupted {
		d.StartedAt = &now
	}
	if n := len(d.Steps); n > 0 && d.Steps[n-1].FinishedAt == nil {
		d.Steps[n-1].FinishedAt = &now
		d.Steps[n-1].OK = !s.Terminal() || s == Succeeded
	}
	if name := s.step(); name != "" {
		d.Steps = append(d.Steps, Step{Name: name, StartedAt: now})
	}
	if s.Terminal() {
		d.FinishedAt = &now
	}
	d.State = s
	return nil
}
