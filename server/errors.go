package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"

	"github.com/gofiber/fiber/v2"
	"github.com/valyala/fasthttp"

	"github.com/flakeship/flakeship/deploy"
)

// Errors of a webhook delivery that callers branch on.
var (
	// ErrSignature means the delivery's HMAC signature is missing, not in
	// the forge's format, or does not match the body under the secret.
	ErrSignature = errors.New("signature does not match")
	// ErrMalformed means the delivery is signed but cannot be used: a
	// required header is missing or the payload is not what the forge sends.
	// It is wrapped with the reason.
	ErrMalformed = errors.New("malformed delivery")
)

// IgnoredError says a delivery is valid but asks for no deploy: a ping, a
// tag push, a branch deletion, another event. It is answered 200.
type IgnoredError struct {
	Reason string // short, for the answer and the log: "tag push"
}

// Error implements error.
func (e *IgnoredError) Error() string { return "ignored: " + e.Reason }

// requestError is a client error of the API with its status and message.
type requestError struct {
	status int
	msg    string
}

func (e *requestError) Error() string { return e.msg }

// badRequest, notFound and unauthorized make the API's client errors.
func badRequest(format string, args ...any) error {
	return &requestError{http.StatusBadRequest, fmt.Sprintf(format, args...)}
}

func notFound(format string, args ...any) error {
	return &requestError{http.StatusNotFound, fmt.Sprintf(format, args...)}
}

func unauthorized(msg string) error { return &requestError{http.StatusUnauthorized, msg} }

// forbidden, conflict and tooManyRequests make the API's other refusals.
func forbidden(msg string) error { return &requestError{http.StatusForbidden, msg} }

func conflict(format string, args ...any) error {
	return &requestError{http.StatusConflict, fmt.Sprintf(format, args...)}
}

func tooManyRequests(format string, args ...any) error {
	return &requestError{http.StatusTooManyRequests, fmt.Sprintf(format, args...)}
}

// misdirected refuses a request for a host this server does not answer to
// (421 Misdirected Request).
func misdirected(msg string) error { return &requestError{http.StatusMisdirectedRequest, msg} }

// unavailable makes the answer to a request the server has no room for now
// (503): a bound on what it serves at once, shared by every client, was
// reached. (429 is for one client's own rate.)
func unavailable(format string, args ...any) error {
	return &requestError{http.StatusServiceUnavailable, fmt.Sprintf(format, args...)}
}

// ignored returns an *IgnoredError with the given reason.
func ignored(format string, args ...any) error {
	return &IgnoredError{Reason: fmt.Sprintf(format, args...)}
}

// malformed wraps ErrMalformed with what is wrong with which field.
func malformed(field string, err error) error {
	return fmt.Errorf("%w: %s: %v", ErrMalformed, field, err)
}

// httpError is the one place that turns an error into an HTTP status and the
// short message a client may read. Known errors get their code; anything else
// is a 500 whose details stay in the log (internal is true).
func (s *Server) httpError(err error) (status int, msg string, internal bool) {
	var ign *IgnoredError
	var fe *fiber.Error
	var re *requestError
	var te *deploy.TransitionError
	switch {
	case errors.As(err, &re):
		return re.status, re.msg, false
	// The deploy queue's errors name the target or deploy and hold
	// nothing secret: their text is the message.
	case errors.Is(err, deploy.ErrUnknownTarget), errors.Is(err, deploy.ErrNotFound):
		return http.StatusNotFound, err.Error(), false
	case errors.Is(err, deploy.ErrInvalid):
		return http.StatusBadRequest, err.Error(), false
	case errors.As(err, &te), errors.Is(err, deploy.ErrNothingToRollBack):
		return http.StatusConflict, err.Error(), false
	case errors.Is(err, deploy.ErrClosed):
		return http.StatusServiceUnavailable, "flakeship is shutting down: try again when it is back", false
	case errors.As(err, &ign):
		return http.StatusOK, ign.Reason, false
	case errors.Is(err, ErrSignature):
		// The wrapped text names only header names and formats, never a
		// MAC or the secret.
		return http.StatusUnauthorized, err.Error(), false
	case errors.Is(err, ErrMalformed):
		return http.StatusBadRequest, err.Error(), false
	case errors.As(err, &fe):
		switch fe.Code {
		case http.StatusRequestEntityTooLarge:
			return fe.Code, fmt.Sprintf("body exceeds %d bytes", s.bodyLimit), false
		case http.StatusRequestTimeout:
			return fe.Code, fmt.Sprintf("request did not arrive whole within %s", s.readTimeout), false
		}
		if fe.Code >= 400 && fe.Code < 500 {
			// fiber's own texts ("Cannot GET /x") echo the request; the
			// status text says the same without it.
			return fe.Code, strings.ToLower(http.StatusText(fe.Code)), false
		}
	}
	return http.StatusInternalServerError, "internal error", true
}

// writeError answers err as JSON {"error": msg} (or {"ignored": reason}) and
// logs it: internal errors at Error with their details, nothing else (the
// caller logs what it rejects, with the delivery's identity).
func (s *Server) writeError(c *fiber.Ctx, log attrLogger, err error) error {
	status, msg, internal := s.httpError(err)
	if internal {
		log.LogAttrs(context.Background(), slog.LevelError, "request failed",
			slog.String("method", c.Method()), slog.String("path", c.Path()), slog.Any("err", err))
	}
	if status == http.StatusOK {
		return c.Status(status).JSON(ignoredAnswer{Ignored: msg})
	}
	return c.Status(status).JSON(errorAnswer{Error: msg})
}

// errorPage is the body of error.html.
type errorPage struct {
	Status     int
	StatusText string
	Message    string
}

// pageError answers err as an HTML page with the status and message
// httpError gives it: the deploy queue's errors (404, 400, 409, 503) keep
// their one-line text, which names no secret; anything else is a 500 whose
// details go only to the log.
func (s *Server) pageError(c *fiber.Ctx, err error) error {
	status, msg, internal := s.httpError(err)
	if internal {
		s.log.Error("page failed", "method", c.Method(), "path", c.Path(), "err", err)
	}
	return s.render(c, status, "error.html", s.base(c, s.sessionOf(c), http.StatusText(status)),
		errorPage{Status: status, StatusText: http.StatusText(status), Message: msg})
}

// ignoredAnswer and errorAnswer are the JSON bodies of a delivery that
// deploys nothing and of a failed request (structs: encoding/json writes
// them faster than a map).
type (
	ignoredAnswer struct {
		Ignored string `json:"ignored"`
	}
	errorAnswer struct {
		Error string `json:"error"`
	}
)

// serverError is fasthttp's ErrorHandler, in front of fiber's: a request
// whose connection was closed to make room for another (conns.go) has
// nobody to answer, and no cause to log.
func (s *Server) serverError(fiberHandler func(*fasthttp.RequestCtx, error)) func(*fasthttp.RequestCtx, error) {
	return func(ctx *fasthttp.RequestCtx, err error) {
		if takenOver(ctx.Conn()) {
			s.releaseBody(&ctx.Request)
			return
		}
		fiberHandler(ctx, err)
	}
}

// handleError is fiber's ErrorHandler: errors returned by handlers and those
// fasthttp meets before a handler runs (body too large, read timeout,
// unparsable request) all go through httpError.
func (s *Server) handleError(c *fiber.Ctx, err error) error {
	// A body cut off by a timeout may have its whole buffer.
	defer s.releaseBody(c.Request())
	status, _, _ := s.httpError(err)
	switch status {
	case http.StatusRequestEntityTooLarge:
		// Only webhooks have the configured limit (bodies.go).
		err = &requestError{status, s.tooLarge(c)}
		fallthrough
	case http.StatusRequestTimeout:
		// Rarely: every idle connection ends with a 408 (limits.go).
		s.overload.note(s.log, "rejected "+strconv.Itoa(status), "request rejected",
			"method", clip(c.Method()), "path", clip(c.Path()), "status", status)
	}
	if kind, ok := hookKind(c.Method(), c.Path()); ok {
		s.observeDelivery(kind, status)
	}
	return s.writeError(c, s.log, err)
}
