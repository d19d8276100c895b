package main

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// TestMetricsCountADeployAndEachDelivery deploys one healthy push and sends
// a delivery with a bad signature and an oversized one, then reads
// GET /metrics as Prometheus would: one succeeded deploy, each of its four
// steps timed once, nothing left in progress, each delivery counted under
// the status it was answered with, and the push stored by one group commit.
func TestMetricsCountADeployAndEachDelivery(t *testing.T) {
	a := newApp(t, "github")
	f := a.start()

	sha, d := a.push(healthy)
	id := d.accepted(t, f.base)
	if got := f.waitEnd(id); got.State != "succeeded" || got.SHA != sha {
		t.Fatalf("deploy = %+v, want succeeded", got)
	}

	badSig := d
	badSig.header = d.header.Clone()
	v := badSig.header.Get("X-Hub-Signature-256")
	badSig.header.Set("X-Hub-Signature-256", v[:len(v)-4]+"0000")
	if code, body := badSig.send(t, f.base); code != http.StatusUnauthorized {
		t.Fatalf("bad signature answered %d %s, want 401", code, body)
	}
	if code, body := oversized(t, f.base, d); code != http.StatusRequestEntityTooLarge {
		t.Fatalf("oversized delivery answered %d %s, want 413", code, body)
	}

	// The deploy's record is stored a moment before the queue reports its
	// end to the metrics: waited for, bounded generously.
	var m scrape
	waitFor(t, time.Minute, func() bool {
		m = f.readMetrics()
		v, _ := m.value("flakeship_deploys_total", "target", "app", "state", "succeeded")
		return v == 1
	}, func() string { return "deploys_total{state=succeeded} never reached 1:\n" + m.text })

	for _, tc := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"flakeship_deploys_total", []string{"target", "app", "state", "succeeded"}, 1},
		{"flakeship_deploys_total", []string{"target", "app", "state", "failed"}, 0},
		{"flakeship_deploys_total", []string{"target", "app", "state", "rolled_back"}, 0},
		{"flakeship_deploys_total", []string{"target", "app", "state", "superseded"}, 0},
		{"flakeship_step_duration_seconds", []string{"target", "app", "step", "fetch"}, 1},
		{"flakeship_step_duration_seconds", []string{"target", "app", "step", "build"}, 1},
		{"flakeship_step_duration_seconds", []string{"target", "app", "step", "activate"}, 1},
		{"flakeship_step_duration_seconds", []string{"target", "app", "step", "verify"}, 1},
		{"flakeship_deploy_duration_seconds", []string{"target", "app", "state", "succeeded"}, 1},
		{"flakeship_webhook_deliveries_total", []string{"forge", "github", "code", "202"}, 1},
		{"flakeship_webhook_deliveries_total", []string{"forge", "github", "code", "401"}, 1},
		{"flakeship_webhook_deliveries_total", []string{"forge", "github", "code", "413"}, 1},
		{"flakeship_builds_in_progress", nil, 0},
		{"flakeship_deploys_in_progress", []string{"target", "app"}, 0},
		{"flakeship_queue_waiting", nil, 0},
		// The one push was stored by one group commit of the intake.
		{"flakeship_intake_commit_seconds", nil, 1},
		{"flakeship_intake_commit_submissions", nil, 1},
		{"flakeship_build_info", []string{"version", "dev"}, 1},
	} {
		got, ok := m.value(tc.name, tc.labels...)
		if !ok {
			t.Errorf("no %s%v in the exposition", tc.name, tc.labels)
		} else if got != tc.want {
			t.Errorf("%s%v = %v, want %v", tc.name, tc.labels, got, tc.want)
		}
	}
	if n := m.series("flakeship_webhook_deliveries_total"); n != 3 {
		t.Errorf("webhook_deliveries_total has %d series, want 3 (202, 401, 413)", n)
	}
	for _, name := range []string{"go_goroutines", "process_resident_memory_bytes"} {
		if m.series(name) == 0 {
			t.Errorf("no %s: the Go and process collectors are missing", name)
		}
	}
	for _, secret := range []string{a.secret, a.token} {
		if strings.Contains(m.text, secret) {
			t.Errorf("the exposition contains a secret")
		}
	}
	f.stop(syscall.SIGTERM)
}

// scrape is one parsed answer of GET /metrics.
type scrape struct {
	text     string
	families map[string]*dto.MetricFamily
}

// readMetrics reads GET /metrics and parses the text exposition format.
func (f *flakeship) readMetrics() scrape {
	f.t.Helper()
	resp, err := http.Get(f.base + "/metrics")
	if err != nil {
		f.t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		f.t.Fatalf("GET /metrics: %v", err)
	}
	if resp.StatusCode != http.StatusOK {
		f.t.Fatalf("GET /metrics: %d %s", resp.StatusCode, body)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		f.t.Fatalf("GET /metrics: content type %q, want the text format", ct)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		f.t.Fatalf("parse /metrics: %v\n%s", err, body)
	}
	return scrape{text: string(body), families: families}
}

// value returns the value of the series of family name with exactly the
// given labels (name, value pairs): a counter's or gauge's value, or a
// histogram's sample count.
func (s scrape) value(name string, labels ...string) (float64, bool) {
	mf := s.families[name]
	if mf == nil {
		return 0, false
	}
	want := map[string]string{}
	for i := 0; i+1 < len(labels); i += 2 {
		want[labels[i]] = labels[i+1]
	}
	for _, m := range mf.GetMetric() {
		got := map[string]string{}
		for _, l := range m.GetLabel() {
			got[l.GetName()] = l.GetValue()
		}
		if labelString(got) != labelString(want) {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.GetCounter().GetValue(), true
		case m.Gauge != nil:
			return m.GetGauge().GetValue(), true
		case m.Histogram != nil:
			return float64(m.GetHistogram().GetSampleCount()), true
		}
	}
	return 0, false
}

// series counts the series of family name.
func (s scrape) series(name string) int {
	if mf := s.families[name]; mf != nil {
		return len(mf.GetMetric())
	}
	return 0
}

// labelString writes a label set in a canonical form, for comparing.
func labelString(l map[string]string) string {
	keys := make([]string, 0, len(l))
	for k := range l {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s=%q,", k, l[k])
	}
	return b.String()
}
