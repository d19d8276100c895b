package server

import (
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strings"

	json "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"

	"github.com/flakeship/flakeship/config"
	"github.com/flakeship/flakeship/forge"
)

// What GitHub's and Forgejo's push payloads have in common. Each forge file
// decodes only the fields it uses, into its own small struct: a field
// flakeship never reads cannot make a delivery malformed when a forge
// changes its shape.

// zeroSHA is the id forges send for "no commit" (a created or deleted ref).
const zeroSHA = "0000000000000000000000000000000000000000"

// deliveryIDRE accepts the GUIDs GitHub and Forgejo send, and little else:
// the id is an idempotency key that the signature does not cover.
var deliveryIDRE = regexp.MustCompile(`^[A-Za-z0-9._:-]{1,128}$`)

// commit is a commit as both forges describe it in a push payload.
type commit struct {
	ID      string `json:"id"`
	Message string `json:"message"`
	Author  struct {
		Name string `json:"name"`
	} `json:"author"`
}

// checkPush validates the fields every push carries and says whether it
// deploys: it returns the branch, an *IgnoredError (tag push, another kind
// of ref, branch deletion) or an ErrMalformed. deleted is GitHub's flag;
// Forgejo says the same with an all-zero after.
func checkPush(repo, ref, after string, deleted bool) (branch string, err error) {
	if err := config.ValidateRepo(repo); err != nil {
		return "", malformed("repository.full_name", err)
	}
	if ref == "" {
		return "", malformed("ref", errors.New("missing"))
	}
	if strings.HasPrefix(ref, "refs/tags/") {
		return "", ignored("tag push")
	}
	branch, ok := strings.CutPrefix(ref, "refs/heads/")
	if !ok {
		return "", ignored("ref %q is not a branch", clip(ref))
	}
	if deleted || after == zeroSHA {
		return "", ignored("branch deletion")
	}
	if err := config.ValidateBranch(branch); err != nil {
		return "", malformed("ref", err)
	}
	if err := config.ValidateSHA(after); err != nil {
		return "", malformed("after", err)
	}
	return branch, nil
}

// headCommit returns the first of the candidates that is the pushed commit
// after, or nil: author and message are taken only from the commit that
// deploys.
func headCommit(after string, candidates ...*commit) *commit {
	for _, c := range candidates {
		if c != nil && c.ID == after {
			return c
		}
	}
	return nil
}

// checkDeliveryID validates a delivery header's value.
func checkDeliveryID(header, id string) error {
	if id == "" {
		return malformed(header, errors.New("missing"))
	}
	if !deliveryIDRE.MatchString(id) {
		return malformed(header, fmt.Errorf("%q is not a delivery id", clip(id)))
	}
	return nil
}

// canonical returns names in canonical form (http.CanonicalHeaderKey).
func canonical(names ...string) []string {
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = http.CanonicalHeaderKey(n)
	}
	return out
}

// firstHeader returns the value of the first of names that h carries.
func firstHeader(h http.Header, names ...string) (name, value string) {
	for _, n := range names {
		if v := h.Get(n); v != "" {
			return n, v
		}
	}
	return names[0], ""
}

// pushPayload is a forge's push payload (githubPush, forgejoPush), decoded
// from a delivery's body once, before its signature is checked: its
// repository chooses the targets, and so the secrets, to check it with.
type pushPayload interface {
	// repo returns repository.full_name, "" when the payload names none.
	repo() string
	// event validates the payload before any field is used and returns the
	// push it describes, or an *IgnoredError or an ErrMalformed.
	event(deliveryID string) (forge.PushEvent, error)
}

// hookForge is what the webhook handler knows of one forge (githubHook,
// forgejoHook): the headers it reads, how it signs, which event deploys and
// how its push payload is decoded.
type hookForge struct {
	kind        forge.Kind
	headerNames []string // in canonical form
	headers     func(h http.Header) (event, deliveryID string, err error)
	verify      func(h http.Header, body []byte, secret config.Secret) error
	// pushes returns nil for the push event, an *IgnoredError for any other.
	pushes func(event string) error
	decode func(body []byte) (pushPayload, error)
}

// decodeBody decodes a delivery's body into dst, one forge's push struct,
// or returns an ErrMalformed with the decoder's one-line reason. The decoder
// is encoding/json/v2 (go-json-experiment/json): it validates the whole
// document, nesting at most 10000 levels deep, and matches member names
// exactly. As encoding/json does, it lets the last of two equal names win
// (checking for them tracks every name of every object, which took several
// times as long as the decoding) and turns invalid UTF-8 into U+FFFD.
func decodeBody(body []byte, dst any) error {
	err := json.Unmarshal(body, dst, jsontext.AllowDuplicateNames(true), jsontext.AllowInvalidUTF8(true))
	if err != nil {
		return malformed("body", err)
	}
	return nil
}

// validRepo returns repo if it is "" or an owner/name, else an ErrMalformed.
func validRepo(repo string) (string, error) {
	if repo == "" {
		return "", nil
	}
	if err := config.ValidateRepo(repo); err != nil {
		return "", malformed("repository.full_name", err)
	}
	return repo, nil
}

// clip shortens untrusted input before it is quoted in an answer or a log.
func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
