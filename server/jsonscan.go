package server

import (
	"encoding/binary"
	"encoding/json"
	"math/bits"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/flakeship/flakeship/forge"
)

// A delivery body is read once, by scanPayload: one pass over the bytes
// that validates the whole document as encoding/json does and picks out the
// few fields flakeship reads, the way json.Unmarshal would store them in
// repoOf's struct and in githubPush or forgejoPush. Whatever the scan
// cannot settle on its own (a syntax error, a value of the wrong type) is
// left to encoding/json, which then decodes the body as it always did: its
// errors, and so the answers, are encoding/json's own.

// maxDepth is how deeply encoding/json lets arrays and objects nest: one
// level more is a syntax error.
const maxDepth = 10000

// payload is what one scan finds in a delivery body: repository.full_name
// for repoOf, and the push fields of one forge, each as json.Unmarshal
// stores it (a null leaves a field as it is but empties a pointer or a
// slice; of two equal keys the last wins, objects merging).
type payload struct {
	kind       forge.Kind // the forge whose push fields were read
	Repo       string     // repository.full_name
	Ref        string
	Before     string // Forgejo only
	After      string
	Deleted    bool // GitHub only
	Forced     bool // GitHub only
	HeadCommit *commit
	Commits    []*commit // Forgejo only, newest first
	Pusher     pusher
	// repoUnsure says that encoding/json must decode the body for repoOf,
	// pushUnsure for the push fields: the body is not JSON, or json.Unmarshal
	// reports a value of the wrong type in that struct. The fields are then
	// incomplete.
	repoUnsure bool
	pushUnsure bool
}

// pusher is who pushed: Name on GitHub, Login or Username on Forgejo.
type pusher struct {
	Name     string
	Login    string
	Username string
}

// scanPayload reads body in one pass for the push fields of forge kind (an
// unknown kind reads only the repository). It never fails: what it cannot
// decide is marked in the payload for encoding/json to decide.
func scanPayload(body []byte, kind forge.Kind) *payload {
	p := &payload{kind: kind}
	s := scanner{data: body, p: p}
	switch kind {
	case forge.GitHub:
		s.top = fields(fieldRef, fieldAfter, fieldDeleted, fieldForced, fieldHeadCommit, fieldPusher, fieldRepository)
		s.pusher = fields(fieldName)
	case forge.Forgejo:
		s.top = fields(fieldRef, fieldBefore, fieldAfter, fieldHeadCommit, fieldCommits, fieldPusher, fieldRepository)
		s.pusher = fields(fieldLogin, fieldUsername)
	default:
		s.top = fields(fieldRepository)
		p.pushUnsure = true
	}
	s.document()
	return p
}

// field is a member of one of the objects flakeship reads.
type field uint8

// The fields flakeship reads, in the objects that hold them: the payload,
// its repository, its pusher, a commit, a commit's author.
const (
	fieldNone field = iota // a member flakeship does not read
	fieldRef
	fieldBefore
	fieldAfter
	fieldDeleted
	fieldForced
	fieldHeadCommit
	fieldCommits
	fieldPusher
	fieldRepository
	fieldFullName
	fieldName
	fieldLogin
	fieldUsername
	fieldID
	fieldMessage
	fieldAuthor
)

// name returns the field's JSON name.
func (f field) name() string {
	switch f {
	case fieldRef:
		return "ref"
	case fieldBefore:
		return "before"
	case fieldAfter:
		return "after"
	case fieldDeleted:
		return "deleted"
	case fieldForced:
		return "forced"
	case fieldHeadCommit:
		return "head_commit"
	case fieldCommits:
		return "commits"
	case fieldPusher:
		return "pusher"
	case fieldRepository:
		return "repository"
	case fieldFullName:
		return "full_name"
	case fieldName:
		return "name"
	case fieldLogin:
		return "login"
	case fieldUsername:
		return "username"
	case fieldID:
		return "id"
	case fieldMessage:
		return "message"
	case fieldAuthor:
		return "author"
	}
	return ""
}

// fieldSet is the set of fields one object has.
type fieldSet uint32

// fields returns the set of fs.
func fields(fs ...field) fieldSet {
	var set fieldSet
	for _, f := range fs {
		set |= 1 << f
	}
	return set
}

// match returns the field of set that key names, or fieldNone. key is
// either a raw key of ASCII bytes only or a key folded by appendFolded:
// encoding/json takes an exact match first, then one of the folded names,
// and no two names of a set fold alike, so one comparison per name that
// ignores ASCII case does both.
func (set fieldSet) match(key []byte) field {
	for rest := uint32(set); rest != 0; rest &= rest - 1 {
		f := field(bits.TrailingZeros32(rest))
		if equalASCIIFold(key, f.name()) {
			return f
		}
	}
	return fieldNone
}

// equalASCIIFold says whether key equals name, an ASCII name, when ASCII
// letters are compared without case.
func equalASCIIFold(key []byte, name string) bool {
	if len(key) != len(name) {
		return false
	}
	for i := range len(key) {
		if upperASCII(key[i]) != upperASCII(name[i]) {
			return false
		}
	}
	return true
}

// upperASCII returns c in upper case if it is an ASCII letter.
func upperASCII(c byte) byte {
	if 'a' <= c && c <= 'z' {
		return c - ('a' - 'A')
	}
	return c
}

// appendFolded appends key folded as encoding/json folds member names
// (GOROOT's encoding/json/fold.go): ASCII letters to upper case, any other
// rune to the smallest rune of its Unicode simple-fold orbit, so that the
// Kelvin sign folds to K and the long s to S.
func appendFolded(out []byte, key string) []byte {
	for i := 0; i < len(key); {
		if c := key[i]; c < utf8.RuneSelf {
			out = append(out, upperASCII(c))
			i++
			continue
		}
		r, n := utf8.DecodeRuneInString(key[i:])
		out = utf8.AppendRune(out, foldRune(r))
		i += n
	}
	return out
}

// foldRune returns the smallest rune of r's simple-fold orbit.
func foldRune(r rune) rune {
	for {
		r2 := unicode.SimpleFold(r)
		if r2 <= r {
			return r2
		}
		r = r2
	}
}

// object names one of the objects flakeship reads, for the scanner to know
// where a member goes.
type object uint8

// The objects flakeship reads.
const (
	objPayload object = iota
	objRepository
	objPusher
	objCommit
	objAuthor
)

// scanner reads one body into a payload. It stops at the first syntax
// error, or when encoding/json must decide everything anyway: it then marks
// both halves of the payload unsure and moves to the end of the body, where
// every method does nothing more.
type scanner struct {
	data    []byte   // the body
	pos     int      // the next byte to read
	depth   int      // the arrays and objects open at pos
	p       *payload // what the scan found so far
	top     fieldSet // the payload's fields
	pusher  fieldSet // the pusher's fields
	stopped bool     // the scan stopped: everything is encoding/json's to decide
}

// document reads the whole body: one value, then only white space.
func (s *scanner) document() {
	switch s.peek() {
	case '{':
		s.object(objPayload, nil)
	case 'n':
		s.literal("null")
	default:
		s.skipValue()
		s.mismatch(true)
	}
	s.skipSpace()
	if s.pos != len(s.data) {
		s.stop()
	}
}

// stop ends the scan and leaves the whole body to encoding/json.
func (s *scanner) stop() {
	s.stopped = true
	s.p.repoUnsure, s.p.pushUnsure = true, true
	s.pos = len(s.data)
}

// mismatch records a value that json.Unmarshal cannot store in its field: a
// type error in the push struct and, when inRepo, in repoOf's, which leaves
// everything to encoding/json.
func (s *scanner) mismatch(inRepo bool) {
	s.p.pushUnsure = true
	if inRepo {
		s.stop()
	}
}

// skipSpace moves past JSON white space, the indentation after a newline
// eight bytes at a time.
func (s *scanner) skipSpace() {
	const spaces = 0x2020202020202020
	d, i := s.data, s.pos
	for i < len(d) {
		switch d[i] {
		case '\n':
			i++
			for i+8 <= len(d) {
				m := binary.LittleEndian.Uint64(d[i:]) ^ spaces
				i += bits.TrailingZeros64(m) / 8
				if m != 0 {
					break
				}
			}
		case ' ', '\t', '\r':
			i++
		default:
			s.pos = i
			return
		}
	}
	s.pos = i
}

// peek moves past white space and returns the next byte, 0 at the end (a
// 0 byte is no valid JSON outside a string either).
func (s *scanner) peek() byte {
	if s.pos < len(s.data) && s.data[s.pos] > ' ' {
		return s.data[s.pos]
	}
	s.skipSpace()
	if s.pos < len(s.data) {
		return s.data[s.pos]
	}
	return 0
}

// open moves into the array or object whose bracket is at pos.
func (s *scanner) open() {
	s.pos++
	s.depth++
	if s.depth > maxDepth {
		s.stop()
	}
}

// next reads what follows a member or an element: true after a comma,
// false after the closing end, or at a syntax error.
func (s *scanner) next(end byte) bool {
	switch s.peek() {
	case ',':
		s.pos++
		return true
	case end:
		s.pos++
		s.depth--
		return false
	}
	s.stop()
	return false
}

// literal reads word (true, false or null).
func (s *scanner) literal(word string) {
	if len(s.data)-s.pos < len(word) || string(s.data[s.pos:s.pos+len(word)]) != word {
		s.stop()
		return
	}
	s.pos += len(word)
}

// skipValue reads any value, validating it.
func (s *scanner) skipValue() {
	switch c := s.peek(); c {
	case '{':
		s.skipObject()
	case '[':
		s.skipArray()
	case '"':
		s.str()
	case 't':
		s.literal("true")
	case 'f':
		s.literal("false")
	case 'n':
		s.literal("null")
	default:
		if c == '-' || '0' <= c && c <= '9' {
			s.number()
			return
		}
		s.stop()
	}
}

// skipObject reads an object, validating it.
func (s *scanner) skipObject() {
	s.open()
	if s.peek() == '}' {
		s.pos++
		s.depth--
		return
	}
	for !s.stopped {
		if s.peek() != '"' {
			s.stop()
			return
		}
		s.str()
		if s.peek() != ':' {
			s.stop()
			return
		}
		s.pos++
		s.skipValue()
		if !s.next('}') {
			return
		}
	}
}

// skipArray reads an array, validating it.
func (s *scanner) skipArray() {
	s.open()
	if s.peek() == ']' {
		s.pos++
		s.depth--
		return
	}
	for !s.stopped {
		s.skipValue()
		if !s.next(']') {
			return
		}
	}
}

// number reads a number: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func (s *scanner) number() {
	d, i := s.data, s.pos
	if d[i] == '-' {
		i++
	}
	switch {
	case i < len(d) && d[i] == '0':
		i++
	case i < len(d) && '1' <= d[i] && d[i] <= '9':
		i = skipDigits(d, i)
	default:
		s.stop()
		return
	}
	if i < len(d) && d[i] == '.' {
		if i+1 >= len(d) || !isDigit(d[i+1]) {
			s.stop()
			return
		}
		i = skipDigits(d, i+1)
	}
	if i < len(d) && (d[i] == 'e' || d[i] == 'E') {
		i++
		if i < len(d) && (d[i] == '+' || d[i] == '-') {
			i++
		}
		if i >= len(d) || !isDigit(d[i]) {
			s.stop()
			return
		}
		i = skipDigits(d, i)
	}
	s.pos = i
}

// isDigit says whether c is an ASCII digit.
func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// skipDigits returns the index of the first byte of d from i on that is
// not a digit.
func skipDigits(d []byte, i int) int {
	for i < len(d) && isDigit(d[i]) {
		i++
	}
	return i
}

// str reads the string whose opening quote is at pos and returns the
// bounds of its contents, and plain when they are ASCII without an escape,
// the string's value as they are.
func (s *scanner) str() (start, end int, plain bool) {
	d := s.data
	start, plain = s.pos+1, true
	for i := start; i < len(d); {
		if i+8 <= len(d) {
			m := specialBytes(binary.LittleEndian.Uint64(d[i:]))
			if m == 0 {
				i += 8
				continue
			}
			i += bits.TrailingZeros64(m) / 8
		}
		switch c := d[i]; {
		case c >= 0x20 && c < utf8.RuneSelf && c != '"' && c != '\\':
			i++
		case c == '"':
			s.pos = i + 1
			return start, i, plain
		case c == '\\':
			plain = false
			if i = skipEscape(d, i); i < 0 {
				s.stop()
				return 0, 0, false
			}
		case c >= utf8.RuneSelf:
			// Any byte goes: encoding/json validates no UTF-8 here.
			plain = false
			i++
		default: // a control character
			s.stop()
			return 0, 0, false
		}
	}
	s.stop()
	return 0, 0, false
}

// specialBytes looks at the eight bytes of x, first byte lowest, for one
// that str must look at: a control character, a quote, a backslash or a
// byte outside ASCII. It returns 0 if there is none, else a mask whose
// lowest set bit is the high bit of the first such byte. (Each test borrows
// only into the bytes after a byte it finds, so the lowest bit is exact.)
func specialBytes(x uint64) uint64 {
	const ones, highs = 0x0101010101010101, 0x8080808080808080
	quote := x ^ (ones * '"')
	backslash := x ^ (ones * '\\')
	control := (x - ones*0x20) &^ x
	return (control | (quote-ones)&^quote | (backslash-ones)&^backslash | x) & highs
}

// skipEscape returns the index after the escape whose backslash is at
// d[i], or -1 if it is not one of JSON's escapes.
func skipEscape(d []byte, i int) int {
	if i+1 >= len(d) {
		return -1
	}
	switch d[i+1] {
	case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
		return i + 2
	case 'u':
		if i+6 > len(d) {
			return -1
		}
		for _, h := range d[i+2 : i+6] {
			if !isHex(h) {
				return -1
			}
		}
		return i + 6
	}
	return -1
}

// isHex says whether c is a hexadecimal digit.
func isHex(c byte) bool {
	return isDigit(c) || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// unquoted returns the value of the string read by str with those
// results, as encoding/json decodes it. Plain strings and valid UTF-8
// without escapes are the bytes as they are; valid UTF-8 whose escapes are
// all single-character ones (\n, \", ...) is unescaped here; the others
// (\u escapes, surrogates, invalid UTF-8 that becomes U+FFFD) are decoded
// by encoding/json itself. ok is false only if it refuses the string,
// which str validated.
func (s *scanner) unquoted(start, end int, plain bool) (string, bool) {
	raw := s.data[start:end]
	if plain {
		return string(raw), true
	}
	if utf8.Valid(raw) {
		if !containsByte(raw, '\\') {
			return string(raw), true
		}
		if v, ok := unescape(raw); ok {
			return v, true
		}
	}
	return decodeString(s.data[start-1 : end+1])
}

// decodeString decodes the JSON string token tok with encoding/json.
func decodeString(tok []byte) (string, bool) {
	var v string
	if err := json.Unmarshal(tok, &v); err != nil {
		return "", false
	}
	return v, true
}

// unescape returns the contents of a string, raw, with its single-character
// escapes decoded, or false if it holds a \u escape. raw's escapes are valid.
func unescape(raw []byte) (string, bool) {
	var b strings.Builder
	b.Grow(len(raw))
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		if c == '\\' {
			i++
			switch c = raw[i]; c {
			case 'b':
				c = '\b'
			case 'f':
				c = '\f'
			case 'n':
				c = '\n'
			case 'r':
				c = '\r'
			case 't':
				c = '\t'
			case 'u':
				return "", false
			}
		}
		b.WriteByte(c)
	}
	return b.String(), true
}

// containsByte says whether b holds c.
func containsByte(b []byte, c byte) bool {
	return slices.Index(b, c) >= 0
}

// key reads a member's key and the colon after it and returns the field of
// set it names, matched as encoding/json matches struct fields: exactly,
// else without Unicode case.
func (s *scanner) key(set fieldSet) field {
	if s.peek() != '"' {
		s.stop()
		return fieldNone
	}
	start, end, plain := s.str()
	if s.peek() != ':' {
		s.stop()
		return fieldNone
	}
	s.pos++
	if plain {
		return set.match(s.data[start:end])
	}
	key, ok := s.unquoted(start, end, plain)
	if !ok {
		s.stop()
		return fieldNone
	}
	var buf [32]byte
	return set.match(appendFolded(buf[:0], key))
}

// object reads an object into o; c is the commit when o is a commit or its
// author.
func (s *scanner) object(o object, c *commit) {
	s.open()
	if s.peek() == '}' {
		s.pos++
		s.depth--
		return
	}
	set := s.fieldsOf(o)
	for !s.stopped {
		s.member(o, s.key(set), c)
		if !s.next('}') {
			return
		}
	}
}

// fieldsOf returns the fields of object o.
func (s *scanner) fieldsOf(o object) fieldSet {
	switch o {
	case objPayload:
		return s.top
	case objRepository:
		return fields(fieldFullName)
	case objPusher:
		return s.pusher
	case objCommit:
		return fields(fieldID, fieldMessage, fieldAuthor)
	case objAuthor:
		return fields(fieldName)
	}
	return 0
}

// member reads the value of field f of object o (of commit c) into the
// payload.
func (s *scanner) member(o object, f field, c *commit) {
	p := s.p
	switch f {
	case fieldRef:
		s.stringField(&p.Ref, false)
	case fieldBefore:
		s.stringField(&p.Before, false)
	case fieldAfter:
		s.stringField(&p.After, false)
	case fieldDeleted:
		s.boolField(&p.Deleted)
	case fieldForced:
		s.boolField(&p.Forced)
	case fieldHeadCommit:
		s.commitField(&p.HeadCommit)
	case fieldCommits:
		s.commitsField(&p.Commits)
	case fieldPusher:
		s.structField(objPusher, nil, false)
	case fieldRepository:
		s.structField(objRepository, nil, true)
	case fieldFullName:
		s.stringField(&p.Repo, true)
	case fieldName:
		if o == objPusher {
			s.stringField(&p.Pusher.Name, false)
		} else {
			s.stringField(&c.Author.Name, false)
		}
	case fieldLogin:
		s.stringField(&p.Pusher.Login, false)
	case fieldUsername:
		s.stringField(&p.Pusher.Username, false)
	case fieldID:
		s.stringField(&c.ID, false)
	case fieldMessage:
		s.stringField(&c.Message, false)
	case fieldAuthor:
		s.structField(objAuthor, c, false)
	default:
		s.skipValue()
	}
}

// stringField reads a string field's value into dst; inRepo says the field
// is also repoOf's.
func (s *scanner) stringField(dst *string, inRepo bool) {
	switch s.peek() {
	case '"':
		start, end, plain := s.str()
		if s.stopped {
			return
		}
		v, ok := s.unquoted(start, end, plain)
		if !ok {
			s.stop()
			return
		}
		*dst = v
	case 'n':
		s.literal("null")
	default:
		s.skipValue()
		s.mismatch(inRepo)
	}
}

// boolField reads a bool field's value into dst.
func (s *scanner) boolField(dst *bool) {
	switch s.peek() {
	case 't':
		s.literal("true")
		*dst = true
	case 'f':
		s.literal("false")
		*dst = false
	case 'n':
		s.literal("null")
	default:
		s.skipValue()
		s.mismatch(false)
	}
}

// structField reads the value of a field that is a struct, object o (of
// commit c); inRepo says the field is also repoOf's.
func (s *scanner) structField(o object, c *commit, inRepo bool) {
	switch s.peek() {
	case '{':
		s.object(o, c)
	case 'n':
		s.literal("null")
	default:
		s.skipValue()
		s.mismatch(inRepo)
	}
}

// commitField reads a *commit's value into dst: an object fills the commit
// dst points to, allocated if nil; null sets dst to nil.
func (s *scanner) commitField(dst **commit) {
	switch s.peek() {
	case '{':
		if *dst == nil {
			*dst = new(commit)
		}
		s.object(objCommit, *dst)
	case 'n':
		s.literal("null")
		*dst = nil
	default:
		s.skipValue()
		s.mismatch(false)
	}
}

// commitsField reads a []*commit's value into dst; null sets it to nil.
func (s *scanner) commitsField(dst *[]*commit) {
	switch s.peek() {
	case '[':
		s.commits(dst)
	case 'n':
		s.literal("null")
		*dst = nil
	default:
		s.skipValue()
		s.mismatch(false)
	}
}

// commits reads an array of commits into dst as encoding/json decodes an
// array into a slice: element i is decoded into the slice's element i,
// which may be one a shorter array before left beyond the length; growing
// keeps the capacity encoding/json's reflect.Value.Grow gives; an empty
// array leaves an empty slice without capacity.
func (s *scanner) commits(dst *[]*commit) {
	s.open()
	v := *dst
	i := 0
	if s.peek() == ']' {
		s.pos++
		s.depth--
	} else {
		for !s.stopped {
			if i >= cap(v) {
				v = slices.Grow(v, 1)
			}
			if i >= len(v) {
				v = v[:i+1]
			}
			s.commitField(&v[i])
			i++
			if !s.next(']') {
				break
			}
		}
	}
	if i < len(v) {
		v = v[:i]
	}
	if i == 0 {
		v = make([]*commit, 0)
	}
	*dst = v
}
