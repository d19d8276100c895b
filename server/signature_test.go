package server

import (
	"bufio"
	"bytes"
	"crypto/hmac"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flakeship/flakeship/config"
)

// deliveries is where the recorded deliveries live, byte for byte.
const deliveries = "testdata/deliveries"

// readFile returns a file under testdata/deliveries.
func readFile(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(deliveries, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// readHeaders parses a recorded "Name: value" header file.
func readHeaders(t testing.TB, name string) http.Header {
	t.Helper()
	h := make(http.Header)
	sc := bufio.NewScanner(bytes.NewReader(readFile(t, name)))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ": ")
		if !ok {
			t.Fatalf("%s: not a header line: %q", name, sc.Text())
		}
		h.Add(k, v)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return h
}

// forgejoSecret is the recorded deliveries' webhook secret.
func forgejoSecret(t testing.TB) config.Secret {
	t.Helper()
	return config.Secret(readFile(t, "forgejo/secret.txt"))
}

// hmacHex is the lower-case hex HMAC-SHA256 of body under secret.
func hmacHex(secret config.Secret, body []byte) string {
	mac := hmac.New(sha256.New, []byte(secret.Reveal()))
	mac.Write(body)
	return hex.EncodeToString(mac.Sum(nil))
}

func TestGitHubDocumentedTestVectorVerifies(t *testing.T) {
	const secret config.Secret = "It's a Secret to Everybody"
	const (
		payload = "Hello, World!"
		header  = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
	)
	h := http.Header{}
	h.Set("X-Hub-Signature-256", header)
	if err := verifyGitHub(h, []byte(payload), secret); err != nil {
		t.Fatalf("verifyGitHub: %v", err)
	}
	if err := verifyGitHub(h, []byte(payload+" "), secret); !errors.Is(err, ErrSignature) {
		t.Errorf("another payload: got %v, want ErrSignature", err)
	}
	if err := verifyGitHub(h, []byte(payload), "It's a Secret to Nobody"); !errors.Is(err, ErrSignature) {
		t.Errorf("another secret: got %v, want ErrSignature", err)
	}
	// Past the signature, "Hello, World!" is no push: malformed, not unsigned.
	h.Set("X-GitHub-Event", "push")
	h.Set("X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")
	if _, err := parseGitHub(h, []byte(payload), secret); !errors.Is(err, ErrMalformed) {
		t.Errorf("parseGitHub: got %v, want ErrMalformed", err)
	}
}

func TestForgejoRecordedSignaturesVerify(t *testing.T) {
	tests := []struct {
		name string
		want string // X-Forgejo-Signature as recorded (README)
	}{
		{"push-1-new-branch", "01182df424036d7a1a9d80e98c57e9810015e65d35b6076ee92ba1d0d2d71cda"},
		{"push-2", "1a1ab35f05bde0d6c292430266b6163ae3384c9ee4440a7399eea6798f00bb99"},
	}
	secret := forgejoSecret(t)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := readHeaders(t, "forgejo/"+tc.name+".headers.txt")
			body := readFile(t, "forgejo/"+tc.name+".body.json")
			if got := hmacHex(secret, body); got != tc.want {
				t.Errorf("HMAC of the body = %s, want %s", got, tc.want)
			}
			for _, name := range []string{"X-Forgejo-Signature", "X-Gitea-Signature", "X-Gogs-Signature"} {
				if got := h.Get(name); got != tc.want {
					t.Errorf("%s = %s, want %s", name, got, tc.want)
				}
			}
			if err := verifyForgejo(h, body, secret); err != nil {
				t.Errorf("verifyForgejo: %v", err)
			}
			// The same value under GitHub's name, so a Forgejo delivery
			// verifies on /hooks/github too.
			if err := verifyGitHub(h, body, secret); err != nil {
				t.Errorf("verifyGitHub: %v", err)
			}
			if err := verifyForgejo(h, body, "not the secret"); !errors.Is(err, ErrSignature) {
				t.Errorf("another secret: got %v, want ErrSignature", err)
			}
		})
	}
}

func TestSignatureErrorsRevealNoSecretOrDigest(t *testing.T) {
	const secret config.Secret = "hunter2-hunter2"
	body := []byte(`{"ref":"refs/heads/main"}`)
	want := hmacHex(secret, body)
	sha1mac := hmac.New(sha1.New, []byte(secret.Reveal()))
	sha1mac.Write(body)
	tests := []struct {
		name  string
		value string
	}{
		{"missing", ""},
		{"wrong digest", "sha256=" + strings.Repeat("ab", 32)},
		{"sha1", "sha1=" + hex.EncodeToString(sha1mac.Sum(nil))},
		{"upper case", "sha256=" + strings.ToUpper(want)},
		{"truncated", "sha256=" + want[:63]},
		{"no prefix", want},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{}
			if tc.value != "" {
				h.Set("X-Hub-Signature-256", tc.value)
			}
			err := verifyGitHub(h, body, secret)
			if !errors.Is(err, ErrSignature) {
				t.Fatalf("got %v, want ErrSignature", err)
			}
			msg := strings.ToLower(err.Error())
			if strings.Contains(msg, secret.Reveal()) || strings.Contains(msg, want) {
				t.Errorf("error %q reveals the secret or the expected digest", err)
			}
		})
	}
}
