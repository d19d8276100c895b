package server

import (
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
// reads: a delivery's body is decoded into it once. Forgejo sends no
// "deleted" or "forced": a branch deletion is a separate "delete" event.
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

// forgejoHook is how the webhook handler reads a Forgejo or Gitea delivery.
var forgejoHook = hookForge{
	kind:        forge.Forgejo,
	headerNames: forgejoHeaderNames,
	headers:     forgejoHeaders,
	verify:      verifyForgejo,
	pushes:      forgejoPushes,
	decode:      decodeForgejoPush,
}

// forgejoPushes returns nil for a push event, or the *IgnoredError of any
// other. Forgejo has no ping.
func forgejoPushes(event string) error {
	switch event {
	case "push":
		return nil
	case "delete":
		return ignored("branch deletion")
	}
	return ignored("event %s", clip(event))
}

// decodeForgejoPush decodes body into a forgejoPush.
func decodeForgejoPush(body []byte) (pushPayload, error) {
	var f forgejoPush
	if err := decodeBody(body, &f); err != nil {
		return nil, err
	}
	return &f, nil
}

// repo implements pushPayload.
func (f *forgejoPush) repo() string { return f.Repository.FullName }

// event implements pushPayload. Forgejo's "test delivery" is a push with
// before equal to after: it is ignored.
func (f *forgejoPush) event(deliveryID string) (forge.PushEvent, error) {
	branch, err := checkPush(f.Repository.FullName, f.Ref, f.After, false)
	if err != nil {
		return forge.PushEvent{}, err
	}
	if f.Before == f.After {
		return forge.PushEvent{}, ignored("test delivery")
	}
	ev := forge.PushEvent{
		Forge:      forge.Forgejo,
		DeliveryID: deliveryID,
		Repo:       f.Repository.FullName,
		Branch:     branch,
		SHA:        f.After,
		Pusher:     f.Pusher.Login,
	}
	if ev.Pusher == "" {
		ev.Pusher = f.Pusher.Username
	}
	var newest *commit
	if len(f.Commits) > 0 {
		newest = f.Commits[0]
	}
	if c := headCommit(f.After, f.HeadCommit, newest); c != nil {
		ev.Author, ev.Message = c.Author.Name, c.Message
	}
	return ev, nil
}
