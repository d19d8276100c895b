package server

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/flakeship/flakeship/config"
	"github.com/flakeship/flakeship/forge"
)

// FuzzPayloadScan feeds arbitrary bytes to scanPayload for both forges and
// checks it against encoding/json (see checkScan): it must accept and
// reject exactly what json.Unmarshal does for repoOf's struct and for the
// forge's push struct, and find every field json.Unmarshal stores.
func FuzzPayloadScan(f *testing.F) {
	for _, body := range recordedBodies(f) {
		f.Add(body)
		for _, n := range []int{1, len(body) / 2, len(body) - 1} {
			f.Add(body[:n])
		}
		f.Add([]byte(strings.ToUpper(string(body))))
	}
	for _, body := range hostileBodies() {
		f.Add([]byte(body))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		checkScan(t, body)
	})
}

// recordedBodies returns the body of every recorded delivery under
// testdata/deliveries (the recorded fixtures, byte for byte).
func recordedBodies(t testing.TB) [][]byte {
	t.Helper()
	var bodies [][]byte
	for _, pattern := range []string{"github/*.json", "forgejo/*.body.json"} {
		names, err := filepath.Glob(filepath.Join(deliveries, pattern))
		if err != nil {
			t.Fatal(err)
		}
		if len(names) == 0 {
			t.Fatalf("no recorded delivery matches %s", pattern)
		}
		for _, name := range names {
			rel, err := filepath.Rel(deliveries, name)
			if err != nil {
				t.Fatal(err)
			}
			bodies = append(bodies, readFile(t, rel))
		}
	}
	return bodies
}

// hostileBodies are bodies on the edges of what encoding/json accepts and
// of how it stores what it accepts.
func hostileBodies() []string {
	deep := func(n int) string {
		return `{"repository":{"full_name":"a/b"},"x":` + strings.Repeat("[", n) + strings.Repeat("]", n) + `}`
	}
	return []string{
		// Not JSON, or not an object.
		``, ` `, `nul`, `null`, " \t\r\nnull\n", `{`, `}`, `{}`, `{} {}`, `{}x`, `[]`, `"x"`, `5`, `true`,
		`{"a":1,}`, `{"a" 1}`, `{"a":}`, `{,}`, `{"a":[1,]}`, `{"a":[,1]}`, `{'a':1}`, "\xef\xbb\xbf{}",
		`{"a":01}`, `{"a":-}`, `{"a":1.}`, `{"a":.5}`, `{"a":1e}`, `{"a":1e+}`, `{"a":-0.0E-7}`, `{"a":+1}`,
		`{"a":tru}`, `{"a":truex}`, `{"a":NaN}`, "{\"a\":\"\x01\"}", "{\"a\":\"\x7f\"}", `{"a":"\x"}`,
		`{"a":"\u12"}`, `{"a":"\u12g4"}`, `{"a":"\`, `{"a":"`, "{\"a\":1}\x00",
		// Nesting at encoding/json's limit and one past it.
		deep(maxDepth - 1), deep(maxDepth), `{"head_commit":` + strings.Repeat(`{"author":`, 5000) + `null` + strings.Repeat(`}`, 5001),
		// The repository: wrong types, nulls, duplicates, folded keys, escapes.
		`{"repository":"x"}`, `{"repository":5}`, `{"repository":[]}`, `{"repository":{"full_name":5}}`,
		`{"repository":{"full_name":true}}`, `{"repository":{"full_name":{}}}`, `{"repository":{"full_name":null}}`,
		`{"repository":null}`, `{"repository":{"full_name":"a/b"},"repository":{"full_name":"c/d"}}`,
		`{"repository":{"full_name":"a/b"},"repository":{}}`, `{"repository":{"full_name":"a/b"},"repository":null}`,
		`{"repository":{"full_name":"a/b","full_name":null}}`, `{"REPOSITORY":{"FULL_NAME":"a/b"}}`,
		`{"Repository":{"Full_Name":"a/b"},"repository":{"full_name":"c/d"}}`, `{"repoſitory":{"full_name":"a/b"}}`,
		`{"\u0072epository":{"full_name":"a\u002fb"}}`, `{"repository":{"full_name":"a/\ud83d\ude00"}}`,
		`{"repository":{"full_name":"a/\ud800"}}`, `{"repository":{"full_name":"a/\udc00\ud800x"}}`,
		"{\"repository\":{\"full_name\":\"a/\xff\xfeb\"}}", "{\"repository\":{\"full_name\":\"a/\xed\xa0\x80\"}}",
		"{\"repository\":{\"full_name\":\"ü/ß\"}}", "{\"repos\xffitory\":{\"full_name\":\"a/b\"}}",
		`{"repository":{"full_name":"a/b"},"repository":"x"}`, `{"repository":{"full_name":"a/b"}}x`,
		`{"\u212a":1,"repository":{"full_name":"a/b"}}`, "{\"\u212a\":1,\"\u212aſ\":2}", `{"full_name":"a/b"}`, `{"repository":{"name":"b"}}`,
		// Push fields: wrong types, nulls, duplicates, pointers and slices.
		`{"ref":5}`, `{"ref":null,"ref":"refs/heads/x","ref":null}`, `{"after":[]}`, `{"before":{}}`,
		`{"deleted":"true"}`, `{"deleted":1}`, `{"deleted":null}`, `{"deleted":true,"deleted":false}`, `{"forced":{}}`,
		`{"Deleted":true,"FORCED":true}`, `{"pusher":"x"}`, `{"pusher":{"name":5}}`, `{"pusher":{"login":5}}`,
		`{"pusher":{"username":[]}}`, `{"puſher":{"uſername":"u","NAME":"n","Login":"l"}}`,
		`{"head_commit":"x"}`, `{"head_commit":[]}`, `{"head_commit":null}`, `{"head_commit":{"id":5}}`,
		`{"head_commit":{"id":"a"},"head_commit":{"message":"m"}}`, `{"head_commit":{"id":"a"},"head_commit":null}`,
		`{"head_commit":{"id":"a"},"head_commit":null,"head_commit":{"message":"m"}}`,
		`{"head_commit":{"author":"x"}}`, `{"head_commit":{"author":{"name":"n"},"author":{"email":"e"}}}`,
		`{"head_commit":{"message":"line\nline\t\"q\" \u00e9 \u20ac \ud83d\ude00 \\ \/"}}`,
		`{"commits":1}`, `{"commits":"x"}`, `{"commits":{}}`, `{"commits":[1]}`, `{"commits":[[]]}`, `{"commits":[null]}`,
		`{"commits":[]}`, `{"commits":null}`, `{"commits":[{"id":"a"}],"commits":[]}`,
		`{"commits":[{"id":"a"},{"id":"b"},{"id":"c"}],"commits":[{"message":"x"}],"commits":[{},{}]}`,
		`{"commits":[{"id":"a"},{"id":"b"}],"commits":[null],"commits":[{},{}]}`,
		`{"commits":[{"id":"a"},{"id":"b"},{"id":"c"},{"id":"d"},{"id":"e"}],"commits":[{}],"commits":[{},{},{},{},{},{}]}`,
		`{"commits":[{"id":"a","author":{"name":"x"}}],"commits":null,"commits":[{"message":"m"}]}`,
		`{"COMMITS":[{"ID":"a","Message":"m","AUTHOR":{"Name":"n"}}]}`,
		`{"ref":"refs/heads/main","after":"6113728f27ae82c7b1a177c8d03f9e96e0adf246","repository":{"full_name":"a/b"}}`,
	}
}

// repoOfStruct is the struct repoOf decoded every body into before the
// scanner, the reference for repoOf.
type repoOfStruct struct {
	Repository struct {
		FullName string `json:"full_name"`
	} `json:"repository"`
}

// legacyRepoOf is repoOf as it was before the scanner: json.Unmarshal of
// the whole body.
func legacyRepoOf(body []byte) (string, error) {
	var p struct {
		Repository struct {
			FullName string `json:"full_name"`
		} `json:"repository"`
	}
	if err := json.Unmarshal(body, &p); err != nil {
		return "", malformed("body", err)
	}
	if p.Repository.FullName == "" {
		return "", nil
	}
	if err := config.ValidateRepo(p.Repository.FullName); err != nil {
		return "", malformed("repository.full_name", err)
	}
	return p.Repository.FullName, nil
}

// checkScan fails unless scanning body for each forge agrees with
// encoding/json: the scan is unsure of the repository exactly when
// json.Unmarshal fails for repoOf's struct, and of the push exactly when it
// fails for the forge's push struct; what it is sure of equals what
// json.Unmarshal stores. repoOf and pushPayload, which fall back on
// encoding/json, must then give what encoding/json alone gives, errors
// included.
func checkScan(t *testing.T, body []byte) {
	t.Helper()
	var r repoOfStruct
	repoErr := json.Unmarshal(body, &r)
	if !json.Valid(body) && repoErr == nil {
		t.Fatalf("encoding/json accepts %q but calls it invalid", body)
	}
	wantRepo, wantRepoErr := legacyRepoOf(body)
	for _, kind := range []forge.Kind{forge.GitHub, forge.Forgejo} {
		p := scanPayload(body, kind)
		if p.repoUnsure != (repoErr != nil) {
			t.Fatalf("%s: scan unsure of the repository: %v; json.Unmarshal: %v\nbody %q", kind, p.repoUnsure, repoErr, body)
		}
		if repoErr == nil && p.Repo != r.Repository.FullName {
			t.Fatalf("%s: repository %q, json.Unmarshal %q\nbody %q", kind, p.Repo, r.Repository.FullName, body)
		}
		repo, err := repoOf(body, p)
		if repo != wantRepo || fmt.Sprint(err) != fmt.Sprint(wantRepoErr) {
			t.Fatalf("%s: repoOf = %q, %v; before the scanner %q, %v\nbody %q", kind, repo, err, wantRepo, wantRepoErr, body)
		}

		want, pushErr := jsonPush(body, kind)
		if p.pushUnsure != (pushErr != nil) {
			t.Fatalf("%s: scan unsure of the push: %v; json.Unmarshal: %v\nbody %q", kind, p.pushUnsure, pushErr, body)
		}
		if pushErr == nil && !reflect.DeepEqual(p, want) {
			t.Fatalf("%s: scan found\n%s\njson.Unmarshal stores\n%s\nbody %q", kind, dumpPayload(p), dumpPayload(want), body)
		}
		got, err := pushPayload(body, p, kind)
		switch {
		case pushErr != nil && fmt.Sprint(err) != fmt.Sprint(malformed("body", pushErr)):
			t.Fatalf("%s: pushPayload error %v, want %v", kind, err, malformed("body", pushErr))
		case pushErr == nil && (err != nil || got != p):
			t.Fatalf("%s: pushPayload = %p, %v; want the scan %p", kind, got, err, p)
		}
	}
}

// jsonPush decodes body with json.Unmarshal into forge kind's push struct.
func jsonPush(body []byte, kind forge.Kind) (*payload, error) {
	switch kind {
	case forge.GitHub:
		var g githubPush
		err := json.Unmarshal(body, &g)
		return g.payload(), err
	case forge.Forgejo:
		var f forgejoPush
		err := json.Unmarshal(body, &f)
		return f.payload(), err
	}
	return nil, fmt.Errorf("no push struct for forge %q", kind)
}

// dumpPayload prints p with the commits its pointers point to.
func dumpPayload(p *payload) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%+v\nhead_commit: ", *p)
	if p.HeadCommit != nil {
		fmt.Fprintf(&b, "%+v", *p.HeadCommit)
	} else {
		b.WriteString("nil")
	}
	fmt.Fprintf(&b, "\ncommits (nil=%v, len %d):", p.Commits == nil, len(p.Commits))
	for _, c := range p.Commits {
		if c != nil {
			fmt.Fprintf(&b, " %+v", *c)
		} else {
			b.WriteString(" nil")
		}
	}
	return b.String()
}
