# flakeship deploying two services of this machine: one from GitHub, one
# from a Forgejo instance. Each service runs the program from its profile
# and is restarted by flakeship (and by nothing else) after each deploy.
#
# Import it beside flakeship's module (the flake's nixosModules.default).
# Secrets are files outside the Nix store, like agenix or sops-nix make.
{ ... }:
{
  services.flakeship = {
    enable = true;
    listen = "127.0.0.1:8080";
    publicUrl = "https://deploy.example.com";
    adminTokenFile = "/run/secrets/flakeship-admin-token";

    targets.web = {
      forge = "github";
      repo = "acme/web";
      healthUrl = "http://127.0.0.1:3000/healthz";
      webhookSecretFile = "/run/secrets/web-webhook";
      tokenFile = "/run/secrets/github-token"; # commit statuses
    };

    targets.api = {
      forge = "forgejo";
      repo = "acme/api";
      forgeUrl = "https://code.example.com/";
      branch = "production";
      attr = "packages.x86_64-linux.api";
      healthUrl = "http://127.0.0.1:4000/health";
      healthTimeout = "1m";
      webhookSecretFile = "/run/secrets/api-webhook";
      tokenFile = "/run/secrets/forgejo-token";
    };
  };

  # The deployed services: flakeship sets /nix/var/nix/profiles/flakeship/<name>
  # to each new build and restarts <name>.service.
  systemd.services.web = {
    wantedBy = [ "multi-user.target" ];
    serviceConfig = {
      ExecStart = "/nix/var/nix/profiles/flakeship/web/bin/web";
      DynamicUser = true;
    };
  };
  systemd.services.api = {
    wantedBy = [ "multi-user.target" ];
    serviceConfig = {
      ExecStart = "/nix/var/nix/profiles/flakeship/api/bin/api --port 4000";
      DynamicUser = true;
    };
  };

  # flakeship behind TLS: forges send webhooks to
  # https://deploy.example.com/hooks/github and /hooks/forgejo.
  services.nginx = {
    enable = true;
    virtualHosts."deploy.example.com" = {
      enableACME = true;
      forceSSL = true;
      locations."/".proxyPass = "http://127.0.0.1:8080";
    };
  };
  security.acme = {
    acceptTerms = true;
    defaults.email = "admin@example.com";
  };
}
