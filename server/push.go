package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strings"

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

// repoOf returns the repository.full_name of body, scanned as p, to choose
// the targets (and so the secrets) to verify it with. It returns "" when
// the payload names no repository. Where the scan could not decide, it
// decodes body with encoding/json, as it did before the scanner, for the
// same error.
func repoOf(body []byte, p *payload) (string, error) {
	name := p.Repo
	if p.repoUnsure {
		var err error
		if name, err = decodeRepo(body); err != nil {
			return "", malformed("body", err)
		}
	}
	if name == "" {
		return "", nil
	}
	if err := config.ValidateRepo(name); err != nil {
		return "", malformed("repository.full_name", err)
	}
	return name, nil
}

// decodeRepo decodes repository.full_name from body with encoding/json,
// into the struct whose type its errors name.
func decodeRepo(body []byte) (string, error) {
	var p struct {
		Repository struct {
			FullName string `json:"full_name"`
		} `json:"repository"`
	}
	err := json.Unmarshal(body, &p)
	return p.Repository.FullName, err
}

// pushPayload returns the push fields of body for forge kind as
// json.Unmarshal decodes them into its struct (githubPush, forgejoPush), or
// an ErrMalformed with encoding/json's error. scanned is body's scan for
// kind, or nil to scan it now; where the scan could not decide, body is
// decoded with encoding/json.
func pushPayload(body []byte, scanned *payload, kind forge.Kind) (*payload, error) {
	p := scanned
	if p == nil || p.kind != kind {
		p = scanPayload(body, kind)
	}
	if !p.pushUnsure {
		return p, nil
	}
	var err error
	switch kind {
	case forge.GitHub:
		p, err = decodeGitHubPush(body)
	case forge.Forgejo:
		p, err = decodeForgejoPush(body)
	default:
		return nil, fmt.Errorf("decode push: forge %q has no push payload", kind)
	}
	if err != nil {
		return nil, malformed("body", err)
	}
	return p, nil
}

// short is the 7-character display form of a sha.
func short(sha string) string {
	if len(sha) > 7 {
		return sha[:7]
	}
	return sha
}

// clip shortens untrusted input before it is quoted in an answer or a log.
func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
