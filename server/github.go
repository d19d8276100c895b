package server

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"

	"github.com/flakeship/flakeship/config"
	"github.com/flakeship/flakeship/forge"
)

// GitHub's delivery headers. X-Hub-Signature (sha1=) is never read.
const (
	githubEventHeader     = "X-GitHub-Event"
	githubDeliveryHeader  = "X-GitHub-Delivery"
	githubSignatureHeader = "X-Hub-Signature-256"
)

// githubHeaderNames are the headers a GitHub delivery is read by, in
// canonical form (http.CanonicalHeaderKey).
var githubHeaderNames = canonical(githubEventHeader, githubDeliveryHeader, githubSignatureHeader)

// githubPush is the part of GitHub's push payload flakeship reads, as
// encoding/json decodes it when a scan cannot decide (see jsonscan.go).
type githubPush struct {
	Ref        string  `json:"ref"`
	After      string  `json:"after"`
	Deleted    bool    `json:"deleted"`
	Forced     bool    `json:"forced"`
	HeadCommit *commit `json:"head_commit"`
	Pusher     struct {
		Name string `json:"name"`
	} `json:"pusher"`
	Repository struct {
		FullName string `json:"full_name"`
	} `json:"repository"`
}

// githubHeaders returns a GitHub delivery's event and delivery id, or
// ErrMalformed when either is missing.
func githubHeaders(h http.Header) (event, deliveryID string, err error) {
	event = h.Get(githubEventHeader)
	if event == "" {
		return "", "", malformed(githubEventHeader, errors.New("missing"))
	}
	deliveryID = h.Get(githubDeliveryHeader)
	if err := checkDeliveryID(githubDeliveryHeader, deliveryID); err != nil {
		return "", "", err
	}
	return event, deliveryID, nil
}

// verifyGitHub checks X-Hub-Signature-256: "sha256=" and the lower-case hex
// HMAC-SHA256 of the raw body. A missing header fails; sha1= never passes;
// so does a header given more than once.
func verifyGitHub(h http.Header, body []byte, secret config.Secret) error {
	if err := onlyOnce(h, githubSignatureHeader); err != nil {
		return err
	}
	v := h.Get(githubSignatureHeader)
	if v == "" {
		return checkSignature(body, secret, githubSignatureHeader, "")
	}
	sig, ok := strings.CutPrefix(v, "sha256=")
	if !ok {
		return &signatureError{githubSignatureHeader + " does not start with sha256="}
	}
	return checkSignature(body, secret, githubSignatureHeader, sig)
}

// decodeGitHubPush decodes body with encoding/json into githubPush.
func decodeGitHubPush(body []byte) (*payload, error) {
	var g githubPush
	if err := json.Unmarshal(body, &g); err != nil {
		return nil, err
	}
	return g.payload(), nil
}

// payload returns the push as a scan of its body for GitHub finds it.
func (g *githubPush) payload() *payload {
	return &payload{
		kind:       forge.GitHub,
		Repo:       g.Repository.FullName,
		Ref:        g.Ref,
		After:      g.After,
		Deleted:    g.Deleted,
		Forced:     g.Forced,
		HeadCommit: g.HeadCommit,
		Pusher:     pusher{Name: g.Pusher.Name},
	}
}

// parseGitHub turns a GitHub delivery into the push it describes. It checks
// the signature first, then the headers, then decodes and validates the
// payload before any field is used. It returns ErrSignature, an ErrMalformed
// or an *IgnoredError (ping, other events, tag pushes, branch deletions).
//
// A Forgejo delivery sent here parses too: Forgejo also sends the GitHub
// headers and a sha256= signature, and the same payload fields.
//
// scanned is the scan of body for GitHub (scanPayload), made once however
// many secrets are tried, or nil to scan it once the signature and headers
// pass.
func parseGitHub(h http.Header, body []byte, scanned *payload, secret config.Secret) (forge.PushEvent, error) {
	if err := verifyGitHub(h, body, secret); err != nil {
		return forge.PushEvent{}, err
	}
	event, deliveryID, err := githubHeaders(h)
	if err != nil {
		return forge.PushEvent{}, err
	}
	switch event {
	case "push":
	case "ping":
		return forge.PushEvent{}, ignored("ping")
	default:
		return forge.PushEvent{}, ignored("event %s", clip(event))
	}

	p, err := pushPayload(body, scanned, forge.GitHub)
	if err != nil {
		return forge.PushEvent{}, err
	}
	branch, err := checkPush(p.Repo, p.Ref, p.After, p.Deleted)
	if err != nil {
		return forge.PushEvent{}, err
	}
	ev := forge.PushEvent{
		Forge:      forge.GitHub,
		DeliveryID: deliveryID,
		Repo:       p.Repo,
		Branch:     branch,
		SHA:        p.After,
		Forced:     p.Forced,
		Pusher:     p.Pusher.Name,
	}
	if c := headCommit(p.After, p.HeadCommit); c != nil {
		ev.Author, ev.Message = c.Author.Name, c.Message
	}
	return ev, nil
}
