package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flakeship/flakeship/internal/forgetest"
	"github.com/flakeship/flakeship/internal/gittest"
	"github.com/flakeship/flakeship/internal/testenv"
)

// loadSize reads a positive whole number from the environment, or def.
func loadSize(t *testing.T, name string, def int) int {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		t.Fatalf("%s=%q: want a positive number", name, v)
	}
	return n
}

// TestLoadLosesNothing sends many signed deliveries over concurrent
// connections while builds run: three targets of two forges, redeliveries
// and bad signatures mixed in. Afterwards every delivery answered 202 is
// stored exactly once, each target runs its newest commit, no status is
// left pending, and the server's goroutines are back to their idle count.
// FLAKESHIP_LOAD_DELIVERIES and FLAKESHIP_LOAD_CONNS size it (300 from 16
// connections by default; README's Hardening section runs 2,000 from 64:
// FLAKESHIP_LOAD_DELIVERIES=2000 FLAKESHIP_LOAD_CONNS=64 scripts/test -run
// TestLoadLosesNothing .).
func TestLoadLosesNothing(t *testing.T) {
	testenv.Require(t, "git", "nix")
	total := loadSize(t, "FLAKESHIP_LOAD_DELIVERIES", 300)
	conns := loadSize(t, "FLAKESHIP_LOAD_CONNS", 16)
	system := testenv.System(t)
	nonce := fmt.Sprintf("%x", time.Now().UnixNano())
	git := gittest.NewServer(t)
	const commits = 8

	type target struct {
		name, kind, repo, secret string
		shas                     []string
	}
	targets := []*target{
		{name: "svc-a", kind: "github"},
		{name: "svc-b", kind: "forgejo"},
		{name: "svc-c", kind: "github"},
	}
	forges := map[string]*forgetest.Server{
		"github":  forgetest.NewGitHub(t, "load-token-github"),
		"forgejo": forgetest.NewForgejo(t, "load-token-forgejo"),
	}
	state := t.TempDir()
	env := []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + state,
		"FLAKESHIP_LISTEN=127.0.0.1:0",
		"FLAKESHIP_STATE_DIR=" + state,
		"FLAKESHIP_NIX_FLAGS=--extra-experimental-features 'nix-command flakes' --option substituters ''",
		"FLAKESHIP_MAX_PARALLEL=2",
		"FLAKESHIP_TARGETS=svc-a,svc-b,svc-c",
	}
	// Every commit reaches the git server before any delivery is sent.
	for _, tg := range targets {
		repo := git.NewRepo(t, tg.name)
		tg.repo = "load/" + tg.name
		tg.secret = "load-secret-" + tg.name
		for i := 1; i <= commits; i++ {
			flake := fmt.Sprintf(`{ outputs = { self }: { packages.%[1]s.default = derivation {
  name = "load"; system = "%[1]s"; builder = "/bin/sh"; args = [ "-c" "echo %[2]s %[3]s %[4]d > $out" ]; }; }; }
`, system, nonce, tg.name, i)
			tg.shas = append(tg.shas, repo.Commit(t, fmt.Sprintf("%s %d", tg.name, i), map[string]string{"flake.nix": flake}))
		}
		repo.Push(t, "main")
		forges[tg.kind].ServeRepo(tg.repo, repo.Bare)
		prefix := "FLAKESHIP_TARGET_" + strings.ToUpper(strings.ReplaceAll(tg.name, "-", "_")) + "_"
		token := "load-token-" + tg.kind
		env = append(env,
			prefix+"FORGE="+tg.kind, prefix+"REPO="+tg.repo, prefix+"FORGE_URL="+forges[tg.kind].URL(),
			prefix+"CLONE_URL="+git.URL(tg.name), prefix+"ACTIVATE=none",
			prefix+"WEBHOOK_SECRET="+tg.secret, prefix+"TOKEN="+token)
	}
	f := startFlakeship(t, env)

	// The deliveries, in the order they are queued for sending: commits
	// get newer as the run goes on, every 10th delivery is a redelivery
	// of an earlier one, every 13th has a wrong signature.
	type sent struct {
		d      delivery
		id     string
		target *target
		bad    bool
		resend int // for a redelivery, the index in plan of its first sending; -1 otherwise
	}
	var plan []sent
	for i := 0; i < total; i++ {
		tg := targets[i%len(targets)]
		switch {
		case i%10 == 9 && len(plan) > 5:
			again := plan[i-5]
			again.resend = i - 5
			plan = append(plan, again)
			continue
		case i%13 == 12:
			d := pushDelivery(t, tg.kind, tg.repo, "main", tg.shas[0], tg.shas[1], fmt.Sprintf("bad-%d", i), "not-the-secret")
			plan = append(plan, sent{d: d, id: fmt.Sprintf("bad-%d", i), target: tg, bad: true, resend: -1})
			continue
		}
		n := i * commits / total
		if i >= total-len(targets) {
			n = commits - 1 // the run ends with each target's newest commit
		}
		before := strings.Repeat("0", 40)
		if n > 0 {
			before = tg.shas[n-1]
		}
		id := fmt.Sprintf("load-%s-%d", tg.name, i)
		plan = append(plan, sent{d: pushDelivery(t, tg.kind, tg.repo, "main", before, tg.shas[n], id, tg.secret), id: id, target: tg, resend: -1})
	}

	// Warm up: one deploy per target, so that connections a working
	// server keeps (to the forges, to the git server) count as idle.
	for _, tg := range targets {
		d := pushDelivery(t, tg.kind, tg.repo, "main", strings.Repeat("0", 40), tg.shas[0], "warm-"+tg.name, tg.secret)
		f.waitEnd(d.accepted(t, f.base))
	}
	waitFor(t, time.Minute, func() bool { return pendingStatuses(forges) == 0 }, func() string { return "warm-up statuses pending" })
	idle := goroutines(t, f)
	client := &http.Client{
		Timeout:   30 * time.Second,
		Transport: &http.Transport{MaxIdleConnsPerHost: conns, MaxConnsPerHost: conns},
	}
	type answer struct {
		code      int
		deployID  int64
		duplicate bool
		ignored   string
	}
	answers := make([]answer, len(plan))
	// A redelivery is sent only once its first sending has its answer, so
	// that the first sending of every id is the first to reach the server
	// and must be the one answered 202. The first sending was handed to a
	// worker before the redelivery, so waiting on it cannot deadlock.
	answered := make([]chan struct{}, len(plan))
	for i := range answered {
		answered[i] = make(chan struct{})
	}
	work := make(chan int)
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < conns; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				s := plan[i]
				if s.resend >= 0 {
					<-answered[s.resend]
				}
				req, _ := http.NewRequest(http.MethodPost, f.base+s.d.path, bytes.NewReader(s.d.body))
				req.Header = s.d.header.Clone()
				resp, err := client.Do(req)
				if err != nil {
					t.Errorf("delivery %d: %v", i, err)
					close(answered[i])
					continue
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				var a struct {
					DeployID  int64  `json:"deploy_id"`
					Duplicate bool   `json:"duplicate"`
					Ignored   string `json:"ignored"`
				}
				json.Unmarshal(body, &a)
				answers[i] = answer{code: resp.StatusCode, deployID: a.DeployID, duplicate: a.Duplicate, ignored: a.Ignored}
				close(answered[i])
			}
		}()
	}
	for i := range plan {
		work <- i
	}
	close(work)
	wg.Wait()
	elapsed := time.Since(start)
	// The load's connections end with it; what the server keeps beyond
	// them is what must go back to idle.
	client.CloseIdleConnections()

	// Each delivery id: its first sending answered 202 with a new deploy,
	// every resend 200 with "duplicate":true and that same deploy.
	accepted := map[string]int64{}
	var acked, dups, unauthorized int
	for i, s := range plan {
		a := answers[i]
		switch {
		case s.bad:
			if a.code != http.StatusUnauthorized {
				t.Errorf("bad signature %s answered %d, want 401", s.id, a.code)
			}
			unauthorized++
		case s.resend < 0:
			if a.code != http.StatusAccepted || a.duplicate || a.deployID == 0 {
				t.Errorf("new delivery %s answered %d (deploy %d, duplicate %v, ignored %q), want 202 with a new deploy",
					s.id, a.code, a.deployID, a.duplicate, a.ignored)
				continue
			}
			if prev, twice := accepted[s.id]; twice {
				t.Errorf("delivery %s acknowledged with 202 twice (deploys %d and %d)", s.id, prev, a.deployID)
			}
			accepted[s.id] = a.deployID
			acked++
		default:
			firstID := answers[s.resend].deployID
			if a.code != http.StatusOK || !a.duplicate || a.deployID != firstID {
				t.Errorf("redelivery %s answered %d (deploy %d, duplicate %v, ignored %q), want 200 duplicate of deploy %d",
					s.id, a.code, a.deployID, a.duplicate, a.ignored, firstID)
			}
			dups++
		}
	}
	t.Logf("%d deliveries from %d connections in %s (%.0f/s): %d acknowledged (202), %d redeliveries (200), %d bad signatures (401)",
		len(plan), conns, elapsed.Round(time.Millisecond), float64(len(plan))/elapsed.Seconds(), acked, dups, unauthorized)

	// Everything ends; what was acknowledged is stored exactly once.
	stored := map[string][]deployRecord{}
	waitFor(t, 3*time.Minute, func() bool {
		for _, tg := range targets {
			var ds []deployRecord
			f.getJSON("/api/deploys?limit=1000&target="+tg.name, &ds)
			for _, d := range ds {
				if !terminal[d.State] {
					return false
				}
			}
			stored[tg.name] = ds
		}
		return true
	}, func() string { return "deploys still running" })
	byDelivery := map[string]int{}
	storedIDs := map[int64]bool{}
	for _, ds := range stored {
		for _, d := range ds {
			if strings.HasPrefix(d.DeliveryID, "warm-") {
				continue
			}
			if strings.HasPrefix(d.DeliveryID, "bad-") {
				t.Errorf("a delivery with a wrong signature made deploy %d", d.ID)
			}
			byDelivery[d.DeliveryID]++
			storedIDs[d.ID] = true
		}
	}
	for id, deployID := range accepted {
		if byDelivery[id] != 1 || !storedIDs[deployID] {
			t.Errorf("acknowledged delivery %s (deploy %d) is stored %d times", id, deployID, byDelivery[id])
		}
	}
	if len(storedIDs) != len(accepted) {
		t.Errorf("%d deploys stored for %d acknowledged deliveries", len(storedIDs), len(accepted))
	}

	// Each target runs its newest commit.
	var ts []struct {
		Name       string `json:"name"`
		CurrentSHA string `json:"current_sha"`
	}
	f.getJSON("/api/targets", &ts)
	for i, tg := range targets {
		if ts[i].Name != tg.name || ts[i].CurrentSHA != tg.shas[commits-1] {
			t.Errorf("target %s runs %q, want its newest commit %s", tg.name, ts[i].CurrentSHA, tg.shas[commits-1][:7])
		}
	}

	// No commit is left pending on either forge.
	waitFor(t, time.Minute, func() bool { return pendingStatuses(forges) == 0 },
		func() string { return fmt.Sprintf("%d commits left pending", pendingStatuses(forges)) })

	// The server's goroutines return to what they were when idle, give or
	// take the few kept-alive connections a busier server keeps (to the
	// forges, the git server): a leak would grow with the deliveries.
	var busy int
	waitFor(t, 30*time.Second, func() bool {
		busy = goroutines(t, f)
		return busy <= idle+10
	}, func() string { return fmt.Sprintf("%d goroutines after the load, %d when idle", busy, idle) })
	t.Logf("goroutines: %d idle, %d after the load; RSS %s", idle, busy, rss(f))
}

// goroutines reads go_goroutines from flakeship's /metrics.
func goroutines(t *testing.T, f *flakeship) int {
	t.Helper()
	resp, err := http.Get(f.base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, "go_goroutines "); ok {
			n, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err == nil {
				return int(n)
			}
		}
	}
	t.Fatalf("no go_goroutines in /metrics")
	return 0
}

// rss is the resident memory of the flakeship process.
func rss(f *flakeship) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", f.cmd.Process.Pid))
	if err != nil {
		return "unknown"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

// pendingStatuses counts the commits whose newest status is pending.
func pendingStatuses(forges map[string]*forgetest.Server) int {
	n := 0
	for _, fs := range forges {
		last := map[string]string{}
		for _, s := range fs.Statuses() {
			last[s.SHA+s.Context] = s.State
		}
		for _, st := range last {
			if st == "pending" {
				n++
			}
		}
	}
	return n
}
