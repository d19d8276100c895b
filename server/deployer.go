package server

import (
	"context"
	"io"

	"github.com/flakeship/flakeship/deploy"
	"github.com/flakeship/flakeship/forge"
)

// Deployer is what the server needs of the deploy queue.
type Deployer interface {
	// SubmitPush stores a deploy of ev for the named target (and ev's
	// delivery id, in the same transaction) and queues it. It returns the
	// deploy and duplicate=true, storing nothing, when the delivery id was
	// seen before for that target. When it returns nil the deploy is durable.
	SubmitPush(ctx context.Context, target string, ev forge.PushEvent) (d *deploy.Deploy, duplicate bool, err error)
}

// Deploys is what the server reads of stored deploys (the deploy queue).
type Deploys interface {
	// Get returns one deploy, or an error wrapping deploy.ErrNotFound.
	Get(ctx context.Context, id int64) (*deploy.Deploy, error)
	// List returns deploys, newest first.
	List(ctx context.Context, f deploy.Filter) ([]*deploy.Deploy, error)
}

// Operator is what the write API, the pages and the read API need of the
// deploy queue beyond webhooks. Errors: deploy.ErrUnknownTarget and
// deploy.ErrNotFound (404), deploy.ErrInvalid (400), *deploy.TransitionError
// and deploy.ErrNothingToRollBack (409), deploy.ErrClosed (503).
type Operator interface {
	Deploys
	// Deploy queues a manual deploy of target (trigger "manual").
	Deploy(ctx context.Context, target string, req deploy.ManualRequest) (*deploy.Deploy, error)
	// Rollback queues a deploy (trigger "rollback") that makes the build
	// that ran before the current one current again.
	Rollback(ctx context.Context, target string) (*deploy.Deploy, error)
	// Cancel cancels a queued deploy, or a running one still fetching or
	// building.
	Cancel(ctx context.Context, id int64) error
	// Targets lists every configured target with what runs now.
	Targets(ctx context.Context) ([]deploy.TargetStatus, error)
	// WriteLog writes deploy id's log as it is now to w; with follow it
	// then keeps writing what is added until the deploy ends or ctx ends,
	// calling w's Flush() error method, if it has one, after each piece.
	WriteLog(ctx context.Context, id int64, w io.Writer, follow bool) error
}

// DeliveryObserver is told how each webhook delivery was answered, for
// metrics.
type DeliveryObserver interface {
	// Delivery is called once per delivery with its forge and HTTP status.
	Delivery(kind forge.Kind, status int)
}
