package server

import "github.com/gofiber/fiber/v2"

// pageRoutes sets up the HTML pages.
func (s *Server) pageRoutes(app *fiber.App) {}
