package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/flakeship/flakeship/deploy"
)

// Batch runs fn with one write transaction and commits it, so that all of
// fn's writes cost one sync of the WAL: the deploy queue stores every
// delivery that arrived while the previous commit was syncing in one Batch
// (group commit), and answers none of them before Batch returns. When fn or
// the commit fails, the transaction is rolled back, the ids Create set are
// reset to 0, and Batch returns the error.
func (s *Store) Batch(ctx context.Context, fn func(tx deploy.StoreTx) error) error {
	tx, err := s.write.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("store: begin batch: %w", err)
	}
	b := &batchTx{stmts: s.stmts.in(ctx, tx)}
	err = fn(b)
	if err == nil {
		if err = tx.Commit(); err != nil {
			err = fmt.Errorf("store: commit batch: %w", err)
		}
	}
	if err != nil {
		for _, d := range b.created {
			d.ID = 0
		}
		if rerr := tx.Rollback(); rerr != nil && !errors.Is(rerr, sql.ErrTxDone) {
			err = errors.Join(err, fmt.Errorf("store: roll back batch: %w", rerr))
		}
		return err
	}
	return nil
}

// batchTx is deploy.StoreTx on one write transaction.
type batchTx struct {
	stmts   writeStmts       // bound to the transaction
	created []*deploy.Deploy // whose ids to reset if the batch fails
}

// Create stores d within the transaction, as Store.Create does, and sets
// d.ID.
func (b *batchTx) Create(ctx context.Context, d *deploy.Deploy) error {
	id, err := b.stmts.insert(ctx, d)
	if err != nil {
		return fmt.Errorf("store: create deploy of %s@%s: %w", d.Target, short(d.SHA), err)
	}
	d.ID = id
	b.created = append(b.created, d)
	return nil
}

// Update writes every field of d within the transaction, as Store.Update
// does.
func (b *batchTx) Update(ctx context.Context, d *deploy.Deploy) error {
	if err := b.stmts.update(ctx, d); err != nil {
		return fmt.Errorf("store: update deploy %d: %w", d.ID, err)
	}
	return nil
}
