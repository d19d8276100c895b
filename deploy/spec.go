package deploy

import (
	"path/filepath"

	"github.com/flakeship/flakeship/builder"
	"github.com/flakeship/flakeship/config"
)

// SpecFor turns a configured target into what the builder needs. It is the
// one place that decides where a target's git cache lives.
func SpecFor(t config.Target, c *config.Config) builder.Spec {
	return builder.Spec{
		Name:          t.Name,
		CloneURL:      t.CloneURL,
		Branch:        t.Branch,
		Token:         t.Token,
		CacheDir:      filepath.Join(c.StateDir, "git", t.Name+".git"),
		Attr:          t.Attr,
		NixCache:      filepath.Join(c.StateDir, "nix-cache", t.Name),
		Nix:           c.Nix,
		NixFlags:      append([]string(nil), c.NixFlags...),
		Activate:      t.Activate,
		NixOSAction:   t.NixOSAction,
		Unit:          t.Unit,
		SystemdScope:  t.SystemdScope,
		Profile:       t.Profile,
		HealthURL:     t.HealthURL,
		HealthTimeout: t.HealthTimeout,
	}
}
