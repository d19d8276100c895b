// Package floorhttp is what the webhook floors (bench/floor, bench/durable)
// share, so that the durable floor is the bare floor's handler plus its
// SQLite row and nothing else: the secret file, the HTTP stack configured as
// flakeship configures it, and the signature check.
package floorhttp

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
)

// Secret reads the webhook secret from path, which must not be empty.
func Secret(path string) ([]byte, error) {
	secret, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read secret: %w", err)
	}
	if len(secret) == 0 {
		return nil, errors.New("the secret file is empty")
	}
	return secret, nil
}

// App returns a fiber app with the timeouts and body limit flakeship uses.
func App() *fiber.App {
	return fiber.New(fiber.Config{
		BodyLimit:                    25 << 20,
		ReadTimeout:                  10 * time.Second,
		WriteTimeout:                 10 * time.Second,
		IdleTimeout:                  60 * time.Second,
		DisableStartupMessage:        true,
		DisablePreParseMultipartForm: true,
	})
}

// Signed reports whether header is "sha256=" and the hex HMAC-SHA256 of
// body under secret.
func Signed(secret, body []byte, header string) bool {
	sig, ok := strings.CutPrefix(header, "sha256=")
	if !ok {
		return false
	}
	got, err := hex.DecodeString(sig)
	if err != nil {
		return false
	}
	mac := hmac.New(sha256.New, secret)
	mac.Write(body)
	return hmac.Equal(got, mac.Sum(nil))
}
