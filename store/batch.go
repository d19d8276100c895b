package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/flakeship/flakeship/deploy"
	"github.com/flakeship/flakeship/forge"
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

// Delivered returns the id of the deploy a delivery created for target, or
// 0.
func (b *batchTx) Delivered(ctx context.Context, f forge.Kind, deliveryID, target string) (int64, error) {
	var id int64
	err := b.stmts.findDelivery.QueryRowContext(ctx, string(f), deliveryID, target).Scan(&id)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return 0, nil
	case err != nil:
		return 0, fmt.Errorf("store: look up delivery %q: %w", deliveryID, err)
	}
	return id, nil
}

// NextID returns the id the next Create gives.
func (b *batchTx) NextID(ctx context.Context) (int64, error) {
	var id int64
	if err := b.stmts.nextID.QueryRowContext(ctx).Scan(&id); err != nil {
		return 0, fmt.Errorf("store: next deploy id: %w", err)
	}
	return id, nil
}

// Create stores d within the transaction, as Store.Create does, and sets
// d.ID; a d.ID set before (from NextID) is the id it is stored as.
func (b *batchTx) Create(ctx context.Context, d *deploy.Deploy) error {
	want := d.ID
	id, err := b.stmts.insert(ctx, d, want)
	if err == nil && want != 0 && id != want {
		err = fmt.Errorf("stored as deploy %d, not %d as planned", id, want)
	}
	if err != nil {
		return fmt.Errorf("store: create deploy of %s@%s: %w", d.Target, forge.ShortSHA(d.SHA), err)
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
