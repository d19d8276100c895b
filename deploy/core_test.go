package deploy

import (
	"slices"
	"testing"

	"github.com/flakeship/flakeship/config"
)

// TestTheCoreHoldsOnlyTheSecretsADeployUses: the admin and read tokens and
// the webhook secrets are checked by the server and never given to a fetch or
// a build, so the deploy core drops them from its copy of the configuration
// (what it does not hold, no deploy log or error of it can show), while the
// git token a fetch is given stays and is redacted from deploy logs. The
// caller's configuration is left as it was.
func TestTheCoreHoldsOnlyTheSecretsADeployUses(t *testing.T) {
	cfg := &config.Config{
		AdminToken: "admin-tok", ReadToken: "read-tok",
		Targets: []config.Target{{Name: "app", Token: "git-tok", WebhookSecret: "hook-secret"}},
	}
	core := coreConfig(cfg)
	if core.AdminToken != "" || core.ReadToken != "" || core.Targets[0].WebhookSecret != "" {
		t.Errorf("the core's configuration keeps admin %q, read %q, webhook secret %q; want none",
			core.AdminToken, core.ReadToken, core.Targets[0].WebhookSecret)
	}
	if core.Targets[0].Token != "git-tok" {
		t.Errorf("the core's configuration lost the git token a fetch needs")
	}
	if cfg.AdminToken != "admin-tok" || cfg.Targets[0].WebhookSecret != "hook-secret" {
		t.Errorf("coreConfig changed the caller's configuration: %+v", cfg)
	}
	secrets := buildSecrets(core)
	if !slices.Contains(secrets, "git-tok") {
		t.Errorf("deploy logs do not redact the git token: %q", secrets)
	}
	for _, s := range []string{"admin-tok", "read-tok", "hook-secret"} {
		if slices.Contains(secrets, s) {
			t.Errorf("the core holds %q among the secrets of its logs", s)
		}
	}
}
