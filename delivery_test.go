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
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
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
// one for repo, branch and the commits before -> after: those values are
// replaced in the recorded bytes, every key kept in the forge's own order
// and every other byte as recorded (rewriteJSON), so the body is encoded the
// way that forge encodes: Forgejo's recording is its wire bytes (2-space
// indented without a trailing newline); GitHub's is its documentation's
// example, pretty-printed, and GitHub sends compact JSON, so it is
// compacted, which keeps its order too. It is signed with secret under every
// header the forge uses. The recorded headers are kept, with the delivery id
// replaced by id.
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
	body, err := rewriteJSON(raw, pushValues(kind, repo, branch, before, after))
	if err != nil {
		t.Fatalf("recorded %s delivery: %v", kind, err)
	}
	if kind == "github" {
		var compact bytes.Buffer
		if err := json.Compact(&compact, body); err != nil {
			t.Fatal(err)
		}
		body = compact.Bytes()
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

// pushValues are the values pushDelivery replaces in a recorded push of
// the given forge, by path (see rewriteJSON).
func pushValues(kind, repo, branch, before, after string) map[string]any {
	owner, name, _ := strings.Cut(repo, "/")
	v := map[string]any{
		"repository/full_name":   repo,
		"repository/name":        name,
		"repository/owner/login": owner,
		"ref":                    "refs/heads/" + branch,
		"before":                 before,
		"after":                  after,
		"head_commit/id":         after,
	}
	if kind == "github" {
		v["created"], v["deleted"], v["forced"] = false, false, false
	} else {
		v["repository/owner/username"] = owner
		v["commits/0/id"] = after
	}
	return v
}

// rewriteJSON returns raw with the value at each path of values replaced by
// that value, JSON-encoded; every other byte, the order of keys and the
// layout included, stays as recorded. A path is object keys and array
// indexes joined by "/" ("commits/0/id"), and must lead to a string,
// number, bool or null in raw. It walks raw with a json.Decoder's token
// stream, which tells where each value ends (InputOffset); the value
// starts at the first byte after the preceding ':', ',' or '[' and blanks.
func rewriteJSON(raw []byte, values map[string]any) ([]byte, error) {
	type frame struct {
		object bool
		key    string // the current key, in an object
		index  int    // the current element, in an array
		keyNow bool   // an object expects a key next
	}
	type edit struct {
		start, end int
		value      []byte
	}
	var (
		stack []*frame
		edits []edit
		done  = map[string]bool{}
	)
	path := func() string {
		parts := make([]string, len(stack))
		for i, f := range stack {
			if f.object {
				parts[i] = f.key
			} else {
				parts[i] = strconv.Itoa(f.index)
			}
		}
		return strings.Join(parts, "/")
	}
	// valueEnded moves the enclosing container past the value just read.
	valueEnded := func() {
		if n := len(stack); n > 0 {
			if top := stack[n-1]; top.object {
				top.keyNow = true
			} else {
				top.index++
			}
		}
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	for {
		before := int(dec.InputOffset())
		tok, err := dec.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		if n := len(stack); n > 0 && stack[n-1].object && stack[n-1].keyNow {
			if d, ok := tok.(json.Delim); ok && d == '}' {
				stack = stack[:n-1]
				valueEnded()
				continue
			}
			stack[n-1].key, stack[n-1].keyNow = tok.(string), false
			continue
		}
		switch tok {
		case json.Delim('{'), json.Delim('['):
			if _, ok := values[path()]; ok && len(stack) > 0 {
				return nil, fmt.Errorf("%s is an object or array, not a value to replace", path())
			}
			stack = append(stack, &frame{object: tok == json.Delim('{'), keyNow: true})
			continue
		case json.Delim(']'):
			stack = stack[:len(stack)-1]
			valueEnded()
			continue
		}
		p := path()
		if v, ok := values[p]; ok {
			start := before
			for start < len(raw) && bytes.IndexByte([]byte(" \t\r\n:,[{"), raw[start]) >= 0 {
				start++
			}
			b, err := json.Marshal(v)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", p, err)
			}
			edits = append(edits, edit{start: start, end: int(dec.InputOffset()), value: b})
			done[p] = true
		}
		valueEnded()
	}
	for p := range values {
		if !done[p] {
			return nil, fmt.Errorf("no value at %s", p)
		}
	}
	out := append([]byte(nil), raw...)
	for i := len(edits) - 1; i >= 0; i-- {
		e := edits[i]
		out = append(out[:e.start:e.start], append(e.value, out[e.end:]...)...)
	}
	return out, nil
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

// TestPushDeliveryKeepsTheForgesEncoding holds pushDelivery to its word:
// the body it makes has every key of the recorded delivery in the
// recorded order, the new values at their places, and, with the recorded
// values put back, is the recorded bytes (Forgejo) or their compact form
// (GitHub) byte for byte. A body decoded into a map and encoded again
// comes out with its keys sorted, and fails the first check.
func TestPushDeliveryKeepsTheForgesEncoding(t *testing.T) {
	const (
		before = "1111111111111111111111111111111111111111"
		after  = "2222222222222222222222222222222222222222"
	)
	for _, tc := range []struct{ kind, file string }{
		{"github", "push-new-branch.json"},
		{"forgejo", "push-2.body.json"},
	} {
		t.Run(tc.kind, func(t *testing.T) {
			raw, err := os.ReadFile(filepath.Join("server", "testdata", "deliveries", tc.kind, tc.file))
			if err != nil {
				t.Fatal(err)
			}
			d := pushDelivery(t, tc.kind, "acme/web", "main", before, after, "id-1", "secret")

			recordedKeys, gotKeys := keyPaths(t, raw), keyPaths(t, d.body)
			if strings.Join(gotKeys, " ") != strings.Join(recordedKeys, " ") {
				t.Fatalf("keys of the delivery body are not the recorded ones in the recorded order:\n got %v\nwant %v",
					gotKeys[:min(len(gotKeys), 12)], recordedKeys[:min(len(recordedKeys), 12)])
			}

			var recorded, got any
			if err := json.Unmarshal(raw, &recorded); err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(d.body, &got); err != nil {
				t.Fatal(err)
			}
			values := pushValues(tc.kind, "acme/web", "main", before, after)
			old := map[string]any{}
			for p, want := range values {
				if v := valueAt(got, p); v != want {
					t.Errorf("%s = %#v, want %#v", p, v, want)
				}
				old[p] = valueAt(recorded, p)
			}
			back, err := rewriteJSON(d.body, old)
			if err != nil {
				t.Fatal(err)
			}
			want := raw
			if tc.kind == "github" {
				var compact bytes.Buffer
				if err := json.Compact(&compact, raw); err != nil {
					t.Fatal(err)
				}
				want = compact.Bytes()
			}
			if !bytes.Equal(back, want) {
				t.Errorf("with the recorded values put back, the body differs from the recorded delivery%s:\n%s",
					map[bool]string{true: " (compacted)"}[tc.kind == "github"], back)
			}
		})
	}
}

// keyPaths lists the path of every object key in the JSON document raw,
// in document order ("repository/owner/login", "commits/0/id").
func keyPaths(t *testing.T, raw []byte) []string {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(raw))
	var out []string
	var walk func(prefix string) error
	walk = func(prefix string) error {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		switch tok {
		case json.Delim('{'):
			for dec.More() {
				k, err := dec.Token()
				if err != nil {
					return err
				}
				out = append(out, prefix+k.(string))
				if err := walk(prefix + k.(string) + "/"); err != nil {
					return err
				}
			}
			_, err = dec.Token()
		case json.Delim('['):
			for i := 0; dec.More(); i++ {
				if err := walk(prefix + strconv.Itoa(i) + "/"); err != nil {
					return err
				}
			}
			_, err = dec.Token()
		}
		return err
	}
	if err := walk(""); err != nil {
		t.Fatalf("walk %s...: %v", raw[:min(len(raw), 40)], err)
	}
	return out
}

// valueAt is the value at path (see rewriteJSON) in a decoded document.
func valueAt(doc any, path string) any {
	for _, part := range strings.Split(path, "/") {
		switch v := doc.(type) {
		case map[string]any:
			doc = v[part]
		case []any:
			i, err := strconv.Atoi(part)
			if err != nil || i >= len(v) {
				return nil
			}
			doc = v[i]
		default:
			return nil
		}
	}
	return doc
}
