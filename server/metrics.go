package server

import (
	"github.com/gofiber/fiber/v2"
	"github.com/gofiber/fiber/v2/middleware/adaptor"
)

// metricsRoutes serves GET /metrics from the Prometheus handler.
func (s *Server) metricsRoutes(app *fiber.App) {
	app.Get("/metrics", adaptor.HTTPHandler(s.metrics))
}
