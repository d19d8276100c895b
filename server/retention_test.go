package server

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/flakeship/flakeship/config"
	"github.com/flakeship/flakeship/deploy"
	"github.com/flakeship/flakeship/internal/queuetest"
)

// retentionRig is a Server with the real deploy queue and store behind it,
// whose clock a test moves forward, for the GitHub target "hello" of the
// recorded deliveries. Its clone URL leads nowhere: a deploy that starts
// fails at its fetch, and leaves its log.
type retentionRig struct {
	url   string
	state string
	queue *deploy.Queue
	ahead atomic.Int64 // how far the queue's clock is ahead of the real one
	body  []byte       // the recorded push of helloSHA
}

func newRetentionRig(t *testing.T, keep int) *retentionRig {
	t.Helper()
	r := &retentionRig{state: stateDir(t), body: readFile(t, "github/push-new-branch.json")}
	nowhere := nowhereURL(t)
	cfg := &config.Config{
		Listen: "127.0.0.1:0", PublicURL: apiPublicURL, StateDir: r.state, MaxParallel: 1,
		Nix: "nix", BodyLimit: hostileBodyLimit, KeepDeploys: keep, KeepFor: config.MinKeepFor,
		Targets: []config.Target{{
			Name: "hello", Forge: "github", Repo: "Codertocat/Hello-World", CloneURL: nowhere,
			Branch: "master", Attr: "packages.x86_64-linux.default", Activate: config.ActivateNone,
			Profile: filepath.Join(r.state, "profiles", "hello"), HealthTimeout: 5 * time.Second,
			BuildTimeout: time.Minute, WebhookSecret: githubSecret, StatusContext: "flakeship/hello",
		}},
	}
	log := slog.New(slog.DiscardHandler)
	now := func() time.Time { return time.Now().Add(time.Duration(r.ahead.Load())) }
	_, q := queuetest.Start(t, cfg, log, queuetest.Options{Grace: endWithin, Now: now, PruneEvery: -1})
	r.queue = q
	r.url = "http://" + serve(t, New(Options{Config: cfg, Deployer: q, Operator: q, Log: log}))
	return r
}

// deliver posts body as a signed GitHub push under delivery id and returns
// the status and the JSON answer.
func (r *retentionRig) deliver(t *testing.T, client *http.Client, delivery string, body []byte) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, r.url+"/hooks/github", bytes.NewReader(body))
	if err != nil {
		t.Error(err)
		return 0, nil
	}
	req.Header = githubRequestHeader("push", body, githubSecret)
	req.Header.Set("X-GitHub-Delivery", delivery)
	resp, err := client.Do(req)
	if err != nil {
		t.Errorf("delivery %s: %v", delivery, err)
		return 0, nil
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Errorf("delivery %s: %v", delivery, err)
		return 0, nil
	}
	var answer map[string]any
	if err := json.Unmarshal(raw, &answer); err != nil {
		t.Errorf("delivery %s: answer %q: %v", delivery, raw, err)
	}
	return resp.StatusCode, answer
}

// replay delivers r.body under each delivery id, from a few connections at
// once, and fails t unless each is accepted as a new deploy. It returns
// the deploy ids by delivery id.
func (r *retentionRig) replay(t *testing.T, deliveries []string) map[string]int64 {
	t.Helper()
	var (
		mu  sync.Mutex
		ids = map[string]int64{}
		wg  sync.WaitGroup
	)
	next := make(chan string)
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := &http.Client{Timeout: answerDeadline}
			defer client.CloseIdleConnections()
			for d := range next {
				status, answer := r.deliver(t, client, d, r.body)
				id, _ := answer["deploy_id"].(float64)
				if status != http.StatusAccepted || id == 0 {
					t.Errorf("delivery %s: %d %v, want 202 and a new deploy", d, status, answer)
				}
				mu.Lock()
				ids[d] = int64(id)
				mu.Unlock()
			}
		}()
	}
	for _, d := range deliveries {
		next <- d
	}
	close(next)
	wg.Wait()
	return ids
}

// waitIdle waits, following it, until the newest of the deploys ids has
// ended: the queue takes a target's deploys in order, so then none of the
// rig's waits or runs, which it checks.
func (r *retentionRig) waitIdle(t *testing.T, ids map[string]int64) {
	t.Helper()
	var newest int64
	for _, id := range ids {
		newest = max(newest, id)
	}
	waitDeployEnd(t, r.queue, newest)
	ts, err := r.queue.Targets(context.Background())
	if err != nil || ts[0].Running != nil || ts[0].Queued != nil {
		t.Fatalf("deploy %d ended, yet the target has %+v, %v; want nothing running or queued", newest, ts, err)
	}
}

// rows counts the stored deploys and delivery ids, reading the database
// file itself.
func (r *retentionRig) rows(t *testing.T) (deploys, deliveries int) {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+filepath.Join(r.state, "flakeship.db")+"?mode=ro&_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.QueryRow(`SELECT (SELECT count(*) FROM deploys), (SELECT count(*) FROM deliveries)`).Scan(&deploys, &deliveries); err != nil {
		t.Fatal(err)
	}
	return deploys, deliveries
}

// logs lists the deploy ids that have a log file.
func (r *retentionRig) logs(t *testing.T) map[int64]bool {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(r.state, "logs"))
	if err != nil {
		t.Fatal(err)
	}
	out := map[int64]bool{}
	for _, e := range entries {
		id, err := strconv.ParseInt(strings.TrimSuffix(e.Name(), ".log"), 10, 64)
		if err != nil {
			t.Fatalf("log file %s", e.Name())
		}
		out[id] = true
	}
	return out
}

func names(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s-%04d", prefix, i)
	}
	return out
}

// TestReplayedDeliveriesArePrunedAfterTheRedeliveryWindow replays one
// captured signed delivery 1,500 times under fresh delivery ids (each is a
// stored deploy), then, a month later, prunes: what is left is the newest
// KEEP_DEPLOYS and whatever is younger than the redelivery window, with
// their delivery ids, which still stop a redelivery.
func TestReplayedDeliveriesArePrunedAfterTheRedeliveryWindow(t *testing.T) {
	t.Parallel()
	const (
		keep     = 100
		replays  = 1500
		inWindow = 150 // more than keep: the window, not the count, keeps the oldest of them
	)
	r := newRetentionRig(t, keep)
	ctx := context.Background()

	ids := r.replay(t, names("replay", replays))
	r.waitIdle(t, ids)
	deploysBefore, deliveriesBefore := r.rows(t)
	logsBefore := r.logs(t)
	if deploysBefore != replays || deliveriesBefore != replays {
		t.Fatalf("after %d replays: %d deploys, %d delivery ids; want %d of each", replays, deploysBefore, deliveriesBefore, replays)
	}

	// 29 days later: more replays, still inside the window at pruning.
	r.ahead.Store(int64(29 * 24 * time.Hour))
	recent := r.replay(t, names("recent", inWindow))
	r.waitIdle(t, recent)
	// And two days after that, the pruning.
	r.ahead.Store(int64(31 * 24 * time.Hour))
	before, _ := r.rows(t)
	pruned, err := r.queue.Prune(ctx)
	if err != nil {
		t.Fatal(err)
	}
	deploysAfter, deliveriesAfter := r.rows(t)
	t.Logf("1,500 replays: %d deploys and %d delivery ids stored; with %d more a month later, %d rows before pruning, %d after (pruned %d; keep %d, %d in the window)",
		deploysBefore, deliveriesBefore, inWindow, before, deploysAfter, pruned, keep, inWindow)
	if deploysAfter > keep+inWindow || deploysAfter != inWindow || deliveriesAfter != deploysAfter {
		t.Errorf("after pruning: %d deploys, %d delivery ids; want the %d in the window (at most %d+%d), each with its delivery id",
			deploysAfter, deliveriesAfter, inWindow, keep, inWindow)
	}

	// Every delivery id in the window still stops its redelivery, the
	// oldest too (it is not among the newest 100).
	client := &http.Client{Timeout: answerDeadline}
	defer client.CloseIdleConnections()
	oldest := names("recent", 1)[0]
	status, answer := r.deliver(t, client, oldest, r.body)
	if dup, _ := answer["duplicate"].(bool); status != http.StatusOK || !dup || answer["deploy_id"] != float64(recent[oldest]) {
		t.Errorf("redelivery of %s inside the window: %d %v, want 200 duplicate of deploy %d", oldest, status, answer, recent[oldest])
	}
	// A delivery id past the window is forgotten with its deploy: the same
	// id is a new delivery now (the replay guard judges its commit).
	first := names("replay", 1)[0]
	if _, err := r.queue.Get(ctx, ids[first]); err == nil {
		t.Errorf("deploy %d of %s outlived the pruning", ids[first], first)
	}
	if status, answer := r.deliver(t, client, first, r.body); status != http.StatusAccepted {
		t.Errorf("delivery %s after its deploy was pruned: %d %v, want 202", first, status, answer)
	}

	// The logs of pruned deploys are gone; the kept deploys keep theirs.
	kept := map[int64]bool{}
	for _, id := range recent {
		kept[id] = true
	}
	logsAfter := r.logs(t)
	lost := 0
	for id := range logsBefore {
		if logsAfter[id] {
			t.Errorf("log of pruned deploy %d is still there", id)
		} else {
			lost++
		}
	}
	for id := range logsAfter {
		if !kept[id] && !logsBefore[id] {
			continue // the new deploy of the forgotten delivery
		}
		if !kept[id] {
			t.Errorf("log of deploy %d, which is not kept", id)
		}
	}
	if len(logsBefore) == 0 {
		t.Error("no replay left a log: the test checks nothing about logs")
	}
	t.Logf("%d log files of pruned deploys deleted", lost)
}

// TestHugeCommitFieldsAreClippedAtIntake delivers a signed push whose head
// commit has a 1 MiB message and whose author and pusher names are 64 KiB:
// the deploy stores and serves their first 4 KiB and 256 bytes, cut between
// characters.
func TestHugeCommitFieldsAreClippedAtIntake(t *testing.T) {
	t.Parallel()
	r := newRetentionRig(t, 100)
	// "é" is two bytes, and a clipped text keeps 3 bytes for "…": the cut
	// at an odd byte falls inside an "é".
	message := strings.Repeat("é", 1<<19)
	name := strings.Repeat("é", 1<<15)
	body := edit(t, r.body, `"message": "Initial commit"`, `"message": `+strconv.Quote(message))
	body = edit(t, body, `"name": "Codertocat"`, `"name": `+strconv.Quote(name))

	client := &http.Client{Timeout: answerDeadline}
	defer client.CloseIdleConnections()
	status, answer := r.deliver(t, client, "huge", body)
	id, _ := answer["deploy_id"].(float64)
	if status != http.StatusAccepted || id == 0 {
		t.Fatalf("huge delivery: %d %v, want 202", status, answer)
	}
	resp, err := client.Get(fmt.Sprintf("%s/api/deploys/%d", r.url, int64(id)))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var d deploy.Deploy
	if err := json.NewDecoder(resp.Body).Decode(&d); err != nil {
		t.Fatal(err)
	}
	for _, f := range []struct {
		what, got, whole string
		max              int
	}{
		{"message", d.Message, message, 4096},
		{"author", d.Author, name, 256},
		{"pusher", d.Pusher, name, 256},
	} {
		kept, clipped := strings.CutSuffix(f.got, "…")
		if !clipped || len(f.got) > f.max || len(f.got) < f.max-4 || !utf8.ValidString(f.got) || !strings.HasPrefix(f.whole, kept) {
			t.Errorf("%s of %d bytes is served as %d bytes ending %q; want at most %d bytes of valid UTF-8 ending in …",
				f.what, len(f.whole), len(f.got), f.got[max(0, len(f.got)-8):], f.max)
		}
		t.Logf("%s: %d bytes delivered, %d stored", f.what, len(f.whole), len(f.got))
	}
}
