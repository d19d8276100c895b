// Command load sends signed GitHub webhook deliveries to a server as fast as
// it answers: up to -n requests over -c keep-alive connections, for at most
// -duration, each with its own delivery id, and prints what it measured as
// one line of JSON: throughput, latency percentiles, answers by status. It
// exits 1 if any request failed or was answered with another status than
// -expect.
//
//	load -url http://127.0.0.1:8080/hooks/github -event push -body FILE \
//	    -secret-file FILE -c 64 -n 100000 -duration 10s -expect 202 [-pid PID]
//
// With -pid it also samples that process's resident memory while it sends
// (rss_max_kib) and reads the CPU time it used from /proc/PID/stat
// (cpu_seconds, and cpus: CPU seconds per second of the load). With
// -metrics, flakeship's /metrics URL, it reads the histograms of the
// intake's group commits before and after the load and prints what the
// load's deliveries cost there: commits, submissions per commit, the time
// the commits took and its share of the load's time, and commit
// time per submission. The first -warmup requests are sent before
// measuring.
package main

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/flakeship/flakeship/bench/rig"
)

// result is what load prints.
type result struct {
	URL        string         `json:"url"`
	Event      string         `json:"event"`
	Conns      int            `json:"conns"`
	Requests   int            `json:"requests"`
	Seconds    float64        `json:"seconds"`
	RPS        float64        `json:"rps"`
	P50ms      float64        `json:"p50_ms"`
	P99ms      float64        `json:"p99_ms"`
	Maxms      float64        `json:"max_ms"`
	Status     map[string]int `json:"status"`
	Errors     int            `json:"errors"`
	FirstError string         `json:"first_error,omitempty"`
	RSSMaxKiB  int64          `json:"rss_max_kib,omitempty"`
	CPUSeconds float64        `json:"cpu_seconds,omitempty"`
	CPUs       float64        `json:"cpus,omitempty"`

	// From flakeship's /metrics (-metrics): the intake's group commits
	// during the load.
	Commits              float64 `json:"intake_commits,omitempty"`
	Submissions          float64 `json:"intake_submissions,omitempty"`
	CommitSeconds        float64 `json:"intake_commit_seconds,omitempty"`
	SubmissionsPerCommit float64 `json:"intake_submissions_per_commit,omitempty"`
	CommitBusy           float64 `json:"intake_commit_busy,omitempty"`              // commit time / load time
	CommitUsPerSub       float64 `json:"intake_commit_us_per_submission,omitempty"` // commit time / submissions
}

// options are load's flags.
type options struct {
	url, event, bodyFile, secretFile string
	conns, requests, warmup, expect  int
	duration                         time.Duration
	pid                              int
	metrics                          string
}

func main() {
	var o options
	flag.StringVar(&o.url, "url", "", "the webhook URL")
	flag.StringVar(&o.event, "event", "push", "X-GitHub-Event of every delivery")
	flag.StringVar(&o.bodyFile, "body", "", "file holding the raw body of every delivery")
	flag.StringVar(&o.secretFile, "secret-file", "", "file holding the webhook secret the body is signed with")
	flag.IntVar(&o.conns, "c", 64, "connections (requests in flight)")
	flag.IntVar(&o.requests, "n", 100000, "most requests to send, after the warm-up")
	flag.IntVar(&o.warmup, "warmup", 200, "requests sent before measuring")
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "longest time to send for, after the warm-up")
	flag.IntVar(&o.expect, "expect", http.StatusAccepted, "the status every answer must have")
	flag.IntVar(&o.pid, "pid", 0, "process whose resident memory and CPU time to measure while sending (0: none)")
	flag.StringVar(&o.metrics, "metrics", "", "flakeship's /metrics URL, to read the intake's commits from (empty: none)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	res, err := run(ctx, o)
	if res != nil {
		out, _ := json.Marshal(res)
		fmt.Println(string(out))
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "load:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o options) (*result, error) {
	if o.url == "" || o.bodyFile == "" || o.secretFile == "" {
		return nil, errors.New("-url, -body and -secret-file are required")
	}
	if o.conns < 1 || o.requests < 1 || o.warmup < 0 || o.duration <= 0 {
		return nil, errors.New("-c, -n and -duration must be positive, -warmup not negative")
	}
	body, err := os.ReadFile(o.bodyFile)
	if err != nil {
		return nil, fmt.Errorf("read body: %w", err)
	}
	secret, err := os.ReadFile(o.secretFile)
	if err != nil {
		return nil, fmt.Errorf("read secret: %w", err)
	}
	mac := hmac.New(sha256.New, secret)
	mac.Write(body)
	signature := "sha256=" + hex.EncodeToString(mac.Sum(nil))
	// Delivery ids are GUIDs, as GitHub's: a random prefix for this run and
	// a counter, so runs against one store never collide.
	var prefix [8]byte
	if _, err := rand.Read(prefix[:]); err != nil {
		return nil, err
	}
	s := &sender{
		url: o.url, event: o.event, body: body, signature: signature, expect: o.expect,
		idPrefix: fmt.Sprintf("%x-%x-%x-", prefix[:4], prefix[4:6], prefix[6:8]),
		client: &http.Client{
			Timeout: 30 * time.Second,
			Transport: &http.Transport{
				Proxy: nil, MaxIdleConns: o.conns, MaxIdleConnsPerHost: o.conns, MaxConnsPerHost: o.conns,
				DisableCompression: true,
			},
		},
	}
	if o.warmup > 0 {
		s.phase(ctx, o.conns, o.warmup, time.Hour, false)
		if s.failures.Load() > 0 {
			return nil, fmt.Errorf("warm-up: %d of %d requests failed: %s", s.failures.Load(), o.warmup, s.firstError())
		}
	}

	var before, after intake
	if o.metrics != "" {
		if before, err = readIntake(ctx, s.client, o.metrics); err != nil {
			return nil, err
		}
	}
	var rss rssSampler
	var cpuBefore, cpuAfter time.Duration
	if o.pid > 0 {
		if cpuBefore, err = cpuTime(o.pid); err != nil {
			return nil, err
		}
		rss.start(o.pid)
	}
	start := time.Now()
	latencies := s.phase(ctx, o.conns, o.requests, o.duration, true)
	elapsed := time.Since(start)
	rssMax, rssErr := rss.stop()
	if o.pid > 0 && rssErr == nil {
		cpuAfter, rssErr = cpuTime(o.pid)
	}
	if o.metrics != "" {
		// Every measured delivery was answered, and so committed, by now.
		if after, err = readIntake(ctx, s.client, o.metrics); err != nil {
			return nil, err
		}
	}

	res := &result{
		URL: o.url, Event: o.event, Conns: o.conns, Requests: len(latencies),
		Seconds: elapsed.Seconds(), RPS: float64(len(latencies)) / elapsed.Seconds(),
		Status: map[string]int{}, Errors: int(s.errors.Load()), FirstError: s.firstError(), RSSMaxKiB: rssMax,
	}
	if o.pid > 0 {
		res.CPUSeconds = (cpuAfter - cpuBefore).Seconds()
		res.CPUs = res.CPUSeconds / elapsed.Seconds()
	}
	if o.metrics != "" {
		res.Commits = after.commits - before.commits
		res.Submissions = after.submissions - before.submissions
		res.CommitSeconds = after.seconds - before.seconds
		res.CommitBusy = res.CommitSeconds / elapsed.Seconds()
		if res.Commits > 0 {
			res.SubmissionsPerCommit = res.Submissions / res.Commits
		}
		if res.Submissions > 0 {
			res.CommitUsPerSub = res.CommitSeconds / res.Submissions * 1e6
		}
	}
	slices.Sort(latencies)
	res.P50ms, res.P99ms = percentile(latencies, 0.50), percentile(latencies, 0.99)
	if len(latencies) > 0 {
		res.Maxms = ms(latencies[len(latencies)-1])
	}
	s.mu.Lock()
	for code, n := range s.status {
		res.Status[strconv.Itoa(code)] = n
	}
	s.mu.Unlock()
	switch {
	case ctx.Err() != nil:
		return res, ctx.Err()
	case rssErr != nil:
		return res, fmt.Errorf("sample memory of process %d: %w", o.pid, rssErr)
	case s.failures.Load() > 0:
		return res, fmt.Errorf("%d requests failed: %s", s.failures.Load(), s.firstError())
	}
	return res, nil
}

// sender sends the deliveries and counts the answers.
type sender struct {
	url, event, signature, idPrefix string
	body                            []byte
	expect                          int
	client                          *http.Client
	next                            atomic.Int64 // delivery counter
	errors                          atomic.Int64 // requests without an answer
	failures                        atomic.Int64 // errors and unexpected statuses

	mu     sync.Mutex
	status map[int]int
	first  string // the first failure
}

// phase sends n requests from conns goroutines, or as many as it can before
// d passes, and returns each one's latency when measured is true.
func (s *sender) phase(ctx context.Context, conns, n int, d time.Duration, measured bool) []time.Duration {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var left atomic.Int64
	left.Store(int64(n))
	per := make([][]time.Duration, conns)
	var wg sync.WaitGroup
	for w := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil && left.Add(-1) >= 0 {
				t0 := time.Now()
				code, err := s.send(ctx)
				took := time.Since(t0)
				if err != nil && ctx.Err() != nil {
					return // cut off by the deadline: not counted
				}
				s.record(code, err, measured)
				if measured && err == nil {
					per[w] = append(per[w], took)
				}
			}
		}()
	}
	wg.Wait()
	var all []time.Duration
	for _, p := range per {
		all = append(all, p...)
	}
	return all
}

// send posts one delivery and returns the answer's status.
func (s *sender) send(ctx context.Context) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.url, bytes.NewReader(s.body))
	if err != nil {
		return 0, err
	}
	id := s.idPrefix + fmt.Sprintf("%012d", s.next.Add(1))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "GitHub-Hookshot/bench")
	req.Header.Set("X-GitHub-Event", s.event)
	req.Header.Set("X-GitHub-Delivery", id)
	req.Header.Set("X-GitHub-Hook-ID", "1")
	req.Header.Set("X-Hub-Signature-256", s.signature)
	resp, err := s.client.Do(req)
	if err != nil {
		return 0, err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, err
}

// record counts one answer (or failure).
func (s *sender) record(code int, err error, measured bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err == nil && measured {
		if s.status == nil {
			s.status = map[int]int{}
		}
		s.status[code]++
	}
	if err != nil {
		s.errors.Add(1)
	}
	if err != nil || code != s.expect {
		s.failures.Add(1)
		if s.first == "" {
			if err == nil {
				err = fmt.Errorf("answered %d, want %d", code, s.expect)
			}
			s.first = err.Error()
		}
	}
}

func (s *sender) firstError() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.first
}

// percentile returns the p-quantile of sorted latencies in milliseconds
// (nearest rank).
func percentile(sorted []time.Duration, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p*float64(len(sorted))+0.5) - 1
	i = max(0, min(i, len(sorted)-1))
	return ms(sorted[i])
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// rssSampler samples a process's resident memory every 50 ms and keeps the
// largest value.
type rssSampler struct {
	done chan struct{}
	wg   sync.WaitGroup
	max  int64
	err  error
}

func (r *rssSampler) start(pid int) {
	r.done = make(chan struct{})
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			kib, err := rig.RSSKiB(pid)
			if err != nil {
				r.err = err
				return
			}
			r.max = max(r.max, kib)
			select {
			case <-r.done:
				return
			case <-tick.C:
			}
		}
	}()
}

// stop ends sampling and returns the largest resident size seen in KiB.
func (r *rssSampler) stop() (int64, error) {
	if r.done == nil {
		return 0, nil
	}
	close(r.done)
	r.wg.Wait()
	return r.max, r.err
}

// intake is what flakeship's /metrics says of the intake's group commits
// so far: how many, the submissions they stored, and the seconds they held
// the queue.
type intake struct {
	commits, submissions, seconds float64
}

// readIntake reads the intake histograms from flakeship's /metrics at u.
func readIntake(ctx context.Context, client *http.Client, u string) (intake, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return intake{}, fmt.Errorf("metrics: %w", err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return intake{}, fmt.Errorf("metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return intake{}, fmt.Errorf("metrics: %s answered %s", u, resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return intake{}, fmt.Errorf("metrics: %w", err)
	}
	var in intake
	for name, dst := range map[string][2]*float64{
		"flakeship_intake_commit_seconds":     {&in.commits, &in.seconds},
		"flakeship_intake_commit_submissions": {nil, &in.submissions},
	} {
		mf := families[name]
		if mf == nil || len(mf.GetMetric()) != 1 || mf.GetMetric()[0].GetHistogram() == nil {
			return intake{}, fmt.Errorf("metrics: %s has no histogram %s", u, name)
		}
		h := mf.GetMetric()[0].GetHistogram()
		if dst[0] != nil {
			*dst[0] = float64(h.GetSampleCount())
		}
		*dst[1] = h.GetSampleSum()
	}
	return in, nil
}

// clockTicks is the unit of /proc/PID/stat's CPU times: USER_HZ, 100 on
// every Linux architecture Go runs on.
const clockTicks = 100

// cpuTime is the CPU time (user and system) process pid has used.
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("cpu time: %w", err)
	}
	return parseStatCPU(string(b))
}

// parseStatCPU reads utime and stime, fields 14 and 15 of /proc/PID/stat,
// counted after the command name, which is in parentheses and may hold
// spaces and parentheses itself.
func parseStatCPU(stat string) (time.Duration, error) {
	end := strings.LastIndexByte(stat, ')')
	if end < 0 {
		return 0, errors.New("cpu time: no command name in /proc/PID/stat")
	}
	fields := strings.Fields(stat[end+1:]) // fields[0] is field 3, the state
	if len(fields) < 13 {
		return 0, errors.New("cpu time: /proc/PID/stat is too short")
	}
	var ticks int64
	for _, f := range fields[11:13] {
		n, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("cpu time: %w", err)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / clockTicks, nil
}
