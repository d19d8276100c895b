// Package metrics keeps flakeship's Prometheus metrics: deploys by outcome,
// step and deploy durations, the queue, builds in progress, webhook
// deliveries and the intake's group commits, on a registry of its own (with the Go runtime and process
// collectors), served by Handler.
//
// A Metrics is the deploy queue's deploy.Observer (and IntakeObserver) and
// the server's DeliveryObserver. The queue calls it from several goroutines,
// some holding its scheduler's lock, so every method is safe for concurrent
// use, quick, never blocks on I/O and never calls back into deploy.
package metrics

import (
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/flakeship/flakeship/deploy"
	"github.com/flakeship/flakeship/forge"
)

// namespace prefixes every flakeship metric name.
const namespace = "flakeship"

// Options are the optional settings of New.
type Options struct {
	// Version is reported as flakeship_build_info{version}; "" means "dev".
	Version string
}

// Metrics holds flakeship's metrics. Its methods are safe for concurrent use.
type Metrics struct {
	reg *prometheus.Registry

	deploys    *prometheus.CounterVec   // deploys_total{target,state}
	steps      *prometheus.HistogramVec // step_duration_seconds{target,step}
	durations  *prometheus.HistogramVec // deploy_duration_seconds{target,state}
	waiting    prometheus.Gauge         // queue_waiting
	builds     prometheus.Gauge         // builds_in_progress
	running    *prometheus.GaugeVec     // deploys_in_progress{target}
	deliveries *prometheus.CounterVec   // webhook_deliveries_total{forge,code}
	commits    prometheus.Histogram     // intake_commit_seconds
	committed  prometheus.Histogram     // intake_commit_submissions

	// The gauges of work in progress count the deploys this process saw
	// enter that work. A deploy recovered after a crash leaves a state it
	// entered in another process (building -> interrupted); keeping the ids
	// keeps such a move from taking a gauge below zero.
	mu         sync.Mutex
	building   map[int64]bool   // deploys in the building state
	inProgress map[int64]string // running deploys and their targets
}

var (
	_ deploy.Observer       = (*Metrics)(nil)
	_ deploy.IntakeObserver = (*Metrics)(nil)
)

// New makes the metrics of the named targets on a registry of their own. The
// count of each target's deploys in each end state, and of its deploys in
// progress, start at zero so that dashboards show them before the first
// deploy.
func New(targets []string, opts Options) *Metrics {
	version := opts.Version
	if version == "" {
		version = "dev"
	}
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		deploys: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace,
			Name:      "deploys_total",
			Help:      "Deploys that ended, by target and end state.",
		}, []string{"target", "state"}),
		steps: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace,
			Name:      "step_duration_seconds",
			Help:      "How long each finished step of a deploy (fetch, build, activate, verify) took.",
			Buckets:   durationBuckets(),
		}, []string{"target", "step"}),
		durations: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace,
			Name:      "deploy_duration_seconds",
			Help:      "How long deploys that started took from start to end, by target and end state.",
			Buckets:   durationBuckets(),
		}, []string{"target", "state"}),
		waiting: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace,
			Name:      "queue_waiting",
			Help:      "Targets with a deploy queued behind a running one or waiting for a free slot.",
		}),
		builds: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace,
			Name:      "builds_in_progress",
			Help:      "Deploys in the building state.",
		}),
		running: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: namespace,
			Name:      "deploys_in_progress",
			Help:      "Deploys being worked on (fetching to verifying), by target.",
		}, []string{"target"}),
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace,
			Name:      "webhook_deliveries_total",
			Help:      "Webhook deliveries answered, by forge and HTTP status code.",
		}, []string{"forge", "code"}),
		commits: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace,
			Name:      "intake_commit_seconds",
			Help:      "How long each group commit of submitted deploys held the deploy queue: one transaction and its sync.",
			Buckets:   []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1},
		}),
		committed: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace,
			Name:      "intake_commit_submissions",
			Help:      "Submitted deploys (pushes, redeliveries, manual deploys) stored by each group commit.",
			Buckets:   prometheus.ExponentialBuckets(1, 2, 10), // 1 to 512
		}),
		building:   map[int64]bool{},
		inProgress: map[int64]string{},
	}
	info := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace:   namespace,
		Name:        "build_info",
		Help:        "Always 1; its label names the running flakeship version.",
		ConstLabels: prometheus.Labels{"version": version},
	})
	info.Set(1)

	for _, t := range targets {
		for _, s := range deploy.States() {
			if s.Terminal() {
				m.deploys.WithLabelValues(t, string(s))
			}
		}
		m.running.WithLabelValues(t)
	}
	m.reg.MustRegister(
		m.deploys, m.steps, m.durations, m.waiting, m.builds, m.running, m.deliveries, m.commits, m.committed, info,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

// durationBuckets are the histogram buckets of steps and deploys, in
// seconds: from a cached fetch (10 ms) to a long build (1 h), in steps a
// person reads at a glance.
func durationBuckets() []float64 {
	return []float64{0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600}
}

// Handler serves the metrics in the Prometheus exposition format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// Transition implements deploy.Observer: d has just moved from state from to
// d.State, and Advance has closed the step of from (if from is a running
// state). A deploy enters each running state at most once, so each step is
// observed exactly once: when its state is left.
func (m *Metrics) Transition(d *deploy.Deploy, from deploy.State) {
	if name := stepOf(from); name != "" {
		for i := len(d.Steps) - 1; i >= 0; i-- {
			s := d.Steps[i]
			if s.Name == name && s.FinishedAt != nil {
				m.steps.WithLabelValues(d.Target, name).Observe(secondsBetween(s.StartedAt, *s.FinishedAt))
				break
			}
		}
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	if from == deploy.Building && m.building[d.ID] {
		delete(m.building, d.ID)
		m.builds.Dec()
	}
	if d.State == deploy.Building && !m.building[d.ID] {
		m.building[d.ID] = true
		m.builds.Inc()
	}
	if stepOf(d.State) != "" {
		if _, ok := m.inProgress[d.ID]; !ok {
			m.inProgress[d.ID] = d.Target
			m.running.WithLabelValues(d.Target).Inc()
		}
	}

	if !d.State.Terminal() {
		return
	}
	if target, ok := m.inProgress[d.ID]; ok {
		delete(m.inProgress, d.ID)
		m.running.WithLabelValues(target).Dec()
	}
	m.deploys.WithLabelValues(d.Target, string(d.State)).Inc()
	// A deploy superseded or cancelled while queued never started: it
	// has no duration.
	if d.StartedAt != nil && d.FinishedAt != nil {
		m.durations.WithLabelValues(d.Target, string(d.State)).Observe(secondsBetween(*d.StartedAt, *d.FinishedAt))
	}
}

// Waiting implements deploy.Observer: n targets have a deploy waiting.
func (m *Metrics) Waiting(n int) {
	m.waiting.Set(float64(n))
}

// IntakeCommit implements deploy.IntakeObserver: one group commit stored n
// submissions and took took.
func (m *Metrics) IntakeCommit(n int, took time.Duration) {
	m.commits.Observe(took.Seconds())
	m.committed.Observe(float64(n))
}

// Delivery counts one webhook delivery of forge kind answered with the HTTP
// status code (server.DeliveryObserver).
func (m *Metrics) Delivery(kind forge.Kind, status int) {
	m.deliveries.WithLabelValues(string(kind), strconv.Itoa(status)).Inc()
}

// stepOf names the pipeline step of a running state (DESIGN.md's step names),
// "" for queued and the end states.
func stepOf(s deploy.State) string {
	switch s {
	case deploy.Fetching:
		return "fetch"
	case deploy.Building:
		return "build"
	case deploy.Activating:
		return "activate"
	case deploy.Verifying:
		return "verify"
	}
	return ""
}

// secondsBetween is the time from start to end in seconds; never negative,
// even if the wall clock was stepped back in between.
func secondsBetween(start, end time.Time) float64 {
	return max(end.Sub(start).Seconds(), 0)
}
