# The flakeship server, built with buildGoModule. flake.nix calls it with
# this flake's revision as version and a buildGoModule whose Go is at least
# go.mod's `go` line.
{
  lib,
  buildGoModule,
  version ? "dev",
}:
buildGoModule {
  pname = "flakeship";
  inherit version;

  # Only what the build and the flake's `go` check read (see the file):
  # Go files, the module files, what the code embeds and every testdata
  # directory. Editing docs, scripts or nix files rebuilds nothing.
  # Builtins only, so scripts/check-src tests this very source without
  # nixpkgs.
  src = import ./source.nix { };

  # The NAR hash of the directory `go mod vendor` writes. scripts/check-nix
  # recomputes it offline and fails, printing the right value, when go.mod
  # or go.sum (or an import) changed it.
  vendorHash = "sha256-e4H49Hc9ZW9OzLga5KtOLJsT7k9v4+Qwd9RT86zq/7A=";

  subPackages = [ "." ];

  # Go writes telemetry under $HOME; a build without the sandbox would
  # otherwise create /homeless-shelter, which makes every later nix build
  # on that machine fail.
  preBuild = ''
    export HOME=$TMPDIR GOTELEMETRY=off
  '';

  ldflags = [
    "-s"
    "-w"
    "-X main.version=${version}"
  ];

  # The test suite needs real git, nix and a systemd user manager, none of
  # which the build sandbox has; the flake's checks and scripts/test run it.
  doCheck = false;

  meta = {
    description = "Deploys a Nix build on every push: forge webhook in, build, switch, health check, rollback, commit status out";
    mainProgram = "flakeship";
    platforms = lib.platforms.linux ++ lib.platforms.darwin;
  };
}
