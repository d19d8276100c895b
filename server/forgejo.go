package server

import (
	"encoding/json"
	"errors"
	"net/http"

	"github.com/flakeship/flakeship/config"
	"github.com/flakeship/flakeship/forge"
)

// Forgejo's delivery headers, each with its Gitea name as a fallback: Forgejo
// sends both, Gitea only its own. A Forgejo delivery also carries GitHub's
// and Gogs' names; the sha1 X-Hub-Signature is never read.
const (
	forgejoEventHeader     = "X-Forgejo-Event"
	giteaEventHeader       = "X-Gitea-Event"
	forgejoDeliveryHeader  = "X-Forgejo-Delivery"
	giteaDeliveryHeader    = "X-Gitea-Delivery"
	forgejoSignatureHeader = "X-Forgejo-Signature"
	giteaSignatureHeader   = "X-Gitea-Signature"
)

// forgejoHeaderNames are the headers a Forgejo or Gitea delivery is read
// by, in canonical form.
var forgejoHeaderNames = canonical(forgejoEventHeader, giteaEventHeader, forgejoDeliveryHeader,
	giteaDeliveryHeader, forgejoSignatureHeader, giteaSignatureHeader)

// forgejoPush is the part of a Forgejo (or Gitea) push payload flakeship
// reads, as encoding/json decodes it when a scan cannot decide (see
// jsonscan.go). Forgejo sends no "deleted" or "forced": a branch deletion is a
// separate "delete" event.
type forgejoPush struct {
	Ref        string    `json:"ref"`
	Before     string    `json:"before"`
	After      string    `json:"after"`
	HeadCommit *commit   `json:"head_commit"`
	Commits    []*commit `json:"commits"` // newest first
	Pusher     struct {
		Login    string `json:"login"`
		Username string `json:"username"`
	} `json:"pusher"`
	Repository struct {
		FullName string `json:"full_name"`
	} `json:"repository"`
}

// forgejoHeaders returns a Forgejo or Gitea delivery's event and delivery
// id, or ErrMalformed when either is missing.
func forgejoHeaders(h http.Header) (event, deliveryID string, err error) {
	name, event := firstHeader(h, forgejoEventHeader, giteaEventHeader)
	if event == "" {
		return "", "", malformed(name, errors.New("missing"))
	}
	name, deliveryID = firstHeader(h, forgejoDeliveryHeader, giteaDeliveryHeader)
	if err := checkDeliveryID(name, deliveryID); err != nil {
		return "", "", err
	}
	return event, deliveryID, nil
}

// verifyForgejo checks X-Forgejo-Signature, or X-Gitea-Signature when there
// is none: the bare lower-case hex HMAC-SHA256 of the raw body, given once.
func verifyForgejo(h http.Header, body []byte, secret config.Secret) error {
	for _, name := range []string{forgejoSignatureHeader, giteaSignatureHeader} {
		if err := onlyOnce(h, name); err != nil {
			return err
		}
	}
	name, sig := firstHeader(h, forgejoSignatureHeader, giteaSignatureHeader)
	return checkSignature(body, secret, name, sig)
}

// decodeForgejoPush decodes body with encoding/json into forgejoPush.
func decodeForgejoPush(body []byte) (*payload, error) {
	var f forgejoPush
	if err := json.Unmarshal(body, &f); err != nil {
		return nil, err
	}
	return f.payload(), nil
}

// payload returns the push as a scan of its body for Forgejo finds it.
func (f *forgejoPush) payload() *payload {
	return &payload{
		kind:       forge.Forgejo,
		Repo:       f.Repository.FullName,
		Ref:        f.Ref,
		Before:     f.Before,
		After:      f.After,
		HeadCommit: f.HeadCommit,
		Commits:    f.Commits,
		Pusher:     pusher{Login: f.Pusher.Login, Username: f.Pusher.Username},
	}
}

// parseForgejo turns a Forgejo or Gitea delivery into the push it describes,
// in the same order and with the same errors as parseGitHub. Forgejo has no
// ping: its "test delivery" is a push with before equal to after, ignored.
//
// scanned is the scan of body for Forgejo, or nil to scan it once the
// signature and headers pass.
func parseForgejo(h http.Header, body []byte, scanned *payload, secret config.Secret) (forge.PushEvent, error) {
	if err := verifyForgejo(h, body, secret); err != nil {
		return forge.PushEvent{}, err
	}
	event, deliveryID, err := forgejoHeaders(h)
	if err != nil {
		return forge.PushEvent{}, err
	}
	switch event {
	case "push":
	case "delete":
		return forge.PushEvent{}, ignored("branch deletion")
	default:
		return forge.PushEvent{}, ignored("event %s", clip(event))
	}

	p, err := pushPayload(body, scanned, forge.Forgejo)
	if err != nil {
		return forge.PushEvent{}, err
	}
	branch, err := checkPush(p.Repo, p.Ref, p.After, false)
	if err != nil {
		return forge.PushEvent{}, err
	}
	if p.Before == p.After {
		return forge.PushEvent{}, ignored("test delivery")
	}
	ev := forge.PushEvent{
		Forge:      forge.Forgejo,
		DeliveryID: deliveryID,
		Repo:       p.Repo,
		Branch:     branch,
		SHA:        p.After,
		Pusher:     p.Pusher.Login,
	}
	if ev.Pusher == "" {
		ev.Pusher = p.Pusher.Username
	}
	var newest *commit
	if len(p.Commits) > 0 {
		newest = p.Commits[0]
	}
	if c := headCommit(p.After, p.HeadCommit, newest); c != nil {
		ev.Author, ev.Message = c.Author.Name, c.Message
	}
	return ev, nil
}
