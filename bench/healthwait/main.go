// Command healthwait is the health check of bench/deploy.sh, the floor of
// the push-to-healthy benchmark: it GETs a URL until it answers 2xx, on the
// schedule and with the kind of client flakeship's verify step uses for a
// health URL (builder/switch.go, builder/health.go), so that the floor and
// flakeship wait for the same service in the same way:
//
//   - the first request goes out at once, the next 10 ms after the previous
//     one ended, and the wait doubles up to 1 s;
//   - each request opens a fresh connection (no keep-alive: the process
//     that answered the last one was just restarted away), goes straight to
//     the URL (no proxy from the environment), and may take 2 s.
//
// It does not ask systemd whether the unit is active, as flakeship also
// does once the URL answers: that check is flakeship's own extra work, part
// of what the floor leaves out.
//
// The constants are copies, not imports: the floor must not run flakeship's
// code, or it would measure flakeship against itself. A test reads builder's
// source and fails when the two schedules differ.
//
//	healthwait [-timeout 30s] URL
//
// It exits 0 when the URL answered 2xx, and 1 with the last answer or error
// when the timeout passed first.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// The schedule and the client of flakeship's verify step (builder's
// pollMin, pollMax and healthTryTimeout; TestScheduleIsFlakeships checks).
const (
	pollMin    = 10 * time.Millisecond
	pollMax    = time.Second
	tryTimeout = 2 * time.Second
)

func main() {
	timeout := flag.Duration("timeout", 30*time.Second, "how long the URL may take to answer 2xx")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: healthwait [-timeout 30s] URL")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 1 {
		flag.Usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if _, err := wait(ctx, flag.Arg(0), *timeout); err != nil {
		fmt.Fprintln(os.Stderr, "healthwait:", err)
		os.Exit(1)
	}
}

// newClient is flakeship's health client: a fresh connection per request,
// no proxy, tryTimeout per request.
func newClient() *http.Client {
	return &http.Client{
		Timeout: tryTimeout,
		Transport: &http.Transport{
			Proxy:             nil,
			DisableKeepAlives: true,
		},
	}
}

// nextDelay is the wait after one that lasted d: double, at most pollMax.
func nextDelay(d time.Duration) time.Duration {
	return min(2*d, pollMax)
}

// wait GETs u until it answers 2xx, and returns how many requests that
// took; or an error naming the last answer when timeout passed first, or
// ctx's error.
func wait(ctx context.Context, u string, timeout time.Duration) (tries int, err error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	client := newClient()
	last := errors.New("no answer yet")
	delay := pollMin
	timer := time.NewTimer(0) // the first request goes out at once
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return tries, fmt.Errorf("%s not healthy after %s: %w", u, timeout, last)
		case <-timer.C:
		}
		tries++
		if last = try(ctx, client, u); last == nil {
			return tries, nil
		}
		timer.Reset(delay)
		delay = nextDelay(delay)
	}
}

// try GETs u once: nil if it answered 2xx.
func try(ctx context.Context, client *http.Client, u string) error {
	ctx, cancel := context.WithTimeout(ctx, tryTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return fmt.Errorf("new request: %w", err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("answered %s", resp.Status)
	}
	return nil
}
