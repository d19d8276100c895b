package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/flakeship/flakeship/deploy"
	"github.com/flakeship/flakeship/forge"
)

// List limits (deploy.Filter.Limit).
const (
	defaultLimit = 50
	maxLimit     = 1000
)

// timeFormat is RFC 3339 with all nine fraction digits: in UTC it has a fixed
// width, so stored times sort as text, and it keeps every nanosecond.
const timeFormat = "2006-01-02T15:04:05.000000000Z07:00"

// deployColumns are the columns of a deploy, in the order scanDeploy reads.
const deployColumns = `id, target, forge, repo, branch, sha, "trigger", state,
	generation, created_at, started_at, finished_at, steps, error,
	superseded_by, url, author, message, pusher, delivery_id, out_path,
	retry_of`

// insertDeploy and updateDeploy take the arguments of deployArgs
// (insertDeployAs the id first, updateDeploy the id last).
const (
	insertDeploy = `INSERT INTO deploys (target, forge, repo, branch, sha,
	"trigger", state, generation, created_at, started_at, finished_at, steps,
	error, superseded_by, url, author, message, pusher, delivery_id, out_path,
	retry_of)
	VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`
	insertDeployAs = `INSERT INTO deploys (id, target, forge, repo, branch, sha,
	"trigger", state, generation, created_at, started_at, finished_at, steps,
	error, superseded_by, url, author, message, pusher, delivery_id, out_path,
	retry_of)
	VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`
	updateDeploy = `UPDATE deploys SET target = ?, forge = ?, repo = ?,
	branch = ?, sha = ?, "trigger" = ?, state = ?, generation = ?,
	created_at = ?, started_at = ?, finished_at = ?, steps = ?, error = ?,
	superseded_by = ?, url = ?, author = ?, message = ?, pusher = ?,
	delivery_id = ?, out_path = ?, retry_of = ?
	WHERE id = ?`
)

// Create stores d as a new deploy and sets d.ID. If d.DeliveryID is set,
// the delivery is recorded in the same transaction; if it was recorded
// before for d's forge and target, Create stores nothing, sets d.ID to the
// first deploy's id and returns an error that is deploy.ErrDuplicateDelivery.
// Times are stored in UTC; d.URL is stored as given. d.State must be a
// state deploy knows, and d.SupersededBy and d.RetryOf, when set, must name
// stored deploys.
func (s *Store) Create(ctx context.Context, d *deploy.Deploy) error {
	if err := s.create(ctx, d); err != nil {
		return fmt.Errorf("store: create deploy of %s@%s: %w", d.Target, forge.ShortSHA(d.SHA), err)
	}
	return nil
}

func (s *Store) create(ctx context.Context, d *deploy.Deploy) error {
	tx, err := s.write.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback() // a no-op once committed
	id, err := s.stmts.in(ctx, tx).insert(ctx, d, 0)
	if err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	d.ID = id
	return nil
}

// writeStmts are the prepared statements of insert and update.
type writeStmts struct {
	findDelivery, insertDeploy, insertDeployAs, insertDelivery, updateDeploy, nextID *sql.Stmt
}

// prepareWrites prepares writeStmts on db.
func prepareWrites(ctx context.Context, db *sql.DB) (writeStmts, error) {
	var (
		w    writeStmts
		errs []error
	)
	prepare := func(q string) *sql.Stmt {
		st, err := db.PrepareContext(ctx, q)
		if err != nil {
			errs = append(errs, fmt.Errorf("prepare %.40q: %w", q, err))
		}
		return st
	}
	w.findDelivery = prepare(`SELECT deploy_id FROM deliveries WHERE forge = ? AND delivery_id = ? AND target = ?`)
	w.insertDeploy = prepare(insertDeploy)
	w.insertDeployAs = prepare(insertDeployAs)
	w.insertDelivery = prepare(`INSERT INTO deliveries (forge, delivery_id, target, deploy_id, received_at) VALUES (?, ?, ?, ?, ?)`)
	w.updateDeploy = prepare(updateDeploy)
	// AUTOINCREMENT: the next id follows the largest ever given, which
	// sqlite_sequence holds (no row before the first deploy).
	w.nextID = prepare(`SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'deploys'), 0) + 1`)
	if err := errors.Join(errs...); err != nil {
		return writeStmts{}, errors.Join(err, w.close())
	}
	return w, nil
}

// close closes the statements that were prepared.
func (w writeStmts) close() error {
	var errs []error
	for _, st := range []*sql.Stmt{w.findDelivery, w.insertDeploy, w.insertDeployAs, w.insertDelivery, w.updateDeploy, w.nextID} {
		if st != nil {
			errs = append(errs, st.Close())
		}
	}
	return errors.Join(errs...)
}

// in returns the statements bound to tx.
func (w writeStmts) in(ctx context.Context, tx *sql.Tx) writeStmts {
	return writeStmts{
		findDelivery:   tx.StmtContext(ctx, w.findDelivery),
		insertDeploy:   tx.StmtContext(ctx, w.insertDeploy),
		insertDeployAs: tx.StmtContext(ctx, w.insertDeployAs),
		insertDelivery: tx.StmtContext(ctx, w.insertDelivery),
		updateDeploy:   tx.StmtContext(ctx, w.updateDeploy),
		nextID:         tx.StmtContext(ctx, w.nextID),
	}
}

// insert writes d and its delivery id with statements bound to a write
// transaction (in), as deploy id if id is not 0 (an id NextID gave), and
// returns d's id. For a delivery id stored before it writes nothing, sets
// d.ID to the first deploy's id and returns an error that is
// deploy.ErrDuplicateDelivery; with a planned id, whose delivery the caller
// looked up (Delivered), the deliveries' UNIQUE key refuses it instead.
func (w writeStmts) insert(ctx context.Context, d *deploy.Deploy, id int64) (int64, error) {
	args, err := deployArgs(d)
	if err != nil {
		return 0, err
	}
	// A planned deploy (id set) was looked up with Delivered already, in the
	// same transaction.
	if d.DeliveryID != "" && id == 0 {
		// The single writer and BEGIN IMMEDIATE make this look-up and the
		// inserts below atomic; UNIQUE (forge, delivery_id, target) stands
		// behind them, and refuses a planned deploy whose delivery is known.
		var first int64
		err := w.findDelivery.QueryRowContext(ctx, string(d.Forge), d.DeliveryID, d.Target).Scan(&first)
		switch {
		case err == nil:
			d.ID = first
			return 0, fmt.Errorf("%s delivery %q was stored as deploy %d: %w",
				d.Forge, d.DeliveryID, first, deploy.ErrDuplicateDelivery)
		case !errors.Is(err, sql.ErrNoRows):
			return 0, fmt.Errorf("look up delivery %q: %w", d.DeliveryID, err)
		}
	}

	var res sql.Result
	if id != 0 {
		res, err = w.insertDeployAs.ExecContext(ctx, append([]any{id}, args...)...)
	} else {
		res, err = w.insertDeploy.ExecContext(ctx, args...)
	}
	if err != nil {
		return 0, err
	}
	if id, err = res.LastInsertId(); err != nil {
		return 0, err
	}
	if d.DeliveryID != "" {
		// received_at is the deploy's creation: the deploy is made when the
		// delivery arrives.
		_, err := w.insertDelivery.ExecContext(ctx, string(d.Forge), d.DeliveryID, d.Target, id, formatTime(d.CreatedAt))
		if err != nil {
			return 0, fmt.Errorf("record delivery %q: %w", d.DeliveryID, err)
		}
	}
	return id, nil
}

// Update writes every field of d to the deploy d.ID, or returns an error
// that is deploy.ErrNotFound. It checks d as Create does. The deliveries
// recorded by Create stay as they are.
func (s *Store) Update(ctx context.Context, d *deploy.Deploy) error {
	if err := s.update(ctx, d); err != nil {
		return fmt.Errorf("store: update deploy %d: %w", d.ID, err)
	}
	return nil
}

func (s *Store) update(ctx context.Context, d *deploy.Deploy) error {
	// One statement outside a transaction commits by itself.
	return s.stmts.update(ctx, d)
}

// update writes every field of d, or returns deploy.ErrNotFound.
func (w writeStmts) update(ctx context.Context, d *deploy.Deploy) error {
	args, err := deployArgs(d)
	if err != nil {
		return err
	}
	res, err := w.updateDeploy.ExecContext(ctx, append(args, d.ID)...)
	if err != nil {
		return err
	}
	n, err := res.RowsAffected()
	if err != nil {
		return err
	}
	if n == 0 {
		return deploy.ErrNotFound
	}
	return nil
}

// Get returns the deploy id, or an error that is deploy.ErrNotFound.
func (s *Store) Get(ctx context.Context, id int64) (*deploy.Deploy, error) {
	row := s.read.QueryRowContext(ctx, `SELECT `+deployColumns+` FROM deploys WHERE id = ?`, id)
	d, err := scanDeploy(row)
	if errors.Is(err, sql.ErrNoRows) {
		err = deploy.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("store: get deploy %d: %w", id, err)
	}
	return d, nil
}

// List returns the deploys f selects, newest (highest id) first: at most
// f.Limit, 50 if it is not positive, and never more than 1000.
func (s *Store) List(ctx context.Context, f deploy.Filter) ([]*deploy.Deploy, error) {
	limit := f.Limit
	switch {
	case limit <= 0:
		limit = defaultLimit
	case limit > maxLimit:
		limit = maxLimit
	}
	var (
		where []string
		args  []any
	)
	// Only the conditions a filter sets, so SQLite can use an index for them.
	if f.Target != "" {
		where = append(where, "target = ?")
		args = append(args, f.Target)
	}
	if f.State != "" {
		where = append(where, "state = ?")
		args = append(args, string(f.State))
	}
	q := `SELECT ` + deployColumns + ` FROM deploys`
	if len(where) > 0 {
		q += ` WHERE ` + strings.Join(where, " AND ")
	}
	q += ` ORDER BY id DESC LIMIT ?`
	args = append(args, limit)
	ds, err := s.query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("store: list deploys (target %q, state %q): %w", f.Target, f.State, err)
	}
	return ds, nil
}

// Unfinished returns every deploy not in a terminal state, oldest first.
func (s *Store) Unfinished(ctx context.Context) ([]*deploy.Deploy, error) {
	// Create and Update store only known states, so "one of the states that
	// are not terminal" is "not terminal", and it can use the state index.
	var running []any
	for _, st := range deploy.States() {
		if !st.Terminal() {
			running = append(running, string(st))
		}
	}
	if len(running) == 0 {
		return []*deploy.Deploy{}, nil
	}
	marks := strings.Repeat("?, ", len(running)-1) + "?"
	ds, err := s.query(ctx,
		`SELECT `+deployColumns+` FROM deploys WHERE state IN (`+marks+`) ORDER BY id`, running...)
	if err != nil {
		return nil, fmt.Errorf("store: list unfinished deploys: %w", err)
	}
	return ds, nil
}

// LastSucceeded returns the newest succeeded deploy of target, or an error
// that is deploy.ErrNotFound.
func (s *Store) LastSucceeded(ctx context.Context, target string) (*deploy.Deploy, error) {
	row := s.read.QueryRowContext(ctx,
		`SELECT `+deployColumns+` FROM deploys WHERE target = ? AND state = ? ORDER BY id DESC LIMIT 1`,
		target, string(deploy.Succeeded))
	d, err := scanDeploy(row)
	if errors.Is(err, sql.ErrNoRows) {
		err = deploy.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("store: last succeeded deploy of %s: %w", target, err)
	}
	return d, nil
}

// query runs a SELECT of deployColumns on the reader pool. It returns an
// empty slice, not nil, when nothing matches.
func (s *Store) query(ctx context.Context, q string, args ...any) ([]*deploy.Deploy, error) {
	rows, err := s.read.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	ds := []*deploy.Deploy{}
	for rows.Next() {
		d, err := scanDeploy(rows)
		if err != nil {
			return nil, err
		}
		ds = append(ds, d)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	return ds, nil
}

// deployArgs are the column values of d for insertDeploy and updateDeploy.
// It refuses a state deploy does not know: Unfinished relies on that.
func deployArgs(d *deploy.Deploy) ([]any, error) {
	if _, err := deploy.ParseState(string(d.State)); err != nil {
		return nil, err
	}
	steps, err := encodeSteps(d.Steps)
	if err != nil {
		return nil, err
	}
	return []any{
		d.Target, string(d.Forge), d.Repo, d.Branch, d.SHA,
		string(d.Trigger), string(d.State), d.Generation,
		formatTime(d.CreatedAt), formatTimePtr(d.StartedAt), formatTimePtr(d.FinishedAt),
		steps, d.Error, int64Ptr(d.SupersededBy), d.URL,
		d.Author, d.Message, d.Pusher, d.DeliveryID, d.OutPath,
		int64Ptr(d.RetryOf),
	}, nil
}

// scanDeploy reads one row of deployColumns.
func scanDeploy(row interface{ Scan(...any) error }) (*deploy.Deploy, error) {
	var (
		d                     deploy.Deploy
		createdAt, steps      string
		startedAt, finishedAt sql.NullString
		supersededBy, retryOf sql.NullInt64
	)
	err := row.Scan(&d.ID, &d.Target, &d.Forge, &d.Repo, &d.Branch, &d.SHA,
		&d.Trigger, &d.State, &d.Generation, &createdAt, &startedAt, &finishedAt,
		&steps, &d.Error, &supersededBy, &d.URL, &d.Author, &d.Message,
		&d.Pusher, &d.DeliveryID, &d.OutPath, &retryOf)
	if err != nil {
		return nil, err
	}
	if d.CreatedAt, err = parseTime(createdAt); err != nil {
		return nil, fmt.Errorf("deploy %d created_at: %w", d.ID, err)
	}
	if d.StartedAt, err = parseTimePtr(startedAt); err != nil {
		return nil, fmt.Errorf("deploy %d started_at: %w", d.ID, err)
	}
	if d.FinishedAt, err = parseTimePtr(finishedAt); err != nil {
		return nil, fmt.Errorf("deploy %d finished_at: %w", d.ID, err)
	}
	if err := json.Unmarshal([]byte(steps), &d.Steps); err != nil {
		return nil, fmt.Errorf("deploy %d steps: %w", d.ID, err)
	}
	if supersededBy.Valid {
		d.SupersededBy = &supersededBy.Int64
	}
	if retryOf.Valid {
		d.RetryOf = &retryOf.Int64
	}
	return &d, nil
}

// encodeSteps is the JSON of steps with their times in UTC: "null" for no
// steps, "[]" for an empty list, so both read back as they were.
func encodeSteps(steps []deploy.Step) (string, error) {
	var utc []deploy.Step
	if steps != nil {
		utc = make([]deploy.Step, len(steps))
		for i, st := range steps {
			st.StartedAt = st.StartedAt.UTC()
			if st.FinishedAt != nil {
				f := st.FinishedAt.UTC()
				st.FinishedAt = &f
			}
			utc[i] = st
		}
	}
	b, err := json.Marshal(utc)
	if err != nil {
		return "", fmt.Errorf("encode steps: %w", err)
	}
	return string(b), nil
}

func formatTime(t time.Time) string {
	return t.UTC().Format(timeFormat)
}

func formatTimePtr(t *time.Time) any {
	if t == nil {
		return nil
	}
	return formatTime(*t)
}

func parseTime(s string) (time.Time, error) {
	return time.Parse(time.RFC3339Nano, s)
}

func parseTimePtr(s sql.NullString) (*time.Time, error) {
	if !s.Valid {
		return nil, nil
	}
	t, err := parseTime(s.String)
	if err != nil {
		return nil, err
	}
	return &t, nil
}

func int64Ptr(p *int64) any {
	if p == nil {
		return nil
	}
	return *p
}

// MarkStatusPosted records that the final commit status of deploy id reached
// the forge, or that it needs none. It returns an error that is
// deploy.ErrNotFound for an unknown deploy.
func (s *Store) MarkStatusPosted(ctx context.Context, id int64) error {
	res, err := s.write.ExecContext(ctx, `UPDATE deploys SET status_posted = 1 WHERE id = ?`, id)
	if err == nil {
		var n int64
		if n, err = res.RowsAffected(); err == nil && n == 0 {
			err = deploy.ErrNotFound
		}
	}
	if err != nil {
		return fmt.Errorf("store: mark status of deploy %d posted: %w", id, err)
	}
	return nil
}

// unpostedQuery selects the deploys that owe a status, finished at or after
// its argument. Without statistics SQLite would rather walk the whole table
// in id order than sort the few rows of the partial index: seconds at start-up
// on a store of a million deploys. INDEXED BY holds it to the index.
const unpostedQuery = `SELECT ` + deployColumns + ` FROM deploys INDEXED BY deploys_unposted
	WHERE status_posted = 0 AND finished_at >= ? ORDER BY id`

// Unposted returns the finished deploys, finished at or after since, whose
// final commit status is not marked posted, oldest first.
func (s *Store) Unposted(ctx context.Context, since time.Time) ([]*deploy.Deploy, error) {
	ds, err := s.query(ctx, unpostedQuery, formatTime(since))
	if err != nil {
		return nil, fmt.Errorf("store: list deploys with unposted statuses: %w", err)
	}
	return ds, nil
}
