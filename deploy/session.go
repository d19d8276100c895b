package deploy

import (
	"context"
	"time"
)

// Session is one logged-in browser of the pages, as it is stored. The
// random id the browser's cookie carries is never stored: IDHash is its
// SHA-256, so a copy of the database opens no session. Nor is the token:
// Fingerprint is a MAC keyed by the token the session was made with, which
// tells whether that token is still the configured one.
type Session struct {
	IDHash      []byte    // SHA-256 of the session id
	Role        string    // what the session may do: "admin" or "read"
	Fingerprint []byte    // of the token the session was made with
	CreatedAt   time.Time // the login; the session ends a fixed time after it
	LastSeen    time.Time // its last use, to the minute; it ends when idle too long
}

// SessionLimits say which stored sessions are over, to be deleted.
type SessionLimits struct {
	// IdleBefore ends the sessions last seen before it.
	IdleBefore time.Time
	// CreatedBefore ends the sessions made before it.
	CreatedBefore time.Time
	// Fingerprints are those of the tokens configured now; a session with
	// any other was made with a token that changed since, and ends.
	Fingerprints [][]byte
	// Max is how many sessions may be kept at most; beyond it, those last
	// seen longest ago end. 0 means no bound.
	Max int
}

// SessionStore keeps the sessions of the pages. The deploy package defines
// it beside Store; package store implements it on SQLite, so sessions
// survive a restart and ending one ends it in every browser that holds its
// cookie. Every method is safe for concurrent use.
type SessionStore interface {
	// CreateSession stores s and, in the same transaction, deletes every
	// session that limits end. When it returns nil, s is durable.
	CreateSession(ctx context.Context, s Session, limits SessionLimits) error
	// Session returns the session whose id hashes to idHash, or an error
	// that is ErrNotFound.
	Session(ctx context.Context, idHash []byte) (Session, error)
	// TouchSession sets the session's LastSeen; an unknown session is no
	// error (it may have ended meanwhile).
	TouchSession(ctx context.Context, idHash []byte, seen time.Time) error
	// DeleteSession ends one session; an unknown session is no error.
	DeleteSession(ctx context.Context, idHash []byte) error
}
