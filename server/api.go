package server

import (
	"context"
	"crypto/subtle"
	"errors"
	"strconv"
	"strings"

	"github.com/gofiber/fiber/v2"

	"github.com/flakeship/flakeship/config"
	"github.com/flakeship/flakeship/deploy"
)

// apiRoutes sets up /api: reads behind requireRead, writes behind the admin
// token.
func (s *Server) apiRoutes(app *fiber.App) {
	api := app.Group("/api", s.requireRead)
	api.Get("/deploys", s.listDeploys)
	api.Get("/deploys/:id", s.getDeploy)
}

// requireRead lets a request through when reading is open (no read token is
// configured) or when it carries the read or the admin token as a bearer
// token.
func (s *Server) requireRead(c *fiber.Ctx) error {
	if !s.cfg.ReadToken.IsSet() {
		return c.Next()
	}
	got, ok := bearer(c.Get(fiber.HeaderAuthorization))
	if ok && (tokenEqual(got, s.cfg.ReadToken) || tokenEqual(got, s.cfg.AdminToken)) {
		return c.Next()
	}
	c.Set(fiber.HeaderWWWAuthenticate, `Bearer realm="flakeship"`)
	return s.writeError(c, s.log, unauthorized("this flakeship needs a read token: Authorization: Bearer <token>"))
}

// bearer takes the token out of an Authorization header.
func bearer(h string) (string, bool) {
	scheme, tok, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || tok == "" {
		return "", false
	}
	return strings.TrimSpace(tok), true
}

// tokenEqual compares a presented token with a configured one in constant
// time; an unset token matches nothing.
func tokenEqual(got string, want config.Secret) bool {
	if !want.IsSet() {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(got), []byte(want.Reveal())) == 1
}

// getDeploy answers GET /api/deploys/{id} with the deploy record.
func (s *Server) getDeploy(c *fiber.Ctx) error {
	id, err := strconv.ParseInt(c.Params("id"), 10, 64)
	if err != nil || id <= 0 {
		return s.writeError(c, s.log, badRequest("deploy id must be a positive number"))
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
	if t := c.Query("target"); t != "" {
		if _, ok := s.cfg.Target(t); !ok {
			return s.writeError(c, s.log, notFound("target %q is not configured", clip(t)))
		}
		f.Target = t
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
