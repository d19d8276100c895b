package deploy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/flakeship/flakeship/config"
	"github.com/flakeship/flakeship/forge"
	"github.com/flakeship/flakeship/notifier"
)

// statuses posts the commit statuses of every target that has a notifier,
// one statusSender a target, and records which final statuses reached the
// forge.
type statuses struct {
	senders map[string]*statusSender
	targets map[string]config.Target
	store   Store
	log     *slog.Logger
	now     func() time.Time

	stop context.CancelFunc
	wg   sync.WaitGroup
}

func newStatuses(targets []config.Target, notifiers map[string]notifier.Notifier, st Store, log *slog.Logger, now func() time.Time) *statuses {
	s := &statuses{senders: map[string]*statusSender{}, targets: map[string]config.Target{}, store: st, log: log, now: now}
	for _, t := range targets {
		s.targets[t.Name] = t
		if n, ok := notifiers[t.Name]; ok && n != nil {
			s.senders[t.Name] = newStatusSender(n, log.With("target", t.Name), now, s.posted)
		}
	}
	return s
}

// start runs the senders until shutdown.
func (s *statuses) start() {
	ctx, stop := context.WithCancel(context.Background())
	s.stop = stop
	for _, sender := range s.senders {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			sender.run(ctx)
		}()
	}
}

// shutdown gives the forge a last chance, until ctx ends, to receive what
// waits, and stops the senders.
func (s *statuses) shutdown(ctx context.Context) error {
	var errs []error
	for _, sender := range s.senders {
		if err := sender.flush(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if s.stop != nil {
		s.stop()
	}
	s.wg.Wait()
	return errors.Join(errs...)
}

// notify posts d's commit status for its current state.
func (s *statuses) notify(d *Deploy) {
	sender, ok := s.senders[d.Target]
	if !ok {
		return
	}
	t := s.targets[d.Target]
	sender.send(forge.Status{
		Repo:        t.Repo,
		SHA:         d.SHA,
		Context:     t.StatusContext,
		Description: describe(d),
		TargetURL:   d.URL,
		State:       d.State.CommitState(),
	}, d.ID, d.State.Terminal())
}

// posted records that deploy id's final status reached the forge.
func (s *statuses) posted(id int64) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.store.MarkStatusPosted(ctx, id); err != nil {
		s.log.Warn("commit status delivery not recorded", "deploy_id", id, "err", err)
	}
}

// statusResendWindow is how far back Start looks for final statuses that
// never reached the forge (flakeship stopped, or the forge was down).
const statusResendWindow = 24 * time.Hour

// resend posts again the final statuses that a stop kept from the forge,
// except where a newer deploy of the same commit has spoken since. fill
// sets a deploy's URL.
func (s *statuses) resend(ctx context.Context, fill func(*Deploy)) error {
	owed, err := s.store.Unposted(ctx, s.now().Add(-statusResendWindow))
	if err != nil {
		return fmt.Errorf("recover commit statuses: %w", err)
	}
	newest := map[string]map[string]int64{} // target -> sha -> newest deploy id
	for _, d := range owed {
		if _, ok := s.senders[d.Target]; !ok {
			continue
		}
		if newest[d.Target] == nil {
			recent, err := s.store.List(ctx, Filter{Target: d.Target, Limit: 1000})
			if err != nil {
				return fmt.Errorf("recover commit statuses: %w", err)
			}
			newest[d.Target] = map[string]int64{}
			for _, r := range recent {
				if r.ID > newest[d.Target][r.SHA] {
					newest[d.Target][r.SHA] = r.ID
				}
			}
		}
		if newest[d.Target][d.SHA] > d.ID {
			continue
		}
		fill(d)
		s.log.Info("posting a commit status owed since the last stop", "target", d.Target,
			"deploy_id", d.ID, "sha", forge.ShortSHA(d.SHA), "state", d.State)
		s.notify(d)
	}
	return nil
}

// describe is the one-line description of d's commit status.
func describe(d *Deploy) string {
	if d.statusText != "" && d.State.Terminal() {
		return d.statusText
	}
	sha := forge.ShortSHA(d.SHA)
	switch d.State {
	case Queued:
		return "Queued for deploy"
	case Fetching:
		return "Fetching " + sha
	case Building:
		return "Building " + sha
	case Activating:
		return "Activating " + sha
	case Verifying:
		return "Checking health of " + sha
	case Succeeded:
		if d.Trigger == TriggerRollback {
			return "Rolled back to " + sha
		}
		took := time.Duration(0)
		if d.StartedAt != nil && d.FinishedAt != nil {
			took = d.FinishedAt.Sub(*d.StartedAt).Round(time.Second)
		}
		return fmt.Sprintf("Deployed %s in %s", sha, took)
	case Failed:
		if len(d.Steps) > 0 {
			switch d.Steps[len(d.Steps)-1].Name {
			case "fetch":
				return "Fetch failed: see log"
			case "build":
				return "Build failed: see log"
			case "verify":
				return "Unhealthy: see log"
			}
		}
		return "Activation failed: see log"
	case RolledBack:
		return fmt.Sprintf("Unhealthy, rolled back to generation %d", d.Generation)
	case Superseded:
		return "Superseded"
	case Cancelled:
		return "Cancelled"
	case Interrupted:
		return "Interrupted: flakeship stopped"
	}
	return string(d.State)
}
