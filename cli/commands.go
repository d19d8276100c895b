package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/flakeship/flakeship/config"
	"github.com/flakeship/flakeship/deploy"
	"github.com/flakeship/flakeship/forge"
)

// queued is the server's answer to a deploy or rollback.
type queued struct {
	DeployID int64  `json:"deploy_id"`
	Status   string `json:"status"`
	URL      string `json:"url"`
}

func (r *runner) deployFlags(fs *flag.FlagSet) func(context.Context, *client, []string) error {
	sha := fs.String("sha", "", "deploy this `COMMIT` (40 hex digits); it must be on the target's branch")
	ref := fs.String("ref", "", "deploy the head of this `BRANCH`")
	wait := fs.Bool("wait", false, "follow the deploy's log; exit 0 only if it succeeds")
	return func(ctx context.Context, c *client, args []string) error {
		target, err := targetArg(args)
		if err != nil {
			return err
		}
		var req deploy.ManualRequest
		switch {
		case *sha != "" && *ref != "":
			return usagef("give --sha or --ref, not both")
		case *sha != "":
			if err := config.ValidateSHA(*sha); err != nil {
				return usagef("--sha: %v", err)
			}
			req.SHA = *sha
		case *ref != "":
			if err := config.ValidateBranch(strings.TrimPrefix(*ref, "refs/heads/")); err != nil {
				return usagef("--ref: %v", err)
			}
			req.Ref = *ref
		}
		var q queued
		if err := c.call(ctx, http.MethodPost, "/api/targets/"+url.PathEscape(target)+"/deploy", req, &q, true); err != nil {
			return err
		}
		return r.queued(ctx, c, q, *wait)
	}
}

func (r *runner) rollbackFlags(fs *flag.FlagSet) func(context.Context, *client, []string) error {
	wait := fs.Bool("wait", false, "follow the rollback's log; exit 0 only if it succeeds")
	return func(ctx context.Context, c *client, args []string) error {
		target, err := targetArg(args)
		if err != nil {
			return err
		}
		var q queued
		if err := c.call(ctx, http.MethodPost, "/api/targets/"+url.PathEscape(target)+"/rollback", struct{}{}, &q, true); err != nil {
			return err
		}
		return r.queued(ctx, c, q, *wait)
	}
}

// queued prints a queued deploy and, with wait, follows its log and
// judges how it ended.
func (r *runner) queued(ctx context.Context, c *client, q queued, wait bool) error {
	fmt.Fprintf(r.stdout, "deploy %d queued: %s\n", q.DeployID, q.URL)
	if !wait {
		return nil
	}
	if err := c.stream(ctx, logPath(q.DeployID, true), r.stdout); errors.Is(err, errInterrupted) {
		return fmt.Errorf("stopped waiting; deploy %d goes on: %s", q.DeployID, q.URL)
	} else if err != nil {
		return err
	}
	var d deploy.Deploy
	if err := c.call(ctx, http.MethodGet, "/api/deploys/"+strconv.FormatInt(q.DeployID, 10), nil, &d, false); err != nil {
		return err
	}
	switch {
	case d.State == deploy.Succeeded:
		fmt.Fprintf(r.stdout, "deploy %d succeeded: %s is generation %d\n", d.ID, forge.ShortSHA(d.SHA), d.Generation)
		return nil
	case !d.State.Terminal():
		return fmt.Errorf("the log stream ended while deploy %d was still %s; see %s", d.ID, d.State, d.URL)
	case d.Error != "":
		return fmt.Errorf("deploy %d %s: %s", d.ID, d.State, d.Error)
	default:
		return fmt.Errorf("deploy %d %s", d.ID, d.State)
	}
}

func (r *runner) cancelFlags(fs *flag.FlagSet) func(context.Context, *client, []string) error {
	return func(ctx context.Context, c *client, args []string) error {
		id, err := deployIDArg(args)
		if err != nil {
			return err
		}
		var answer struct {
			DeployID int64  `json:"deploy_id"`
			Status   string `json:"status"`
		}
		if err := c.call(ctx, http.MethodPost, "/api/deploys/"+strconv.FormatInt(id, 10)+"/cancel", struct{}{}, &answer, true); err != nil {
			return err
		}
		fmt.Fprintf(r.stdout, "deploy %d %s\n", answer.DeployID, answer.Status)
		return nil
	}
}

func (r *runner) logsFlags(fs *flag.FlagSet) func(context.Context, *client, []string) error {
	follow := fs.Bool("follow", false, "keep printing what is added until the deploy ends")
	return func(ctx context.Context, c *client, args []string) error {
		id, err := deployIDArg(args)
		if err != nil {
			return err
		}
		if *follow {
			return c.stream(ctx, logPath(id, true), r.stdout)
		}
		sctx, cancel := context.WithTimeout(ctx, requestTimeout)
		defer cancel()
		return c.stream(sctx, logPath(id, false), r.stdout)
	}
}

func logPath(id int64, follow bool) string {
	p := "/api/deploys/" + strconv.FormatInt(id, 10) + "/log"
	if follow {
		p += "?follow=1"
	}
	return p
}

func (r *runner) statusFlags(fs *flag.FlagSet) func(context.Context, *client, []string) error {
	asJSON := fs.Bool("json", false, "print the targets as the API gives them (one object for one target)")
	return func(ctx context.Context, c *client, args []string) error {
		if len(args) > 1 {
			return usagef("want at most one target, got %d arguments", len(args))
		}
		var name string
		if len(args) == 1 {
			name = args[0]
			if err := config.ValidateTargetName(name); err != nil {
				return usagef("%v", err)
			}
		}
		var raw []json.RawMessage
		if err := c.call(ctx, http.MethodGet, "/api/targets", nil, &raw, false); err != nil {
			return err
		}
		targets := make([]deploy.TargetStatus, len(raw))
		for i, m := range raw {
			if err := json.Unmarshal(m, &targets[i]); err != nil {
				return fmt.Errorf("GET /api/targets: read answer: %w", err)
			}
		}
		if name != "" {
			i := indexOf(targets, name)
			if i < 0 {
				return fmt.Errorf("target %q is not configured", name)
			}
			targets, raw = targets[i:i+1], raw[i:i+1]
		}
		if !*asJSON {
			return r.statusTable(targets)
		}
		var out any = raw
		if name != "" {
			out = raw[0]
		}
		b, err := json.Marshal(out)
		if err != nil {
			return fmt.Errorf("print targets: %w", err)
		}
		var buf bytes.Buffer
		if err := json.Indent(&buf, b, "", "  "); err != nil {
			return fmt.Errorf("print targets: %w", err)
		}
		buf.WriteByte('\n')
		_, err = r.stdout.Write(buf.Bytes())
		return err
	}
}

func indexOf(ts []deploy.TargetStatus, name string) int {
	for i, t := range ts {
		if t.Name == name {
			return i
		}
	}
	return -1
}

// statusTable prints one line per target: its last deploy's state, the
// commit and generation that run now, and when the last deploy last moved.
func (r *runner) statusTable(targets []deploy.TargetStatus) error {
	tw := tabwriter.NewWriter(r.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TARGET\tSTATE\tCURRENT\tGENERATION\tLAST DEPLOY")
	for _, t := range targets {
		state, when := "-", "never"
		if d := t.LastDeploy; d != nil {
			state = string(d.State)
			when = fmt.Sprintf("#%d %s", d.ID, ago(r.now(), lastMoved(d)))
		}
		sha, gen := "-", "-"
		if t.CurrentSHA != "" {
			sha = forge.ShortSHA(t.CurrentSHA)
		}
		if t.Generation > 0 {
			gen = strconv.Itoa(t.Generation)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", t.Name, state, sha, gen, when)
	}
	return tw.Flush()
}

// lastMoved is when a deploy last changed: finished, started, or created.
func lastMoved(d *deploy.Deploy) time.Time {
	switch {
	case d.FinishedAt != nil:
		return *d.FinishedAt
	case d.StartedAt != nil:
		return *d.StartedAt
	}
	return d.CreatedAt
}

// ago says how long before now t was, coarsely: "12s ago", "5m ago",
// "3h ago", "4d ago".
func ago(now, t time.Time) string {
	d := now.Sub(t)
	switch {
	case d < 0:
		return "just now"
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	}
	return fmt.Sprintf("%dd ago", int(d.Hours()/24))
}

// targetArg returns the one argument of deploy and rollback.
func targetArg(args []string) (string, error) {
	if len(args) != 1 {
		return "", usagef("want one target, got %d arguments", len(args))
	}
	if err := config.ValidateTargetName(args[0]); err != nil {
		return "", usagef("%v", err)
	}
	return args[0], nil
}

// deployIDArg returns the one argument of cancel and logs.
func deployIDArg(args []string) (int64, error) {
	if len(args) != 1 {
		return 0, usagef("want one deploy id, got %d arguments", len(args))
	}
	id, err := strconv.ParseInt(args[0], 10, 64)
	if err != nil || id <= 0 {
		return 0, usagef("deploy id must be a positive number, got %q", clip(args[0]))
	}
	return id, nil
}
