package server

import (
	"github.com/gofiber/fiber/v2"
	"github.com/gofiber/fiber/v2/middleware/adaptor"
)

// metricsRoutes serves GET /metrics from the Prometheus handler. Like every
// read, it needs the read (or admin) token when FLAKESHIP_READ_TOKEN is set:
// Prometheus sends it with `authorization: {credentials: ...}`.
func (s *Server) metricsRoutes(app *fiber.App) {
	app.Get("/metrics", s.requireRead, adaptor.HTTPHandler(s.metrics))
}
