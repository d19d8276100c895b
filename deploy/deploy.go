// Package deploy owns the deploy record, its state machine, the queue that
// runs one deploy per target at a time, and the runner that walks a deploy
// through fetch, build, activate and verify.
package deploy

import (
	"context"
	"errors"
	"time"

	"github.com/flakeship/flakeship/forge"
)

// Trigger says what started a deploy.
type Trigger string

// The triggers of a deploy.
const (
	TriggerPush     Trigger = "push"
	TriggerManual   Trigger = "manual"
	TriggerRollback Trigger = "rollback"
	TriggerRetry    Trigger = "retry"
)

// Step is one pipeline step of a deploy with its timing.
type Step struct {
	Name       string     `json:"name"` // fetch, build, activate, verify
	StartedAt  time.Time  `json:"started_at"`
	FinishedAt *time.Time `json:"finished_at"`
	OK         bool       `json:"ok"`
}

// Deploy is one deploy of one commit to one target: the JSON record of
// DESIGN.md. Only Advance changes State.
type Deploy struct {
	ID           int64      `json:"id"`
	Target       string     `json:"target"`
	Forge        forge.Kind `json:"forge"`
	Repo         string     `json:"repo"`
	Branch       string     `json:"branch"`
	SHA          string     `json:"sha"`
	Trigger      Trigger    `json:"trigger"`
	State        State      `json:"state"`
	Generation   int        `json:"generation"` // profile generation it made current; 0 until activated
	CreatedAt    time.Time  `json:"created_at"`
	StartedAt    *time.Time `json:"started_at"`
	FinishedAt   *time.Time `json:"finished_at"`
	Steps        []Step     `json:"steps"`
	Error        string     `json:"error"`
	SupersededBy *int64     `json:"superseded_by"`
	URL          string     `json:"url"`
	Author       string     `json:"author,omitempty"`
	Message      string     `json:"message,omitempty"`
	Pusher       string     `json:"pusher,omitempty"`
	DeliveryID   string     `json:"delivery_id,omitempty"`
	OutPath      string     `json:"out_path,omitempty"`
	RetryOf      *int64     `json:"retry_of,omitempty"`

	// statusText, when set, is the description of its final commit
	// status where its state's own says too little (which commit
	// superseded it, which one a rollback restored, why it was refused).
	// It is not stored: a status posted again after a restart says less.
	statusText string
}

// ErrNotFound is returned by a Store for an unknown deploy.
var ErrNotFound = errors.New("not found")

// ErrDuplicateDelivery is returned by Store.Create when the delivery id was
// stored before; the returned deploy id is the first delivery's.
var ErrDuplicateDelivery = errors.New("duplicate delivery")

// Filter selects deploys in Store.List. Zero fields select everything.
type Filter struct {
	Target string
	State  State
	Limit  int // 0: the store's default (50); capped at 1000
}

// StoreTx writes deploys within one transaction of Store.Batch.
type StoreTx interface {
	// Delivered returns the id of the deploy that a delivery created for
	// target (the delivery id as forge sent it), or 0 when the delivery was
	// never stored.
	Delivered(ctx context.Context, forge forge.Kind, deliveryID, target string) (int64, error)
	// NextID returns the id that follows every id given so far: a caller
	// that plans several deploys gives them NextID, NextID+1, ... itself.
	NextID(ctx context.Context) (int64, error)
	// Create is Store.Create within the transaction: d.ID is set at once, and
	// the deploy is durable when the transaction commits. A d.ID set before
	// (planned from NextID) is the id it is stored as; its delivery must
	// have been looked up with Delivered, and a known one fails the
	// transaction. d may be stored in its final state, superseded by a
	// deploy stored before it in the transaction. A Create that returns
	// ErrDuplicateDelivery wrote nothing and leaves the transaction usable.
	Create(ctx context.Context, d *Deploy) error
	// Update is Store.Update within the transaction; it also sees deploys
	// created earlier in it.
	Update(ctx context.Context, d *Deploy) error
}

// Store records deploys durably. The deploy package defines it; package store
// implements it on SQLite. Every method is safe for concurrent use.
type Store interface {
	// Create stores d as a new deploy, with its delivery id (if d.DeliveryID
	// is not empty) in the same transaction, and sets d.ID. When the delivery
	// id is known already it stores nothing and returns the first deploy's id
	// with ErrDuplicateDelivery. When Create returns nil the deploy is durable.
	Create(ctx context.Context, d *Deploy) error
	// Update writes every field of d (found by d.ID).
	Update(ctx context.Context, d *Deploy) error
	// Batch runs fn with one transaction and commits it: when Batch returns
	// nil, everything fn wrote is durable, after one sync of the disk for
	// all of it; when fn or the commit fails, nothing fn wrote is stored
	// and Batch returns the error. fn must not call the Store itself.
	Batch(ctx context.Context, fn func(tx StoreTx) error) error
	// Get returns one deploy or ErrNotFound.
	Get(ctx context.Context, id int64) (*Deploy, error)
	// List returns deploys, newest (highest id) first.
	List(ctx context.Context, f Filter) ([]*Deploy, error)
	// Unfinished returns every deploy not in a terminal state, oldest first.
	Unfinished(ctx context.Context) ([]*Deploy, error)
	// LastSucceeded returns the newest succeeded deploy of a target, or
	// ErrNotFound.
	LastSucceeded(ctx context.Context, target string) (*Deploy, error)
	// MarkStatusPosted records that the final commit status of a deploy
	// reached the forge, or that it needs none.
	MarkStatusPosted(ctx context.Context, id int64) error
	// Unposted returns the finished deploys, finished at or after since,
	// whose final status is not marked posted, oldest first.
	Unposted(ctx context.Context, since time.Time) ([]*Deploy, error)
	// Prune deletes, in one transaction, up to r.Limit deploys that r lets
	// go, oldest first, with their delivery ids, and returns their ids;
	// fewer than r.Limit means none is left to delete now. Before it
	// commits it calls gone (if not nil) with those ids.
	Prune(ctx context.Context, r PruneRule, gone func(ids []int64)) ([]int64, error)
}
