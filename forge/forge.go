// Package forge holds the forge-neutral vocabulary that every other package
// speaks: which forge a delivery came from, the push it describes, and the
// commit statuses flakeship posts back.
package forge

import "fmt"

// Kind names a forge implementation.
type Kind string

// The forges flakeship understands. Gitea is an alias of Forgejo: both speak
// the same webhook payloads and the same /api/v1 status API.
const (
	GitHub  Kind = "github"
	Forgejo Kind = "forgejo"
)

// ParseKind turns a configured forge name into a Kind ("gitea" is accepted as
// an alias of "forgejo").
func ParseKind(s string) (Kind, error) {
	switch s {
	case "github":
		return GitHub, nil
	case "forgejo", "gitea":
		return Forgejo, nil
	}
	return "", fmt.Errorf("unknown forge %q (want github, forgejo or gitea)", s)
}

// CommitState is the state of a commit status as forges understand it.
type CommitState string

// Commit status states shared by GitHub and Forgejo.
const (
	Pending CommitState = "pending"
	Success CommitState = "success"
	Failure CommitState = "failure"
	Error   CommitState = "error"
)

// PushEvent is all that survives of a delivery past the server: a validated
// push of one commit to one branch of one repository.
type PushEvent struct {
	Forge      Kind
	DeliveryID string // idempotency key, from the forge's delivery header
	Repo       string // "owner/name", validated
	Branch     string // "main", never "refs/heads/main"
	SHA        string // full 40-hex head commit, validated
	Forced     bool
	Pusher     string
	Author     string // author of the head commit, if the payload names one
	Message    string // message of the head commit, if the payload has it
}

// Status is one commit status, posted by a notifier.
type Status struct {
	Repo        string // "owner/name"
	SHA         string // full hex
	Context     string // e.g. "flakeship/app"
	Description string // one short line
	TargetURL   string // link to the deploy page
	State       CommitState
}

// ShortSHA is the 7-character display form of a commit id (the whole of a
// shorter one).
func ShortSHA(sha string) string {
	if len(sha) > 7 {
		return sha[:7]
	}
	return sha
}
