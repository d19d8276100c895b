package builder

import (
	"bytes"
	"context"
	"slices"
	"strings"
	"testing"
)

// TestChildEnvPassesOnlyWhatCommandsNeed is the allow-list, variable by
// variable: what a command needs is kept, flakeship's settings and secrets
// and anything unknown are dropped.
func TestChildEnvPassesOnlyWhatCommandsNeed(t *testing.T) {
	tests := []struct {
		kv   string
		kept bool
	}{
		{"FLAKESHIP_ADMIN_TOKEN=adm1n", false},
		{"FLAKESHIP_READ_TOKEN=r3ad", false},
		{"FLAKESHIP_TARGET_X_TOKEN=ghp_x", false},
		{"FLAKESHIP_TARGET_X_WEBHOOK_SECRET=hook", false},
		{"FLAKESHIP_NIX_FLAGS=--option access-tokens github.com=ghp_x", false},
		{"FLAKESHIP_NIX_ACCESS_TOKENS=github.com=ghp_y", false},
		{"FLAKESHIP_STATE_DIR=/var/lib/flakeship", false},
		{"CREDENTIALS_DIRECTORY=/run/credentials/flakeship.service", false},
		{"STATE_DIRECTORY=/var/lib/flakeship", false},
		{"FOO=bar", false},
		{"AWS_SECRET_ACCESS_KEY=wJalr", false},
		{"NIX_CONFIG=access-tokens = github.com=ghp_z", false},
		{"GIT_ASKPASS=/bin/echo", false},
		{"INVOCATION_ID=0123", false},
		{"LC_=x", false},
		{"lang=en", false},
		{"PATH=/run/current-system/sw/bin:/usr/bin", true},
		{"HOME=/var/lib/flakeship", true},
		{"USER=flakeship", true},
		{"TMPDIR=/tmp", true},
		{"LANG=C.UTF-8", true},
		{"LC_ALL=C", true},
		{"LC_CTYPE=en_US.UTF-8", true},
		{"TZ=Europe/Berlin", true},
		{"LOCALE_ARCHIVE=/run/current-system/sw/lib/locale/locale-archive", true},
		{"XDG_RUNTIME_DIR=/run/user/0", true},
		{"XDG_CACHE_HOME=/var/cache/x", true},
		{"XDG_CONFIG_HOME=/etc/x", true},
		{"XDG_CONFIG_DIRS=/etc/xdg", true},
		{"DBUS_SESSION_BUS_ADDRESS=unix:path=/run/user/0/bus", true},
		{"NIX_REMOTE=daemon", true},
		{"NIX_PATH=nixpkgs=/nix/var/nix/profiles/per-user/root/channels/nixpkgs", true},
		{"NIX_SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt", true},
		{"NIX_CONF_DIR=/etc/nix", true},
		{"NIX_USER_CONF_FILES=/etc/flakeship/nix.conf", true},
		{"SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt", true},
		{"https_proxy=http://proxy:3128", true},
		{"NO_PROXY=localhost", true},
	}
	var environ []string
	for _, tc := range tests {
		environ = append(environ, tc.kv)
	}
	got := childEnv(environ)
	for _, tc := range tests {
		if kept := slices.Contains(got, tc.kv); kept != tc.kept {
			name, _, _ := strings.Cut(tc.kv, "=")
			if tc.kept {
				t.Errorf("%s was dropped; commands need it", name)
			} else {
				t.Errorf("%s was passed on", name)
			}
		}
	}
	for _, kv := range got {
		if strings.HasPrefix(kv, "FLAKESHIP_") {
			t.Errorf("%s was passed on", kv)
		}
	}
}

func TestChildEnvSetsTheCallersVariables(t *testing.T) {
	environ := []string{
		"PATH=/usr/bin", "PATH=/second/wins/not", "XDG_CACHE_HOME=/home/x/.cache",
		"FLAKESHIP_ADMIN_TOKEN=adm1n", "no-equals-sign", "=empty-name",
	}
	got := childEnv(environ, "XDG_CACHE_HOME=/state/nix-cache/app", "NIXOS_INSTALL_BOOTLOADER=",
		"FLAKESHIP_TARGET_APP_TOKEN=never")
	want := []string{"NIXOS_INSTALL_BOOTLOADER=", "PATH=/usr/bin", "XDG_CACHE_HOME=/state/nix-cache/app"}
	if !slices.Equal(got, want) {
		t.Errorf("childEnv = %q, want %q", got, want)
	}
	if got := childEnv(nil); len(got) != 0 {
		t.Errorf("childEnv(nil) = %q, want nothing", got)
	}
}

// TestCommandsRunWithTheChildEnv checks the one place that starts commands:
// a command sees the allow-listed environment, not flakeship's.
func TestCommandsRunWithTheChildEnv(t *testing.T) {
	t.Setenv("FLAKESHIP_ADMIN_TOKEN", "adm1n-env-test")
	t.Setenv("CREDENTIALS_DIRECTORY", "/run/credentials/flakeship.service")
	t.Setenv("LANG", "C.UTF-8")
	var log bytes.Buffer
	out, err := outputCommandEnv(context.Background(), &log, []string{"XDG_CACHE_HOME=/tmp/x"}, "env")
	if err != nil {
		t.Fatalf("env: %v\n%s", err, log.String())
	}
	env := strings.Split(strings.TrimSpace(string(out)), "\n")
	for _, bad := range []string{"FLAKESHIP_ADMIN_TOKEN=adm1n-env-test", "CREDENTIALS_DIRECTORY=/run/credentials/flakeship.service"} {
		if slices.Contains(env, bad) {
			t.Errorf("the command got %s", bad)
		}
	}
	for _, good := range []string{"LANG=C.UTF-8", "XDG_CACHE_HOME=/tmp/x"} {
		if !slices.Contains(env, good) {
			t.Errorf("the command did not get %s; it got %q", good, env)
		}
	}
}
