package deploy_test

import (
	"context"
	"io"
	"path/filepath"
	"testing"
	"time"

	"github.com/flakeship/flakeship/builder"
	"github.com/flakeship/flakeship/config"
	"github.com/flakeship/flakeship/deploy"
)

// edgeConfig configures the named targets in a new state dir, each with
// nothing to fetch: a deploy fails once its fetch is let go, which is no
// concern of the tests that use it.
func edgeConfig(t *testing.T, maxParallel int, names ...string) *config.Config {
	t.Helper()
	state := t.TempDir()
	cfg := &config.Config{StateDir: state, PublicURL: "https://deploy.example.test", MaxParallel: maxParallel, Nix: "nix"}
	for _, name := range names {
		cfg.Targets = append(cfg.Targets, config.Target{
			Name: name, Forge: "github", Repo: "acme/" + name,
			CloneURL: filepath.Join(state, "no-such-repo"), Branch: "main",
			Attr: "packages.x86_64-linux.default", Activate: config.ActivateNone,
			Profile: filepath.Join(state, "profiles", name), HealthTimeout: 5 * time.Second,
			BuildTimeout: time.Minute, WebhookSecret: "hook-secret", StatusContext: "flakeship/" + name,
		})
	}
	return cfg
}

// gatedFetcher holds every fetch until the test closes release.
type gatedFetcher struct {
	deploy.Fetcher
	release chan struct{}
}

func (f gatedFetcher) Fetch(ctx context.Context, s builder.Spec, sha string, log io.Writer) (builder.Checkout, error) {
	select {
	case <-f.release:
	case <-ctx.Done():
		return builder.Checkout{}, ctx.Err()
	}
	return f.Fetcher.Fetch(ctx, s, sha, log)
}

// holdFetches is a queuetest.Options.Fetcher that holds every fetch until
// release is closed.
func holdFetches(release chan struct{}) func(deploy.Fetcher) deploy.Fetcher {
	return func(f deploy.Fetcher) deploy.Fetcher { return gatedFetcher{Fetcher: f, release: release} }
}

// waitCond waits until cond holds; it is a condition the code reaches on
// its own, so the minute is only a guard against a hang.
func waitCond(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within a minute: %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// waitEnded waits until deploy id has ended and returns it.
func waitEnded(t *testing.T, q *deploy.Queue, id int64) *deploy.Deploy {
	t.Helper()
	var d *deploy.Deploy
	waitCond(t, "the end of a deploy", func() bool {
		got, err := q.Get(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		d = got
		return d.State.Terminal()
	})
	return d
}
