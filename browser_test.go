package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/flakeship/flakeship/internal/testenv"
)

// TestBrowserFollowsALiveDeployAndRedeploys drives a real headless Chromium
// through the pages of a running flakeship: the deploy page of a build that
// is still running shows its log lines as the build writes them (Server-Sent
// Events, no reload), the operator logs in with the admin token, presses
// redeploy, and watches the new deploy succeed. The build writes each line
// and then waits at a gate of its own, which the test opens once the page
// showed the line, so every line arrives while the deploy runs, however
// slow the machine. It measures how long after the API's log stream a line
// shows on the page, and takes a screenshot.
func TestBrowserFollowsALiveDeployAndRedeploys(t *testing.T) {
	testenv.Require(t, "chromium")
	a := newApp(t, "github")
	const adminToken = "browser-admin-token-3c9a71"
	a.extraEnv = []string{"FLAKESHIP_ADMIN_TOKEN=" + adminToken}
	a.buildsSeeGates()
	f := a.start()
	ctx := newBrowser(t)
	// The browser starts before the push, so that it opens the deploy
	// page while the build is still at its first lines.
	if err := chromedp.Do(ctx, chromedp.Navigate("about:blank")); err != nil {
		t.Fatalf("start chromium: %v", err)
	}

	const ticks = 12
	gates := make([]*testenv.Gate, ticks+1) // gates[n] holds the build after tick n
	for n := 1; n <= ticks; n++ {
		gates[n] = testenv.NewGate(t)
	}
	sha, d := a.pushTicking(gates[1:])
	id := d.accepted(t, f.base)
	apiSeen := f.followLog(t, id)
	deployURL := fmt.Sprintf("%s/deploys/%d", f.base, id)
	if err := chromedp.Do(ctx, chromedp.Navigate(deployURL)); err != nil {
		t.Fatalf("open %s: %v", deployURL, err)
	}
	// The observer notes when each tick line reaches the page, and the
	// marker proves that no reload happened in between.
	initial, err := chromedp.Run(ctx, chromedp.Evaluate[string](`(function () {
		window.flakeshipTestMarker = true;
		window.flakeshipSeen = {};
		var log = document.getElementById("log");
		function look() {
			var m, re = /browser-tick (\d+)$/gm, text = log.textContent;
			while ((m = re.exec(text)) !== null) {
				if (!(m[1] in window.flakeshipSeen)) {
					window.flakeshipSeen[m[1]] = Date.now();
				}
			}
		}
		new MutationObserver(look).observe(log, {childList: true, characterData: true, subtree: true});
		var at = log.textContent;
		look();
		return at;
	})()`))
	if err != nil {
		t.Fatalf("watch the log element: %v", err)
	}
	first := 0 // the first tick the page did not have when it loaded
	for n := 1; n <= ticks; n++ {
		if !strings.Contains(initial, fmt.Sprintf("browser-tick %d\n", n)) {
			first = n
			break
		}
	}
	if first == 0 || first > 2 {
		t.Fatalf("the page loaded with ticks up to %d of %d, though the build waits at a gate after the first", first-1, ticks)
	}

	// Each line the page did not have shows up without a reload while the
	// deploy still runs: the build waits at the gate after it. Then the
	// test opens that gate, and the build writes the next line.
	var seenLive map[string]int64
	for n := 1; n <= ticks; n++ {
		if n > 1 {
			openGate(t, gates[n-1])
		}
		if n < first {
			continue
		}
		waitFor(t, 60*time.Second, func() bool {
			seen, err := chromedp.Run(ctx, chromedp.Evaluate[map[string]int64](
				`window.flakeshipTestMarker === true ? window.flakeshipSeen : null`))
			if err != nil || seen == nil {
				t.Fatalf("the deploy page reloaded or went away before tick %d showed: %v", n, err)
			}
			seenLive = seen
			_, ok := seen[strconv.Itoa(n)]
			return ok
		}, func() string { return fmt.Sprintf("tick %d never showed on the page\n%s", n, f.logs.String()) })
		if st := f.deploy(id).State; st != "building" {
			t.Fatalf("deploy %d was %s when its page showed tick %d, though its build waits at a gate", id, st, n)
		}
	}
	openGate(t, gates[ticks])

	got := f.waitEnd(id)
	if got.State != "succeeded" || got.SHA != sha {
		t.Fatalf("deploy = %+v, want succeeded", got)
	}
	// At the end the script reloads the page, which shows the final state.
	waitDOM(t, ctx, `document.getElementById("state").textContent`, "succeeded")
	reportLiveDelay(t, apiSeen(), seenLive, first)

	// Log in as the operator and come back to the deploy.
	if err := chromedp.Do(ctx,
		chromedp.Navigate(fmt.Sprintf("%s/login?next=/deploys/%d", f.base, id)),
		chromedp.SendKeys(chromedp.ID("token"), adminToken),
		chromedp.Click(chromedp.CSS("form.login button")),
	); err != nil {
		t.Fatalf("log in: %v", err)
	}
	waitDOM(t, ctx, `location.pathname + " " + (document.querySelector("#redeploy button") !== null)`,
		fmt.Sprintf("/deploys/%d true", id))
	page, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.documentElement.outerHTML`))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(page, adminToken) {
		t.Error("the page holds the admin token")
	}
	screenshot(t, ctx, deployURL, "deploy-page-phone.png", 390, 844)
	screenshot(t, ctx, deployURL, "deploy-page.png", 1100, 900)

	// Redeploy, and watch the new deploy succeed on its page.
	if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS("#redeploy button"))); err != nil {
		t.Fatalf("press redeploy: %v", err)
	}
	var newID int64
	waitFor(t, 30*time.Second, func() bool {
		path, err := chromedp.Run(ctx, chromedp.Evaluate[string](`location.pathname`))
		if err != nil {
			return false
		}
		n, err := strconv.ParseInt(strings.TrimPrefix(path, "/deploys/"), 10, 64)
		newID = n
		return err == nil && n > id
	}, func() string { return "redeploy did not open a new deploy's page" })
	waitDOM(t, ctx, `document.getElementById("state").textContent`, "succeeded")
	if nd := f.deploy(newID); nd.Trigger != "manual" || nd.SHA != sha || nd.State != "succeeded" {
		t.Errorf("redeploy = %+v, want a succeeded manual deploy of %s", nd, sha[:7])
	}
	a.wantRunning(a.version)
	screenshot(t, ctx, f.base+"/", "index.png", 1100, 700)
}

// newBrowser starts a headless Chromium with a new profile in t.TempDir()
// and returns its tab's context. The browser is stopped, and proven gone,
// when the test ends.
func newBrowser(t *testing.T) context.Context {
	t.Helper()
	out := &testenv.Buffer{}
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath("/usr/bin/chromium"),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(filepath.Join(t.TempDir(), "chromium-profile")),
		chromedp.WindowSize(1100, 900),
		chromedp.CombinedOutput(out),
	)
	ctx, cancel := chromedp.NewContext(allocCtx)
	ctx, cancelTimeout := context.WithTimeout(ctx, 4*time.Minute)
	t.Cleanup(func() {
		var proc *os.Process
		if c := chromedp.FromContext(ctx); c != nil && c.Browser != nil {
			proc = c.Browser.Process()
		}
		cancelTimeout()
		cancel()
		cancelAlloc() // waits for the browser to exit
		if proc != nil {
			if err := proc.Signal(syscall.Signal(0)); !errors.Is(err, os.ErrProcessDone) {
				t.Errorf("chromium (pid %d) is still running after the test: %v", proc.Pid, err)
			}
		}
		if t.Failed() {
			t.Logf("chromium output:\n%s", out.String())
		}
	})
	return ctx
}

// waitDOM polls a JavaScript expression of the page until it gives want.
// Errors (the page is reloading) count as not yet.
func waitDOM(t *testing.T, ctx context.Context, expr, want string) {
	t.Helper()
	var got string
	waitFor(t, 60*time.Second, func() bool {
		v, err := chromedp.Run(ctx, chromedp.Evaluate[string](expr))
		got = v
		return err == nil && v == want
	}, func() string { return fmt.Sprintf("%s is %q, want %q", expr, got, want) })
}

// pushTicking commits and pushes a build that prints "browser-tick 1" to
// "browser-tick n", each followed by a wait at the next of the n gates,
// then builds a healthy service; it returns the commit and its signed
// delivery.
func (a *app) pushTicking(gates []*testenv.Gate) (string, delivery) {
	a.version++
	script := ": " + a.nonce
	for i, g := range gates {
		script += fmt.Sprintf(`; echo "browser-tick %d"; %s`, i+1, g.Script())
	}
	script += fmt.Sprintf("; echo version=%d > $out; echo healthy=yes >> $out", a.version)
	before := a.head
	if before == "" {
		before = strings.Repeat("0", 40)
	}
	sha := a.repo.Commit(a.t, fmt.Sprintf("ticking version %d <b>watch me</b>", a.version), map[string]string{"flake.nix": a.flake(script)})
	a.repo.Push(a.t, "main")
	a.head = sha
	return sha, a.delivery(before, sha)
}

var tickRE = regexp.MustCompile(`browser-tick (\d+)$`)

// followLog follows deploy id's log through the API (GET
// /api/deploys/{id}/log?follow=1) and notes when each tick line arrives.
// The returned func waits for the stream's end and returns the notes, in
// Unix milliseconds by tick number.
func (f *flakeship) followLog(t *testing.T, id int64) func() map[string]int64 {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("%s/api/deploys/%d/log?follow=1", f.base, id))
	if err != nil {
		t.Fatalf("follow the log: %v", err)
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		t.Fatalf("follow the log: %s", resp.Status)
	}
	seen := map[string]int64{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if m := tickRE.FindStringSubmatch(sc.Text()); m != nil {
				seen[m[1]] = time.Now().UnixMilli()
			}
		}
	}()
	var once sync.Once
	t.Cleanup(func() {
		resp.Body.Close()
		<-done
	})
	return func() map[string]int64 {
		once.Do(func() {
			select {
			case <-done:
			case <-time.After(60 * time.Second):
				t.Fatal("the API's log stream did not end with the deploy")
			}
		})
		return seen
	}
}

// reportLiveDelay logs how long after the API's log stream each tick line
// that arrived live showed on the page.
func reportLiveDelay(t *testing.T, api, page map[string]int64, first int) {
	t.Helper()
	var delays []int64
	for n := first; ; n++ {
		k := strconv.Itoa(n)
		at, ok := page[k]
		if !ok {
			break
		}
		from, ok := api[k]
		if !ok {
			t.Errorf("tick %d showed on the page but not in the API's log stream", n)
			continue
		}
		delays = append(delays, at-from)
	}
	if len(delays) == 0 {
		t.Fatal("no tick line arrived live on the page")
	}
	sorted := slices.Clone(delays)
	slices.Sort(sorted)
	t.Logf("live log delay, API log stream to page, over %d lines: min %dms, median %dms, max %dms (each: %v ms)",
		len(sorted), sorted[0], sorted[len(sorted)/2], sorted[len(sorted)-1], delays)
}

// screenshot takes a full-page screenshot of url at the given viewport
// size into the test's artifacts ($FLAKESHIP_TEST_ARTIFACTS, else a
// temporary directory) as name; with FLAKESHIP_UPDATE_SCREENSHOT=1,
// deploy-page.png also replaces docs/deploy-page.png, which the README shows.
func screenshot(t *testing.T, ctx context.Context, url, name string, width, height int64) {
	t.Helper()
	dir := os.Getenv("FLAKESHIP_TEST_ARTIFACTS")
	if dir == "" {
		dir = t.TempDir()
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := chromedp.Do(ctx, chromedp.EmulateViewport(width, height), chromedp.Navigate(url)); err != nil {
		t.Fatalf("screenshot %s: %v", name, err)
	}
	waitDOM(t, ctx, `document.readyState`, "complete")
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot %s: %v", name, err)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", path)
	if name == "deploy-page.png" && os.Getenv("FLAKESHIP_UPDATE_SCREENSHOT") == "1" {
		if err := os.MkdirAll("docs", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join("docs", name), png, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot: docs/%s updated", name)
	}
}
