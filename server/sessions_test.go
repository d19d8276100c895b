package server

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flakeship/flakeship/config"
)

// The session tests run the pages over a real SQLite store (pageRig). They
// compute nothing with the server's own code: the values they expect come
// from the standard library or from what the server answered.

// operator reports whether cookie is an operator's session: the index
// says so.
func (r *pageRig) operator(cookie string) bool {
	r.t.Helper()
	a := r.get("/", cookie)
	return a.status == http.StatusOK && strings.Contains(a.body, ">operator<")
}

// acts returns the status of an operator action (cancelling a deploy that
// does not exist) sent with cookie and csrf: 404 means the session and the
// form passed, 403 that they did not.
func (r *pageRig) acts(cookie, csrf string) int {
	r.t.Helper()
	return r.do(http.MethodPost, "/deploys/99999/cancel", cookie, url.Values{"csrf": {csrf}}, nil).status
}

func TestLoginTakesTheTokenOnlyFromTheFormBody(t *testing.T) {
	t.Parallel()
	r := newPageRig(t, pageRigOptions{admin: pageAdminToken})
	inURL := url.QueryEscape(pageAdminToken.Reveal())
	tests := []struct {
		name   string
		method string
		path   string
		form   url.Values
	}{
		{"the token in the query alone", http.MethodPost, "/login?token=" + inURL, url.Values{}},
		{"the token in the query and a wrong one in the form", http.MethodPost, "/login?token=" + inURL, url.Values{"token": {"wrong"}}},
		{"the token in the query and in the form", http.MethodPost, "/login?token=" + inURL, url.Values{"token": {pageAdminToken.Reveal()}}},
		{"the token as access_token in the query", http.MethodPost, "/login?next=/&access_token=" + inURL, url.Values{"token": {pageAdminToken.Reveal()}}},
		{"the token in the login page's URL", http.MethodGet, "/login?token=" + inURL, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a := r.do(tc.method, tc.path, "", tc.form, nil)
			t.Logf("%s %s: %d", tc.method, strings.Replace(tc.path, inURL, "<token>", 1), a.status)
			if a.status != http.StatusBadRequest || a.header.Get("Set-Cookie") != "" {
				t.Fatalf("%d, Set-Cookie %q; want 400 and no session", a.status, a.header.Get("Set-Cookie"))
			}
			if !strings.Contains(a.body, "never taken from the URL") {
				t.Errorf("the page does not say why:\n%s", a.body)
			}
		})
	}
	// More than the failures a client may have: none of these is a guess.
	for i := 0; i < maxAuthFailures; i++ {
		if a := r.do(http.MethodPost, "/login?token="+inURL, "", url.Values{}, nil); a.status != http.StatusBadRequest {
			t.Fatalf("token in the URL, again (%d): %d, want 400", i, a.status)
		}
	}
	// The control: the token in the form body logs in, and the refusals
	// above did not count against this client.
	a := r.do(http.MethodPost, "/login", "", url.Values{"token": {pageAdminToken.Reveal()}}, nil)
	if a.status != http.StatusSeeOther || !r.operator(sessionFrom(t, a)) {
		t.Fatalf("the token in the form: %d, want 303 and an operator session", a.status)
	}
	if strings.Contains(r.logs.String(), pageAdminToken.Reveal()) {
		t.Errorf("the token reached the log:\n%s", r.logs.String())
	}
}

func TestLogoutEndsTheSessionInEveryBrowser(t *testing.T) {
	t.Parallel()
	r := newPageRig(t, pageRigOptions{admin: pageAdminToken, read: pageReadToken})
	cookie := r.login(pageAdminToken)
	copied := strings.Clone(cookie) // another browser's copy of the cookie
	page := r.get("/", cookie)
	csrf := csrfOf(t, page.body)
	if !r.operator(copied) || r.acts(copied, csrf) != http.StatusNotFound {
		t.Fatal("the copy of the cookie is not an operator's session before the logout: the test proves nothing")
	}

	a := r.do(http.MethodPost, "/logout", cookie, url.Values{"csrf": {csrf}}, nil)
	if a.status != http.StatusSeeOther || !strings.Contains(a.header.Get("Set-Cookie"), pageCookie+"=;") {
		t.Fatalf("logout: %d, Set-Cookie %q; want 303 clearing the cookie", a.status, a.header.Get("Set-Cookie"))
	}

	index := r.get("/", copied)
	action := r.acts(copied, csrf)
	events := r.get("/deploys/1/events", copied)
	t.Logf("the copied cookie after the logout: GET / %d (Location %q), an action %d, an event stream %d",
		index.status, index.header.Get("Location"), action, events.status)
	if index.status != http.StatusSeeOther || index.header.Get("Location") != "/login?next=%2F" {
		t.Errorf("GET / with the copy: %d %q, want 303 to the login", index.status, index.header.Get("Location"))
	}
	if action != http.StatusForbidden {
		t.Errorf("an operator action with the copy: %d, want 403", action)
	}
	if events.status != http.StatusUnauthorized {
		t.Errorf("an event stream with the copy: %d, want 401", events.status)
	}
	// Logging out again with the dead cookie just clears it.
	if a := r.do(http.MethodPost, "/logout", copied, url.Values{"csrf": {csrf}}, nil); a.status != http.StatusSeeOther {
		t.Errorf("logout with an ended session: %d, want 303", a.status)
	}
}

func TestLoginReplacesTheSessionTheBrowserHad(t *testing.T) {
	t.Parallel()
	r := newPageRig(t, pageRigOptions{admin: pageAdminToken, read: pageReadToken})
	first := r.login(pageReadToken)
	a := r.do(http.MethodPost, "/login", first, url.Values{"token": {pageAdminToken.Reveal()}}, nil)
	if a.status != http.StatusSeeOther {
		t.Fatalf("second login: %d", a.status)
	}
	second := sessionFrom(t, a)
	if second == first {
		t.Fatal("the second login kept the first session's id")
	}
	if !r.operator(second) {
		t.Error("the second login's session is not an operator's")
	}
	if page := r.get("/", first); page.status != http.StatusSeeOther {
		t.Errorf("the session from before the login: GET / %d, want 303 to the login", page.status)
	}
}

func TestSessionsSurviveARestartButNotATokenChange(t *testing.T) {
	t.Parallel()
	r := newPageRig(t, pageRigOptions{admin: pageAdminToken, read: pageReadToken})
	admin, reader := r.login(pageAdminToken), r.login(pageReadToken)
	reads := func(cookie string) bool { return r.get("/", cookie).status == http.StatusOK }

	r.restart(func(*config.Config) {})
	if !r.operator(admin) || !reads(reader) {
		t.Fatalf("after a restart with the same tokens: operator %v, reader %v; want both sessions kept", r.operator(admin), reads(reader))
	}

	const rotated = config.Secret("admin-token-rotated-91c2")
	r.restart(func(cfg *config.Config) { cfg.AdminToken = rotated })
	gotAdmin, gotReader := r.get("/", admin), reads(reader)
	t.Logf("after a restart with another admin token: the old admin session's GET / %d (Location %q); the read session reads %v",
		gotAdmin.status, gotAdmin.header.Get("Location"), gotReader)
	if gotAdmin.status != http.StatusSeeOther {
		t.Errorf("the old admin session with another admin token: %d, want 303 to the login", gotAdmin.status)
	}
	if !gotReader {
		t.Error("the read session ended, but the read token did not change")
	}
	if !r.operator(r.login(rotated)) {
		t.Error("the new admin token does not log in")
	}

	// The refused session was ended, not just refused: the old token back
	// does not bring it back.
	r.restart(func(*config.Config) {})
	if r.operator(admin) {
		t.Error("the admin session came back with the old token")
	}

	r.restart(func(cfg *config.Config) { cfg.ReadToken = "" })
	if page := r.get("/", reader); page.status != http.StatusOK || strings.Contains(page.body, ">reader<") {
		t.Errorf("with the read token gone, the read session still counts: %d\n%s", page.status, page.body)
	}
}

func TestSessionsEndWhenIdleAndWhenOld(t *testing.T) {
	t.Parallel()
	clock := &testClock{now: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	r := newPageRig(t, pageRigOptions{admin: pageAdminToken, read: pageReadToken, now: clock.Now})

	idle := r.login(pageAdminToken)
	// Idleness counts from the last use.
	for i := 0; i < 3; i++ {
		clock.advance(12*time.Hour - time.Second)
		if !r.operator(idle) {
			t.Fatalf("used again %d times after 11:59:59 each: the session ended", i+1)
		}
	}
	clock.advance(12 * time.Hour)
	if r.operator(idle) {
		t.Error("a session unused for 12h still works")
	}
	t.Logf("a session used every 11h59m59s lived through 3 uses; unused for 12h it ended")

	start := clock.Now()
	old := r.login(pageAdminToken)
	uses := 0
	for clock.Now().Add(11 * time.Hour).Before(start.Add(7 * 24 * time.Hour)) {
		clock.advance(11 * time.Hour)
		uses++
		if !r.operator(old) {
			t.Fatalf("a session used every 11h ended after %s", clock.Now().Sub(start))
		}
	}
	clock.advance(start.Add(7*24*time.Hour - time.Second).Sub(clock.Now()))
	if !r.operator(old) {
		t.Fatalf("a session used every 11h ended before 7 days")
	}
	clock.advance(time.Second)
	if r.operator(old) {
		t.Error("a session in use is still an operator's after 7 days")
	}
	t.Logf("a session used every 11h (%d uses) worked until 6d23h59m59s and ended at 7d", uses+1)
}

func TestForgedSessionCookiesAreRefused(t *testing.T) {
	t.Parallel()
	r := newPageRig(t, pageRigOptions{admin: pageAdminToken, read: pageReadToken})
	real := r.login(pageAdminToken)
	csrf := csrfOf(t, r.get("/", real).body)
	id, err := base64.RawURLEncoding.DecodeString(real)
	if err != nil {
		t.Fatal(err)
	}
	neverIssued := make([]byte, 32)
	rand.Read(neverIssued)
	hash := sha256.Sum256(id)
	old := hmac.New(sha256.New, []byte(pageAdminToken.Reveal()))
	old.Write([]byte("flakeship-session"))
	// 43 characters carry 258 bits: the last one's two spare bits are
	// zero. Set, they spell the same 32 bytes another way.
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	respelled := real[:42] + string(alphabet[strings.IndexByte(alphabet, real[42])|1])
	flipped := []byte(real)
	flipped[10] ^= 'a' ^ 'b' // a letter to its neighbour: another id
	if flipped[10] == real[10] {
		t.Fatal("flip changed nothing")
	}

	forged := []struct {
		name, cookie, value string
	}{
		{"an empty value", pageCookie, ""},
		{"a short value", pageCookie, "feedface"},
		{"a well-formed id that was never issued", pageCookie, base64.RawURLEncoding.EncodeToString(neverIssued)},
		{"the issued id with one character changed", pageCookie, string(flipped)},
		{"the issued id with padding", pageCookie, real + "="},
		{"the issued id respelled with its spare bits set", pageCookie, respelled},
		{"the issued id in standard base64 with padding", pageCookie, base64.StdEncoding.EncodeToString(id)},
		{"the issued id in hex", pageCookie, hex.EncodeToString(id)},
		{"the SHA-256 the store keeps, as a cookie", pageCookie, base64.RawURLEncoding.EncodeToString(hash[:])},
		{"the value the old scheme derived from the token", pageCookie, hex.EncodeToString(old.Sum(nil))},
		{"the issued id under the cookie name without __Host-", "flakeship_session", real},
	}
	send := func(method, path, name, value string, form url.Values) int {
		t.Helper()
		var body io.Reader
		if form != nil {
			body = strings.NewReader(form.Encode())
		}
		req, err := http.NewRequest(method, r.url+path, body)
		if err != nil {
			t.Fatal(err)
		}
		if form != nil {
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		}
		req.Header.Set("Cookie", name+"="+value)
		resp, err := r.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, tc := range forged {
		t.Run(tc.name, func(t *testing.T) {
			if got := send(http.MethodGet, "/", tc.cookie, tc.value, nil); got != http.StatusSeeOther {
				t.Errorf("GET /: %d, want 303 to the login", got)
			}
			if got := send(http.MethodPost, "/deploys/99999/cancel", tc.cookie, tc.value, url.Values{"csrf": {csrf}}); got != http.StatusForbidden {
				t.Errorf("an operator action: %d, want 403", got)
			}
		})
	}
	// The control: the issued cookie, sent the same way, works.
	if got := send(http.MethodPost, "/deploys/99999/cancel", pageCookie, real, url.Values{"csrf": {csrf}}); got != http.StatusNotFound {
		t.Errorf("the issued cookie: an operator action %d, want 404 (passed, no such deploy)", got)
	}
}

func TestCSRFTokensBelongToTheirSession(t *testing.T) {
	t.Parallel()
	r := newPageRig(t, pageRigOptions{admin: pageAdminToken})
	a, b := r.login(pageAdminToken), r.login(pageAdminToken)
	csrfA, csrfB := csrfOf(t, r.get("/", a).body), csrfOf(t, r.get("/", b).body)
	if csrfA == csrfB {
		t.Fatalf("two sessions have the same CSRF token %s", csrfA)
	}
	if got := r.acts(b, csrfA); got != http.StatusForbidden {
		t.Errorf("session b with a's CSRF token: %d, want 403", got)
	}
	if got := r.acts(b, csrfB); got != http.StatusNotFound {
		t.Errorf("session b with its own CSRF token: %d, want 404 (passed, no such deploy)", got)
	}
	if got := r.do(http.MethodPost, "/deploys/99999/cancel?csrf="+csrfB, b, url.Values{}, nil).status; got != http.StatusForbidden {
		t.Errorf("the CSRF token in the URL: %d, want 403 (only the form body counts)", got)
	}
}

func TestTheStoreHoldsNeitherTheSessionIDNorTheToken(t *testing.T) {
	t.Parallel()
	r := newPageRig(t, pageRigOptions{admin: pageAdminToken, read: pageReadToken})
	cookie := r.login(pageAdminToken)
	id, err := base64.RawURLEncoding.DecodeString(cookie)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(r.cfg.StateDir, "flakeship.db")
	db, err := sql.Open("sqlite", "file:"+path+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var (
		idHash, fp      []byte
		role            string
		created, seen   string
		rows            int
		wantHash        = sha256.Sum256(id)
		secretsAndForms = [][]byte{id, []byte(cookie), []byte(pageAdminToken.Reveal()), []byte(pageReadToken.Reveal())}
	)
	if err := db.QueryRow(`SELECT count(*) FROM sessions`).Scan(&rows); err != nil || rows != 1 {
		t.Fatalf("%d sessions stored (%v), want 1", rows, err)
	}
	if err := db.QueryRow(`SELECT id_hash, role, fingerprint, created_at, last_seen FROM sessions`).
		Scan(&idHash, &role, &fp, &created, &seen); err != nil {
		t.Fatal(err)
	}
	t.Logf("stored session: id_hash %x, role %s, fingerprint of %d bytes, created %s, last seen %s", idHash, role, len(fp), created, seen)
	if !bytes.Equal(idHash, wantHash[:]) || role != "admin" || len(fp) == 0 {
		t.Errorf("stored id_hash %x role %q; want SHA-256 of the id %x, admin, and a fingerprint", idHash, role, wantHash)
	}
	for _, col := range [][]byte{idHash, fp, []byte(role)} {
		for _, s := range secretsAndForms {
			if bytes.Contains(col, s) {
				t.Errorf("a stored column holds a secret or the session id")
			}
		}
	}
	// Nor anywhere in the database's files.
	for _, name := range []string{path, path + "-wal"} {
		b, err := os.ReadFile(name)
		if errors.Is(err, fs.ErrNotExist) {
			continue // no WAL: everything is in the database file
		}
		if err != nil {
			t.Fatal(err)
		}
		for i, s := range secretsAndForms {
			if bytes.Contains(b, s) {
				t.Errorf("%s holds secret %d (the session id, the cookie, or a token)", filepath.Base(name), i)
			}
		}
	}
}

func TestLoginCountsWrongTokensPerClientBehindATrustedProxy(t *testing.T) {
	t.Parallel()
	r := newPageRig(t, pageRigOptions{admin: pageAdminToken, trusted: trustedLoopback})
	login := func(client, token string) answer {
		return r.do(http.MethodPost, "/login", "", url.Values{"token": {token}},
			map[string]string{"X-Forwarded-For": client})
	}
	for i := 0; i < maxAuthFailures; i++ {
		if a := login(clientA, fmt.Sprintf("guess-%d", i)); a.status != http.StatusUnauthorized {
			t.Fatalf("wrong token %d from client A: %d, want 401", i, a.status)
		}
	}
	a, b := login(clientA, pageAdminToken.Reveal()), login(clientB, pageAdminToken.Reveal())
	t.Logf("after %d wrong tokens from client A: A's right token %d, B's right token %d", maxAuthFailures, a.status, b.status)
	if a.status != http.StatusTooManyRequests {
		t.Errorf("client A's right token: %d, want 429", a.status)
	}
	if b.status != http.StatusSeeOther || !r.operator(sessionFrom(t, b)) {
		t.Errorf("client B's right token: %d, want 303 and an operator session", b.status)
	}
}
