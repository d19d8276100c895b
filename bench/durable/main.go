// Command durable is the durable floor of flakeship's webhook benchmarks:
// the least a webhook receiver can do when its 202 promises that the
// delivery survives a crash. It is bench/floor's handler (fiber, the
// HMAC-SHA256 of the raw body checked against X-Hub-Signature-256, 401
// otherwise) plus one SQLite row per delivery (modernc.org/sqlite, WAL,
// synchronous=FULL, as flakeship's store): a single committer goroutine
// takes whatever deliveries wait, writes them in one transaction, and only
// after that commit does each of them get its 202. scripts/bench runs it
// beside bench/floor and flakeship and reports flakeship against both.
//
//	durable -listen 127.0.0.1:0 -secret-file FILE -db FILE
//
// It logs "durable listening" with the address it listens on, and stops on
// SIGTERM or an interrupt, logging how many rows it stored in how many
// commits.
package main

import (
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/flakeship/flakeship/bench/floorhttp"
	_ "modernc.org/sqlite"
)

func main() {
	var o options
	flag.StringVar(&o.listen, "listen", "127.0.0.1:0", "address to listen on")
	flag.StringVar(&o.secretFile, "secret-file", "", "file holding the webhook secret")
	flag.StringVar(&o.db, "db", "", "the SQLite file to store deliveries in (created if missing)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(ctx, o, log, nil); err != nil {
		fmt.Fprintln(os.Stderr, "durable:", err)
		os.Exit(1)
	}
}

// options are the command's flags.
type options struct {
	listen, secretFile, db string
}

// maxBatch is the most deliveries one transaction stores: a bound on the
// time the first of them waits for the commit.
const maxBatch = 1024

// schema is the one table: a row per delivery, keyed by its id as forges
// key a redelivery.
const schema = `CREATE TABLE IF NOT EXISTS deliveries (
	delivery_id TEXT NOT NULL PRIMARY KEY,
	event       TEXT NOT NULL,
	received_at TEXT NOT NULL
) STRICT`

// run serves until ctx ends. If ready is not nil it receives the listening
// address.
func run(ctx context.Context, o options, log *slog.Logger, ready chan<- net.Addr) error {
	if o.secretFile == "" || o.db == "" {
		return errors.New("-secret-file and -db are required")
	}
	secret, err := floorhttp.Secret(o.secretFile)
	if err != nil {
		return err
	}
	c, err := openCommitter(ctx, o.db)
	if err != nil {
		return err
	}
	committed := make(chan error, 1)
	go func() { committed <- c.loop() }()

	app := floorhttp.App()
	app.Post("/hooks/github", func(fc *fiber.Ctx) error {
		if !floorhttp.Signed(secret, fc.Request().Body(), fc.Get("X-Hub-Signature-256")) {
			return fc.Status(fiber.StatusUnauthorized).JSON(fiber.Map{"error": "wrong signature"})
		}
		id := fc.Get("X-GitHub-Delivery")
		if id == "" {
			return fc.Status(fiber.StatusBadRequest).JSON(fiber.Map{"error": "no delivery id"})
		}
		// Fiber reuses its buffers: the strings go to another goroutine.
		d := &delivery{id: strings.Clone(id), event: strings.Clone(fc.Get("X-GitHub-Event")),
			received: time.Now().UTC(), done: make(chan error, 1)}
		c.in <- d
		if err := <-d.done; err != nil {
			log.Error("store delivery", "err", err)
			return fc.Status(fiber.StatusInternalServerError).JSON(fiber.Map{"error": "not stored"})
		}
		return fc.Status(fiber.StatusAccepted).JSON(fiber.Map{"status": "queued"})
	})
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		close(c.in)
		return errors.Join(fmt.Errorf("listen on %s: %w", o.listen, err), <-committed)
	}
	served := make(chan error, 1)
	go func() { served <- app.Listener(ln) }()
	log.Info("durable listening", "addr", ln.Addr().String())
	if ready != nil {
		ready <- ln.Addr()
	}
	var serveErr error
	select {
	case err := <-served:
		serveErr = fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := app.ShutdownWithContext(shutdownCtx); err != nil {
			serveErr = fmt.Errorf("shut down: %w", err)
		} else {
			serveErr = <-served
		}
	}
	// No handler runs any more: nothing sends on c.in.
	close(c.in)
	err = errors.Join(serveErr, <-committed)
	log.Info("durable stopped", "deliveries", c.stored, "commits", c.commits)
	return err
}

// delivery is one verified webhook waiting for its row to be committed.
type delivery struct {
	id, event string
	received  time.Time
	done      chan error // receives the commit's outcome
}

// committer owns the database: the only goroutine that writes it.
type committer struct {
	db     *sql.DB
	insert *sql.Stmt
	in     chan *delivery
	// stored and commits count the deliveries loop committed and its
	// transactions; read them after it returned.
	stored, commits int
}

// openCommitter opens (creating it and its directory) the database at path
// with one connection
// in WAL mode with synchronous=FULL, as flakeship's store does.
func openCommitter(ctx context.Context, path string) (*committer, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(abs), 0o700); err != nil {
		return nil, fmt.Errorf("create directory of %s: %w", path, err)
	}
	dsn := "file:" + (&url.URL{Path: abs}).EscapedPath() +
		"?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=synchronous(FULL)&_txlock=immediate"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	db.SetMaxOpenConns(1)
	db.SetMaxIdleConns(1)
	if _, err := db.ExecContext(ctx, schema); err != nil {
		return nil, errors.Join(fmt.Errorf("create table in %s: %w", path, err), db.Close())
	}
	insert, err := db.PrepareContext(ctx,
		`INSERT INTO deliveries (delivery_id, event, received_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING`)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("prepare insert: %w", err), db.Close())
	}
	// Room for one batch: the deliveries that arrive while a commit syncs
	// wait here for the next.
	return &committer{db: db, insert: insert, in: make(chan *delivery, maxBatch)}, nil
}

// loop commits deliveries until c.in is closed and drained, then closes the
// database. Each round takes the first delivery that waits and every other
// already waiting, up to maxBatch, and stores them in one transaction.
func (c *committer) loop() error {
	batch := make([]*delivery, 0, maxBatch)
	for first := range c.in {
		batch = append(batch[:0], first)
	drain:
		for len(batch) < maxBatch {
			select {
			case d, ok := <-c.in:
				if !ok {
					break drain
				}
				batch = append(batch, d)
			default:
				break drain
			}
		}
		err := c.commit(batch)
		for _, d := range batch {
			d.done <- err
		}
	}
	return errors.Join(c.insert.Close(), c.db.Close())
}

// commit stores batch in one transaction.
func (c *committer) commit(batch []*delivery) error {
	ctx := context.Background()
	tx, err := c.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer tx.Rollback() // a no-op once committed
	insert := tx.StmtContext(ctx, c.insert)
	for _, d := range batch {
		if _, err := insert.ExecContext(ctx, d.id, d.event, d.received.Format(time.RFC3339Nano)); err != nil {
			return fmt.Errorf("insert delivery %q: %w", d.id, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	c.stored += len(batch)
	c.commits++
	return nil
}
