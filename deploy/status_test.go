package deploy

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/flakeship/flakeship/forge"
	"github.com/flakeship/flakeship/internal/forgetest"
	"github.com/flakeship/flakeship/notifier"
)

// TestStatusSenderPostsTheNewestStatusOfACommitLast queues statuses while
// the sender is not running, as they pile up while a forge is slow: the
// last one posted for a commit must be the last one sent, whatever was
// waiting before it.
func TestStatusSenderPostsTheNewestStatusOfACommitLast(t *testing.T) {
	fake := forgetest.NewGitHub(t, "tok")
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	n, err := notifier.NewGitHub(notifier.GitHubOptions{BaseURL: fake.URL(), Token: "tok", Log: log})
	if err != nil {
		t.Fatal(err)
	}
	ss := newStatusSender(n, log, time.Now, nil)
	sha := "abc1234def5678abc1234def5678abc1234def56"
	st := func(state forge.CommitState, desc string) forge.Status {
		return forge.Status{Repo: "acme/app", SHA: sha, Context: "flakeship/app", State: state, Description: desc}
	}
	// runOnce posts what waits, then stops.
	runOnce := func() {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { ss.run(ctx); close(done) }()
		flushCtx, cancelFlush := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancelFlush()
		if err := ss.flush(flushCtx); err != nil {
			t.Fatal(err)
		}
		cancel()
		<-done
	}
	// Deploy 1 of the commit waits and its pending status is posted.
	ss.send(st(forge.Pending, "Queued for deploy"), 1, false)
	runOnce()
	// While the forge is slow: deploy 2 of the same commit supersedes
	// it, starts, and is itself refused.
	ss.send(st(forge.Error, "Superseded by abc1234"), 1, true)
	ss.send(st(forge.Pending, "Fetching abc1234"), 2, false)
	ss.send(st(forge.Error, "Superseded by abc1234"), 2, true)
	runOnce()
	posted := fake.Statuses()
	if len(posted) == 0 || posted[len(posted)-1].State != "error" {
		t.Fatalf("posted %+v, want the error last", posted)
	}
}
