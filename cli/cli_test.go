package cli

import (
	"bytes"
	"context"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// run runs Main and returns its exit code, stdout and stderr.
func run(t *testing.T, environ map[string]string, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := Main(context.Background(), args, environ, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

// oneLineErr checks that stderr is exactly one line.
func oneLineErr(t *testing.T, stderr string) {
	t.Helper()
	if strings.Count(stderr, "\n") != 1 || !strings.HasSuffix(stderr, "\n") {
		t.Errorf("stderr is not one line: %q", stderr)
	}
}

func TestUsageErrorsExit2WithOneLine(t *testing.T) {
	sha := strings.Repeat("ab", 20)
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte("file-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		args    []string
		environ map[string]string
		stderr  string
	}{
		{"unknown command", []string{"bogus"}, nil, `flakeship: unknown command "bogus" (see flakeship help)`},
		{"deploy without a target", []string{"deploy"}, nil,
			"flakeship deploy: want one target, got 0 arguments (see flakeship deploy -h)"},
		{"deploy of two targets", []string{"deploy", "a", "b"}, nil,
			"flakeship deploy: want one target, got 2 arguments (see flakeship deploy -h)"},
		{"deploy of a bad target name", []string{"deploy", "App"}, nil,
			`flakeship deploy: target name "App": want lower-case letters, digits, '-' or '_', starting with a letter or digit (see flakeship deploy -h)`},
		{"short sha", []string{"deploy", "app", "--sha", "abc1234"}, nil,
			`flakeship deploy: --sha: want a 40-character lower-case hex commit id, got "abc1234" (see flakeship deploy -h)`},
		{"sha and ref", []string{"deploy", "app", "--sha", sha, "--ref", "main"}, nil,
			"flakeship deploy: give --sha or --ref, not both (see flakeship deploy -h)"},
		{"bad ref", []string{"deploy", "--ref", "a..b", "app"}, nil,
			`flakeship deploy: --ref: branch name "a..b" is not a valid git ref (see flakeship deploy -h)`},
		{"unknown flag", []string{"deploy", "app", "--force"}, nil,
			"flakeship deploy: flag provided but not defined: -force (see flakeship deploy -h)"},
		{"flag without its value", []string{"deploy", "app", "--sha"}, nil,
			"flakeship deploy: flag needs an argument: -sha (see flakeship deploy -h)"},
		{"rollback without a target", []string{"rollback", "--wait"}, nil,
			"flakeship rollback: want one target, got 0 arguments (see flakeship rollback -h)"},
		{"cancel of a word", []string{"cancel", "latest"}, nil,
			`flakeship cancel: deploy id must be a positive number, got "latest" (see flakeship cancel -h)`},
		{"cancel of 0", []string{"cancel", "0"}, nil,
			`flakeship cancel: deploy id must be a positive number, got "0" (see flakeship cancel -h)`},
		{"logs of two deploys", []string{"logs", "1", "2", "--follow"}, nil,
			"flakeship logs: want one deploy id, got 2 arguments (see flakeship logs -h)"},
		{"status of two targets", []string{"status", "a", "b"}, nil,
			"flakeship status: want at most one target, got 2 arguments (see flakeship status -h)"},
		{"URL of another scheme", []string{"status", "--url", "ftp://flakeship.example"}, nil,
			`flakeship status: --url: want a URL like http://127.0.0.1:8080, got "ftp://flakeship.example" (see flakeship status -h)`},
		{"URL with credentials", []string{"status"}, map[string]string{"FLAKESHIP_URL": "http://admin:hunter2@flakeship.example"},
			"flakeship status: FLAKESHIP_URL: the URL must not hold credentials; the token goes in FLAKESHIP_ADMIN_TOKEN (see flakeship status -h)"},
		{"listen address without a port", []string{"status"}, map[string]string{"FLAKESHIP_LISTEN": "localhost"},
			`flakeship status: FLAKESHIP_LISTEN: want host:port, got "localhost" (see flakeship status -h)`},
		{"token and token file", []string{"cancel", "1"},
			map[string]string{"FLAKESHIP_ADMIN_TOKEN": "s3cr3t-value", "FLAKESHIP_ADMIN_TOKEN_FILE": tokenFile},
			"flakeship cancel: set FLAKESHIP_ADMIN_TOKEN or FLAKESHIP_ADMIN_TOKEN_FILE, not both (see flakeship cancel -h)"},
		{"missing token file", []string{"status"}, map[string]string{"FLAKESHIP_READ_TOKEN_FILE": filepath.Join(dir, "nope")},
			"flakeship status: FLAKESHIP_READ_TOKEN_FILE: open " + filepath.Join(dir, "nope") + ": no such file or directory (see flakeship status -h)"},
		{"token with a newline inside", []string{"status"}, map[string]string{"FLAKESHIP_ADMIN_TOKEN": "s3cr3t\nvalue"},
			"flakeship status: FLAKESHIP_ADMIN_TOKEN: the token contains a control character (not shown) (see flakeship status -h)"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := run(t, tc.environ, tc.args...)
			if code != exitUsage || stdout != "" {
				t.Errorf("exit %d, stdout %q; want 2 and nothing", code, stdout)
			}
			oneLineErr(t, stderr)
			if got := strings.TrimSuffix(stderr, "\n"); got != tc.stderr {
				t.Errorf("stderr\n got %s\nwant %s", got, tc.stderr)
			}
			for _, secret := range []string{"hunter2", "s3cr3t"} {
				if strings.Contains(stderr, secret) {
					t.Errorf("stderr shows a secret: %s", stderr)
				}
			}
		})
	}
}

func TestHelpGoesToStdout(t *testing.T) {
	for _, args := range [][]string{{"help"}, {"-h"}, {"--help"}} {
		code, stdout, stderr := run(t, nil, args...)
		if code != exitOK || stderr != "" || !strings.HasPrefix(stdout, "usage: flakeship [serve]\n") {
			t.Errorf("%v: exit %d, stderr %q, stdout %q", args, code, stderr, stdout)
		}
		for _, cmd := range commands() {
			if !strings.Contains(stdout, "  "+cmd.name+" "+cmd.synopsis+"\n") {
				t.Errorf("%v: usage does not show %s", args, cmd.name)
			}
		}
	}
	code, stdout, stderr := run(t, nil, "deploy", "app", "-h")
	if code != exitOK || stderr != "" ||
		!strings.HasPrefix(stdout, "usage: flakeship deploy <target> [--ref BRANCH | --sha COMMIT] [--wait] [--url URL]\n") ||
		!strings.Contains(stdout, "-wait") {
		t.Errorf("deploy -h: exit %d, stderr %q, stdout %q", code, stderr, stdout)
	}
	// No command at all is a usage error: the overview goes to stderr.
	code, stdout, stderr = run(t, nil)
	if code != exitUsage || stdout != "" || !strings.HasPrefix(stderr, "usage: flakeship") {
		t.Errorf("no command: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
}

func TestServerURLComesFromFlagEnvironmentOrListenAddress(t *testing.T) {
	tests := []struct {
		name string
		flag string
		env  clientEnv
		want string
	}{
		{"default", "", clientEnv{}, "http://127.0.0.1:8080"},
		{"flag first", "http://10.0.0.2:9000", clientEnv{URL: "http://10.0.0.3:9000", Listen: "10.0.0.4:80"}, "http://10.0.0.2:9000"},
		{"then FLAKESHIP_URL", "", clientEnv{URL: "https://deploy.example.com/", Listen: "10.0.0.4:80"}, "https://deploy.example.com"},
		{"behind a path", "", clientEnv{URL: "https://example.com/flakeship/"}, "https://example.com/flakeship"},
		{"then the listen address", "", clientEnv{Listen: "10.0.0.4:8081"}, "http://10.0.0.4:8081"},
		{"listening on every address", "", clientEnv{Listen: "0.0.0.0:8081"}, "http://127.0.0.1:8081"},
		{"listening on the port alone", "", clientEnv{Listen: ":8081"}, "http://127.0.0.1:8081"},
		{"listening on every IPv6 address", "", clientEnv{Listen: "[::]:8081"}, "http://[::1]:8081"},
		{"listening on IPv6 loopback", "", clientEnv{Listen: "[::1]:8081"}, "http://[::1]:8081"},
	}
	for _, tc := range tests {
		got, err := serverURL(tc.flag, tc.env)
		if err != nil || got != tc.want {
			t.Errorf("%s: serverURL = %q, %v; want %q", tc.name, got, err, tc.want)
		}
	}
}

func TestTokensComeFromValueOrFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	tests := []struct {
		name, value, file string
		want              string
		wantErr           string
	}{
		{"value", "tok-1", "", "tok-1", ""},
		{"file with a newline", "", write("a", "tok-2\n"), "tok-2", ""},
		{"file with CRLF", "", write("b", "tok-3\r\n"), "tok-3", ""},
		{"file without a newline", "", write("c", "tok-4"), "tok-4", ""},
		{"empty file", "", write("d", "\n"), "", "X_FILE: file \"" + filepath.Join(dir, "d") + "\" is empty"},
		{"neither", "", "", "", ""},
	}
	for _, tc := range tests {
		got, err := token("X", tc.value, tc.file)
		if tc.wantErr != "" {
			if err == nil || err.Error() != tc.wantErr {
				t.Errorf("%s: err %v, want %s", tc.name, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got.Reveal() != tc.want {
			t.Errorf("%s: token %q, %v; want %q", tc.name, got.Reveal(), err, tc.want)
		}
	}
}

func TestFlagsMayFollowArguments(t *testing.T) {
	for _, tc := range []struct {
		args []string
		pos  string
	}{
		{[]string{"app", "--wait"}, "app"},
		{[]string{"--wait", "app"}, "app"},
		{[]string{"-wait", "app", "--url", "http://x:1"}, "app"},
		{[]string{"--wait", "--", "app", "--url"}, "app --url"},
	} {
		fs := flag.NewFlagSet("test", flag.ContinueOnError)
		wait := fs.Bool("wait", false, "")
		fs.String("url", "", "")
		pos, err := parseInterspersed(fs, tc.args)
		if err != nil || strings.Join(pos, " ") != tc.pos || !*wait {
			t.Errorf("%v: arguments %q, %v, wait=%v; want %q and wait", tc.args, pos, err, *wait, tc.pos)
		}
	}
}
