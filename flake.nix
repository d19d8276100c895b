{
  description = "flakeship: a forge push webhook in, a deployed Nix build out";

  # The current stable release. go.mod needs Go 1.26 (its dependencies do:
  # modernc.org/sqlite, golang.org/x/*), which this release has; goFor below
  # falls back to go_1_26 (in nixpkgs since 25.11) should the default Go be
  # older, so the flake also builds against nixos-25.11.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;

      linuxSystems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      # flakeship deploys to Linux (systemd); it builds on darwin too, for
      # the client commands and development.
      systems = linuxSystems ++ [
        "x86_64-darwin"
        "aarch64-darwin"
      ];
      forSystems = systems: f: lib.genAttrs systems (system: f system nixpkgs.legacyPackages.${system});

      # The Go toolchain and builder that satisfy go.mod's `go 1.26` line.
      goFor = pkgs: if lib.versionAtLeast pkgs.go.version "1.26" then pkgs.go else pkgs.go_1_26;
      buildGoModuleFor =
        pkgs: if lib.versionAtLeast pkgs.go.version "1.26" then pkgs.buildGoModule else pkgs.buildGo126Module;
      # staticcheck built with a Go that understands go 1.26 code.
      goToolsFor =
        pkgs:
        if lib.versionAtLeast pkgs.go.version "1.26" then
          pkgs.go-tools
        else
          pkgs.go-tools.override { buildGoModule = pkgs.buildGo126Module; };

      version = self.shortRev or self.dirtyShortRev or "dirty";

      # Evaluates a NixOS configuration made of the module and one example;
      # enough of a system to check assertions and render the unit.
      evalExample =
        system: example:
        lib.nixosSystem {
          modules = [
            self.nixosModules.default
            example
            {
              nixpkgs.hostPlatform = system;
              boot.loader.grub.enable = false;
              fileSystems."/" = {
                device = "none";
                fsType = "tmpfs";
              };
              system.stateVersion = "26.05";
            }
          ];
        };

      examples = lib.mapAttrs' (file: _: lib.nameValuePair (lib.removeSuffix ".nix" file) (./nix/examples + "/${file}")) (
        lib.filterAttrs (file: type: type == "regular" && lib.hasSuffix ".nix" file) (builtins.readDir ./nix/examples)
      );
    in
    {
      packages = forSystems systems (
        system: pkgs: rec {
          flakeship = pkgs.callPackage ./nix/package.nix {
            inherit version;
            buildGoModule = buildGoModuleFor pkgs;
          };
          default = flakeship;
        }
      );

      apps = forSystems systems (
        system: pkgs: {
          default = {
            type = "app";
            program = lib.getExe self.packages.${system}.default;
            meta.description = "Run the flakeship server (the environment is its configuration)";
          };
        }
      );

      devShells = forSystems systems (
        system: pkgs: {
          default = pkgs.mkShell {
            packages = [
              (goFor pkgs)
              pkgs.gopls
              (goToolsFor pkgs)
              pkgs.nix
              pkgs.git
            ];
          };
        }
      );

      # RFC 166 style (the package was called nixfmt-rfc-style until 25.11).
      formatter = forSystems systems (system: pkgs: pkgs.nixfmt);

      nixosModules.default = lib.modules.importApply ./nix/module.nix { inherit self; };

      checks = forSystems linuxSystems (
        system: pkgs:
        let
          package = self.packages.${system}.default;
        in
        {
          inherit package;

          # gofmt, go vet, staticcheck and the tests that need no real git,
          # nix or systemd (those skip: testenv finds none of them here), on
          # the package's own vendored sources.
          go = package.overrideAttrs (old: {
            pname = "flakeship-go-checks";
            nativeBuildInputs = (old.nativeBuildInputs or [ ]) ++ [ (goToolsFor pkgs) ];
            buildPhase = ''
              runHook preBuild
              unformatted=$(find . -name '*.go' -not -path './vendor/*' -exec gofmt -l {} +)
              if [ -n "$unformatted" ]; then
                echo "gofmt would change:" >&2
                echo "$unformatted" >&2
                exit 1
              fi
              go vet ./...
              HOME=$TMPDIR staticcheck ./...
              # As buildGoModule's own checkPhase: tests may need real paths.
              GOFLAGS=''${GOFLAGS//-trimpath/} go test ./...
              runHook postBuild
            '';
            doCheck = false;
            installPhase = "touch $out";
          });
        }
        # Every example, evaluated with the real module: assertions pass and
        # the unit carries the rendered environment and credentials.
        // lib.mapAttrs' (
          name: example:
          let
            config = (evalExample system example).config;
            unit = config.systemd.units."flakeship.service".text;
          in
          lib.nameValuePair "example-${name}" (
            pkgs.runCommand "flakeship-example-${name}"
              {
                # Evaluating the top level checks the assertions; nothing of
                # the system is built.
                toplevel = builtins.unsafeDiscardStringContext config.system.build.toplevel.drvPath;
                unit = builtins.unsafeDiscardStringContext unit;
                passAsFile = [ "unit" ];
              }
              ''
                grep -q '^Environment="FLAKESHIP_TARGETS=' "$unitPath"
                grep -q '^LoadCredential=flakeship-target-' "$unitPath"
                grep -q '^StateDirectory=flakeship$' "$unitPath"
                echo "$toplevel" > $out
              ''
          )
        ) examples
        // {
          vm = pkgs.testers.runNixOSTest (import ./nix/vm-test.nix { inherit self; });
        }
      );
    };
}
