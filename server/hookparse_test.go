package server

import (
	"net/http"

	"github.com/flakeship/flakeship/config"
	"github.com/flakeship/flakeship/forge"
)

// parse turns a delivery into the push it describes with one secret: it
// checks the signature first, then the headers and the event, then decodes
// and validates the payload before any field is used. It returns
// ErrSignature, an ErrMalformed or an *IgnoredError. The webhook handler
// (Server.handleHook) takes the same steps, decoding first to choose the
// secrets; the parser tests and benchmarks call them through this.
func (f *hookForge) parse(h http.Header, body []byte, secret config.Secret) (forge.PushEvent, error) {
	if err := f.verify(h, body, secret); err != nil {
		return forge.PushEvent{}, err
	}
	event, deliveryID, err := f.headers(h)
	if err != nil {
		return forge.PushEvent{}, err
	}
	if err := f.pushes(event); err != nil {
		return forge.PushEvent{}, err
	}
	p, err := f.decode(body)
	if err != nil {
		return forge.PushEvent{}, err
	}
	return p.event(deliveryID)
}

// parseGitHub turns a GitHub delivery into the push it describes. It checks
// the signature first, then the headers, then decodes and validates the
// payload before any field is used. It returns ErrSignature, an ErrMalformed
// or an *IgnoredError (ping, other events, tag pushes, branch deletions).
//
// A Forgejo delivery sent here parses too: Forgejo also sends the GitHub
// headers and a sha256= signature, and the same payload fields.
func parseGitHub(h http.Header, body []byte, secret config.Secret) (forge.PushEvent, error) {
	return githubHook.parse(h, body, secret)
}

// parseForgejo turns a Forgejo or Gitea delivery into the push it describes,
// in the same order and with the same errors as parseGitHub.
func parseForgejo(h http.Header, body []byte, secret config.Secret) (forge.PushEvent, error) {
	return forgejoHook.parse(h, body, secret)
}
