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
	lf, err := openLog(path, []string{"tok-SECRET-123", "", "hook-s3cret"})
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
