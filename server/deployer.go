package server

import (
	"context"

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
