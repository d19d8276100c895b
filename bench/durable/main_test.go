package main

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// startDurable runs the durable floor on 127.0.0.1 with a database in a
// temporary directory, stopped when the test ends, and returns its hook URL
// and the database's path.
func startDurable(t *testing.T, secret []byte) (hook, db string) {
	t.Helper()
	dir := t.TempDir()
	secretFile := filepath.Join(dir, "secret")
	if err := os.WriteFile(secretFile, secret, 0o600); err != nil {
		t.Fatal(err)
	}
	db = filepath.Join(dir, "durable.db")
	ctx, stop := context.WithCancel(context.Background())
	ready := make(chan net.Addr, 1)
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, options{listen: "127.0.0.1:0", secretFile: secretFile, db: db},
			slog.New(slog.DiscardHandler), ready)
	}()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("durable: %v", err)
		}
	})
	select {
	case addr := <-ready:
		return "http://" + addr.String() + "/hooks/github", db
	case err := <-done:
		t.Fatalf("durable stopped before listening: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("durable did not listen within 30s")
	}
	return "", ""
}

// post sends body to hook as GitHub delivery id, signed with secret, and
// returns the answer's status.
func post(t *testing.T, client *http.Client, hook string, secret, body []byte, id string) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, hook, bytes.NewReader(body))
	if err != nil {
		t.Error(err)
		return 0
	}
	mac := hmac.New(sha256.New, secret)
	mac.Write(body)
	req.Header.Set("X-Hub-Signature-256", "sha256="+hex.EncodeToString(mac.Sum(nil)))
	req.Header.Set("X-GitHub-Event", "push")
	req.Header.Set("X-GitHub-Delivery", id)
	resp, err := client.Do(req)
	if err != nil {
		t.Error(err)
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestEveryAcceptedDeliveryIsCommittedBeforeItsAnswer(t *testing.T) {
	secret := []byte("durable-floor-secret")
	hook, db := startDurable(t, secret)
	// A second connection sees only what was committed.
	reader, err := sql.Open("sqlite", "file:"+db+"?mode=ro&_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close()
	committed := func(id string) bool {
		var n int
		if err := reader.QueryRow(`SELECT count(*) FROM deliveries WHERE delivery_id = ?`, id).Scan(&n); err != nil {
			t.Error(err)
		}
		return n == 1
	}

	const senders, each = 32, 20
	client := &http.Client{Timeout: 30 * time.Second}
	body := []byte(`{"ref":"refs/heads/main"}`)
	var wg sync.WaitGroup
	for s := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				id := fmt.Sprintf("delivery-%d-%d", s, i)
				if code := post(t, client, hook, secret, body, id); code != http.StatusAccepted {
					t.Errorf("%s answered %d, want 202", id, code)
					return
				}
				if !committed(id) {
					t.Errorf("%s answered 202 before its row was committed", id)
				}
			}
		}()
	}
	wg.Wait()

	if code := post(t, client, hook, []byte("another secret"), body, "forged"); code != http.StatusUnauthorized {
		t.Errorf("a wrong signature answered %d, want 401", code)
	}
	if committed("forged") {
		t.Errorf("a delivery with a wrong signature was stored")
	}
	// A redelivery is answered as the first was, and stored once.
	if code := post(t, client, hook, secret, body, "delivery-0-0"); code != http.StatusAccepted {
		t.Errorf("a redelivery answered %d, want 202", code)
	}
	var rows int
	if err := reader.QueryRow(`SELECT count(*) FROM deliveries`).Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if rows != senders*each {
		t.Errorf("%d rows stored, want %d", rows, senders*each)
	}
	var mode string
	if err := reader.QueryRow(`PRAGMA journal_mode`).Scan(&mode); err != nil || mode != "wal" {
		t.Errorf("journal mode %q (%v), want wal", mode, err)
	}
}

func TestCommitsBatchWhatWaits(t *testing.T) {
	db := filepath.Join(t.TempDir(), "durable.db")
	c, err := openCommitter(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	n := maxBatch + 10
	ds := make([]*delivery, n)
	for i := range ds {
		ds[i] = &delivery{id: fmt.Sprint(i), event: "push", received: time.Now(), done: make(chan error, 1)}
	}
	// The first maxBatch fill the channel's room before the committer
	// starts, so the first batch is full; the rest follow.
	for _, d := range ds[:maxBatch] {
		c.in <- d
	}
	go func() {
		for _, d := range ds[maxBatch:] {
			c.in <- d
		}
		close(c.in)
	}()
	done := make(chan error, 1)
	go func() { done <- c.loop() }()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for i, d := range ds {
		if err := <-d.done; err != nil {
			t.Fatalf("delivery %d: %v", i, err)
		}
	}
	t.Logf("%d deliveries in %d commits", c.stored, c.commits)
	if c.stored != n || c.commits < 2 || c.commits > 1+n-maxBatch {
		t.Errorf("%d deliveries in %d commits, want %d in 2 to %d", c.stored, c.commits, n, 1+n-maxBatch)
	}
}
