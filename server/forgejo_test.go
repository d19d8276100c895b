package server

import (
	"net/http"
	"strings"
	"testing"

	"github.com/flakeship/flakeship/config"
	"github.com/flakeship/flakeship/forge"
)

const (
	push1SHA = "abeba3f546317abe41fcca53df8b6505747cdd51"
	push2SHA = "2b3deda60cee732c18a7ba7b0a7dab4017c8bf4c"
)

// forgejoDelivery returns a recorded delivery's headers and body.
func forgejoDelivery(t testing.TB, name string) (http.Header, []byte) {
	t.Helper()
	return readHeaders(t, "forgejo/"+name+".headers.txt"), readFile(t, "forgejo/"+name+".body.json")
}

// resign returns h with every sha256 signature Forgejo sends replaced by
// that of body under secret (the sha1 X-Hub-Signature stays stale: nothing
// may read it).
func resign(h http.Header, body []byte, secret config.Secret) http.Header {
	h = h.Clone()
	sig := hmacHex(secret, body)
	for _, name := range []string{"X-Forgejo-Signature", "X-Gitea-Signature", "X-Gogs-Signature"} {
		h.Set(name, sig)
	}
	h.Set("X-Hub-Signature-256", "sha256="+sig)
	return h
}

// giteaOnly returns h without Forgejo's and GitHub's header names, as Gitea
// sends them.
func giteaOnly(h http.Header) http.Header {
	h = h.Clone()
	for name := range h {
		if strings.HasPrefix(name, "X-Forgejo-") || strings.HasPrefix(name, "X-Github-") || strings.HasPrefix(name, "X-Hub-") {
			h.Del(name)
		}
	}
	return h
}

func TestParseForgejo(t *testing.T) {
	secret := forgejoSecret(t)
	h1, body1 := forgejoDelivery(t, "push-1-new-branch")
	h2, body2 := forgejoDelivery(t, "push-2")
	set := func(h http.Header, kv ...string) http.Header {
		h = h.Clone()
		for i := 0; i < len(kv); i += 2 {
			if kv[i+1] == "" {
				h.Del(kv[i])
			} else {
				h.Set(kv[i], kv[i+1])
			}
		}
		return h
	}
	// mutated edits push-2's body and signs the result.
	mutated := func(old, new string) (http.Header, []byte) {
		body := edit(t, body2, old, new)
		return resign(h2, body, secret), body
	}
	first := forge.PushEvent{
		Forge:      forge.Forgejo,
		DeliveryID: "83c1e302-c191-4aa4-acef-273d04ed5f0e",
		Repo:       "peeradmin/deploy-demo",
		Branch:     "main",
		SHA:        push1SHA,
		Pusher:     "peeradmin",
		Author:     "Peer Tester",
		Message:    "Initial commit: README and deploy script\n",
	}
	second := forge.PushEvent{
		Forge:      forge.Forgejo,
		DeliveryID: "f83b8a7e-593b-4244-a2a5-6e268c464e14",
		Repo:       "peeradmin/deploy-demo",
		Branch:     "main",
		SHA:        push2SHA,
		Pusher:     "peeradmin",
		Author:     "Peer Tester",
		Message:    "Bump version to 1.0.1\n",
	}

	// Forgejo's "test delivery" repeats the head commit as before and after.
	testHeader, testBody := mutated(`"before": "`+push1SHA+`"`, `"before": "`+push2SHA+`"`)
	tagHeader, tagBody := mutated(`"ref": "refs/heads/main"`, `"ref": "refs/tags/v1.0.1"`)
	zeroHeader, zeroBody := mutated(`"after": "`+push2SHA+`"`, `"after": "`+zeroSHA+`"`)
	optionHeader, optionBody := mutated(`"ref": "refs/heads/main"`, `"ref": "refs/heads/--upload-pack=x"`)
	dotsHeader, dotsBody := mutated(`"ref": "refs/heads/main"`, `"ref": "refs/heads/x/../y"`)
	hexHeader, hexBody := mutated(`"after": "`+push2SHA+`"`, `"after": "`+strings.Repeat("g", 40)+`"`)
	// Without head_commit the newest commit, commits[0], is the head.
	noHeadHeader, noHeadBody := mutated(`"head_commit": {`, `"head_commit": null, "unused": {`)
	// Forgejo's delete event (branch deletion), as it sends it.
	deleteBody := []byte(`{
  "ref": "feature",
  "ref_type": "branch",
  "pusher_type": "user",
  "repository": {
    "full_name": "peeradmin/deploy-demo"
  },
  "sender": {
    "login": "peeradmin"
  }
}`)
	deleteHeader := set(resign(h2, deleteBody, secret), "X-Forgejo-Event", "delete", "X-Gitea-Event", "delete", "X-GitHub-Event", "delete")
	truncated := body2[:len(body2)-10]
	sig := h2.Get("X-Forgejo-Signature")

	tests := []parseCase{
		{name: "push creating a branch deploys its head", header: h1, body: body1, secret: secret, want: first},
		{name: "second push deploys its head", header: h2, body: body2, secret: secret, want: second},
		{name: "gitea headers only", header: giteaOnly(h2), body: body2, secret: secret, want: second},
		{name: "newest commit without head_commit", header: noHeadHeader, body: noHeadBody, secret: secret, want: second},

		{name: "test delivery is ignored", header: testHeader, body: testBody, secret: secret, wantIgnored: "test delivery"},
		{name: "tag push is ignored", header: tagHeader, body: tagBody, secret: secret, wantIgnored: "tag push"},
		{name: "delete event is ignored", header: deleteHeader, body: deleteBody, secret: secret, wantIgnored: "branch deletion"},
		{name: "other event is ignored", header: set(h2, "X-Forgejo-Event", "create"), body: body2, secret: secret, wantIgnored: "event create"},
		{name: "all-zero after is a branch deletion", header: zeroHeader, body: zeroBody, secret: secret, wantIgnored: "branch deletion"},

		{name: "signed with another secret", header: resign(h2, body2, "another secret"), body: body2, secret: secret, wantErr: ErrSignature},
		{name: "recorded signature of another body", header: h1, body: body2, secret: secret, wantErr: ErrSignature},
		{name: "wrong secret", header: h2, body: body2, secret: "s3cret2", wantErr: ErrSignature},
		{name: "forgejo signature wins over a right gitea one", header: set(h2, "X-Forgejo-Signature", strings.Repeat("0", 64)), body: body2, secret: secret, wantErr: ErrSignature},
		{name: "upper-case hex", header: set(h2, "X-Forgejo-Signature", strings.ToUpper(sig)), body: body2, secret: secret, wantErr: ErrSignature},
		{name: "sha256 prefix", header: set(h2, "X-Forgejo-Signature", "sha256="+sig), body: body2, secret: secret, wantErr: ErrSignature},
		{name: "truncated hex", header: set(h2, "X-Forgejo-Signature", sig[:63]), body: body2, secret: secret, wantErr: ErrSignature},
		{name: "only github and gogs signatures", header: set(h2, "X-Forgejo-Signature", "", "X-Gitea-Signature", ""), body: body2, secret: secret, wantErr: ErrSignature},

		{name: "truncated JSON", header: resign(h2, truncated, secret), body: truncated, secret: secret, wantErr: ErrMalformed},
		{name: "not JSON", header: resign(h2, []byte("push"), secret), body: []byte("push"), secret: secret, wantErr: ErrMalformed},
		{name: "missing delivery header", header: set(h2, "X-Forgejo-Delivery", "", "X-Gitea-Delivery", ""), body: body2, secret: secret, wantErr: ErrMalformed},
		{name: "missing event header", header: set(h2, "X-Forgejo-Event", "", "X-Gitea-Event", ""), body: body2, secret: secret, wantErr: ErrMalformed},
		{name: "branch that reads as an option", header: optionHeader, body: optionBody, secret: secret, wantErr: ErrMalformed},
		{name: "branch with dot-dot", header: dotsHeader, body: dotsBody, secret: secret, wantErr: ErrMalformed},
		{name: "sha not hex", header: hexHeader, body: hexBody, secret: secret, wantErr: ErrMalformed},
	}
	runParseCases(t, parseForgejo, tests)
}

// FuzzParseForgejo checks that no signed body makes parseForgejo panic or
// return a push with an unvalidated field.
func FuzzParseForgejo(f *testing.F) {
	secret := forgejoSecret(f)
	h, _ := forgejoDelivery(f, "push-2")
	for _, name := range []string{"push-1-new-branch", "push-2"} {
		_, body := forgejoDelivery(f, name)
		f.Add(body)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		ev, err := parseForgejo(resign(h, body, secret), body, secret)
		checkFuzzResult(t, ev, err)
	})
}
