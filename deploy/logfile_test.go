package deploy

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLogFileRedactsSecretsEvenAcrossWrites(t *testing.T) {
	path := filepath.Join(t.TempDir(), "logs", "7.log")
	lf, err := openLog(path, []string{"tok-SECRET-123", "", "hook-s3cret"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	lf.Printf("fetch with tok-SECRET-123 from origin")
	// A secret split between two writes.
	fmt.Fprint(lf, "hmac key hook-s3")
	fmt.Fprint(lf, "cret in one line\nand a last line without newline tok-SECRET-")
	fmt.Fprint(lf, "123")
	if err := lf.Close(); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	want := "fetch with [redacted] from origin\nhmac key [redacted] in one line\nand a last line without newline [redacted]\n"
	if string(got) != want {
		t.Errorf("log =\n%s\nwant\n%s", got, want)
	}
	if strings.Contains(string(got), "SECRET") || strings.Contains(string(got), "s3cret") {
		t.Error("a secret reached the log")
	}
}

func TestLogPathIsPerDeploy(t *testing.T) {
	if got, want := logPath("/state", 17), filepath.Join("/state", "logs", "17.log"); got != want {
		t.Errorf("logPath = %s, want %s", got, want)
	}
}

// readLog closes lf and returns what its file holds.
func readLog(t *testing.T, lf *logFile, path string) string {
	t.Helper()
	if err := lf.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestLogFileRedactsASecretSplitAtEveryPoint writes a line holding a
// secret in two writes, split at every point of the secret, in every place
// a line can hold it, and then in one write per byte.
func TestLogFileRedactsASecretSplitAtEveryPoint(t *testing.T) {
	const secret = "ghp_S3cr3tT0ken"
	lines := map[string]string{
		"inside a line":       "token " + secret + " used\n",
		"starting a line":     secret + " used\n",
		"ending a line":       "token " + secret + "\n",
		"alone":               secret + "\n",
		"twice":               secret + secret + "\n",
		"after a lookalike":   "ghp_S3cr " + secret + "\n",
		"with no last line":   "token " + secret,
		"between other lines": "first\ntoken " + secret + "\nlast\n",
	}
	checked := 0
	for name, line := range lines {
		want := strings.ReplaceAll(line, secret, "[redacted]")
		if !strings.HasSuffix(want, "\n") {
			want += "\n"
		}
		at := strings.Index(line, secret)
		for i := 1; i < len(secret); i++ {
			path := filepath.Join(t.TempDir(), "1.log")
			lf, err := openLog(path, []string{"other-secret", secret}, 0)
			if err != nil {
				t.Fatal(err)
			}
			for _, part := range []string{line[:at+i], line[at+i:]} {
				if n, err := lf.Write([]byte(part)); n != len(part) || err != nil {
					t.Fatalf("Write = %d, %v", n, err)
				}
			}
			if got := readLog(t, lf, path); got != want {
				t.Errorf("%s, split after %d bytes of the secret: log =\n%q\nwant\n%q", name, i, got, want)
			}
			checked++
		}
		path := filepath.Join(t.TempDir(), "1.log")
		lf, err := openLog(path, []string{secret}, 0)
		if err != nil {
			t.Fatal(err)
		}
		for i := range len(line) {
			lf.Write([]byte{line[i]})
		}
		if got := readLog(t, lf, path); got != want {
			t.Errorf("%s, a byte per write: log =\n%q\nwant\n%q", name, got, want)
		}
		checked++
	}
	t.Logf("a split secret was redacted in all %d logs", checked)
}

// TestLogFileRedactsASecretOverThe64KiBPiece writes a line longer than the
// 64 KiB piece it is written in, with a secret over the edge of the piece,
// at every offset from it.
func TestLogFileRedactsASecretOverThe64KiBPiece(t *testing.T) {
	secret := "hook-s3cret-0123456789"
	for off := 1; off < len(secret); off++ {
		path := filepath.Join(t.TempDir(), "1.log")
		lf, err := openLog(path, []string{secret}, 0)
		if err != nil {
			t.Fatal(err)
		}
		// The first write passes the piece size inside the secret.
		head := strings.Repeat("x", maxPiece+1-off)
		fmt.Fprint(lf, head+secret[:off])
		fmt.Fprint(lf, secret[off:]+" tail\nnext line\n")
		got := readLog(t, lf, path)
		if want := head + "[redacted] tail\nnext line\n"; got != want {
			t.Errorf("offset %d: log is %d bytes ending %q, want %d ending %q", off, len(got), tail(got), len(want), tail(want))
		}
	}
	// A secret with a newline in it, split at its newline.
	path := filepath.Join(t.TempDir(), "1.log")
	lf, err := openLog(path, []string{"two\nlines"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprint(lf, "a two\n")
	fmt.Fprint(lf, "lines b\n")
	if got, want := readLog(t, lf, path), "a [redacted] b\n"; got != want {
		t.Errorf("log = %q, want %q", got, want)
	}
}

func tail(s string) string { return s[max(0, len(s)-40):] }

// TestLogFileStopsAtItsLimit writes four times the limit: the log holds
// whole lines up to the limit, then one line saying it was truncated, then
// only the runner's own lines; no write fails or waits.
func TestLogFileStopsAtItsLimit(t *testing.T) {
	const limit = 64 << 10
	path := filepath.Join(t.TempDir(), "1.log")
	lf, err := openLog(path, []string{"s3cret-tok"}, limit)
	if err != nil {
		t.Fatal(err)
	}
	lf.Printf("flakeship deploy 1")
	line := strings.Repeat("y", 90) + " s3cret-tok\n"
	written := 0
	for written < 4*limit {
		n, err := lf.Write([]byte(line))
		if n != len(line) || err != nil {
			t.Fatalf("Write = %d, %v after %d bytes", n, err, written)
		}
		written += n
	}
	if len(lf.pending) != 0 {
		t.Errorf("%d bytes are still held after the limit: discarded output must not pile up", len(lf.pending))
	}
	lf.Printf("== build failed: nix build: exit status 1")
	got := readLog(t, lf, path)

	marker := "== log truncated at 64 KiB (DEPLOY_LOG_LIMIT): the rest of the output is discarded\n"
	before, after, ok := strings.Cut(got, marker)
	if !ok {
		t.Fatalf("no truncation line in the log's end: %q", tail(got))
	}
	if len(before) > limit {
		t.Errorf("%d bytes before the truncation line, want at most the limit %d", len(before), limit)
	}
	if !strings.HasSuffix(before, "[redacted]\n") || strings.Contains(got, "s3cret") {
		t.Errorf("the log before the truncation line does not end in a whole redacted line: %q", tail(before))
	}
	if after != "== build failed: nix build: exit status 1\n" {
		t.Errorf("after the truncation line: %q, want the runner's last line alone", after)
	}
	t.Logf("wrote %d bytes to a log limited to %d: it holds %d (%d before the truncation line)", written, limit, len(got), len(before))

	// A limit in no whole unit is given in bytes; a line that would pass
	// the limit is left out whole.
	path = filepath.Join(t.TempDir(), "2.log")
	if lf, err = openLog(path, nil, 10); err != nil {
		t.Fatal(err)
	}
	fmt.Fprint(lf, "01234\n56789abcdef\n")
	if got, want := readLog(t, lf, path), "01234\n== log truncated at 10 bytes (DEPLOY_LOG_LIMIT): the rest of the output is discarded\n"; got != want {
		t.Errorf("log = %q, want %q", got, want)
	}
}
