# flakeship switching this machine itself to the NixOS configuration of a
# repository's flake on every push to its main branch. Switching a system
# needs root, so flakeship runs as root here (runAsRoot follows from
# activate = "nixos"), and it rolls back to the previous system when the
# health URL does not answer after the switch.
{ ... }:
{
  services.flakeship = {
    enable = true;
    publicUrl = "https://deploy.example.com";

    targets.host = {
      forge = "github";
      repo = "acme/infra";
      activate = "nixos";
      nixosAction = "switch";
      attr = "nixosConfigurations.web1.config.system.build.toplevel";
      healthUrl = "http://127.0.0.1:3000/healthz"; # a service of the new system
      buildTimeout = "1h";
      webhookSecretFile = "/run/secrets/infra-webhook";
    };
  };
}
