package deploy

import (
	"context"
	"io"
	"log/slog"
	"slices"
	"strings"
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

// TestStatusSenderGivesUpAtOnceOnACommitTheForgeDoesNotHave posts the final
// status of a commit the forge does not have: the forge's refusal (GitHub's
// 422) ends it at once, with no retry every few seconds for an hour, and the
// deploy counts as posted so that a restart does not post it again. A
// status of a commit the forge has still goes through after it.
func TestStatusSenderGivesUpAtOnceOnACommitTheForgeDoesNotHave(t *testing.T) {
	known := "abc1234def5678abc1234def5678abc1234def56"
	unknown := "0000000def5678abc1234def5678abc1234def56"
	fake := forgetest.NewGitHub(t, "tok")
	fake.AddCommits("acme/app", known)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	n, err := notifier.NewGitHub(notifier.GitHubOptions{BaseURL: fake.URL(), Token: "tok", Log: log})
	if err != nil {
		t.Fatal(err)
	}
	var posted []int64
	ss := newStatusSender(n, log, time.Now, func(id int64) { posted = append(posted, id) })
	// A retry of a failed status would come after a minute, long after
	// the flush below gives up.
	ss.retry = time.Minute
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { ss.run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	st := func(sha string) forge.Status {
		return forge.Status{Repo: "acme/app", SHA: sha, Context: "flakeship/app", State: forge.Success, Description: "Deployed"}
	}
	ss.send(st(unknown), 7, true)
	ss.send(st(known), 8, true)
	flushCtx, cancelFlush := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancelFlush()
	if err := ss.flush(flushCtx); err != nil {
		t.Fatalf("flush: %v: a status is still waiting for a retry", err)
	}
	var tries int
	for _, r := range fake.Requests() {
		if strings.Contains(r.Path, unknown) {
			tries++
		}
	}
	if tries != 1 {
		t.Errorf("the status of a commit the forge does not have was posted %d times, want 1", tries)
	}
	if got := fake.Statuses(); len(got) != 1 || got[0].SHA != known {
		t.Errorf("statuses on the forge: %+v, want the known commit's only", got)
	}
	if !slices.Equal(posted, []int64{7, 8}) {
		t.Errorf("deploys counted as posted: %v, want [7 8]", posted)
	}
}
