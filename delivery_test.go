package main

import (
	"bufio"
	"bytes"
	"crypto/hmac"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// delivery is one webhook request as a forge sends it.
type delivery struct {
	path   string // /hooks/github or /hooks/forgejo
	header http.Header
	body   []byte
}

// pushDelivery turns a real recorded push delivery of the given forge into
// one for repo, branch and the commits before -> after: the recorded body is
// decoded, those fields are replaced, and it is encoded the way that forge
// encodes (GitHub compact, Forgejo 2-space indented without a trailing
// newline) and signed with secret under every header the forge uses. The
// recorded headers are kept, with the delivery id replaced by id.
func pushDelivery(t testing.TB, kind, repo, branch, before, after, id, secret string) delivery {
	t.Helper()
	dir := filepath.Join("server", "testdata", "deliveries", kind)
	var bodyFile, headerFile string
	switch kind {
	case "github":
		bodyFile = "push-new-branch.json"
	case "forgejo":
		bodyFile, headerFile = "push-2.body.json", "push-2.headers.txt"
	default:
		t.Fatalf("unknown forge %q", kind)
	}
	raw, err := os.ReadFile(filepath.Join(dir, bodyFile))
	if err != nil {
		t.Fatal(err)
	}
	var p map[string]any
	if err := json.Unmarshal(raw, &p); err != nil {
		t.Fatalf("recorded %s delivery: %v", kind, err)
	}
	owner, name, _ := strings.Cut(repo, "/")
	r := p["repository"].(map[string]any)
	r["full_name"], r["name"] = repo, name
	r["owner"].(map[string]any)["login"] = owner
	if _, ok := r["owner"].(map[string]any)["username"]; ok {
		r["owner"].(map[string]any)["username"] = owner
	}
	p["ref"], p["before"], p["after"] = "refs/heads/"+branch, before, after
	if kind == "github" {
		p["created"], p["deleted"], p["forced"] = false, false, false
		if hc, ok := p["head_commit"].(map[string]any); ok {
			hc["id"] = after
		}
	} else {
		commits := p["commits"].([]any)
		commits[0].(map[string]any)["id"] = after
		if hc, ok := p["head_commit"].(map[string]any); ok {
			hc["id"] = after
		}
	}
	var body []byte
	if kind == "github" {
		body, err = json.Marshal(p)
	} else {
		body, err = json.MarshalIndent(p, "", "  ")
	}
	if err != nil {
		t.Fatal(err)
	}
	sig := hmacHex(sha256.New, secret, body)
	h := http.Header{}
	switch kind {
	case "github":
		h.Set("Content-Type", "application/json")
		h.Set("User-Agent", "GitHub-Hookshot/044aadd")
		h.Set("X-GitHub-Event", "push")
		h.Set("X-GitHub-Delivery", id)
		h.Set("X-GitHub-Hook-ID", "292430182")
		h.Set("X-Hub-Signature", "sha1="+hmacHex(sha1.New, secret, body))
		h.Set("X-Hub-Signature-256", "sha256="+sig)
	case "forgejo":
		h = recordedHeaders(t, filepath.Join(dir, headerFile))
		for _, k := range []string{"X-Forgejo-Delivery", "X-Gitea-Delivery", "X-Gogs-Delivery", "X-GitHub-Delivery"} {
			h.Set(k, id)
		}
		for _, k := range []string{"X-Forgejo-Signature", "X-Gitea-Signature", "X-Gogs-Signature"} {
			h.Set(k, sig)
		}
		h.Set("X-Hub-Signature-256", "sha256="+sig)
		h.Set("X-Hub-Signature", "sha1="+hmacHex(sha1.New, secret, body))
		h.Del("Host")
		h.Del("Content-Length")
		h.Del("Accept-Encoding")
	}
	path := "/hooks/" + kind
	return delivery{path: path, header: h, body: body}
}

// recordedHeaders reads a "Name: value" per line header file.
func recordedHeaders(t testing.TB, path string) http.Header {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := http.Header{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ": ")
		if ok {
			h.Add(k, v)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return h
}

func hmacHex(h func() hash.Hash, secret string, body []byte) string {
	m := hmac.New(h, []byte(secret))
	m.Write(body)
	return hex.EncodeToString(m.Sum(nil))
}

// send posts d to the flakeship at base and returns the status and body.
func (d delivery) send(t testing.TB, base string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, base+d.path, bytes.NewReader(d.body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header = d.header.Clone()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("send delivery: %v", err)
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(resp.Body); err != nil {
		t.Fatalf("read answer: %v", err)
	}
	return resp.StatusCode, buf.Bytes()
}

// accepted sends d, wants 202 and returns the deploy id.
func (d delivery) accepted(t testing.TB, base string) int64 {
	t.Helper()
	code, body := d.send(t, base)
	if code != http.StatusAccepted {
		t.Fatalf("delivery answered %d %s, want 202", code, body)
	}
	var a struct {
		DeployID int64  `json:"deploy_id"`
		Status   string `json:"status"`
		URL      string `json:"url"`
	}
	if err := json.Unmarshal(body, &a); err != nil || a.DeployID == 0 || a.Status != "queued" {
		t.Fatalf("202 body %s: want {deploy_id, status queued, url} (%v)", body, err)
	}
	if want := fmt.Sprintf("/deploys/%d", a.DeployID); !strings.HasSuffix(a.URL, want) {
		t.Fatalf("202 url %q, want it to end in %s", a.URL, want)
	}
	return a.DeployID
}
