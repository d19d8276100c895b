// Package cli is flakeship's command line client: the subcommands deploy,
// rollback, cancel, status and logs talk to a running flakeship over its
// HTTP API (DESIGN.md "API"). The server URL and the tokens come from flags
// and the environment; a token is sent only in the Authorization header and
// never printed.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"
)

// The exit codes of Main.
const (
	exitOK      = 0
	exitFailure = 1 // the request failed, or a waited-for deploy did not succeed
	exitUsage   = 2 // bad arguments, flags or environment
)

// Main runs one subcommand: args are the command line after the program
// name ("deploy", "app", "--wait"), environ the environment (see
// config.Environ). Output goes to stdout; errors, one line each, to stderr.
// It returns the exit code: 0 success, 1 failure, 2 usage error.
func Main(ctx context.Context, args []string, environ map[string]string, stdout, stderr io.Writer) int {
	r := &runner{environ: environ, stdout: stdout, stderr: stderr, now: time.Now}
	return r.main(ctx, args)
}

// runner is one invocation of Main.
type runner struct {
	environ        map[string]string
	stdout, stderr io.Writer
	now            func() time.Time // for "3m ago" in status
}

// usageError is a mistake in the command line or environment: exit 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{fmt.Sprintf(format, args...)}
}

// command is one subcommand.
type command struct {
	name     string
	synopsis string // arguments and flags, for usage
	about    string // one line
	// flags declares the command's own flags on fs and returns the
	// function that runs it with the positional arguments.
	flags func(r *runner, fs *flag.FlagSet) func(ctx context.Context, c *client, args []string) error
}

func commands() []command {
	return []command{
		{"deploy", "<target> [--ref BRANCH | --sha COMMIT] [--wait]",
			"deploy the head of the target's branch, the head of BRANCH, or COMMIT", (*runner).deployFlags},
		{"rollback", "<target> [--wait]",
			"make the build that ran before the current one current again", (*runner).rollbackFlags},
		{"cancel", "<deploy-id>",
			"cancel a deploy that is queued, fetching or building", (*runner).cancelFlags},
		{"status", "[target] [--json]",
			"show each target's current commit and generation and its last deploy", (*runner).statusFlags},
		{"logs", "<deploy-id> [--follow]",
			"print a deploy's log; --follow streams it until the deploy ends", (*runner).logsFlags},
	}
}

func (r *runner) main(ctx context.Context, args []string) int {
	if len(args) == 0 {
		r.usage(r.stderr)
		return exitUsage
	}
	switch args[0] {
	case "help", "-h", "-help", "--help":
		r.usage(r.stdout)
		return exitOK
	}
	for _, cmd := range commands() {
		if cmd.name == args[0] {
			return r.exit(cmd.name, r.run(ctx, cmd, args[1:]))
		}
	}
	return r.exit("", usagef("unknown command %q", clip(args[0])))
}

// exit prints err, if any, as one line and returns its exit code.
func (r *runner) exit(cmd string, err error) int {
	if err == nil {
		return exitOK
	}
	prefix := "flakeship"
	if cmd != "" {
		prefix += " " + cmd
	}
	var ue *usageError
	if errors.As(err, &ue) {
		hint := "flakeship help"
		if cmd != "" {
			hint = "flakeship " + cmd + " -h"
		}
		fmt.Fprintf(r.stderr, "%s: %s (see %s)\n", prefix, oneLine(err.Error()), hint)
		return exitUsage
	}
	fmt.Fprintf(r.stderr, "%s: %s\n", prefix, oneLine(err.Error()))
	return exitFailure
}

// run parses a command's flags and arguments, reads the environment, and
// runs it.
func (r *runner) run(ctx context.Context, cmd command, args []string) error {
	fs := flag.NewFlagSet("flakeship "+cmd.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are reported by exit, usage on -h
	urlFlag := fs.String("url", "", "flakeship's base `URL` (default $FLAKESHIP_URL, else from $FLAKESHIP_LISTEN, else http://127.0.0.1:8080)")
	runCmd := cmd.flags(r, fs)
	pos, err := parseInterspersed(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		r.commandUsage(cmd, fs)
		return nil
	}
	if err != nil {
		return usagef("%v", err)
	}
	c, err := newClient(*urlFlag, r.environ)
	if err != nil {
		return err
	}
	return runCmd(ctx, c, pos)
}

// parseInterspersed parses flags anywhere among the arguments, as in
// `flakeship deploy app --wait`; the flag package alone stops at the first
// argument. After "--" everything is an argument.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if used := len(args) - len(rest); used > 0 && args[used-1] == "--" {
			return append(pos, rest...), nil
		}
		if len(rest) == 0 {
			return pos, nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// usage prints the overview of every command.
func (r *runner) usage(w io.Writer) {
	var b strings.Builder
	b.WriteString(`usage: flakeship [serve]
       flakeship <command> [arguments] [flags]

Without a command, or with "serve", flakeship runs the server, configured by
the environment (see the README). The commands talk to a running flakeship
over HTTP:

`)
	for _, cmd := range commands() {
		fmt.Fprintf(&b, "  %s %s\n        %s\n", cmd.name, cmd.synopsis, cmd.about)
	}
	b.WriteString(`  help
        print this text; "flakeship <command> -h" describes one command

Every command takes --url URL, the flakeship to talk to.

Environment:
  FLAKESHIP_URL                  base URL of flakeship (default: http:// and
                                 FLAKESHIP_LISTEN, else http://127.0.0.1:8080)
  FLAKESHIP_ADMIN_TOKEN(_FILE)   token for deploy, rollback and cancel
  FLAKESHIP_READ_TOKEN(_FILE)    token for status and logs, if the server
                                 has one (the admin token is taken otherwise)

Exit status: 0 success; 1 failure, or with --wait a deploy that did not
succeed; 2 a usage error.
`)
	io.WriteString(w, b.String())
}

// commandUsage prints one command's usage and flags to stdout.
func (r *runner) commandUsage(cmd command, fs *flag.FlagSet) {
	fmt.Fprintf(r.stdout, "usage: flakeship %s %s [--url URL]\n\n%s.\n\nFlags:\n", cmd.name, cmd.synopsis, upperFirst(cmd.about))
	fs.SetOutput(r.stdout)
	fs.PrintDefaults()
	fs.SetOutput(io.Discard)
}

func upperFirst(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

// oneLine keeps an error to one line of printable text.
func oneLine(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	return clipTo(strings.TrimSpace(s), 400)
}

// clip shortens untrusted input before it is quoted in an error.
func clip(s string) string { return clipTo(s, 80) }

func clipTo(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}
