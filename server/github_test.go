package server

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/flakeship/flakeship/config"
	"github.com/flakeship/flakeship/forge"
)

// The GitHub examples carry no signature: tests sign them with this secret.
const githubSecret config.Secret = "github test secret"

const (
	githubDelivery = "72d3162e-cc78-11e3-81ab-4c9367dc0958"
	helloSHA       = "6113728f27ae82c7b1a177c8d03f9e96e0adf246"
)

// githubRequestHeader builds the headers GitHub sends with body, signed
// with secret.
func githubRequestHeader(event string, body []byte, secret config.Secret) http.Header {
	h := http.Header{}
	h.Set("Content-Type", "application/json")
	h.Set("User-Agent", "GitHub-Hookshot/044aadd")
	h.Set("X-GitHub-Event", event)
	h.Set("X-GitHub-Delivery", githubDelivery)
	h.Set("X-GitHub-Hook-ID", "292430182")
	h.Set("X-Hub-Signature-256", "sha256="+hmacHex(secret, body))
	return h
}

// edit replaces old, which must occur in body, with new.
func edit(t testing.TB, body []byte, old, new string) []byte {
	t.Helper()
	if !bytes.Contains(body, []byte(old)) {
		t.Fatalf("edit: %q not in body", old)
	}
	return bytes.ReplaceAll(body, []byte(old), []byte(new))
}

// parseFunc turns a delivery into a push with one secret (parseGitHub,
// parseForgejo).
type parseFunc func(h http.Header, body []byte, secret config.Secret) (forge.PushEvent, error)

// parseCase is one delivery and what a parse function makes of it: an event,
// an ignored reason, or an error matched with errors.Is.
type parseCase struct {
	name        string
	header      http.Header
	body        []byte
	secret      config.Secret
	want        forge.PushEvent
	wantIgnored string
	wantErr     error
}

func runParseCases(t *testing.T, parse parseFunc, tests []parseCase) {
	t.Helper()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parse(tc.header, tc.body, tc.secret)
			if err != nil && tc.secret.IsSet() && strings.Contains(err.Error(), tc.secret.Reveal()) {
				t.Errorf("error %q contains the secret", err)
			}
			var ign *IgnoredError
			switch {
			case tc.wantIgnored != "":
				if !errors.As(err, &ign) || ign.Reason != tc.wantIgnored {
					t.Fatalf("got %v, want ignored %q", err, tc.wantIgnored)
				}
			case tc.wantErr != nil:
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("got %v, want %v", err, tc.wantErr)
				}
				if errors.As(err, &ign) {
					t.Fatalf("got ignored %q, want %v", ign.Reason, tc.wantErr)
				}
			case err != nil:
				t.Fatalf("unexpected error: %v", err)
			}
			if got != tc.want {
				t.Errorf("event:\n got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestParseGitHub(t *testing.T) {
	push := readFile(t, "github/push-new-branch.json")
	tagDeleted := readFile(t, "github/push-tag-deleted.json")
	tagDeletedOrg := readFile(t, "github/push-tag-deleted-org.json")
	ping := readFile(t, "github/ping.json")
	signed := func(event string, body []byte) http.Header {
		return githubRequestHeader(event, body, githubSecret)
	}
	withHeader := func(h http.Header, name, value string) http.Header {
		h = h.Clone()
		if value == "" {
			h.Del(name)
		} else {
			h.Set(name, value)
		}
		return h
	}
	pushed := forge.PushEvent{
		Forge:      forge.GitHub,
		DeliveryID: githubDelivery,
		Repo:       "Codertocat/Hello-World",
		Branch:     "master",
		SHA:        helloSHA,
		Pusher:     "Codertocat",
		Author:     "Codertocat",
		Message:    "Initial commit",
	}
	forced := edit(t, push, `"forced": false`, `"forced": true`)
	forcedEvent := pushed
	forcedEvent.Forced = true
	feature := edit(t, push, `"ref": "refs/heads/master"`, `"ref": "refs/heads/feature/x"`)
	featureEvent := pushed
	featureEvent.Branch = "feature/x"
	otherHead := edit(t, push, `"after": "`+helloSHA+`"`, `"after": "`+strings.Repeat("b", 40)+`"`)
	otherHeadEvent := pushed
	otherHeadEvent.SHA, otherHeadEvent.Author, otherHeadEvent.Message = strings.Repeat("b", 40), "", ""
	// The decoder takes the last of two equal names and replaces invalid
	// UTF-8, as encoding/json does.
	twoRefs := edit(t, push, `"ref": "refs/heads/master"`, `"ref": "refs/heads/other", "ref": "refs/heads/master"`)
	badUTF8 := edit(t, push, `"message": "Initial commit"`, "\"message\": \"Initial \xff commit\"")
	badUTF8Event := pushed
	badUTF8Event.Message = "Initial \uFFFD commit"

	sig := hmacHex(githubSecret, push)
	sha1mac := hmac.New(sha1.New, []byte(githubSecret.Reveal()))
	sha1mac.Write(push)
	badSig := sig[:63] + string("0123456789abcdef"[(strings.IndexByte("0123456789abcdef", sig[63])+1)%16])
	onlySHA1 := withHeader(signed("push", push), "X-Hub-Signature-256", "")
	onlySHA1.Set("X-Hub-Signature", "sha1="+hex.EncodeToString(sha1mac.Sum(nil)))

	// A real Forgejo delivery, sent to /hooks/github: it carries GitHub's
	// headers and a sha256= signature, and parses as GitHub would.
	fjHeader := readHeaders(t, "forgejo/push-2.headers.txt")
	fjBody := readFile(t, "forgejo/push-2.body.json")

	mutated := func(old, new string) []byte { return edit(t, push, old, new) }
	tests := []parseCase{
		{name: "push of a new branch deploys its head", header: signed("push", push), body: push, secret: githubSecret, want: pushed},
		{name: "forced push says so", header: signed("push", forced), body: forced, secret: githubSecret, want: forcedEvent},
		{name: "branch with a slash", header: signed("push", feature), body: feature, secret: githubSecret, want: featureEvent},
		{name: "of two equal names the last counts", header: signed("push", twoRefs), body: twoRefs, secret: githubSecret, want: pushed},
		{name: "invalid UTF-8 is replaced", header: signed("push", badUTF8), body: badUTF8, secret: githubSecret, want: badUTF8Event},
		{name: "head commit other than after gives no author", header: signed("push", otherHead), body: otherHead, secret: githubSecret, want: otherHeadEvent},
		{name: "forgejo delivery parses as github", header: fjHeader, body: fjBody, secret: forgejoSecret(t), want: forge.PushEvent{
			Forge:      forge.GitHub,
			DeliveryID: "f83b8a7e-593b-4244-a2a5-6e268c464e14",
			Repo:       "peeradmin/deploy-demo",
			Branch:     "main",
			SHA:        "2b3deda60cee732c18a7ba7b0a7dab4017c8bf4c",
			Author:     "Peer Tester",
			Message:    "Bump version to 1.0.1\n",
		}},

		{name: "tag deletion is ignored", header: signed("push", tagDeleted), body: tagDeleted, secret: githubSecret, wantIgnored: "tag push"},
		{name: "org tag deletion is ignored", header: signed("push", tagDeletedOrg), body: tagDeletedOrg, secret: githubSecret, wantIgnored: "tag push"},
		{name: "ping is ignored", header: signed("ping", ping), body: ping, secret: githubSecret, wantIgnored: "ping"},
		{name: "other event is ignored", header: signed("issues", push), body: push, secret: githubSecret, wantIgnored: "event issues"},
		{name: "tag push is ignored", body: mutated(`"ref": "refs/heads/master"`, `"ref": "refs/tags/v1"`), secret: githubSecret, wantIgnored: "tag push"},
		{name: "pull ref is ignored", body: mutated(`"ref": "refs/heads/master"`, `"ref": "refs/pull/1/head"`), secret: githubSecret, wantIgnored: `ref "refs/pull/1/head" is not a branch`},
		{name: "all-zero after is a branch deletion", body: mutated(`"after": "`+helloSHA+`"`, `"after": "`+zeroSHA+`"`), secret: githubSecret, wantIgnored: "branch deletion"},
		{name: "deleted flag is a branch deletion", body: mutated(`"deleted": false`, `"deleted": true`), secret: githubSecret, wantIgnored: "branch deletion"},

		{name: "bad signature", header: withHeader(signed("push", push), "X-Hub-Signature-256", "sha256="+badSig), body: push, secret: githubSecret, wantErr: ErrSignature},
		{name: "signed with another secret", header: githubRequestHeader("push", push, "another secret"), body: push, secret: githubSecret, wantErr: ErrSignature},
		{name: "signature of another body", header: signed("push", tagDeleted), body: push, secret: githubSecret, wantErr: ErrSignature},
		{name: "sha1 prefix", header: withHeader(signed("push", push), "X-Hub-Signature-256", "sha1="+hex.EncodeToString(sha1mac.Sum(nil))), body: push, secret: githubSecret, wantErr: ErrSignature},
		{name: "sha256 digest under sha1 prefix", header: withHeader(signed("push", push), "X-Hub-Signature-256", "sha1="+sig), body: push, secret: githubSecret, wantErr: ErrSignature},
		{name: "upper-case hex", header: withHeader(signed("push", push), "X-Hub-Signature-256", "sha256="+strings.ToUpper(sig)), body: push, secret: githubSecret, wantErr: ErrSignature},
		{name: "upper-case prefix", header: withHeader(signed("push", push), "X-Hub-Signature-256", "SHA256="+sig), body: push, secret: githubSecret, wantErr: ErrSignature},
		{name: "truncated hex", header: withHeader(signed("push", push), "X-Hub-Signature-256", "sha256="+sig[:62]), body: push, secret: githubSecret, wantErr: ErrSignature},
		{name: "bare hex without prefix", header: withHeader(signed("push", push), "X-Hub-Signature-256", sig), body: push, secret: githubSecret, wantErr: ErrSignature},
		{name: "missing signature", header: withHeader(signed("push", push), "X-Hub-Signature-256", ""), body: push, secret: githubSecret, wantErr: ErrSignature},
		{name: "only the sha1 signature", header: onlySHA1, body: push, secret: githubSecret, wantErr: ErrSignature},
		{name: "empty secret verifies nothing", header: githubRequestHeader("push", push, ""), body: push, secret: "", wantErr: ErrSignature},

		{name: "truncated JSON", header: signed("push", push[:len(push)/2]), body: push[:len(push)/2], secret: githubSecret, wantErr: ErrMalformed},
		{name: "not JSON", header: signed("push", []byte("Hello, World!")), body: []byte("Hello, World!"), secret: githubSecret, wantErr: ErrMalformed},
		{name: "missing delivery header", header: withHeader(signed("push", push), "X-GitHub-Delivery", ""), body: push, secret: githubSecret, wantErr: ErrMalformed},
		{name: "delivery id that is no id", header: withHeader(signed("push", push), "X-GitHub-Delivery", "a b;c"), body: push, secret: githubSecret, wantErr: ErrMalformed},
		{name: "missing event header", header: withHeader(signed("push", push), "X-GitHub-Event", ""), body: push, secret: githubSecret, wantErr: ErrMalformed},
		{name: "branch that reads as an option", body: mutated(`"ref": "refs/heads/master"`, `"ref": "refs/heads/--upload-pack=x"`), secret: githubSecret, wantErr: ErrMalformed},
		{name: "branch with dot-dot", body: mutated(`"ref": "refs/heads/master"`, `"ref": "refs/heads/a..b"`), secret: githubSecret, wantErr: ErrMalformed},
		{name: "missing ref", body: mutated(`"ref": "refs/heads/master"`, `"ref": ""`), secret: githubSecret, wantErr: ErrMalformed},
		{name: "sha not hex", body: mutated(`"after": "`+helloSHA+`"`, `"after": "`+strings.Repeat("z", 40)+`"`), secret: githubSecret, wantErr: ErrMalformed},
		{name: "upper-case sha", body: mutated(`"after": "`+helloSHA+`"`, `"after": "`+strings.ToUpper(helloSHA)+`"`), secret: githubSecret, wantErr: ErrMalformed},
		{name: "short sha", body: mutated(`"after": "`+helloSHA+`"`, `"after": "6113728"`), secret: githubSecret, wantErr: ErrMalformed},
		{name: "repository that is no owner/name", body: mutated(`"full_name": "Codertocat/Hello-World"`, `"full_name": "../etc"`), secret: githubSecret, wantErr: ErrMalformed},
		{name: "ref of the wrong type", body: mutated(`"ref": "refs/heads/master"`, `"ref": 7`), secret: githubSecret, wantErr: ErrMalformed},
	}
	for i := range tests {
		if tests[i].header == nil { // a push, signed as GitHub would
			tests[i].header = signed("push", tests[i].body)
		}
	}
	runParseCases(t, parseGitHub, tests)
}

// FuzzParseGitHub checks that no signed body makes parseGitHub panic or
// return a push with an unvalidated field.
func FuzzParseGitHub(f *testing.F) {
	for _, name := range []string{"push-new-branch.json", "push-tag-deleted.json", "push-tag-deleted-org.json", "ping.json"} {
		f.Add("push", readFile(f, "github/"+name))
	}
	f.Add("push", []byte(`{"ref":"refs/heads/main","after":"`+helloSHA+`","repository":{"full_name":"a/b"}}`))
	f.Fuzz(func(t *testing.T, event string, body []byte) {
		ev, err := parseGitHub(githubRequestHeader(event, body, githubSecret), body, githubSecret)
		checkFuzzResult(t, ev, err)
	})
}

// checkFuzzResult fails unless err is one of the parse errors or ev is a
// fully validated push.
func checkFuzzResult(t *testing.T, ev forge.PushEvent, err error) {
	t.Helper()
	var ign *IgnoredError
	switch {
	case errors.As(err, &ign), errors.Is(err, ErrMalformed):
		if ev != (forge.PushEvent{}) {
			t.Fatalf("error %v with a non-empty event %+v", err, ev)
		}
	case err != nil:
		t.Fatalf("unexpected error kind: %v", err)
	default:
		if e := config.ValidateSHA(ev.SHA); e != nil {
			t.Fatalf("sha: %v", e)
		}
		if e := config.ValidateBranch(ev.Branch); e != nil {
			t.Fatalf("branch: %v", e)
		}
		if e := config.ValidateRepo(ev.Repo); e != nil {
			t.Fatalf("repo: %v", e)
		}
		if ev.DeliveryID == "" {
			t.Fatal("empty delivery id")
		}
	}
}
