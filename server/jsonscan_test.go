package server

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/flakeship/flakeship/forge"
)

// TestPayloadScanAgreesWithEncodingJSON runs checkScan on every recorded
// delivery and every hostile body the fuzz target starts from.
func TestPayloadScanAgreesWithEncodingJSON(t *testing.T) {
	for i, body := range recordedBodies(t) {
		t.Run(fmt.Sprintf("recorded-%d", i), func(t *testing.T) { checkScan(t, body) })
	}
	for i, body := range hostileBodies() {
		t.Run(fmt.Sprintf("hostile-%d", i), func(t *testing.T) { checkScan(t, []byte(body)) })
	}
}

// TestPayloadScan checks what a scan finds, field by field, in bodies that
// exercise encoding/json's rules, and that encoding/json agrees.
func TestPayloadScan(t *testing.T) {
	const sha = "6113728f27ae82c7b1a177c8d03f9e96e0adf246"
	tests := []struct {
		name string
		kind forge.Kind
		body string
		want payload // kind is the test's
	}{
		{"github push", forge.GitHub,
			`{"ref":"refs/heads/main","before":"b","after":"` + sha + `","deleted":false,"forced":true,` +
				`"head_commit":{"id":"` + sha + `","message":"fix\nit","author":{"name":"Ann","email":"a@b"}},` +
				`"commits":[{"id":"x"}],"pusher":{"name":"ann","login":"l"},"repository":{"id":1,"full_name":"o/r"}}`,
			payload{Repo: "o/r", Ref: "refs/heads/main", After: sha, Forced: true,
				HeadCommit: &commit{ID: sha, Message: "fix\nit", Author: author("Ann")}, Pusher: pusher{Name: "ann"}}},
		{"forgejo push", forge.Forgejo,
			`{"ref":"refs/heads/main","before":"b","after":"a","deleted":true,"forced":true,` +
				`"commits":[{"id":"a","message":"m","author":{"name":"Bo"}},null],` +
				`"pusher":{"name":"n","login":"l","username":"u"},"repository":{"full_name":"o/r"}}`,
			payload{Repo: "o/r", Ref: "refs/heads/main", Before: "b", After: "a",
				Commits: []*commit{{ID: "a", Message: "m", Author: author("Bo")}, nil}, Pusher: pusher{Login: "l", Username: "u"}}},
		{"top-level null", forge.GitHub, `null`, payload{}},
		{"null leaves a string and a bool", forge.GitHub,
			`{"ref":"r","ref":null,"deleted":true,"deleted":null,"repository":{"full_name":"o/r"},"repository":null}`,
			payload{Repo: "o/r", Ref: "r", Deleted: true}},
		{"last duplicate wins", forge.GitHub,
			`{"ref":"a","ref":"b","repository":{"full_name":"a/b"},"repository":{"full_name":"c/d"}}`,
			payload{Repo: "c/d", Ref: "b"}},
		{"duplicate objects merge", forge.GitHub,
			`{"head_commit":{"id":"i"},"head_commit":{"message":"m"},"repository":{"full_name":"o/r"},"repository":{"id":2}}`,
			payload{Repo: "o/r", HeadCommit: &commit{ID: "i", Message: "m"}}},
		{"null empties a pointer", forge.GitHub,
			`{"head_commit":{"id":"i"},"head_commit":null,"head_commit":{"message":"m"}}`,
			payload{HeadCommit: &commit{Message: "m"}}},
		{"a shorter array reuses elements, a longer one those beyond", forge.Forgejo,
			`{"commits":[{"id":"a"},{"id":"b"}],"commits":[{"message":"x"}],"commits":[{},{"message":"y"}]}`,
			payload{Commits: []*commit{{ID: "a", Message: "x"}, {ID: "b", Message: "y"}}}},
		{"an empty array forgets the elements", forge.Forgejo,
			`{"commits":[{"id":"a"},{"id":"b"}],"commits":[],"commits":[{},{}]}`,
			payload{Commits: []*commit{{}, {}}}},
		{"empty array", forge.Forgejo, `{"commits":[]}`, payload{Commits: []*commit{}}},
		{"keys match without case", forge.GitHub,
			`{"REF":"r","Repository":{"FULL_name":"o/r"},"PUSHER":{"Name":"n"}}`,
			payload{Repo: "o/r", Ref: "r", Pusher: pusher{Name: "n"}}},
		{"the long s folds to s", forge.Forgejo,
			`{"puſher":{"uſername":"u"},"repoſitory":{"full_name":"o/r"}}`,
			payload{Repo: "o/r", Pusher: pusher{Username: "u"}}},
		{"escaped keys", forge.GitHub, `{"\u0072ef":"r","r\u0045f":"R"}`, payload{Ref: "R"}},
		{"escapes and surrogates", forge.GitHub,
			`{"ref":"a\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00|\ud800|\udc00"}`,
			payload{Ref: "a\"\\/\b\f\n\r\té😀|\uFFFD|\uFFFD"}},
		{"invalid UTF-8 becomes U+FFFD", forge.GitHub,
			"{\"ref\":\"a\xffb\xed\xa0\x80c\",\"repository\":{\"full_name\":\"ü/ß\"}}",
			payload{Repo: "ü/ß", Ref: "a\uFFFDb\uFFFD\uFFFD\uFFFDc"}},
		{"unknown fields may hold anything", forge.GitHub,
			`{"x":[1,-2.5e+3,true,false,null,{"ref":5}],"before":5,"commits":"x","repository":{"owner":{"full_name":5},"full_name":"o/r"}}`,
			payload{Repo: "o/r"}},
		{"wrong type in a push field", forge.GitHub, `{"ref":5,"repository":{"full_name":"o/r"}}`,
			payload{Repo: "o/r", pushUnsure: true}},
		{"wrong type in the repository", forge.GitHub, `{"repository":{"full_name":5}}`,
			payload{repoUnsure: true, pushUnsure: true}},
		{"wrong top-level type", forge.GitHub, `[]`, payload{repoUnsure: true, pushUnsure: true}},
		{"Forgejo reads no deleted", forge.Forgejo, `{"deleted":"x","forced":1,"pusher":{"name":5}}`, payload{}},
		{"GitHub reads no commits", forge.GitHub, `{"commits":5,"before":[],"pusher":{"login":5}}`, payload{}},
		{"truncated", forge.GitHub, `{"repository":{"full_name":"o/r"}`, payload{repoUnsure: true, pushUnsure: true}},
		{"trailing bytes", forge.GitHub, `{} {}`, payload{repoUnsure: true, pushUnsure: true}},
		{"too deep", forge.GitHub, `{"x":` + strings.Repeat("[", maxDepth) + strings.Repeat("]", maxDepth) + `}`,
			payload{repoUnsure: true, pushUnsure: true}},
		{"deep enough", forge.GitHub, `{"x":` + strings.Repeat("[", maxDepth-1) + strings.Repeat("]", maxDepth-1) + `}`,
			payload{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := scanPayload([]byte(tc.body), tc.kind)
			want := tc.want
			want.kind = tc.kind
			if want.repoUnsure {
				// What the scan read before it stopped does not count.
				got = &payload{kind: got.kind, repoUnsure: got.repoUnsure, pushUnsure: got.pushUnsure}
			}
			if !reflect.DeepEqual(got, &want) {
				t.Errorf("scan found\n%s\nwant\n%s", dumpPayload(got), dumpPayload(&want))
			}
			checkScan(t, []byte(tc.body))
		})
	}
}

// author returns a commit author named name.
func author(name string) struct {
	Name string `json:"name"`
} {
	a := commit{}.Author
	a.Name = name
	return a
}

// TestPayloadScanErrorsAreEncodingJSONs checks that the errors repoOf and
// pushPayload answer with are encoding/json's, word for word.
func TestPayloadScanErrorsAreEncodingJSONs(t *testing.T) {
	tests := []struct {
		body     string
		kind     forge.Kind
		repoErr  string
		pushErrs string
	}{
		{`{"repository":{"full_name":"o/r"}`, forge.GitHub,
			"malformed delivery: body: unexpected end of JSON input", "malformed delivery: body: unexpected end of JSON input"},
		{`{"repository":"x"}`, forge.GitHub,
			`malformed delivery: body: json: cannot unmarshal string into Go struct field .repository of type struct { FullName string "json:\"full_name\"" }`,
			`malformed delivery: body: json: cannot unmarshal string into Go struct field githubPush.repository of type struct { FullName string "json:\"full_name\"" }`},
		{`{"commits":[5],"repository":{"full_name":"o/r"}}`, forge.Forgejo,
			"<nil>", "malformed delivery: body: json: cannot unmarshal number into Go struct field forgejoPush.commits of type server.commit"},
		{`{"repository":{"full_name":"o/r"},"x":nul}`, forge.Forgejo,
			"malformed delivery: body: invalid character '}' in literal null (expecting 'l')", ""},
	}
	for _, tc := range tests {
		p := scanPayload([]byte(tc.body), tc.kind)
		_, err := repoOf([]byte(tc.body), p)
		if fmt.Sprint(err) != tc.repoErr {
			t.Errorf("%s: repoOf error\n%v\nwant\n%s", tc.body, err, tc.repoErr)
		}
		if tc.pushErrs == "" {
			continue
		}
		_, err = pushPayload([]byte(tc.body), p, tc.kind)
		if fmt.Sprint(err) != tc.pushErrs {
			t.Errorf("%s: pushPayload error\n%v\nwant\n%s", tc.body, err, tc.pushErrs)
		}
	}
}

// TestFoldMatchesEncodingJSON checks that the only runes outside ASCII that
// fold onto an ASCII letter are the Kelvin sign and the long s, and that
// appendFolded agrees with encoding/json on a key holding each.
func TestFoldMatchesEncodingJSON(t *testing.T) {
	var onto []rune
	for r := rune(utf8.RuneSelf); r <= 0x10FFFF; r++ {
		if f := foldRune(r); f < utf8.RuneSelf {
			onto = append(onto, r)
		}
	}
	if want := []rune{'\u017f', '\u212a'}; !reflect.DeepEqual(onto, want) {
		t.Errorf("runes folding to ASCII: %q, want %q", onto, want)
	}
	if got := string(appendFolded(nil, "Full_nameſK\u212aé")); got != "FULL_NAMESKKÉ" {
		t.Errorf("appendFolded = %q", got)
	}
}

// BenchmarkPayloadScan compares, for recorded deliveries, one scan with
// what the handler did before it: json.Unmarshal for the repository, then
// again for the push.
func BenchmarkPayloadScan(b *testing.B) {
	for _, tc := range []struct {
		name string
		kind forge.Kind
	}{
		{"github/push-new-branch.json", forge.GitHub},
		{"github/ping.json", forge.GitHub},
		{"forgejo/push-2.body.json", forge.Forgejo},
	} {
		body := readFile(b, tc.name)
		b.Run(tc.name+"/scan", func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(body)))
			for b.Loop() {
				p := scanPayload(body, tc.kind)
				if p.repoUnsure || p.pushUnsure || p.Repo == "" {
					b.Fatalf("scan: %+v", p)
				}
			}
		})
		b.Run(tc.name+"/encoding-json", func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(body)))
			for b.Loop() {
				var r repoOfStruct
				if err := json.Unmarshal(body, &r); err != nil {
					b.Fatal(err)
				}
				if _, err := jsonPush(body, tc.kind); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestPayloadScanRandomDocuments runs checkScan on documents built at
// random from the names flakeship reads (in several cases and escapes) and
// values of every type, some of them then cut short or with a byte
// changed: the arbitrary bytes of the fuzz target seldom make such shapes.
func TestPayloadScanRandomDocuments(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	n := 20000
	if testing.Short() {
		n = 2000
	}
	for range n {
		body := []byte(randomJSON(r, 0))
		switch r.IntN(8) {
		case 0:
			body = body[:r.IntN(len(body)+1)]
		case 1:
			body[r.IntN(len(body))] = byte(r.IntN(256))
		}
		checkScan(t, body)
	}
}

// randomJSON returns a random JSON value: an object at the top, and for
// a member named like a field flakeship reads, mostly a value of that
// field's type, so that the documents get past the type checks.
func randomJSON(r *rand.Rand, depth int) string {
	if depth == 0 {
		return randomObject(r, depth)
	}
	return randomValue(r, depth, "")
}

// randomObject returns an object of up to five members whose keys are
// mostly the names flakeship reads: in other cases, with the long s and
// the Kelvin sign, escaped, and a few it does not read.
func randomObject(r *rand.Rand, depth int) string {
	keys := []string{
		"ref", "before", "after", "deleted", "forced", "head_commit", "commits", "pusher", "repository",
		"full_name", "name", "login", "username", "id", "message", "author", "x",
		"REF", "Commits", "HEAD_COMMIT", "Full_Name", "puſher", "uſername", "meſſage", "\\u0072ef", "n\\u0061me",
		"\u212aey", "r\\u00e9f", "full_name\\u0000", "ID", "Author", "REPOSITORY",
	}
	var b strings.Builder
	b.WriteByte('{')
	for i := range r.IntN(6) {
		if i > 0 {
			b.WriteString(", ")
		}
		key := keys[r.IntN(len(keys))]
		b.WriteString(`"` + key + `": ` + randomValue(r, depth+1, key))
	}
	b.WriteByte('}')
	return b.String()
}

// randomValue returns a random value for the member key: mostly of the
// type of the field key names, if any.
func randomValue(r *rand.Rand, depth int, key string) string {
	strs := []string{`""`, `"a/b"`, `"refs/heads/main"`, `"x\ny"`, `"\u00e9\ud83d\ude00"`, `"\ud800"`, "\"\xff\"", `"\\\"\/"`, `"é"`}
	kind := r.IntN(7)
	if r.IntN(10) < 7 {
		switch strings.ToLower(strings.ReplaceAll(key, "ſ", "s")) {
		case "ref", "before", "after", "full_name", "name", "login", "username", "id", "message", "n\\u0061me":
			kind = 3
		case "deleted", "forced":
			kind = 1
		case "head_commit", "pusher", "repository", "author":
			kind = 6
		case "commits":
			kind = 5
		}
	}
	switch kind {
	case 0:
		return "null"
	case 1:
		return []string{"true", "false"}[r.IntN(2)]
	case 2:
		return []string{"0", "-1.5e3", "12"}[r.IntN(3)]
	case 3, 4:
		return strs[r.IntN(len(strs))]
	case 5:
		if depth < 5 {
			var elems []string
			for range r.IntN(4) {
				if r.IntN(4) == 0 {
					elems = append(elems, "null")
				} else {
					elems = append(elems, randomObject(r, depth+1))
				}
			}
			return "[" + strings.Join(elems, ",") + "]"
		}
	case 6:
		if depth < 5 {
			return randomObject(r, depth)
		}
	}
	return "{}"
}
