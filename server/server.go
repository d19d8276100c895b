// Package server is flakeship's HTTP side: the forge webhooks under /hooks/,
// which turn a signed delivery into a queued deploy, and /healthz. github.go
// and forgejo.go turn a raw delivery into a forge.PushEvent; errors.go maps
// every error to its HTTP answer.
package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/gofiber/fiber/v2/middleware/recover"

	"github.com/flakeship/flakeship/config"
	"github.com/flakeship/flakeship/deploy"
	"github.com/flakeship/flakeship/forge"
)

const (
	// defaultReadTimeout is how long a whole request (headers and body) may
	// take to arrive. fasthttp sets one read deadline before it reads the
	// headers and keeps it while it reads the body, so a body trickled a
	// byte at a time is cut off at this bound and answered 408.
	defaultReadTimeout = 10 * time.Second
	// writeTimeout bounds writing one answer.
	writeTimeout = 10 * time.Second
	// idleTimeout is how long a kept-alive connection may wait for its next
	// request.
	idleTimeout = 60 * time.Second
	// submitTimeout bounds storing a deploy: forges give up on a delivery
	// after about 10 s.
	submitTimeout = 5 * time.Second
	// defaultBodyLimit applies when the configuration sets none.
	defaultBodyLimit = 25 << 20
)

// Options are what New needs.
type Options struct {
	Config   *config.Config // required
	Deployer Deployer       // required
	Operator Operator       // the API and the pages; nil serves neither
	// Sessions keeps the sessions of the pages' logins (sessions.go); nil
	// turns logging in off.
	Sessions deploy.SessionStore
	// Metrics serves GET /metrics; nil serves none.
	Metrics http.Handler
	// Deliveries is told the answer to every webhook delivery; may be nil.
	Deliveries DeliveryObserver
	Log        *slog.Logger // nil discards the log
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// ReadTimeout is how long a whole request may take to arrive; zero
	// means 10 s, what DESIGN.md promises. Tests shorten it.
	ReadTimeout time.Duration
	// Limits bound the connections, requests and streams served at once
	// (limits.go); zero means derived from the process's open-file limit
	// by LimitsFor.
	Limits Limits
}

// Server is flakeship's HTTP server.
type Server struct {
	cfg         *config.Config
	deployer    Deployer
	operator    Operator
	metrics     http.Handler
	deliveries  DeliveryObserver
	log         *slog.Logger
	now         func() time.Time
	bodyLimit   int
	readTimeout time.Duration
	app         *fiber.App
	// authFailures counts wrong tokens per client (auth.go); streams are
	// the log streams that outlive their handler (events.go).
	authFailures *failureLimiter
	streams      *streams
	// sessions keeps the pages' sessions; adminPrint and readPrint are
	// the fingerprints of the configured tokens (nil when unset), and
	// secureCookie makes the session cookie Secure (sessions.go).
	sessions              deploy.SessionStore
	adminPrint, readPrint []byte
	secureCookie          bool
	// hosts are the host names the pages and the API answer to (host.go).
	hosts hostPolicy
	// forwardedWarning is spent on the first X-Forwarded-For seen while
	// no proxy is trusted (auth.go).
	forwardedWarning sync.Once
	// limits and what enforces them (limits.go, conns.go): requests counts
	// page, API and metrics requests; overload logs load events rarely;
	// conns is the listener, once Listen has wrapped it; reclaim gives
	// large bodies' memory back (bodies.go).
	limits    Limits
	fileLimit uint64 // RLIMIT_NOFILE the limits were derived from; 0 if given
	requests  *gate
	overload  *rareLog
	conns     atomic.Pointer[connLimiter]
	reclaim   *reclaimer
}

// New builds the server and its routes. It does not listen: call Listen.
func New(opts Options) *Server {
	s := &Server{
		cfg:         opts.Config,
		deployer:    opts.Deployer,
		operator:    opts.Operator,
		metrics:     opts.Metrics,
		deliveries:  opts.Deliveries,
		log:         opts.Log,
		now:         opts.Now,
		bodyLimit:   opts.Config.BodyLimit,
		readTimeout: opts.ReadTimeout,
		sessions:    opts.Sessions,
		adminPrint:  fingerprint(opts.Config.AdminToken),
		readPrint:   fingerprint(opts.Config.ReadToken),
		hosts:       newHostPolicy(opts.Config),
		// The scheme is case-insensitive; config keeps it as given.
		secureCookie: strings.HasPrefix(strings.ToLower(opts.Config.PublicURL), "https://"),
	}
	if s.log == nil {
		s.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.bodyLimit <= 0 {
		s.bodyLimit = defaultBodyLimit
	}
	if s.readTimeout <= 0 {
		s.readTimeout = defaultReadTimeout
	}
	s.authFailures = newFailureLimiter(maxAuthFailures, authWindow, maxAuthClients, s.now)
	s.limits = opts.Limits
	if s.limits == (Limits{}) {
		n, err := openFileLimit()
		if err != nil {
			// Linux always answers; a conservative guess otherwise.
			s.log.Warn("connection limits assume 1024 open files", "err", err)
			n = 1024
		}
		s.fileLimit = n
		s.limits = LimitsFor(n, s.cfg.MaxParallel)
	}
	s.log.Info("connection limits", "conns", s.limits.Conns, "conns_per_client", s.limits.ConnsPerClient,
		"requests", s.limits.Requests, "streams", s.limits.Streams, "open_file_limit", s.fileLimit)
	s.requests = newGate(s.limits.Requests)
	s.overload = newRareLog(loadLogEvery, s.now)
	s.reclaim = newReclaimer()
	s.streams = newStreams(maxStreamsPerDeploy, min(maxStreams, s.limits.Streams))
	s.app = fiber.New(fiber.Config{
		// fasthttp refuses a body over the limit from Content-Length,
		// before reading it, and the ErrorHandler answers 413. This is the
		// webhooks' limit; requestConfig sets every other request's.
		BodyLimit:             s.bodyLimit,
		ReadTimeout:           s.readTimeout,
		WriteTimeout:          writeTimeout,
		IdleTimeout:           idleTimeout,
		DisableStartupMessage: true,
		// Nothing here takes multipart bodies; pre-parsing one could
		// spill a large body into temporary files.
		DisablePreParseMultipartForm: true,
		ErrorHandler:                 s.handleError,
	})
	// Chosen per request once its headers are read (bodies.go), and how
	// far each connection is (conns.go).
	s.app.Server().HeaderReceived = s.requestConfig
	s.app.Server().ConnState = connState
	s.app.Server().ErrorHandler = s.serverError(s.app.Server().ErrorHandler)
	s.routes(s.app)
	return s
}

// routes is the one place where routes are set up.
func (s *Server) routes(app *fiber.App) {
	// A panic in a handler becomes an error, answered 500 and logged.
	app.Use(recover.New())
	// Pages and API answer only to this server's own host names (host.go).
	app.Use(s.checkHost)
	app.Use(s.admit)

	app.Post("/hooks/github", s.hook(&githubHook))
	forgejo := s.hook(&forgejoHook)
	app.Post("/hooks/forgejo", forgejo)
	app.Post("/hooks/gitea", forgejo)

	app.Get("/healthz", func(c *fiber.Ctx) error {
		return c.JSON(fiber.Map{"status": "ok"})
	})
	if s.operator != nil {
		s.apiRoutes(app)
		s.pageRoutes(app)
	}
	if s.metrics != nil {
		s.metricsRoutes(app)
	}
	// Unmatched paths reach handleError as fiber's 404, and a known path
	// with another method as its 405.
}

// Listen serves on ln until Shutdown, within the connection limits.
func (s *Server) Listen(ln net.Listener) error {
	l := newConnLimiter(ln, s.limits, s.log, s.overload)
	s.conns.Store(l)
	if err := s.app.Listener(l); err != nil {
		return fmt.Errorf("serve http: %w", err)
	}
	return nil
}

// Shutdown stops accepting connections and waits, until ctx ends, for the
// open ones to finish.
func (s *Server) Shutdown(ctx context.Context) error {
	// Log streams would otherwise keep their connections busy until their
	// deploy ends.
	s.streams.stop()
	if err := s.app.ShutdownWithContext(ctx); err != nil {
		return fmt.Errorf("shut down http: %w", err)
	}
	var errs []error
	if l := s.conns.Load(); l != nil {
		errs = append(errs, l.wait(ctx))
	}
	errs = append(errs, s.streams.wait(ctx), s.reclaim.shutdown(ctx))
	return errors.Join(errs...)
}

// hook returns the webhook handler of one forge. Every delivery is reported
// to the delivery observer once, with its final status: here when the
// handler answered it, in handleError when fiber answers an error instead (a
// panic, or a delivery refused before any handler ran: too large, too slow).
func (s *Server) hook(f *hookForge) fiber.Handler {
	return func(c *fiber.Ctx) error {
		err := s.handleHook(c, f)
		if err == nil {
			s.observeDelivery(f.kind, c.Response().StatusCode())
		}
		return err
	}
}

// observeDelivery tells the delivery observer, if there is one, how a
// delivery of forge kind was answered.
func (s *Server) observeDelivery(kind forge.Kind, status int) {
	if s.deliveries != nil {
		s.deliveries.Delivery(kind, status)
	}
}

// hookKind returns the forge of a webhook delivery by its method and path,
// matched as fiber routes them (any case, optional trailing slashes); ok is
// false for any other request.
func hookKind(method, path string) (kind forge.Kind, ok bool) {
	if method != http.MethodPost {
		return "", false
	}
	switch strings.TrimRight(strings.ToLower(path), "/") {
	case "/hooks/github":
		return forge.GitHub, true
	case "/hooks/forgejo", "/hooks/gitea":
		return forge.Forgejo, true
	}
	return "", false
}

// handleHook answers one delivery: it decodes the body once, finds the
// targets of its repository, verifies the signature with their secrets, and
// submits a deploy for each target of the pushed branch. The deploy is
// stored before the answer, and no work outlives the handler.
func (s *Server) handleHook(c *fiber.Ctx, f *hookForge) error {
	start := s.now()
	// The raw bytes, as signed: c.Body() would decode a Content-Encoding.
	// fasthttp reuses the buffer once the handler returns, and nothing keeps
	// it: the decoded payload holds copies.
	body := c.Request().Body()
	h := requestHeader(c, f.headerNames)
	log := newDeliveryLog(s.log, slog.String("forge", string(f.kind)))

	event, deliveryID, err := f.headers(h)
	if err != nil {
		return s.refuse(c, log, err)
	}
	log.add(slog.String("delivery_id", deliveryID), slog.String("event", clip(event)))

	p, err := f.decode(body)
	if err != nil {
		if strings.HasPrefix(string(c.Request().Header.ContentType()), "application/x-www-form-urlencoded") {
			err = fmt.Errorf("%w: the webhook's content type must be application/json", ErrMalformed)
		}
		return s.refuse(c, log, err)
	}
	repo, err := validRepo(p.repo())
	if err != nil {
		return s.refuse(c, log, err)
	}
	if repo == "" {
		return s.refuse(c, log, ignored("no repository in payload"))
	}
	log.add(slog.String("repo", repo))
	targets := s.targetsFor(f.kind, repo)
	if len(targets) == 0 {
		return s.refuse(c, log, ignored("unknown repository %s", repo))
	}
	verified, err := verifiedTargets(h, body, targets, f.verify)
	if err != nil {
		return s.refuse(c, log, err)
	}
	if err := f.pushes(event); err != nil {
		return s.refuse(c, log, err)
	}
	ev, err := p.event(deliveryID)
	if err != nil {
		return s.refuse(c, log, err)
	}
	log.add(slog.String("branch", ev.Branch), slog.String("sha", forge.ShortSHA(ev.SHA)))
	var deploying []config.Target
	for _, t := range verified {
		if t.Branch == ev.Branch {
			deploying = append(deploying, t)
		}
	}
	if len(deploying) == 0 {
		return s.refuse(c, log, ignored("branch %s is not deployed", ev.Branch))
	}

	return s.submit(c, log, ev, deploying, start)
}

// submit stores a deploy of ev for each of targets and answers the
// delivery; start is when the delivery arrived.
func (s *Server) submit(c *fiber.Ctx, log *deliveryLog, ev forge.PushEvent, targets []config.Target, start time.Time) error {
	// Not fiber's context: the deploy must be stored whole even if the
	// forge hangs up, and nothing may keep the request's context.
	ctx, cancel := context.WithTimeout(context.Background(), submitTimeout)
	defer cancel()
	var results []submitted
	for _, t := range targets {
		d, duplicate, err := s.deployer.SubmitPush(ctx, t.Name, ev)
		if err == nil && d == nil {
			err = errors.New("no deploy returned")
		}
		if err != nil {
			log.add(slog.String("target", t.Name))
			return s.writeError(c, log, fmt.Errorf("submit push to %s: %w", t.Name, err))
		}
		log.LogAttrs(context.Background(), slog.LevelInfo, "delivery accepted", slog.String("target", t.Name),
			slog.Int64("deploy_id", d.ID), slog.Bool("duplicate", duplicate), slog.Duration("duration", s.now().Sub(start)))
		results = append(results, submitted{target: t.Name, deploy: d, duplicate: duplicate})
	}
	status, answer := answerFor(results)
	return c.Status(status).JSON(answer)
}

// refuse answers a delivery that deploys nothing: ignored ones are logged at
// Info, rejected ones at Warn.
func (s *Server) refuse(c *fiber.Ctx, log attrLogger, err error) error {
	var ign *IgnoredError
	if errors.As(err, &ign) {
		log.LogAttrs(context.Background(), slog.LevelInfo, "delivery ignored", slog.String("reason", ign.Reason))
	} else {
		log.LogAttrs(context.Background(), slog.LevelWarn, "delivery rejected", slog.Any("err", err))
	}
	return s.writeError(c, log, err)
}

// targetsFor returns the configured targets of a forge's repository. Forges
// treat owner and name case-insensitively, and so does this.
func (s *Server) targetsFor(kind forge.Kind, repo string) []config.Target {
	var ts []config.Target
	for _, t := range s.cfg.Targets {
		if t.Forge != kind || !strings.EqualFold(t.Repo, repo) {
			continue
		}
		ts = append(ts, t)
	}
	return ts
}

// verifiedTargets returns the targets whose secret verifies the delivery's
// signature, or the signature error if none does.
func verifiedTargets(h http.Header, body []byte, targets []config.Target,
	verify func(h http.Header, body []byte, secret config.Secret) error) ([]config.Target, error) {
	var (
		verified []config.Target
		sigErr   error
	)
	for _, t := range targets {
		switch err := verify(h, body, t.WebhookSecret); {
		case err == nil:
			verified = append(verified, t)
		case sigErr == nil:
			sigErr = err
		}
	}
	if len(verified) == 0 {
		return nil, sigErr
	}
	return verified, nil
}

// submitted is one deploy a delivery asked for.
type submitted struct {
	target    string
	deploy    *deploy.Deploy
	duplicate bool
}

// hookAnswer is the JSON answer to a delivery that deploys.
type hookAnswer struct {
	DeployID  int64       `json:"deploy_id"`
	Status    string      `json:"status"`
	URL       string      `json:"url"`
	Duplicate bool        `json:"duplicate,omitempty"`
	Deploys   []deployRef `json:"deploys,omitempty"` // when several targets deploy the push
}

// deployRef names one of several deploys of a push.
type deployRef struct {
	Target    string `json:"target"`
	DeployID  int64  `json:"deploy_id"`
	URL       string `json:"url"`
	Duplicate bool   `json:"duplicate,omitempty"`
}

// answerFor builds the answer to a delivery from its deploys (at least one):
// 202 with the first new deploy, or, when every one was stored before for
// this delivery id, 200 with the first one's id and current state.
func answerFor(results []submitted) (int, hookAnswer) {
	status, first := http.StatusOK, results[0]
	for _, r := range results {
		if !r.duplicate {
			status, first = http.StatusAccepted, r
			break
		}
	}
	a := hookAnswer{DeployID: first.deploy.ID, Status: string(deploy.Queued), URL: first.deploy.URL}
	if first.duplicate {
		a.Status, a.Duplicate = string(first.deploy.State), true
	}
	if len(results) > 1 {
		for _, r := range results {
			a.Deploys = append(a.Deploys, deployRef{Target: r.target, DeployID: r.deploy.ID, URL: r.deploy.URL, Duplicate: r.duplicate})
		}
	}
	return status, a
}

// requestHeader copies the request's headers named in names (in canonical
// form), every value of each, into an http.Header for the parse functions,
// which know nothing of fiber. They read no others, so no others are
// copied.
func requestHeader(c *fiber.Ctx, names []string) http.Header {
	h := make(http.Header, len(names))
	c.Request().Header.VisitAll(func(k, v []byte) {
		for _, n := range names {
			// fasthttp gives names in canonical form; the fold is for a
			// server that was told not to.
			if string(k) == n || (len(k) == len(n) && bytes.EqualFold(k, []byte(n))) {
				h[n] = append(h[n], string(v))
				return
			}
		}
	})
	return h
}
