// Command flakeship turns `git push` into a deployed Nix build: a signed push
// webhook from GitHub or Forgejo becomes a stored deploy; the exact commit is
// fetched, built with nix, switched into a profile, restarted under systemd,
// checked, rolled back if unhealthy, and reported to the forge as a commit
// status. Configuration is read from the environment (see the README).
//
// Run without arguments (or as "flakeship serve") it is the server; with a
// command (deploy, rollback, cancel, status, logs, help) it is a client of a
// running flakeship (package cli).
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/flakeship/flakeship/builder"
	"github.com/flakeship/flakeship/cli"
	"github.com/flakeship/flakeship/config"
	"github.com/flakeship/flakeship/deploy"
	"github.com/flakeship/flakeship/forge"
	"github.com/flakeship/flakeship/metrics"
	"github.com/flakeship/flakeship/notifier"
	"github.com/flakeship/flakeship/server"
	"github.com/flakeship/flakeship/store"
)

// shutdownGrace is how long a SIGTERM lets running deploys finish before
// their fetch or build is cancelled (they are retried on the next start).
// systemd's default TimeoutStopSec is 90s, so this leaves ample room.
const shutdownGrace = 20 * time.Second

// version names this build (flakeship_build_info). Release builds set it with
// -ldflags "-X main.version=<revision>" (the flake does, see nix/package.nix).
var version = "dev"

func main() {
	args := os.Args[1:]
	if len(args) > 1 && args[0] == "serve" {
		fmt.Fprintln(os.Stderr, "flakeship serve: takes no arguments; the configuration is the environment (see flakeship help)")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if len(args) > 0 && args[0] != "serve" {
		// A client command (deploy, status, ...) for a running flakeship.
		code := cli.Main(ctx, args, config.Environ(os.Environ()), os.Stdout, os.Stderr)
		stop()
		os.Exit(code)
	}
	if err := run(ctx, os.Environ(), os.Stderr, nil); err != nil {
		fmt.Fprintln(os.Stderr, "flakeship:", err)
		os.Exit(1)
	}
}

// run is the whole program: it reads the configuration from environ, opens
// the store, starts the deploy queue and serves HTTP until ctx ends, then
// shuts down in order. If ready is not nil it receives the listening address.
func run(ctx context.Context, environ []string, logOut io.Writer, ready chan<- net.Addr) error {
	cfg, err := config.Load(config.Environ(environ))
	if err != nil {
		return err
	}
	log := cfg.Logger(logOut)

	st, err := store.Open(ctx, filepath.Join(cfg.StateDir, "flakeship.db"), log)
	if err != nil {
		return err
	}
	defer func() {
		if err := st.Close(); err != nil {
			log.Error("close store", "err", err)
		}
	}()

	notifiers, err := newNotifiers(cfg, log)
	if err != nil {
		return err
	}
	// Access tokens reach nix in a file of flakeship's, never its command
	// line or environment.
	nix := &builder.Nix{Binary: cfg.Nix, Flags: cfg.NixFlags}
	nixConf := filepath.Join(cfg.StateDir, "nix.conf")
	if err := builder.WriteNixConf(nixConf, cfg.NixConf()); err != nil {
		return err
	}
	if cfg.NixConf().IsSet() {
		nix.Conf = nixConf
	}
	names := make([]string, 0, len(cfg.Targets))
	for _, t := range cfg.Targets {
		names = append(names, t.Name)
	}
	mets := metrics.New(names, metrics.Options{Version: version})
	queue, err := deploy.New(deploy.Options{
		Config:    cfg,
		Store:     st,
		Fetcher:   builder.NewFetcher(log),
		Builder:   nix,
		Switcher:  func(s builder.Spec) (builder.Switcher, error) { return builder.NewSwitcher(s, nix, log) },
		Notifiers: notifiers,
		Log:       log,
		Observer:  mets,
	})
	if err != nil {
		return err
	}

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.Listen, err)
	}
	if cfg.PublicURL == "http://"+cfg.Listen {
		// The default public URL names the address listened on; with port 0
		// that is only known now.
		cfg.PublicURL = "http://" + ln.Addr().String()
	}
	if err := queue.Start(ctx); err != nil {
		ln.Close()
		return err
	}
	srv := server.New(server.Options{
		Config: cfg, Deployer: queue, Operator: queue, Sessions: st, Log: log,
		Metrics: mets.Handler(), Deliveries: mets,
	})
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Listen(ln) }()
	log.Info("flakeship listening", "addr", ln.Addr().String(), "public_url", cfg.PublicURL,
		"targets", len(cfg.Targets), "state_dir", cfg.StateDir)
	if ready != nil {
		ready <- ln.Addr()
	}

	var runErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case err := <-serveErr:
		runErr = fmt.Errorf("serve: %w", err)
	}

	// Stop intake first, then let deploys finish or interrupt them.
	httpCtx, cancelHTTP := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancelHTTP()
	if err := srv.Shutdown(httpCtx); err != nil {
		log.Warn("http shutdown", "err", err)
	}
	graceCtx, cancelGrace := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancelGrace()
	if err := queue.Shutdown(graceCtx); err != nil {
		log.Warn("deploy queue shutdown", "err", err)
	}
	log.Info("stopped")
	return runErr
}

// newNotifiers makes each target's commit status poster: none for a target
// without a forge token.
func newNotifiers(cfg *config.Config, log *slog.Logger) (map[string]notifier.Notifier, error) {
	out := map[string]notifier.Notifier{}
	for _, t := range cfg.Targets {
		if !t.Token.IsSet() {
			log.Info("no forge token: commit statuses are off", "target", t.Name)
			continue
		}
		var (
			n   notifier.Notifier
			err error
		)
		switch t.Forge {
		case forge.GitHub:
			n, err = notifier.NewGitHub(notifier.GitHubOptions{BaseURL: t.ForgeURL, Token: t.Token, Log: log})
		case forge.Forgejo:
			n, err = notifier.NewForgejo(notifier.ForgejoOptions{BaseURL: t.ForgeURL, Token: t.Token, Log: log})
		default:
			err = fmt.Errorf("unknown forge %q", t.Forge)
		}
		if err != nil {
			return nil, fmt.Errorf("target %s: %w", t.Name, err)
		}
		out[t.Name] = n
	}
	return out, nil
}
