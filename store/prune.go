package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"

	"github.com/flakeship/flakeship/deploy"
)

// Prune deletes, in one write transaction, up to r.Limit deploys that r lets
// go (deploy.PruneRule says which), oldest first, with their delivery ids.
// Before it commits it calls gone, if not nil, with the ids it deleted, so
// that what lives beside the store (the deploys' logs) goes first: a crash
// in between leaves a deploy without its log, never a log without its
// deploy; a ctx cancelled once gone was called does not undo the deletes.
// It returns the ids deleted; fewer than r.Limit means none is left to
// delete now.
func (s *Store) Prune(ctx context.Context, r deploy.PruneRule, gone func(ids []int64)) ([]int64, error) {
	ids, err := s.prune(ctx, r, gone)
	if err != nil {
		return nil, fmt.Errorf("store: prune deploys: %w", err)
	}
	return ids, nil
}

func (s *Store) prune(ctx context.Context, r deploy.PruneRule, gone func(ids []int64)) ([]int64, error) {
	if r.Limit <= 0 {
		return nil, errors.New("limit must be positive")
	}
	if r.Keep < 0 {
		return nil, errors.New("keep must not be negative")
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	// The transaction is not bound to ctx, its statements are: a cancelled
	// ctx (a stop while pruning) stops the statement at once, and the
	// deferred Rollback ends the transaction before Prune returns. Bound to
	// ctx, database/sql would roll it back from a goroutine of its own and
	// give the writer back later, after Close even, which would then find
	// the WAL still open and could not record a clean stop.
	tx, err := s.write.BeginTx(context.WithoutCancel(ctx), nil)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback() // a no-op once committed

	var ids []int64
	target, more, err := firstTarget(ctx, tx, "")
	for ; err == nil && more && len(ids) < r.Limit; target, more, err = firstTarget(ctx, tx, target) {
		var found []int64
		found, err = prunable(ctx, tx, target, r, r.Limit-len(ids))
		if err != nil {
			return nil, fmt.Errorf("target %s: %w", target, err)
		}
		ids = append(ids, found...)
	}
	if err != nil {
		return nil, err
	}
	if len(ids) == 0 {
		return nil, nil
	}
	// The deliveries go with their deploys (ON DELETE CASCADE); deploys
	// that name a deleted one as superseded_by or retry_of keep a NULL.
	args := make([]any, len(ids))
	for i, id := range ids {
		args[i] = id
	}
	res, err := tx.ExecContext(ctx, `DELETE FROM deploys WHERE id IN (`+marks(len(ids))+`)`, args...)
	if err != nil {
		return nil, fmt.Errorf("delete: %w", err)
	}
	if n, err := res.RowsAffected(); err != nil || n != int64(len(ids)) {
		return nil, fmt.Errorf("delete: %d of %d deploys deleted (%v)", n, len(ids), err)
	}
	if gone != nil {
		gone(ids)
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("commit: %w", err)
	}
	return ids, nil
}

// firstTarget returns the first target name after after that has deploys,
// and false when there is none: one step of the deploys_target index each,
// where SELECT DISTINCT would read the whole index.
func firstTarget(ctx context.Context, tx *sql.Tx, after string) (string, bool, error) {
	var target string
	err := tx.QueryRowContext(ctx,
		`SELECT target FROM deploys WHERE target > ? ORDER BY target LIMIT 1`, after).Scan(&target)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return "", false, nil
	case err != nil:
		return "", false, fmt.Errorf("list targets: %w", err)
	}
	return target, true, nil
}

// prunable returns up to limit ids of deploys of target that r lets go,
// oldest first.
func prunable(ctx context.Context, tx *sql.Tx, target string, r deploy.PruneRule, limit int) ([]int64, error) {
	// Only deploys below the newest r.Keep of the target may go.
	var below int64
	if r.Keep > 0 {
		err := tx.QueryRowContext(ctx,
			`SELECT id FROM deploys WHERE target = ? ORDER BY id DESC LIMIT 1 OFFSET ?`,
			target, r.Keep-1).Scan(&below)
		if errors.Is(err, sql.ErrNoRows) {
			return nil, nil // the target has no more than Keep deploys
		}
		if err != nil {
			return nil, fmt.Errorf("find its newest %d deploys: %w", r.Keep, err)
		}
	}
	keep, err := needed(ctx, tx, target)
	if err != nil {
		return nil, err
	}

	var ended, running []any
	for _, st := range deploy.States() {
		if st.Terminal() {
			ended = append(ended, string(st))
		} else {
			running = append(running, string(st))
		}
	}
	before := formatTime(r.Before)
	q := `SELECT d.id FROM deploys d
		WHERE d.target = ?
		AND d.state IN (` + marks(len(ended)) + `)
		AND d.created_at < ? AND d.finished_at < ?
		AND NOT EXISTS (SELECT 1 FROM deliveries v WHERE v.deploy_id = d.id AND v.received_at >= ?)
		AND NOT EXISTS (SELECT 1 FROM deploys l WHERE l.retry_of = d.id AND l.state IN (` + marks(len(running)) + `))`
	args := []any{target}
	args = append(args, ended...)
	args = append(args, before, before, before)
	args = append(args, running...)
	if r.Keep > 0 {
		q += ` AND d.id < ?`
		args = append(args, below)
	}
	if len(keep) > 0 {
		q += ` AND d.id NOT IN (` + marks(len(keep)) + `)`
		for _, id := range keep {
			args = append(args, id)
		}
	}
	q += ` ORDER BY d.id LIMIT ?`
	args = append(args, limit)

	rows, err := tx.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("find old deploys: %w", err)
	}
	defer rows.Close()
	var ids []int64
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return nil, fmt.Errorf("find old deploys: %w", err)
		}
		ids = append(ids, id)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("find old deploys: %w", err)
	}
	return ids, nil
}

// needed returns the ids of the succeeded deploys of target that the queue
// still reads, whatever their age (deploy.PruneRule): the newest one (the
// build that runs), the newest that is not a rollback (the replay guard's
// high-water mark) and the newest of another build (what a rollback goes
// back to).
func needed(ctx context.Context, tx *sql.Tx, target string) ([]int64, error) {
	var (
		cur        int64
		generation int
		outPath    string
	)
	err := tx.QueryRowContext(ctx, `SELECT id, generation, out_path FROM deploys
		WHERE target = ? AND state = ? ORDER BY id DESC LIMIT 1`,
		target, string(deploy.Succeeded)).Scan(&cur, &generation, &outPath)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("find its current deploy: %w", err)
	}
	keep := []int64{cur}
	for _, c := range []struct {
		what, q string
		args    []any
	}{
		{"newest deploy that is not a rollback",
			`SELECT id FROM deploys WHERE target = ? AND state = ? AND "trigger" != ? ORDER BY id DESC LIMIT 1`,
			[]any{target, string(deploy.Succeeded), string(deploy.TriggerRollback)}},
		{"deploy a rollback goes back to",
			`SELECT id FROM deploys WHERE target = ? AND state = ? AND generation > 0
				AND generation != ? AND out_path != ? ORDER BY id DESC LIMIT 1`,
			[]any{target, string(deploy.Succeeded), generation, outPath}},
	} {
		var id int64
		err := tx.QueryRowContext(ctx, c.q, c.args...).Scan(&id)
		switch {
		case errors.Is(err, sql.ErrNoRows):
		case err != nil:
			return nil, fmt.Errorf("find its %s: %w", c.what, err)
		default:
			keep = append(keep, id)
		}
	}
	return keep, nil
}

// marks is n comma-separated SQL parameters.
func marks(n int) string {
	return strings.Repeat("?, ", n-1) + "?"
}
