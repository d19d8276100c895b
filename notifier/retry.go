package notifier

import (
	"crypto/tls"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// maxForgeWait is the longest wait a forge may ask for (Retry-After, a rate
// limit's reset) that Temporary passes on: GitHub's primary rate limit is
// counted by the hour, so its reset is never further away. A longer ask is
// cut to this; the post is then refused again and waits again.
const maxForgeWait = time.Hour

// Temporary reads the error of a SetStatus: whether posting again later may
// succeed, and how long the forge asked to wait first (0 if it did not say;
// at most an hour). Trying again sooner than the forge asked is refused
// again, and GitHub may ban an integration that keeps asking while limited.
//
// Temporary: the network (refused, reset, timed out, DNS), a 5xx, a 429, and
// GitHub's rate-limit 403s. Final: any other refusal (a wrong token, no
// permission, an unknown repository, a commit not on the forge, a status
// the forge finds invalid), an untrusted certificate, and a status that
// failed validation before any request.
//
// The notifier makes one attempt per SetStatus; when and how often to try
// again is the caller's to decide.
func Temporary(err error) (again bool, wait time.Duration) {
	var apiErr *APIError
	if errors.As(err, &apiErr) {
		return apiErr.Temporary(), apiErr.RetryAfter
	}
	var invalid *invalidError
	if errors.As(err, &invalid) {
		return false, 0 // the same status is invalid on every try
	}
	var certErr *tls.CertificateVerificationError
	if errors.As(err, &certErr) {
		return false, 0 // a certificate does not fix itself in a minute
	}
	// Anything else came from the network: refused, reset, timed out, DNS.
	return true, 0
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
