package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/flakeship/flakeship/deploy"
)

// manualByEncodingJSON is encoding/json's reading of a deploy request's
// body, as the API contract has it: nothing (JSON whitespace at most), or
// one JSON object whose members are "ref" and "sha" (names matched as
// encoding/json matches a struct's fields, case-folded), each a string or
// null (which leaves it unset; of two members for one field the later
// wins), not both set. ok says whether the body is one.
func manualByEncodingJSON(body []byte) (req deploy.ManualRequest, ok bool) {
	if len(bytes.Trim(body, " \t\r\n")) == 0 {
		return req, true
	}
	if !json.Valid(body) {
		return req, false
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return req, false
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return req, false
		}
		name, _ := tok.(string)
		var value any
		if err := dec.Decode(&value); err != nil {
			return req, false
		}
		var field *string
		switch {
		case strings.EqualFold(name, "ref"):
			field = &req.Ref
		case strings.EqualFold(name, "sha"):
			field = &req.SHA
		default:
			return req, false
		}
		switch v := value.(type) {
		case nil:
		case string:
			*field = v
		default:
			return req, false
		}
	}
	return req, req.Ref == "" || req.SHA == ""
}

// FuzzDecodeManual holds the decoder of POST /api/targets/{name}/deploy to
// the API contract and to encoding/json: it accepts a body exactly when
// manualByEncodingJSON does, with the same request; it refuses with a 400
// whose message is one short line; it never panics.
func FuzzDecodeManual(f *testing.F) {
	sha := strings.Repeat("ab", 20)
	for _, s := range []string{
		// What the command line and the docs send.
		``, `{}`, `{"ref":"main"}`, `{"sha":"` + sha + `"}`, "{\n  \"ref\": \"main\"\n}\n",
		// What the refusal table of the API tests sends.
		`{"ref":"main","sha":"` + sha + `"}`, `{"branch":"main"}`, `ref=main`, `{"ref":"ma`, `[]`, `{} {}`,
		`{"ref":1}`, `{"ref":"--upload-pack=x"}`,
		// Corners of JSON.
		`null`, `"main"`, `{"ref":null}`, `{"REF":"main"}`, `{"ref":"a","ref":"b"}`, `{"ref":"a","sha":null}`,
		`{"ref":"a"} x`, " \t\r\n", "\v", "\u00a0", `{"ref":"\ud800"}`, `{"` + strings.Repeat("x", 300) + `":1}`,
		"{\"a\\nb\":1}", `{"ref":{"a":1}}`, `{"sha":true}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		got, err := decodeManual(body)
		want, ok := manualByEncodingJSON(body)
		if (err == nil) != ok {
			t.Fatalf("decodeManual(%q) = %+v, %v; encoding/json reads it as a request: %v", body, got, err, ok)
		}
		if err == nil {
			if got != want {
				t.Fatalf("decodeManual(%q) = %+v, want %+v", body, got, want)
			}
			if got.Ref != "" && got.SHA != "" {
				t.Fatalf("decodeManual(%q) = %+v: both a ref and a sha", body, got)
			}
			return
		}
		var re *requestError
		if !errors.As(err, &re) || re.status != http.StatusBadRequest {
			t.Fatalf("decodeManual(%q): %v is not a 400", body, err)
		}
		if msg := err.Error(); strings.ContainsAny(msg, "\r\n") || len(msg) > 200 {
			t.Fatalf("decodeManual(%q): message %q is not one short line", body, msg)
		}
	})
}
