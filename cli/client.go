package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/caarlos0/env/v10"

	"github.com/flakeship/flakeship/config"
)

const (
	// defaultURL is where flakeship listens unless configured otherwise.
	defaultURL = "http://127.0.0.1:8080"
	// requestTimeout bounds every request but a log stream. Queueing a
	// manual deploy may ask the git remote for a branch head.
	requestTimeout = time.Minute
	// maxTokenFile bounds what a token file may hold.
	maxTokenFile = 64 << 10
	// maxErrorBody bounds how much of an error answer is read.
	maxErrorBody = 64 << 10
)

// clientEnv is what the client reads from the environment. The names are
// the server's own, so one environment serves both.
type clientEnv struct {
	URL            string `env:"FLAKESHIP_URL"`
	Listen         string `env:"FLAKESHIP_LISTEN"`
	AdminToken     string `env:"FLAKESHIP_ADMIN_TOKEN"`
	AdminTokenFile string `env:"FLAKESHIP_ADMIN_TOKEN_FILE"`
	ReadToken      string `env:"FLAKESHIP_READ_TOKEN"`
	ReadTokenFile  string `env:"FLAKESHIP_READ_TOKEN_FILE"`
}

// client talks to one flakeship.
type client struct {
	base  string        // like http://127.0.0.1:8080, no trailing slash
	admin config.Secret // for writes
	read  config.Secret // for reads: the read token, else the admin token
	http  *http.Client
}

// newClient makes the client from the --url flag and the environment.
// Problems with either are usage errors.
func newClient(urlFlag string, environ map[string]string) (*client, error) {
	if environ == nil {
		// env would read the process environment instead.
		environ = map[string]string{}
	}
	var e clientEnv
	if err := env.ParseWithOptions(&e, env.Options{Environment: environ}); err != nil {
		return nil, usagef("read environment: %v", err)
	}
	base, err := serverURL(urlFlag, e)
	if err != nil {
		return nil, err
	}
	admin, err := token("FLAKESHIP_ADMIN_TOKEN", e.AdminToken, e.AdminTokenFile)
	if err != nil {
		return nil, err
	}
	read, err := token("FLAKESHIP_READ_TOKEN", e.ReadToken, e.ReadTokenFile)
	if err != nil {
		return nil, err
	}
	if !read.IsSet() {
		read = admin
	}
	return &client{
		base: base, admin: admin, read: read,
		http: &http.Client{
			// A redirect could take the token elsewhere, or turn a POST
			// into a GET: report it instead (see apiError).
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}, nil
}

// serverURL picks flakeship's base URL: the flag, FLAKESHIP_URL, the
// address in FLAKESHIP_LISTEN (a wildcard host is reached on loopback), or
// the default.
func serverURL(urlFlag string, e clientEnv) (string, error) {
	raw, from := urlFlag, "--url"
	switch {
	case raw != "":
	case e.URL != "":
		raw, from = e.URL, "FLAKESHIP_URL"
	case e.Listen != "":
		host, port, err := net.SplitHostPort(e.Listen)
		if err != nil {
			return "", usagef("FLAKESHIP_LISTEN: want host:port, got %q", clip(e.Listen))
		}
		switch host {
		case "", "0.0.0.0":
			host = "127.0.0.1"
		case "::":
			host = "::1"
		}
		raw, from = "http://"+net.JoinHostPort(host, port), "FLAKESHIP_LISTEN"
	default:
		return defaultURL, nil
	}
	u, err := url.Parse(raw)
	switch {
	case err != nil, u.Scheme != "http" && u.Scheme != "https", u.Host == "":
		return "", usagef("%s: want a URL like http://127.0.0.1:8080, got %q", from, clip(raw))
	case u.User != nil:
		return "", usagef("%s: the URL must not hold credentials; the token goes in FLAKESHIP_ADMIN_TOKEN", from)
	case u.RawQuery != "" || u.Fragment != "":
		return "", usagef("%s: the URL must not have a query or fragment", from)
	}
	return strings.TrimRight(u.String(), "/"), nil
}

// token reads a token given as the variable name or as a file in name_FILE,
// as the server does: one trailing newline is dropped. Errors never hold
// the token.
func token(name, value, file string) (config.Secret, error) {
	switch {
	case value != "" && file != "":
		return "", usagef("set %s or %s_FILE, not both", name, name)
	case file != "":
		f, err := os.Open(file)
		if err != nil {
			return "", usagef("%s_FILE: %v", name, err)
		}
		defer f.Close()
		b, err := io.ReadAll(io.LimitReader(f, maxTokenFile+1))
		if err != nil {
			return "", usagef("%s_FILE: %v", name, err)
		}
		if len(b) > maxTokenFile {
			return "", usagef("%s_FILE: file %q is larger than %d bytes", name, clip(file), maxTokenFile)
		}
		value = string(b)
		if rest, ok := strings.CutSuffix(value, "\n"); ok {
			value = strings.TrimSuffix(rest, "\r")
		}
		if value == "" {
			return "", usagef("%s_FILE: file %q is empty", name, clip(file))
		}
	}
	if strings.ContainsFunc(value, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return "", usagef("%s: the token contains a control character (not shown)", name)
	}
	return config.Secret(value), nil
}

// apiError is an answer other than 2xx, with the server's message.
type apiError struct {
	status  int
	msg     string
	noToken bool   // the request carried no token
	tokenOf string // which token the request needed: "FLAKESHIP_ADMIN_TOKEN"...
}

func (e *apiError) Error() string {
	msg := fmt.Sprintf("%s (HTTP %d)", e.msg, e.status)
	switch {
	case e.status == http.StatusUnauthorized && e.noToken:
		msg += fmt.Sprintf(": set %s or %s_FILE", e.tokenOf, e.tokenOf)
	case e.status == http.StatusUnauthorized:
		msg += fmt.Sprintf(": check %s", e.tokenOf)
	}
	return msg
}

// do sends one request and returns the answer if it is 2xx, or an
// *apiError. The caller closes the body. write says the request needs the
// admin token.
func (c *client) do(ctx context.Context, method, path string, body any, write bool) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, fmt.Errorf("encode request: %w", err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	tok, tokenOf := c.read, "FLAKESHIP_READ_TOKEN"
	if write {
		tok, tokenOf = c.admin, "FLAKESHIP_ADMIN_TOKEN"
	}
	if tok.IsSet() {
		req.Header.Set("Authorization", "Bearer "+tok.Reveal())
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if err := c.ctxErr(ctx); err != nil {
			return nil, err
		}
		// The error names the URL, never the header.
		return nil, fmt.Errorf("reach flakeship: %w", err)
	}
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return resp, nil
	}
	defer resp.Body.Close()
	e := &apiError{status: resp.StatusCode, noToken: !tok.IsSet(), tokenOf: tokenOf}
	if loc := resp.Header.Get("Location"); resp.StatusCode >= 300 && resp.StatusCode < 400 && loc != "" {
		e.msg = fmt.Sprintf("flakeship answered with a redirect to %q: give that as --url", clip(loc))
		return nil, e
	}
	var answer struct {
		Error string `json:"error"`
	}
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	if json.Unmarshal(raw, &answer) == nil && answer.Error != "" {
		e.msg = answer.Error
	} else {
		e.msg = strings.ToLower(http.StatusText(resp.StatusCode))
		if e.msg == "" {
			e.msg = "unexpected answer"
		}
	}
	return nil, e
}

// call sends a request (with a JSON body unless body is nil) and decodes
// the JSON answer into out.
func (c *client) call(ctx context.Context, method, path string, body, out any, write bool) error {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	resp, err := c.do(ctx, method, path, body, write)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: read answer: %w", method, path, err)
	}
	return nil
}

// stream copies the answer to a GET to w as it arrives, without a time
// limit: a followed log lasts as long as its deploy.
func (c *client) stream(ctx context.Context, path string, w io.Writer) error {
	resp, err := c.do(ctx, http.MethodGet, path, nil, false)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(w, resp.Body); err != nil {
		if err := c.ctxErr(ctx); err != nil {
			return err
		}
		return fmt.Errorf("read log: %w", err)
	}
	return nil
}

// errInterrupted is returned when the user stopped the command (^C).
var errInterrupted = errors.New("interrupted")

// ctxErr says why a request whose context ended failed: the user stopped
// the command, or flakeship took too long; nil if ctx has not ended.
func (c *client) ctxErr(ctx context.Context) error {
	switch {
	case errors.Is(ctx.Err(), context.Canceled):
		return errInterrupted
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return fmt.Errorf("flakeship at %s did not answer within %s", c.base, requestTimeout)
	}
	return nil
}
