package server

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/flakeship/flakeship/deploy"
	"github.com/flakeship/flakeship/forge"
)

// manualTimeout bounds queueing a manual deploy: a deploy of a branch head
// first asks the git remote for the head.
const manualTimeout = 30 * time.Second

// apiRoutes sets up /api: reads behind requireRead, writes behind
// requireAdmin (auth.go).
func (s *Server) apiRoutes(app *fiber.App) {
	api := app.Group("/api")
	api.Get("/targets", s.requireRead, s.listTargets)
	api.Get("/deploys", s.requireRead, s.listDeploys)
	api.Get("/deploys/:id", s.requireRead, s.getDeploy)
	api.Get("/deploys/:id/log", s.requireRead, s.deployLog)

	api.Post("/targets/:name/deploy", s.requireAdmin, s.deployTarget)
	api.Post("/targets/:name/rollback", s.requireAdmin, s.rollbackTarget)
	api.Post("/deploys/:id/cancel", s.requireAdmin, s.cancelDeploy)
}

// queuedAnswer is the answer to a write that queued a deploy: the same as a
// webhook's.
func queuedAnswer(d *deploy.Deploy) hookAnswer {
	return hookAnswer{DeployID: d.ID, Status: string(deploy.Queued), URL: d.URL}
}

// deployTarget answers POST /api/targets/{name}/deploy: body {} (or none)
// deploys the head of the target's branch, {"ref":"<branch>"} the head of a
// branch, {"sha":"<40 hex>"} one commit.
func (s *Server) deployTarget(c *fiber.Ctx) error {
	name, err := s.targetParam(c)
	if err != nil {
		return s.writeError(c, s.log, err)
	}
	req, err := decodeManual(c.Body())
	if err != nil {
		return s.writeError(c, s.log, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), manualTimeout)
	defer cancel()
	d, err := s.operator.Deploy(ctx, name, req)
	if err != nil {
		return s.writeError(c, s.log.With("target", name), err)
	}
	s.log.Info("manual deploy queued", "target", name, "deploy_id", d.ID, "sha", forge.ShortSHA(d.SHA),
		"ref", clip(req.Ref), "client", s.clientIP(c))
	return c.Status(fiber.StatusAccepted).JSON(queuedAnswer(d))
}

// rollbackTarget answers POST /api/targets/{name}/rollback: the build that
// ran before the current one becomes current again.
func (s *Server) rollbackTarget(c *fiber.Ctx) error {
	name, err := s.targetParam(c)
	if err != nil {
		return s.writeError(c, s.log, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), submitTimeout)
	defer cancel()
	d, err := s.operator.Rollback(ctx, name)
	if err != nil {
		return s.writeError(c, s.log.With("target", name), err)
	}
	s.log.Info("rollback queued", "target", name, "deploy_id", d.ID, "sha", forge.ShortSHA(d.SHA), "client", s.clientIP(c))
	return c.Status(fiber.StatusAccepted).JSON(queuedAnswer(d))
}

// cancelAnswer is the answer to POST /api/deploys/{id}/cancel.
type cancelAnswer struct {
	DeployID int64  `json:"deploy_id"`
	Status   string `json:"status"` // "cancelling"
}

// cancelDeploy answers POST /api/deploys/{id}/cancel: 202 when the deploy
// is queued, fetching or building (it ends cancelled), 409 when it is past
// that.
func (s *Server) cancelDeploy(c *fiber.Ctx) error {
	id, err := deployID(c)
	if err != nil {
		return s.writeError(c, s.log, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), submitTimeout)
	defer cancel()
	err = s.operator.Cancel(ctx, id)
	var te *deploy.TransitionError
	switch {
	case errors.Is(err, deploy.ErrNotFound):
		return s.writeError(c, s.log, notFound("deploy %d not found", id))
	case errors.As(err, &te) && te.From.Terminal():
		return s.writeError(c, s.log, conflict("deploy %d has already ended (%s): there is nothing to cancel", id, te.From))
	case errors.As(err, &te):
		return s.writeError(c, s.log, conflict("deploy %d is %s: only a queued, fetching or building deploy can be cancelled", id, te.From))
	case err != nil:
		return s.writeError(c, s.log.With("deploy_id", id), err)
	}
	s.log.Info("deploy cancel requested", "deploy_id", id, "client", s.clientIP(c))
	return c.Status(fiber.StatusAccepted).JSON(cancelAnswer{DeployID: id, Status: "cancelling"})
}

// listTargets answers GET /api/targets with every configured target and
// what runs there.
func (s *Server) listTargets(c *fiber.Ctx) error {
	ctx, cancel := context.WithTimeout(context.Background(), submitTimeout)
	defer cancel()
	ts, err := s.operator.Targets(ctx)
	if err != nil {
		return s.writeError(c, s.log, err)
	}
	if ts == nil {
		ts = []deploy.TargetStatus{}
	}
	return c.JSON(ts)
}

// getDeploy answers GET /api/deploys/{id} with the deploy record.
func (s *Server) getDeploy(c *fiber.Ctx) error {
	id, err := deployID(c)
	if err != nil {
		return s.writeError(c, s.log, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), submitTimeout)
	defer cancel()
	d, err := s.operator.Get(ctx, id)
	if errors.Is(err, deploy.ErrNotFound) {
		return s.writeError(c, s.log, notFound("deploy %d not found", id))
	}
	if err != nil {
		return s.writeError(c, s.log, err)
	}
	return c.JSON(d)
}

// listDeploys answers GET /api/deploys?target=&state=&limit= with deploy
// records, newest first.
func (s *Server) listDeploys(c *fiber.Ctx) error {
	var f deploy.Filter
	if name := c.Query("target"); name != "" {
		t, ok := s.cfg.Target(name)
		if !ok {
			return s.writeError(c, s.log, notFound("target %q is not configured", clip(name)))
		}
		f.Target = t.Name
	}
	if st := c.Query("state"); st != "" {
		state, err := deploy.ParseState(st)
		if err != nil {
			return s.writeError(c, s.log, badRequest("unknown state %q", clip(st)))
		}
		f.State = state
	}
	if l := c.Query("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 || n > 1000 {
			return s.writeError(c, s.log, badRequest("limit must be a number from 1 to 1000"))
		}
		f.Limit = n
	}
	ctx, cancel := context.WithTimeout(context.Background(), submitTimeout)
	defer cancel()
	ds, err := s.operator.List(ctx, f)
	if err != nil {
		return s.writeError(c, s.log, err)
	}
	if ds == nil {
		ds = []*deploy.Deploy{}
	}
	return c.JSON(ds)
}

// deployLog answers GET /api/deploys/{id}/log with the deploy's log as
// text; with ?follow=1 it keeps the answer open and streams what is added
// until the deploy ends, the client goes away or the server shuts down
// (events.go: how a stream waits, notices a client that hung up, and how
// many may follow).
//
// The body is written after the handler returns, by a stream writer.
// fasthttp sets the connection's write deadline (the server's WriteTimeout)
// once, just before it writes an answer, so a follow that outlasts it would
// be cut off: the stream moves the deadline ahead before each piece it
// writes, which bounds each piece instead of the whole answer. A client
// that stops reading is still cut off after WriteTimeout.
func (s *Server) deployLog(c *fiber.Ctx) error {
	id, err := deployID(c)
	if err != nil {
		return s.writeError(c, s.log, err)
	}
	var follow bool
	switch f := c.Query("follow"); f {
	case "", "0", "false":
	case "1", "true":
		follow = true
	default:
		return s.writeError(c, s.log, badRequest("follow must be 1 or 0"))
	}
	// Once the stream starts the status is sent: find the deploy first.
	ctx, cancel := context.WithTimeout(context.Background(), submitTimeout)
	defer cancel()
	if _, err := s.operator.Get(ctx, id); errors.Is(err, deploy.ErrNotFound) {
		return s.writeError(c, s.log, notFound("deploy %d not found", id))
	} else if err != nil {
		return s.writeError(c, s.log, err)
	}
	streamCtx, done, err := s.streams.start(id, follow)
	if err != nil {
		return s.refuseStream(c, id, err)
	}

	c.Set(fiber.HeaderContentType, "text/plain; charset=utf-8")
	// A log may hold anything, HTML included: never sniff it as a page.
	c.Set(fiber.HeaderXContentTypeOptions, "nosniff")
	c.Set(fiber.HeaderCacheControl, "no-store")
	if follow {
		// Reverse proxies such as nginx would otherwise buffer the stream.
		c.Set("X-Accel-Buffering", "no")
		closeAfterStream(c)
	}
	// Taken now: neither fiber's nor fasthttp's context may be used once
	// the handler has returned.
	conn := c.Context().Conn()
	out := &deadlineWriter{conn: conn, timeout: s.app.Server().WriteTimeout}
	log := s.log.With("deploy_id", id, "follow", follow)
	c.Context().SetBodyStreamWriter(func(w *bufio.Writer) {
		defer done()
		out.w = w
		ctx, stop := streamCtx, func() {}
		if follow {
			ctx, stop = watchHangUp(streamCtx, conn)
		}
		err := s.operator.WriteLog(ctx, id, out, follow)
		stop()
		// fasthttp writes the end of the answer once this returns: give
		// that a deadline of its own too.
		out.extend()
		switch {
		case errors.Is(context.Cause(ctx), errClientGone) || (err != nil && out.failed):
			log.Debug("log stream ended: the client went away", "err", err)
		case err != nil:
			log.Warn("log stream cut short", "err", err)
		}
	})
	return nil
}

// targetParam returns the {name} of a /api/targets/{name}/... request, or a
// 404 error for a target that is not configured. The name returned is the
// configuration's: fiber's parameter points into a buffer that the next
// request reuses, and the queue keeps the name.
func (s *Server) targetParam(c *fiber.Ctx) (string, error) {
	name := c.Params("name")
	t, ok := s.cfg.Target(name)
	if !ok {
		return "", notFound("target %q is not configured", clip(name))
	}
	return t.Name, nil
}

// deployID returns the {id} of a /api/deploys/{id}... request.
func deployID(c *fiber.Ctx) (int64, error) {
	id, err := strconv.ParseInt(c.Params("id"), 10, 64)
	if err != nil || id <= 0 {
		return 0, badRequest("deploy id must be a positive number")
	}
	return id, nil
}

// manualBodies is what a deploy request's body may be, for error messages.
const manualBodies = `want {}, {"ref":"<branch>"} or {"sha":"<40-hex commit>"}`

// decodeManual reads the body of a deploy request: nothing or one JSON
// object with at most one of ref and sha, and no other field.
func decodeManual(body []byte) (deploy.ManualRequest, error) {
	var req deploy.ManualRequest
	body = bytes.Trim(body, " \t\r\n") // JSON's whitespace, not Unicode's
	if len(body) == 0 {
		return req, nil
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		var syn *json.SyntaxError
		var typ *json.UnmarshalTypeError
		switch {
		case errors.As(err, &syn), errors.Is(err, io.ErrUnexpectedEOF):
			return req, badRequest("body is not JSON: %s", manualBodies)
		case errors.As(err, &typ) && typ.Field != "":
			return req, badRequest("body field %q must be a string: %s", clip(typ.Field), manualBodies)
		case strings.HasPrefix(err.Error(), "json: unknown field "):
			// encoding/json has no typed error for this one.
			field := strings.TrimPrefix(err.Error(), "json: unknown field ")
			return req, badRequest("body has an unknown field %s: %s", clip(field), manualBodies)
		default:
			return req, badRequest("body must be a JSON object: %s", manualBodies)
		}
	}
	if _, err := dec.Token(); err != io.EOF {
		return req, badRequest("body must be one JSON object: %s", manualBodies)
	}
	if body[0] != '{' { // null, which decodes into nothing
		return req, badRequest("body must be a JSON object: %s", manualBodies)
	}
	if req.Ref != "" && req.SHA != "" {
		return req, badRequest("give ref or sha, not both")
	}
	return req, nil
}
