package builder

import (
	"slices"
	"strings"
)

// passedVars are the variables of flakeship's own environment that the
// commands it runs (nix, nix-env, systemctl, switch-to-configuration) get.
// Everything else is left out: flakeship's environment holds its secrets
// (FLAKESHIP_ADMIN_TOKEN, a target's WEBHOOK_SECRET and TOKEN, the
// credentials directory they are read from), and nix hands any variable of
// its environment to a fixed-output derivation that names it in
// impureEnvVars, which a pushed flake can do.
var passedVars = []string{
	// Finding programs and the user's files; nix and git need a home.
	"PATH", "HOME", "USER", "LOGNAME", "TMPDIR",
	// Language, time zone and glibc's locales (NixOS sets LOCALE_ARCHIVE).
	"LANG", "LANGUAGE", "TZ", "TZDIR", "LOCALE_ARCHIVE",
	// Where nix finds its configuration and caches; systemctl --user finds
	// its manager through XDG_RUNTIME_DIR or the session bus.
	"XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "XDG_CONFIG_DIRS", "XDG_CACHE_HOME",
	"XDG_DATA_HOME", "XDG_DATA_DIRS", "XDG_STATE_HOME",
	"DBUS_SESSION_BUS_ADDRESS", "DBUS_SYSTEM_BUS_ADDRESS",
	// Which store and daemon nix uses, and how it is configured. Not
	// NIX_CONFIG: settings given there would be readable by a build, so
	// they belong in a nix.conf file or FLAKESHIP_NIX_FLAGS.
	"NIX_REMOTE", "NIX_DAEMON_SOCKET_PATH", "NIX_PATH", "NIX_CONF_DIR",
	"NIX_USER_CONF_FILES", "NIX_STORE_DIR", "NIX_STATE_DIR", "NIX_LOG_DIR",
	// Certificates nix and git trust.
	"NIX_SSL_CERT_FILE", "SSL_CERT_FILE", "SSL_CERT_DIR",
	// Proxies nix fetches through. nixpkgs' fetchers list these in
	// impureEnvVars on purpose: they are network settings, not secrets of
	// flakeship.
	"http_proxy", "https_proxy", "ftp_proxy", "all_proxy", "no_proxy",
	"HTTP_PROXY", "HTTPS_PROXY", "FTP_PROXY", "ALL_PROXY", "NO_PROXY",
}

// passedPrefixes are prefixes of passed variable names: the locale
// categories LC_ALL, LC_CTYPE and the rest.
var passedPrefixes = []string{"LC_"}

// flakeshipPrefix starts the names of flakeship's own settings, some of
// them secrets; no command gets one, whatever the lists above say.
const flakeshipPrefix = "FLAKESHIP_"

// childEnv is the environment of every command flakeship runs: the
// variables of environ (flakeship's own, "KEY=value" entries) that are
// listed in passedVars or start with a passedPrefixes entry, and then set,
// entries the caller means the command to have (a per-target
// XDG_CACHE_HOME, flakeship's NIX_USER_CONF_FILES), which replace a passed
// variable of the same name. A name that repeats in environ counts once,
// the first time, as for os.Getenv. The result is sorted by name.
func childEnv(environ []string, set ...string) []string {
	vars := map[string]string{}
	for _, kv := range environ {
		k, _, ok := strings.Cut(kv, "=")
		if !ok || !passed(k) {
			continue
		}
		if _, dup := vars[k]; !dup {
			vars[k] = kv
		}
	}
	for _, kv := range set {
		k, _, ok := strings.Cut(kv, "=")
		if !ok || k == "" || strings.HasPrefix(k, flakeshipPrefix) {
			continue
		}
		vars[k] = kv
	}
	names := make([]string, 0, len(vars))
	for k := range vars {
		names = append(names, k)
	}
	slices.Sort(names)
	out := make([]string, len(names))
	for i, k := range names {
		out[i] = vars[k]
	}
	return out
}

// passed reports whether a variable of flakeship's environment called name
// is passed on to the commands it runs.
func passed(name string) bool {
	if name == "" || strings.HasPrefix(name, flakeshipPrefix) {
		return false
	}
	if slices.Contains(passedVars, name) {
		return true
	}
	for _, p := range passedPrefixes {
		if strings.HasPrefix(name, p) && len(name) > len(p) {
			return true
		}
	}
	return false
}
