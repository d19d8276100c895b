package notifier

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// The zero RetryPolicy's values.
const (
	defaultAttempts = 6
	defaultInitial  = 500 * time.Millisecond
	defaultMax      = 30 * time.Second
)

// maxForgeWait is the longest wait a forge may ask for (Retry-After, a rate
// limit's reset) that the notifier keeps to: GitHub's primary rate limit is
// counted by the hour, so its reset is never further away. A longer ask is
// cut to this; the post is then refused again and waits again.
const maxForgeWait = time.Hour

// RetryPolicy says how often and how patiently a status post is retried after
// a network error, a 5xx, a 429 or a rate limit. Waits double from Initial up
// to Max, each with jitter (between half and all of it), and are never
// shorter than what the forge asked for (Retry-After, a rate limit's reset),
// up to an hour: retrying sooner is refused again, and GitHub may ban an
// integration that keeps asking while limited. A zero field takes its
// default: 6 attempts, 500ms, 30s, about a minute in all when the forge
// asks for nothing.
type RetryPolicy struct {
	Attempts int           // tries in all, the first included; 1 means no retry
	Initial  time.Duration // wait after the first failure
	Max      time.Duration // longest backoff wait; a forge's ask may be longer
}

// withDefaults fills in the zero fields.
func (p RetryPolicy) withDefaults() RetryPolicy {
	if p.Attempts <= 0 {
		p.Attempts = defaultAttempts
	}
	if p.Initial <= 0 {
		p.Initial = defaultInitial
	}
	if p.Max <= 0 {
		p.Max = defaultMax
	}
	if p.Max < p.Initial {
		p.Max = p.Initial
	}
	return p
}

// wait is how long to sleep after failed attempt n (from 1), given how long
// the forge asked to wait (0 if it did not say).
func (p RetryPolicy) wait(n int, forgeWait time.Duration) time.Duration {
	d := p.Initial
	for i := 1; i < n && d < p.Max; i++ {
		d *= 2
	}
	d = min(d, p.Max)
	d = d/2 + rand.N(d/2+1) // jitter keeps many retries from arriving together
	if forgeWait > d {
		d = min(forgeWait, maxForgeWait)
	}
	return d
}

// do calls try until it succeeds, fails for good, the attempts are spent or
// ctx ends, logging each failed attempt on log.
func (p RetryPolicy) do(ctx context.Context, log *slog.Logger, try func(ctx context.Context) error) error {
	p = p.withDefaults()
	for attempt := 1; ; attempt++ {
		err := try(ctx)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			log.Warn("commit status not posted", "attempt", attempt, "err", err)
			return stopped(ctx, attempt, err)
		}
		again, retryAfter := temporary(err)
		if !again || attempt >= p.Attempts {
			log.Warn("commit status not posted", "attempt", attempt, "err", err)
			if again {
				return fmt.Errorf("%w (gave up after %s)", err, attempts(attempt))
			}
			return err
		}
		wait := p.wait(attempt, retryAfter)
		log.Warn("commit status not posted", "attempt", attempt, "err", err, "retry_in", wait)
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return stopped(ctx, attempt, err)
		case <-timer.C:
		}
	}
}

// stopped is the error of a post that ctx ended after attempts tries; it
// matches ctx.Err() with errors.Is.
func stopped(ctx context.Context, n int, last error) error {
	if errors.Is(last, ctx.Err()) {
		return fmt.Errorf("%w (after %s)", ctx.Err(), attempts(n))
	}
	return fmt.Errorf("%w (after %s; last: %v)", ctx.Err(), attempts(n), last)
}

// attempts says "1 attempt", "3 attempts".
func attempts(n int) string {
	if n == 1 {
		return "1 attempt"
	}
	return fmt.Sprintf("%d attempts", n)
}

// retryAfter reads a Retry-After header as RFC 9110 section 10.2.3 defines
// it: delay-seconds (1*DIGIT) or an HTTP-date (any of the three formats a
// recipient must accept, section 5.6.7). The wait is between 0 and
// maxForgeWait; anything else in the header ("-3", "+3", "soon") is ignored
// and gives 0.
func retryAfter(h http.Header, now time.Time) time.Duration {
	v := h.Get("Retry-After")
	if v == "" {
		return 0
	}
	if strings.Trim(v, "0123456789") == "" {
		// Digits only; one too large for a uint64 asks for longer than
		// any cap, so it gets the cap rather than nothing.
		secs, err := strconv.ParseUint(v, 10, 64)
		if err != nil || secs > uint64(maxForgeWait/time.Second) {
			return maxForgeWait
		}
		return time.Duration(secs) * time.Second
	}
	// http.ParseTime would also take an RFC 850 date in any zone ("PST"
	// read as UTC): RFC 9110 names GMT only.
	for _, layout := range []string{http.TimeFormat, "Monday, 02-Jan-06 15:04:05 GMT", time.ANSIC} {
		if at, err := time.Parse(layout, v); err == nil {
			return untilCapped(at, now)
		}
	}
	return 0
}

// untilCapped is the wait from now until at, between 0 and maxForgeWait.
func untilCapped(at, now time.Time) time.Duration {
	switch d := at.Sub(now); {
	case d <= 0:
		return 0
	case d > maxForgeWait:
		return maxForgeWait
	default:
		return d
	}
}

// unsettled reads the error of a status post by a forge SDK, with the
// forge's answer (nil if none came). It returns code 0 and the result
// itself for what needs no more reading: nil for no error or a 2xx answer
// (the status is stored; an answer the SDK could not decode changes
// nothing, and posting again would only add a duplicate), err for no
// answer (the network, or ctx). Otherwise it returns the answer's error
// code and err, for the SDK's own reading into an *APIError.
func unsettled(answer *http.Response, err error) (int, error) {
	switch {
	case err == nil:
		return 0, nil
	case answer == nil:
		return 0, err
	case answer.StatusCode >= 200 && answer.StatusCode < 300:
		return 0, nil
	}
	return answer.StatusCode, err
}
