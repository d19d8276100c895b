package builder

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/flakeship/flakeship/config"
	"github.com/flakeship/flakeship/internal/testenv"
)

func TestWriteNixConfIsPrivateAndReplacedWhole(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state", "nix.conf")
	if err := WriteNixConf(path, "access-tokens = github.com=ghp_one\n"); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", fi.Mode().Perm())
	}
	if err := WriteNixConf(path, "access-tokens = github.com=ghp_two\n"); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); string(b) != "access-tokens = github.com=ghp_two\n" {
		t.Errorf("after the second write the file holds %q", b)
	}
	if entries, _ := os.ReadDir(filepath.Dir(path)); len(entries) != 1 {
		t.Errorf("the directory holds %d files, want the conf alone", len(entries))
	}
	// No setting: no file, so no old token stays on disk.
	for range 2 {
		if err := WriteNixConf(path, ""); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("an empty conf left the file: %v", err)
		}
	}
}

func TestDefaultUserConfFilesAreNixs(t *testing.T) {
	tests := []struct {
		name    string
		environ []string
		want    []string
	}{
		{"home", []string{"HOME=/home/u"}, []string{"/home/u/.config/nix/nix.conf", "/etc/xdg/nix/nix.conf"}},
		{"XDG_CONFIG_HOME wins over HOME", []string{"HOME=/home/u", "XDG_CONFIG_HOME=/cfg"},
			[]string{"/cfg/nix/nix.conf", "/etc/xdg/nix/nix.conf"}},
		{"XDG_CONFIG_DIRS in order", []string{"HOME=/home/u", "XDG_CONFIG_DIRS=/a:/b"},
			[]string{"/home/u/.config/nix/nix.conf", "/a/nix/nix.conf", "/b/nix/nix.conf"}},
		{"NIX_USER_CONF_FILES replaces the rest", []string{"HOME=/home/u", "NIX_USER_CONF_FILES=/x.conf:/y.conf"},
			[]string{"/x.conf", "/y.conf"}},
		{"an empty NIX_USER_CONF_FILES names none", []string{"HOME=/home/u", "NIX_USER_CONF_FILES="}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := defaultUserConfFiles(tc.environ); !slices.Equal(got, tc.want) {
				t.Errorf("defaultUserConfFiles = %q, want %q", got, tc.want)
			}
		})
	}
	if got, want := userConfFiles("/state/nix.conf", []string{"NIX_USER_CONF_FILES=/x.conf"}), "/state/nix.conf:/x.conf"; got != want {
		t.Errorf("userConfFiles = %q, want %q", got, want)
	}
}

// TestNixBuildReadsTheTokensFromFlakeshipsConf runs the real nix with the
// environment Build gives it and asks it, with show-config, which access
// tokens it has: flakeship's, merged with the user's own configuration,
// which still applies.
func TestNixBuildReadsTheTokensFromFlakeshipsConf(t *testing.T) {
	testenv.Require(t, "nix")
	dir := t.TempDir()
	userConf := filepath.Join(dir, "xdg", "nix", "nix.conf")
	if err := os.MkdirAll(filepath.Dir(userConf), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(userConf, []byte("access-tokens = example.org=user-tok\nmax-jobs = 7\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("XDG_CONFIG_HOME", filepath.Join(dir, "xdg"))
	t.Setenv("NIX_USER_CONF_FILES", "") // restored after the test
	os.Unsetenv("NIX_USER_CONF_FILES")  // nix's default list, not an empty one

	cfg := &config.Config{NixSecrets: []config.NixSetting{{Name: "extra-access-tokens", Value: "github.com=ghp_fromFlakeship"}}}
	n := &Nix{Flags: testenv.NixFlags(), Conf: filepath.Join(dir, "state", "nix.conf")}
	if err := WriteNixConf(n.Conf, cfg.NixConf()); err != nil {
		t.Fatal(err)
	}
	env, err := n.env(Spec{})
	if err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	out, err := outputCommandEnv(context.Background(), &log, env, n.binary(Spec{}), append(n.flags(Spec{}), "show-config", "--json")...)
	if err != nil {
		t.Fatalf("nix show-config: %v\n%s", err, log.String())
	}
	var settings struct {
		AccessTokens struct {
			Value map[string]string `json:"value"`
		} `json:"access-tokens"`
		MaxJobs struct {
			Value int `json:"value"`
		} `json:"max-jobs"`
	}
	if err := json.Unmarshal(out, &settings); err != nil {
		t.Fatalf("decode show-config: %v", err)
	}
	want := map[string]string{"github.com": "ghp_fromFlakeship", "example.org": "user-tok"}
	if got := settings.AccessTokens.Value; len(got) != len(want) || got["github.com"] != want["github.com"] || got["example.org"] != want["example.org"] {
		t.Errorf("nix's access-tokens = %v, want %v (flakeship's, then the user's)", got, want)
	}
	if settings.MaxJobs.Value != 7 {
		t.Errorf("max-jobs = %d, want the user's 7: the user's nix.conf no longer applies", settings.MaxJobs.Value)
	}
	if strings.Contains(strings.Join(n.flags(Spec{}), " "), "ghp_") {
		t.Error("a token is on nix's command line")
	}
	t.Logf("nix read access tokens for %d hosts from flakeship's conf and the user's", len(settings.AccessTokens.Value))
}
