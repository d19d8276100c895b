package metrics

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/flakeship/flakeship/deploy"
	"github.com/flakeship/flakeship/forge"
)

// walker drives real deploy records through Advance and tells the metrics
// after each move, as the deploy queue does.
type walker struct {
	t   *testing.T
	m   *Metrics
	now time.Time
}

// newWalker returns metrics of the targets app and web and a clock that
// starts at a fixed instant.
func newWalker(t *testing.T) *walker {
	t.Helper()
	return &walker{t: t, m: New([]string{"app", "web"}, Options{Version: "1.2.3"}),
		now: time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)}
}

// walk moves d through states, each tick after the previous one, and calls
// Transition after each move.
func (w *walker) walk(d *deploy.Deploy, tick time.Duration, states ...deploy.State) {
	w.t.Helper()
	for _, s := range states {
		w.now = w.now.Add(tick)
		from := d.State
		if err := d.Advance(s, w.now); err != nil {
			w.t.Fatalf("advance deploy %d: %v", d.ID, err)
		}
		w.m.Transition(d, from)
	}
}

func newDeploy(id int64, target string) *deploy.Deploy {
	return &deploy.Deploy{ID: id, Target: target, State: deploy.Queued, Trigger: deploy.TriggerPush,
		CreatedAt: time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)}
}

// The pipeline's paths to each end state.
var (
	toSucceeded  = []deploy.State{deploy.Fetching, deploy.Building, deploy.Activating, deploy.Verifying, deploy.Succeeded}
	toBuildFail  = []deploy.State{deploy.Fetching, deploy.Building, deploy.Failed}
	toRolledBack = []deploy.State{deploy.Fetching, deploy.Building, deploy.Activating, deploy.Verifying, deploy.RolledBack}
)

func TestMetricsCountEachEndAndEachStepOnce(t *testing.T) {
	for _, tc := range []struct {
		name      string
		path      []deploy.State
		state     string   // the end state counted
		steps     []string // the steps observed, once each
		noSteps   []string // steps never observed
		duration  int      // deploy_duration_seconds samples
		stepTicks float64  // every step lasts this many seconds
	}{
		{"a deploy that succeeds", toSucceeded, "succeeded",
			[]string{"fetch", "build", "activate", "verify"}, nil, 1, 2},
		{"a deploy whose build fails", toBuildFail, "failed",
			[]string{"fetch", "build"}, []string{"activate", "verify"}, 1, 2},
		{"a deploy rolled back", toRolledBack, "rolled_back",
			[]string{"fetch", "build", "activate", "verify"}, nil, 1, 2},
		{"a deploy superseded while queued", []deploy.State{deploy.Superseded}, "superseded",
			nil, []string{"fetch", "build", "activate", "verify"}, 0, 2},
		{"a deploy cancelled while fetching", []deploy.State{deploy.Fetching, deploy.Cancelled}, "cancelled",
			[]string{"fetch"}, []string{"build", "activate", "verify"}, 1, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWalker(t)
			d := newDeploy(1, "app")
			w.walk(d, 2*time.Second, tc.path...)
			m := w.m

			// Only the one end state of app counts 1; every other series
			// (all of web's) stays at 0.
			for _, s := range deploy.States() {
				if !s.Terminal() {
					continue
				}
				for _, target := range []string{"app", "web"} {
					want := 0.0
					if target == "app" && string(s) == tc.state {
						want = 1
					}
					if got := testutil.ToFloat64(m.deploys.WithLabelValues(target, string(s))); got != want {
						t.Errorf("deploys_total{target=%q,state=%q} = %v, want %v", target, s, got, want)
					}
				}
			}
			for _, step := range tc.steps {
				if n, sum := histogram(t, m, "flakeship_step_duration_seconds", "app", "step", step); n != 1 || sum != tc.stepTicks {
					t.Errorf("step %s: %d samples summing to %vs, want 1 of %vs", step, n, sum, tc.stepTicks)
				}
			}
			for _, step := range tc.noSteps {
				if n, _ := histogram(t, m, "flakeship_step_duration_seconds", "app", "step", step); n != 0 {
					t.Errorf("step %s never ran but has %d samples", step, n)
				}
			}
			n, sum := histogram(t, m, "flakeship_deploy_duration_seconds", "app", "state", tc.state)
			if want := float64(len(tc.path)-1) * 2; n != tc.duration || (n == 1 && sum != want) {
				t.Errorf("deploy_duration_seconds{state=%q}: %d samples summing to %vs, want %d of %vs",
					tc.state, n, sum, tc.duration, want)
			}
			if got := testutil.ToFloat64(m.builds); got != 0 {
				t.Errorf("builds_in_progress = %v after the deploy ended, want 0", got)
			}
			if got := testutil.ToFloat64(m.running.WithLabelValues("app")); got != 0 {
				t.Errorf("deploys_in_progress{target=app} = %v after the deploy ended, want 0", got)
			}
		})
	}
}

func TestMetricsTrackWorkInProgress(t *testing.T) {
	w := newWalker(t)
	m := w.m
	gauges := func() string {
		return fmt.Sprintf("builds=%v app=%v web=%v", testutil.ToFloat64(m.builds),
			testutil.ToFloat64(m.running.WithLabelValues("app")), testutil.ToFloat64(m.running.WithLabelValues("web")))
	}
	app, web := newDeploy(1, "app"), newDeploy(2, "web")
	for _, step := range []struct {
		d     *deploy.Deploy
		to    deploy.State
		after string
	}{
		{app, deploy.Fetching, "builds=0 app=1 web=0"},
		{web, deploy.Fetching, "builds=0 app=1 web=1"},
		{app, deploy.Building, "builds=1 app=1 web=1"},
		{web, deploy.Building, "builds=2 app=1 web=1"},
		{app, deploy.Activating, "builds=1 app=1 web=1"},
		{web, deploy.Failed, "builds=0 app=1 web=0"},
		{app, deploy.Verifying, "builds=0 app=1 web=0"},
		{app, deploy.Succeeded, "builds=0 app=0 web=0"},
	} {
		w.walk(step.d, time.Second, step.to)
		if got := gauges(); got != step.after {
			t.Errorf("after %s of %s: %s, want %s", step.to, step.d.Target, got, step.after)
		}
	}
}

func TestMetricsIgnoreTheEndOfWorkBegunBeforeAStart(t *testing.T) {
	// A deploy stored as building by an earlier process is marked
	// interrupted at start: it was never counted as building here.
	w := newWalker(t)
	d := newDeploy(7, "app")
	w.walk(d, time.Second, deploy.Fetching, deploy.Building)
	w.m = New([]string{"app"}, Options{})
	w.walk(d, time.Second, deploy.Interrupted)
	m := w.m

	if got := testutil.ToFloat64(m.builds); got != 0 {
		t.Errorf("builds_in_progress = %v, want 0", got)
	}
	if got := testutil.ToFloat64(m.running.WithLabelValues("app")); got != 0 {
		t.Errorf("deploys_in_progress{target=app} = %v, want 0", got)
	}
	if got := testutil.ToFloat64(m.deploys.WithLabelValues("app", "interrupted")); got != 1 {
		t.Errorf("deploys_total{state=interrupted} = %v, want 1", got)
	}
	if n, _ := histogram(t, m, "flakeship_step_duration_seconds", "app", "step", "build"); n != 1 {
		t.Errorf("the interrupted build step has %d samples, want 1", n)
	}
	if n, _ := histogram(t, m, "flakeship_step_duration_seconds", "app", "step", "fetch"); n != 0 {
		t.Errorf("the fetch step, observed by the earlier process, has %d samples here, want 0", n)
	}
}

func TestMetricsCountWaitingAndDeliveries(t *testing.T) {
	m := New([]string{"app"}, Options{})
	m.Waiting(3)
	m.Waiting(1)
	for _, d := range []struct {
		kind   forge.Kind
		status int
	}{
		{forge.GitHub, 202}, {forge.GitHub, 202}, {forge.GitHub, 401},
		{forge.Forgejo, 200}, {forge.Forgejo, 413},
	} {
		m.Delivery(d.kind, d.status)
	}
	want := `
# HELP flakeship_queue_waiting Targets with a deploy queued behind a running one or waiting for a free slot.
# TYPE flakeship_queue_waiting gauge
flakeship_queue_waiting 1
# HELP flakeship_webhook_deliveries_total Webhook deliveries answered, by forge and HTTP status code.
# TYPE flakeship_webhook_deliveries_total counter
flakeship_webhook_deliveries_total{code="200",forge="forgejo"} 1
flakeship_webhook_deliveries_total{code="202",forge="github"} 2
flakeship_webhook_deliveries_total{code="401",forge="github"} 1
flakeship_webhook_deliveries_total{code="413",forge="forgejo"} 1
`
	if err := testutil.GatherAndCompare(m.reg, strings.NewReader(want),
		"flakeship_queue_waiting", "flakeship_webhook_deliveries_total"); err != nil {
		t.Error(err)
	}
}

func TestMetricsStartAtZeroForEveryTarget(t *testing.T) {
	m := New([]string{"app", "web"}, Options{})
	want := `
# HELP flakeship_build_info Always 1; its label names the running flakeship version.
# TYPE flakeship_build_info gauge
flakeship_build_info{version="dev"} 1
# HELP flakeship_builds_in_progress Deploys in the building state.
# TYPE flakeship_builds_in_progress gauge
flakeship_builds_in_progress 0
# HELP flakeship_deploys_in_progress Deploys being worked on (fetching to verifying), by target.
# TYPE flakeship_deploys_in_progress gauge
flakeship_deploys_in_progress{target="app"} 0
flakeship_deploys_in_progress{target="web"} 0
`
	if err := testutil.GatherAndCompare(m.reg, strings.NewReader(want), "flakeship_build_info",
		"flakeship_builds_in_progress", "flakeship_deploys_in_progress"); err != nil {
		t.Error(err)
	}
	// Six end states for each of two targets.
	if n := testutil.CollectAndCount(m.deploys, "flakeship_deploys_total"); n != 12 {
		t.Errorf("deploys_total has %d series before any deploy, want 12", n)
	}
	if n := testutil.CollectAndCount(m.steps) + testutil.CollectAndCount(m.durations) +
		testutil.CollectAndCount(m.deliveries); n != 0 {
		t.Errorf("%d histogram or delivery series before any deploy, want 0", n)
	}
}

func TestMetricsHandlerServesParsableExposition(t *testing.T) {
	w := newWalker(t)
	w.walk(newDeploy(1, "app"), time.Second, toSucceeded...)
	w.m.Delivery(forge.GitHub, 202)
	w.m.Waiting(0)
	srv := httptest.NewServer(w.m.Handler())
	t.Cleanup(srv.Close)

	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET /metrics: %d %s", resp.StatusCode, body)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse exposition: %v", err)
	}
	for _, name := range []string{
		"flakeship_deploys_total", "flakeship_step_duration_seconds", "flakeship_deploy_duration_seconds",
		"flakeship_queue_waiting", "flakeship_builds_in_progress", "flakeship_deploys_in_progress",
		"flakeship_webhook_deliveries_total", "flakeship_build_info",
		"go_goroutines", "process_start_time_seconds",
	} {
		if families[name] == nil {
			t.Errorf("exposition has no %s", name)
		}
	}
	if mf := families["flakeship_step_duration_seconds"]; mf != nil {
		if got := len(mf.GetMetric()); got != 4 {
			t.Errorf("step_duration_seconds has %d series, want one per step (4)", got)
		}
		for _, m := range mf.GetMetric() {
			if n := m.GetHistogram().GetSampleCount(); n != 1 {
				t.Errorf("step %s has %d samples, want 1", label(m, "step"), n)
			}
		}
	}
}

// histogram returns the sample count and sum of the histogram series name
// with target and one more label (key=value), or 0, 0 if there is none.
func histogram(t *testing.T, m *Metrics, name, target, key, value string) (int, float64) {
	t.Helper()
	families, err := m.reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, mf := range families {
		if mf.GetName() != name {
			continue
		}
		for _, s := range mf.GetMetric() {
			if label(s, "target") == target && label(s, key) == value {
				return int(s.GetHistogram().GetSampleCount()), s.GetHistogram().GetSampleSum()
			}
		}
	}
	return 0, 0
}

// label returns the value of a metric's label, "" if it has none.
func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}
