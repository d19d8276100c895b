// Command floor is the baseline of flakeship's webhook benchmarks: the least
// a webhook receiver can do. It answers POST /hooks/github with 202 when
// X-Hub-Signature-256 is the HMAC-SHA256 of the raw body under the secret,
// and 401 otherwise, on the same HTTP stack as flakeship (fiber), and
// nothing more: no parsing, no store, no log per request. scripts/bench runs
// it beside flakeship and reports flakeship's numbers as ratios of its.
//
//	floor -listen 127.0.0.1:0 -secret-file FILE
//
// It logs "floor listening" with the address it listens on, and stops on
// SIGTERM or an interrupt.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/flakeship/flakeship/bench/floorhttp"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on")
	secretFile := flag.String("secret-file", "", "file holding the webhook secret")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(ctx, *listen, *secretFile, log); err != nil {
		fmt.Fprintln(os.Stderr, "floor:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, listen, secretFile string, log *slog.Logger) error {
	if secretFile == "" {
		return errors.New("-secret-file is required")
	}
	secret, err := floorhttp.Secret(secretFile)
	if err != nil {
		return err
	}
	app := floorhttp.App()
	app.Post("/hooks/github", func(c *fiber.Ctx) error {
		if !floorhttp.Signed(secret, c.Request().Body(), c.Get("X-Hub-Signature-256")) {
			return c.Status(fiber.StatusUnauthorized).JSON(fiber.Map{"error": "wrong signature"})
		}
		return c.Status(fiber.StatusAccepted).JSON(fiber.Map{"status": "queued"})
	})
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", listen, err)
	}
	served := make(chan error, 1)
	go func() { served <- app.Listener(ln) }()
	log.Info("floor listening", "addr", ln.Addr().String())
	select {
	case err := <-served:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := app.ShutdownWithContext(shutdownCtx); err != nil {
		return fmt.Errorf("shut down: %w", err)
	}
	return <-served
}
