package server

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strings"
	"testing"

	"github.com/flakeship/flakeship/config"
)

// FuzzCheckSignature feeds arbitrary signatures and bodies to the HMAC check
// both forges share: it must never panic, must accept exactly the lower-case
// hex HMAC-SHA256 of the body, and must never put the secret or the expected
// MAC in its error.
func FuzzCheckSignature(f *testing.F) {
	const secret = config.Secret("fuzz-s3cret-value")
	body := readFile(f, "forgejo/push-2.body.json")
	good := macHex(secret, body)
	for _, sig := range []string{good, "sha256=" + good, strings.ToUpper(good), good[:63], "sha1=" + good[:40], "", "sha256=", " " + good} {
		f.Add(body, sig)
	}
	f.Fuzz(func(t *testing.T, body []byte, sig string) {
		want := macHex(secret, body)
		err := checkSignature(body, secret, "X-Forgejo-Signature", sig)
		if (err == nil) != (sig == want) {
			t.Fatalf("signature %q: err %v, want accepted=%v", sig, err, sig == want)
		}
		if err == nil {
			return
		}
		if !errors.Is(err, ErrSignature) {
			t.Fatalf("error %v is not ErrSignature", err)
		}
		if msg := err.Error(); strings.Contains(msg, secret.Reveal()) || strings.Contains(msg, want) {
			t.Fatalf("error %q reveals the secret or the expected MAC", msg)
		}
	})
}

func macHex(secret config.Secret, body []byte) string {
	m := hmac.New(sha256.New, []byte(secret.Reveal()))
	m.Write(body)
	return hex.EncodeToString(m.Sum(nil))
}
