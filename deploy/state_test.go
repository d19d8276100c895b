package deploy

import (
	"errors"
	"testing"
	"time"

	"github.com/flakeship/flakeship/forge"
)

func TestAdvanceFollowsTheTableForEveryPairOfStates(t *testing.T) {
	legal := map[[2]State]bool{}
	for from, tos := range map[State][]State{
		Queued:     {Fetching, Activating, Superseded, Cancelled, Interrupted},
		Fetching:   {Building, Failed, Superseded, Cancelled, Interrupted},
		Building:   {Activating, Failed, Cancelled, Interrupted},
		Activating: {Verifying, Failed, RolledBack, Interrupted},
		Verifying:  {Succeeded, Failed, RolledBack, Interrupted},
	} {
		for _, to := range tos {
			legal[[2]State{from, to}] = true
		}
	}
	now := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	for _, from := range States() {
		for _, to := range States() {
			d := &Deploy{State: from}
			err := d.Advance(to, now)
			if legal[[2]State{from, to}] {
				if err != nil || d.State != to {
					t.Errorf("%s -> %s: err %v, state %s; want the move", from, to, err, d.State)
				}
				continue
			}
			var te *TransitionError
			if !errors.As(err, &te) || te.From != from || te.To != to {
				t.Errorf("%s -> %s: err %v, want *TransitionError", from, to, err)
			}
			if d.State != from || d.StartedAt != nil || d.FinishedAt != nil || len(d.Steps) != 0 {
				t.Errorf("%s -> %s: refused move changed the deploy: %+v", from, to, d)
			}
		}
	}
}

func TestTerminalStatesAreExactlyTheEnds(t *testing.T) {
	ends := map[State]bool{Succeeded: true, Failed: true, RolledBack: true, Superseded: true, Cancelled: true, Interrupted: true}
	for _, s := range States() {
		if s.Terminal() != ends[s] {
			t.Errorf("%s.Terminal() = %v, want %v", s, s.Terminal(), ends[s])
		}
	}
}

func TestCommitStateOfEveryState(t *testing.T) {
	want := map[State]forge.CommitState{
		Queued: forge.Pending, Fetching: forge.Pending, Building: forge.Pending,
		Activating: forge.Pending, Verifying: forge.Pending,
		Succeeded: forge.Success, Failed: forge.Failure, RolledBack: forge.Failure,
		Superseded: forge.Error, Cancelled: forge.Error, Interrupted: forge.Error,
	}
	for _, s := range States() {
		if got := s.CommitState(); got != want[s] {
			t.Errorf("%s.CommitState() = %s, want %s", s, got, want[s])
		}
	}
}

func TestAdvanceStampsTimesAndSteps(t *testing.T) {
	t0 := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	d := &Deploy{State: Queued, CreatedAt: t0}
	for i, s := range []State{Fetching, Building, Activating, Verifying, Succeeded} {
		if err := d.Advance(s, t0.Add(time.Duration(i+1)*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	if !d.StartedAt.Equal(t0.Add(time.Second)) || !d.FinishedAt.Equal(t0.Add(5*time.Second)) {
		t.Errorf("started %v finished %v", d.StartedAt, d.FinishedAt)
	}
	names := []string{"fetch", "build", "activate", "verify"}
	if len(d.Steps) != len(names) {
		t.Fatalf("steps %+v", d.Steps)
	}
	for i, s := range d.Steps {
		if s.Name != names[i] || !s.OK || s.FinishedAt.Sub(s.StartedAt) != time.Second {
			t.Errorf("step %d = %+v, want %s ok for 1s", i, s, names[i])
		}
	}

	t.Run("a failing step is not ok", func(t *testing.T) {
		d := &Deploy{State: Queued}
		d.Advance(Fetching, t0)
		d.Advance(Building, t0)
		d.Advance(Failed, t0)
		if len(d.Steps) != 2 || !d.Steps[0].OK || d.Steps[1].OK || d.FinishedAt == nil {
			t.Errorf("steps %+v finished %v", d.Steps, d.FinishedAt)
		}
	})
	t.Run("a deploy superseded in the queue never started", func(t *testing.T) {
		d := &Deploy{State: Queued}
		d.Advance(Superseded, t0)
		if d.StartedAt != nil || d.FinishedAt == nil || len(d.Steps) != 0 {
			t.Errorf("%+v", d)
		}
	})
}

func TestParseState(t *testing.T) {
	for _, s := range States() {
		if got, err := ParseState(string(s)); err != nil || got != s {
			t.Errorf("ParseState(%q) = %v, %v", s, got, err)
		}
	}
	if _, err := ParseState("done"); err == nil {
		t.Error("ParseState(done) accepted an unknown state")
	}
}

func TestDescribeSaysWhatHappened(t *testing.T) {
	t0 := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	t1 := t0.Add(41 * time.Second)
	sha := "abc1234def5678abc1234def5678abc1234def56"
	other := "def5678abc1234def5678abc1234def5678abc12"
	for _, tc := range []struct {
		d    Deploy
		want string
	}{
		{Deploy{State: Queued, SHA: sha}, "Queued for deploy"},
		{Deploy{State: Building, SHA: sha}, "Building abc1234"},
		{Deploy{State: Succeeded, SHA: sha, StartedAt: &t0, FinishedAt: &t1}, "Deployed abc1234 in 41s"},
		{Deploy{State: Failed, SHA: sha, Steps: []Step{{Name: "fetch"}, {Name: "build"}}}, "Build failed: see log"},
		{Deploy{State: Failed, SHA: sha, Steps: []Step{{Name: "fetch"}}}, "Fetch failed: see log"},
		{Deploy{State: RolledBack, SHA: sha, statusText: "Unhealthy, rolled back to " + other[:7]}, "Unhealthy, rolled back to def5678"},
		// A description set for the end is not shown before it.
		{Deploy{State: Fetching, SHA: sha, statusText: "Superseded by def5678"}, "Fetching abc1234"},
		{Deploy{State: RolledBack, SHA: sha, Generation: 3}, "Unhealthy, rolled back to generation 3"},
		{Deploy{State: Superseded, SHA: sha}, "Superseded"},
		{Deploy{State: Interrupted, SHA: sha}, "Interrupted: flakeship stopped"},
	} {
		if got := describe(&tc.d); got != tc.want {
			t.Errorf("describe(%s) = %q, want %q", tc.d.State, got, tc.want)
		}
	}
}
