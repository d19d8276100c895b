package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/flakeship/flakeship/deploy"
)

var _ deploy.SessionStore = (*Store)(nil)

// CreateSession stores sess and, in the same transaction, deletes the
// sessions limits end: idle or too old, made with a token that is not
// configured any more, and the ones last seen longest ago beyond
// limits.Max (sess counts among those kept).
func (s *Store) CreateSession(ctx context.Context, sess deploy.Session, limits deploy.SessionLimits) error {
	if err := s.createSession(ctx, sess, limits); err != nil {
		return fmt.Errorf("store: create session: %w", err)
	}
	return nil
}

func (s *Store) createSession(ctx context.Context, sess deploy.Session, limits deploy.SessionLimits) error {
	if len(sess.IDHash) == 0 || len(sess.Fingerprint) == 0 || sess.Role == "" {
		return errors.New("a session needs an id hash, a role and a fingerprint")
	}
	tx, err := s.write.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback() // a no-op once committed

	// SQLite takes an empty list after NOT IN: with no token configured,
	// every session ends.
	marks := strings.TrimSuffix(strings.Repeat("?,", len(limits.Fingerprints)), ",")
	args := []any{formatTime(limits.IdleBefore), formatTime(limits.CreatedBefore)}
	for _, f := range limits.Fingerprints {
		args = append(args, f)
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM sessions
		WHERE last_seen < ? OR created_at < ? OR fingerprint NOT IN (`+marks+`)`, args...); err != nil {
		return fmt.Errorf("delete ended sessions: %w", err)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO sessions (id_hash, role, fingerprint, created_at, last_seen)
		VALUES (?, ?, ?, ?, ?)`, sess.IDHash, sess.Role, sess.Fingerprint,
		formatTime(sess.CreatedAt), formatTime(sess.LastSeen)); err != nil {
		return err
	}
	if limits.Max > 0 {
		if _, err := tx.ExecContext(ctx, `DELETE FROM sessions WHERE id_hash IN (
			SELECT id_hash FROM sessions ORDER BY last_seen DESC, created_at DESC LIMIT -1 OFFSET ?)`,
			limits.Max); err != nil {
			return fmt.Errorf("delete sessions beyond %d: %w", limits.Max, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

// Session returns the session whose id hashes to idHash, or an error that
// is deploy.ErrNotFound.
func (s *Store) Session(ctx context.Context, idHash []byte) (deploy.Session, error) {
	sess := deploy.Session{IDHash: idHash}
	var created, seen string
	err := s.read.QueryRowContext(ctx, `SELECT role, fingerprint, created_at, last_seen
		FROM sessions WHERE id_hash = ?`, idHash).Scan(&sess.Role, &sess.Fingerprint, &created, &seen)
	if errors.Is(err, sql.ErrNoRows) {
		err = deploy.ErrNotFound
	}
	if err == nil {
		if sess.CreatedAt, err = parseTime(created); err == nil {
			sess.LastSeen, err = parseTime(seen)
		}
	}
	if err != nil {
		return deploy.Session{}, fmt.Errorf("store: get session: %w", err)
	}
	return sess, nil
}

// TouchSession moves the session's LastSeen forward to seen (never back);
// an unknown session is no error.
func (s *Store) TouchSession(ctx context.Context, idHash []byte, seen time.Time) error {
	t := formatTime(seen)
	if _, err := s.write.ExecContext(ctx, `UPDATE sessions SET last_seen = ? WHERE id_hash = ? AND last_seen < ?`,
		t, idHash, t); err != nil {
		return fmt.Errorf("store: touch session: %w", err)
	}
	return nil
}

// DeleteSession deletes one session; an unknown session is no error.
func (s *Store) DeleteSession(ctx context.Context, idHash []byte) error {
	if _, err := s.write.ExecContext(ctx, `DELETE FROM sessions WHERE id_hash = ?`, idHash); err != nil {
		return fmt.Errorf("store: delete session: %w", err)
	}
	return nil
}
