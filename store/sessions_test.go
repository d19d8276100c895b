package store

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/flakeship/flakeship/deploy"
)

// sessionAt is a session whose id hash is name's bytes padded to 32, made
// and last seen at the given times, with fingerprint fp.
func sessionAt(name, fp string, created, seen time.Time) deploy.Session {
	h := make([]byte, 32)
	copy(h, name)
	return deploy.Session{IDHash: h, Role: "admin", Fingerprint: []byte(fp), CreatedAt: created, LastSeen: seen}
}

// storedSessions returns the names (see sessionAt) of the stored sessions, sorted.
func storedSessions(t *testing.T, s *Store) []string {
	t.Helper()
	rows, err := s.read.Query(`SELECT id_hash FROM sessions`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var names []string
	for rows.Next() {
		var h []byte
		if err := rows.Scan(&h); err != nil {
			t.Fatal(err)
		}
		names = append(names, string(bytes.TrimRight(h, "\x00")))
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	slices.Sort(names)
	return names
}

func TestSessionsRoundTripAndSurviveAReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "flakeship.db")
	s := openTestStore(t, path)
	ctx := context.Background()
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 123456789, time.FixedZone("CET", 3600))
	want := sessionAt("one", "fp-admin", t0, t0)
	want.Role = "read"
	if err := s.CreateSession(ctx, want, deploy.SessionLimits{Fingerprints: [][]byte{[]byte("fp-admin")}}); err != nil {
		t.Fatal(err)
	}
	if err := s.TouchSession(ctx, want.IDHash, t0.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	// A touch never moves LastSeen back.
	if err := s.TouchSession(ctx, want.IDHash, t0.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = openTestStore(t, path)
	got, err := s.Session(ctx, want.IDHash)
	if err != nil {
		t.Fatal(err)
	}
	if got.Role != "read" || string(got.Fingerprint) != "fp-admin" || !bytes.Equal(got.IDHash, want.IDHash) ||
		!got.CreatedAt.Equal(t0) || !got.LastSeen.Equal(t0.Add(time.Hour)) {
		t.Errorf("session after a reopen = %+v, want %+v last seen an hour later", got, want)
	}

	if err := s.DeleteSession(ctx, want.IDHash); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Session(ctx, want.IDHash); !errors.Is(err, deploy.ErrNotFound) {
		t.Errorf("deleted session: %v, want ErrNotFound", err)
	}
	if err := s.DeleteSession(ctx, want.IDHash); err != nil {
		t.Errorf("deleting it again: %v, want no error", err)
	}
	if err := s.TouchSession(ctx, want.IDHash, t0); err != nil {
		t.Errorf("touching a deleted session: %v, want no error", err)
	}
}

func TestCreateSessionEndsTheSessionsItsLimitsEnd(t *testing.T) {
	s := newTestStore(t)
	ctx := context.Background()
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	limits := deploy.SessionLimits{
		IdleBefore:    now.Add(-12 * time.Hour),
		CreatedBefore: now.Add(-7 * 24 * time.Hour),
		Fingerprints:  [][]byte{[]byte("fp-admin"), []byte("fp-read")},
	}
	old := []deploy.Session{
		sessionAt("fresh", "fp-admin", now.Add(-time.Hour), now.Add(-time.Minute)),
		sessionAt("reader", "fp-read", now.Add(-time.Hour), now.Add(-time.Minute)),
		sessionAt("idle", "fp-admin", now.Add(-13*time.Hour), now.Add(-12*time.Hour-time.Second)),
		sessionAt("just-not-idle", "fp-admin", now.Add(-13*time.Hour), now.Add(-12*time.Hour)),
		sessionAt("too-old", "fp-admin", now.Add(-7*24*time.Hour-time.Second), now),
		sessionAt("old-token", "fp-before", now.Add(-time.Hour), now),
	}
	every := deploy.SessionLimits{Fingerprints: [][]byte{[]byte("fp-admin"), []byte("fp-read"), []byte("fp-before")}}
	for _, sess := range old {
		// Stored as if by logins before the token changed.
		if err := s.CreateSession(ctx, sess, every); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.CreateSession(ctx, sessionAt("new", "fp-admin", now, now), limits); err != nil {
		t.Fatal(err)
	}
	if got, want := storedSessions(t, s), []string{"fresh", "just-not-idle", "new", "reader"}; !slices.Equal(got, want) {
		t.Errorf("sessions kept %q, want %q", got, want)
	}

	// Beyond Max, the sessions last seen longest ago end; the new one stays.
	limits.Max = 2
	if err := s.CreateSession(ctx, sessionAt("newest", "fp-read", now, now.Add(time.Second)), limits); err != nil {
		t.Fatal(err)
	}
	if got, want := storedSessions(t, s), []string{"new", "newest"}; !slices.Equal(got, want) {
		t.Errorf("sessions kept with Max 2: %q, want %q", got, want)
	}

	// With no token configured, every other session ends.
	if err := s.CreateSession(ctx, sessionAt("alone", "fp-x", now, now), deploy.SessionLimits{}); err != nil {
		t.Fatal(err)
	}
	if got, want := storedSessions(t, s), []string{"alone"}; !slices.Equal(got, want) {
		t.Errorf("sessions kept with no fingerprint: %q, want %q", got, want)
	}
}

func TestCreateSessionRefusesAnIncompleteSession(t *testing.T) {
	s := newTestStore(t)
	now := time.Now()
	for _, sess := range []deploy.Session{
		{Role: "admin", Fingerprint: []byte("fp"), CreatedAt: now, LastSeen: now},
		{IDHash: []byte("h"), Fingerprint: []byte("fp"), CreatedAt: now, LastSeen: now},
		{IDHash: []byte("h"), Role: "admin", CreatedAt: now, LastSeen: now},
	} {
		if err := s.CreateSession(context.Background(), sess, deploy.SessionLimits{}); err == nil {
			t.Errorf("CreateSession(%+v) stored it", sess)
		}
	}
	if got := storedSessions(t, s); len(got) != 0 {
		t.Errorf("stored %q", got)
	}
}
