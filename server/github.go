package server

import (
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

// githubPush is the part of GitHub's push payload flakeship reads: a
// delivery's body is decoded into it once.
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

// githubHook is how the webhook handler reads a GitHub delivery.
var githubHook = hookForge{
	kind:        forge.GitHub,
	headerNames: githubHeaderNames,
	headers:     githubHeaders,
	verify:      verifyGitHub,
	pushes:      githubPushes,
	decode:      decodeGitHubPush,
}

// githubPushes returns nil for a push event, or the *IgnoredError of any
// other.
func githubPushes(event string) error {
	switch event {
	case "push":
		return nil
	case "ping":
		return ignored("ping")
	}
	return ignored("event %s", clip(event))
}

// decodeGitHubPush decodes body into a githubPush.
func decodeGitHubPush(body []byte) (pushPayload, error) {
	var g githubPush
	if err := decodeBody(body, &g); err != nil {
		return nil, err
	}
	return &g, nil
}

// repo implements pushPayload.
func (g *githubPush) repo() string { return g.Repository.FullName }

// event implements pushPayload: deleted says a branch deletion, as does an
// all-zero after.
func (g *githubPush) event(deliveryID string) (forge.PushEvent, error) {
	branch, err := checkPush(g.Repository.FullName, g.Ref, g.After, g.Deleted)
	if err != nil {
		return forge.PushEvent{}, err
	}
	ev := forge.PushEvent{
		Forge:      forge.GitHub,
		DeliveryID: deliveryID,
		Repo:       g.Repository.FullName,
		Branch:     branch,
		SHA:        g.After,
		Forced:     g.Forced,
		Pusher:     g.Pusher.Name,
	}
	if c := headCommit(g.After, g.HeadCommit); c != nil {
		ev.Author, ev.Message = c.Author.Name, c.Message
	}
	return ev, nil
}
