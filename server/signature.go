package server

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"net/http"

	"github.com/flakeship/flakeship/config"
)

// Both forges sign the raw body with HMAC-SHA256 and send the digest as hex,
// GitHub with a "sha256=" prefix. One stdlib function checks both, rather
// than go-github's ValidateSignature (which also accepts sha1= and sha512=)
// and the Gitea SDK's helper, so both forges get exactly the same rules:
// lower-case hex of the right length, compared in constant time.

// signatureError is an ErrSignature with a more precise message. The message
// names a header or a format, never a digest or the secret.
type signatureError struct{ reason string }

func (e *signatureError) Error() string { return e.reason }

// Is makes errors.Is(err, ErrSignature) true.
func (e *signatureError) Is(target error) bool { return target == ErrSignature }

// checkSignature checks that sig, the hex digest a forge sent, is the
// HMAC-SHA256 of body under secret. header names where sig came from, for the
// error.
func checkSignature(body []byte, secret config.Secret, header, sig string) error {
	if sig == "" {
		return &signatureError{"missing " + header + " header"}
	}
	if len(sig) != 2*sha256.Size || !isLowerHex(sig) {
		return &signatureError{header + " is not 64 lower-case hex digits"}
	}
	if !secret.IsSet() {
		// An empty key would let anyone sign; configuration refuses it,
		// and this makes sure.
		return ErrSignature
	}
	got, err := hex.DecodeString(sig)
	if err != nil {
		return &signatureError{header + " is not 64 lower-case hex digits"}
	}
	mac := hmac.New(sha256.New, []byte(secret.Reveal()))
	mac.Write(body)
	if !hmac.Equal(got, mac.Sum(nil)) {
		return ErrSignature
	}
	return nil
}

// onlyOnce refuses a signature header given more than once. Only one value
// would be checked (http.Header.Get returns the first), so a request whose
// other values are wrong could pass; no forge sends a header twice.
func onlyOnce(h http.Header, header string) error {
	if len(h.Values(header)) > 1 {
		return &signatureError{header + " is given more than once"}
	}
	return nil
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
