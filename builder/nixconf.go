package builder

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strings"

	"github.com/flakeship/flakeship/config"
)

// WriteNixConf writes conf, nix.conf lines that hold secrets (access
// tokens), to path with mode 0600, replacing the file whole; an empty conf
// removes it, so no old token lingers. Nix.Conf then has nix read it: a
// token on nix's command line would be readable by every user of the
// machine (ps, /proc/<pid>/cmdline), and one in nix's environment by a
// fixed-output derivation that names it in impureEnvVars. A file is read
// by nix alone: a build's sandbox, or its build user, cannot reach it.
func WriteNixConf(path string, conf config.Secret) error {
	if !conf.IsSet() {
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove nix.conf: %w", err)
		}
		return nil
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("write nix.conf: %w", err)
	}
	f, err := os.CreateTemp(dir, ".nix.conf-*") // mode 0600
	if err != nil {
		return fmt.Errorf("write nix.conf: %w", err)
	}
	tmp := f.Name()
	_, err = f.WriteString(conf.Reveal())
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write nix.conf: %w", err)
	}
	return nil
}

// userConfFiles is the list NIX_USER_CONF_FILES gives nix: conf first, so
// its settings win, then the files nix reads when that variable is not set,
// so the user's own configuration still applies. environ is the
// environment nix will have ("KEY=value" entries; see childEnv).
func userConfFiles(conf string, environ []string) string {
	return strings.Join(append([]string{conf}, defaultUserConfFiles(environ)...), ":")
}

// defaultUserConfFiles are the user configuration files nix (2.8 and newer)
// reads for environ, highest priority first: those in NIX_USER_CONF_FILES
// if it is set, else nix/nix.conf in $XDG_CONFIG_HOME (default
// $HOME/.config) and then in each of $XDG_CONFIG_DIRS (default /etc/xdg).
// A file that does not exist is skipped by nix.
func defaultUserConfFiles(environ []string) []string {
	get := func(name string) (string, bool) {
		for _, kv := range environ {
			if k, v, ok := strings.Cut(kv, "="); ok && k == name {
				return v, true
			}
		}
		return "", false
	}
	if list, ok := get("NIX_USER_CONF_FILES"); ok {
		var files []string
		for _, f := range strings.Split(list, ":") {
			if f != "" {
				files = append(files, f)
			}
		}
		return files
	}
	var dirs []string
	if home, _ := get("XDG_CONFIG_HOME"); home != "" {
		dirs = append(dirs, home)
	} else if home, _ := get("HOME"); home != "" {
		dirs = append(dirs, filepath.Join(home, ".config"))
	} else if u, err := user.Current(); err == nil && u.HomeDir != "" {
		// nix takes the home directory from the user database then.
		dirs = append(dirs, filepath.Join(u.HomeDir, ".config"))
	}
	configDirs, _ := get("XDG_CONFIG_DIRS")
	if configDirs == "" {
		configDirs = "/etc/xdg"
	}
	for _, d := range strings.Split(configDirs, ":") {
		if d != "" {
			dirs = append(dirs, d)
		}
	}
	files := make([]string, len(dirs))
	for i, d := range dirs {
		files[i] = filepath.Join(d, "nix", "nix.conf")
	}
	return files
}
