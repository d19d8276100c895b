# The NixOS module: services.flakeship.* rendered into the environment of a
# hardened systemd service. The variables themselves come from
# ./environment.nix, which the Go test suite evaluates and parses with
# config.Load, so the options and the server cannot drift apart.
#
# flake.nix applies this file to { self } (lib.modules.importApply), so the
# package defaults to this flake's build.
{ self }:
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib)
    literalExpression
    mkEnableOption
    mkIf
    mkMerge
    mkOption
    optional
    optionalAttrs
    optionals
    types
    ;

  cfg = config.services.flakeship;
  rendered = import ./environment.nix cfg;
  # Constants, the same whatever the settings.
  inherit ((import ./environment.nix { }).moduleDefaults) nixFlags profile profilesDir;

  user = if cfg.runAsRoot then "root" else "flakeship";
  group = if cfg.runAsRoot then "root" else "flakeship";

  # A duration as flakeship reads it: a number of seconds or a Go duration.
  duration = types.either types.ints.positive (
    types.strMatching "([0-9]+(\\.[0-9]*)?(ns|us|µs|ms|s|m|h))+" // { description = "Go duration like \"30s\" or \"1h30m\""; }
  );

  # A secret's location. A string, so a Nix path (which would copy the
  # secret into the world-readable store) is refused by the type.
  secretFile = types.strMatching "/.+" // {
    description = "absolute path of a secret file, as a string";
  };

  nullOr = types.nullOr;

  targetOptions =
    { name, config, ... }:
    {
      options = {
        # Required, but with a null default: a target without it gets
        # environment.nix's assertion naming the option and what to set,
        # not NixOS's generic "used but not defined" error.
        forge = mkOption {
          type = nullOr (
            types.enum [
              "github"
              "forgejo"
              "gitea"
            ]
          );
          default = null;
          description = "Required. The forge hosting the repository; `gitea` is the same as `forgejo`.";
        };
        repo = mkOption {
          type = nullOr (types.strMatching "[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+");
          default = null;
          example = "acme/web";
          description = "Required. The repository as `owner/name` on the forge.";
        };
        forgeUrl = mkOption {
          type = nullOr types.str;
          default = null;
          example = "https://codeberg.org/";
          description = ''
            The forge's API base URL. `null`: `https://api.github.com/` for
            GitHub (GitHub Enterprise: `https://host/api/v3/`); required for
            Forgejo and Gitea (the instance's URL).
          '';
        };
        cloneUrl = mkOption {
          type = nullOr types.str;
          default = null;
          description = ''
            What is fetched: an `https://`, `http://` or `file://` URL or an
            absolute path. `null`: derived from the forge and repository.
          '';
        };
        branch = mkOption {
          type = nullOr types.str;
          default = null;
          description = "The branch that deploys. `null`: `main`.";
        };
        attr = mkOption {
          type = nullOr types.str;
          default = null;
          example = "packages.x86_64-linux.web";
          description = ''
            The flake output to build. `null`: `packages.<system>.default`, or
            for `activate = "nixos"`
            `nixosConfigurations.<hostname>.config.system.build.toplevel`.
          '';
        };
        activate = mkOption {
          type = nullOr (
            types.enum [
              "service"
              "nixos"
              "none"
            ]
          );
          default = null;
          description = ''
            What a build is used for: `service` sets the profile and restarts
            {option}`unit`; `nixos` sets the system profile and switches to
            it (flakeship then runs as root, see {option}`services.flakeship.runAsRoot`);
            `none` only builds and sets the profile. `null`: `service`.
          '';
        };
        nixosAction = mkOption {
          type = nullOr (
            types.enum [
              "switch"
              "boot"
              "test"
            ]
          );
          default = null;
          description = ''
            For `activate = "nixos"`: the `switch-to-configuration` action.
            `null`: flakeship's default (`switch`).
          '';
        };
        unit = mkOption {
          type = nullOr types.str;
          default = null;
          example = "web.service";
          description = ''
            The systemd unit restarted after the switch (service mode): it
            should run the program from {option}`profile`. `null`:
            `<name>.service`. flakeship may start, restart and reset-failed
            exactly this unit, and no other (a polkit rule).
          '';
        };
        systemdScope = mkOption {
          type = nullOr (
            types.enum [
              "system"
              "user"
            ]
          );
          default = null;
          description = ''
            `system` for a unit of the system manager; `user` for a unit of
            flakeship's own user manager (the module turns lingering on).
            `null`: `system`.
          '';
        };
        profile = mkOption {
          type = nullOr types.str;
          # Not flakeship's own default: see moduleDefaults in ./environment.nix.
          default = profile name config;
          defaultText = literalExpression ''
            if activate == "nixos" then null # /nix/var/nix/profiles/system
            else "${profilesDir}/<name>"'';
          description = ''
            The nix profile each build is set into (a new generation), and
            where {option}`unit` finds the program, e.g.
            `ExecStart = "${profilesDir}/web/bin/web"`. The directory of a
            profile set elsewhere must exist and belong to flakeship's user.
          '';
        };
        healthUrl = mkOption {
          type = nullOr types.str;
          default = null;
          example = "http://127.0.0.1:3000/healthz";
          description = ''
            Polled after activation until it answers 2xx; otherwise the
            previous generation is restored. `null`: the unit must be active.
          '';
        };
        healthTimeout = mkOption {
          type = nullOr duration;
          default = null;
          example = "1m";
          description = "How long a new build may take to be healthy (seconds, or a Go duration). `null`: 30s.";
        };
        buildTimeout = mkOption {
          type = nullOr duration;
          default = null;
          example = "1h";
          description = "Limit for fetch and build together (seconds, or a Go duration). `null`: 30m.";
        };
        webhookSecretFile = mkOption {
          type = nullOr secretFile;
          default = null;
          example = "/run/secrets/flakeship-web-webhook";
          description = ''
            Required. File holding the webhook's HMAC secret. systemd reads it as root
            (`LoadCredential=`) when flakeship starts, so it may be readable
            by root only.
          '';
        };
        tokenFile = mkOption {
          type = nullOr secretFile;
          default = null;
          description = ''
            File holding a forge API token, for commit statuses and private
            fetches. `null`: no statuses, public fetch.
          '';
        };
        statusContext = mkOption {
          type = nullOr types.str;
          default = null;
          description = "The commit status context. `null`: `flakeship/<name>`.";
        };
      };
    };

  # Directories of profiles set outside profilesDir, which the sandbox
  # must leave writable.
  otherProfileDirs = lib.unique (
    map dirOf (
      lib.filter (p: p != null && !lib.hasPrefix "${profilesDir}/" p) (
        lib.mapAttrsToList (_: t: t.profile) cfg.targets
      )
    )
  );

  listenPort =
    let
      m = builtins.match ".*:([0-9]+)" (if cfg.listen == null then "127.0.0.1:8080" else cfg.listen);
    in
    if m == null then null else lib.toInt (builtins.head m);

  # systemd hardening for the service-only mode. flakeship needs: the nix
  # daemon's socket (connecting to a socket works on a read-only file
  # system), its state, cache and profiles directories, the system bus (for
  # systemctl, allowed by polkit), and the network.
  hardening = {
    NoNewPrivileges = true;
    ProtectSystem = "strict";
    ReadWritePaths = [ profilesDir ] ++ otherProfileDirs ++ optional (cfg.stateDir != null) cfg.stateDir;
    # /run/user holds the user manager's socket for user-scope targets.
    ProtectHome = if rendered.userScope then "read-only" else true;
    PrivateTmp = true;
    PrivateDevices = true;
    ProtectKernelTunables = true;
    ProtectKernelModules = true;
    ProtectKernelLogs = true;
    ProtectControlGroups = true;
    ProtectClock = true;
    ProtectHostname = true;
    RestrictNamespaces = true;
    RestrictRealtime = true;
    RestrictSUIDSGID = true;
    LockPersonality = true;
    RemoveIPC = true;
    CapabilityBoundingSet = "";
    AmbientCapabilities = "";
    RestrictAddressFamilies = [
      "AF_UNIX"
      "AF_INET"
      "AF_INET6"
    ];
    SystemCallArchitectures = "native";
    SystemCallFilter = [ "@system-service" ];
    SystemCallErrorNumber = "EPERM";
  };
in
{
  options.services.flakeship = {
    enable = mkEnableOption "flakeship, which deploys a Nix build on every push to a forge";

    package = mkOption {
      type = types.package;
      default = self.packages.${pkgs.stdenv.hostPlatform.system}.default;
      defaultText = literalExpression "flakeship.packages.\${pkgs.stdenv.hostPlatform.system}.default";
      description = "The flakeship package.";
    };

    listen = mkOption {
      type = nullOr types.str;
      default = null;
      example = "127.0.0.1:8080";
      description = "Address to listen on. `null`: `127.0.0.1:8080`.";
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Open {option}`listen`'s port in the firewall. Usually flakeship sits
        behind a TLS reverse proxy and this stays off.
      '';
    };

    publicUrl = mkOption {
      type = nullOr types.str;
      default = null;
      example = "https://deploy.example.com";
      description = ''
        Base of the links in commit statuses (the deploy pages). `null`:
        `http://` and {option}`listen`.
      '';
    };

    stateDir = mkOption {
      type = nullOr (types.strMatching "/.+");
      default = null;
      description = ''
        SQLite database, git caches and deploy logs. `null`:
        `/var/lib/flakeship` (systemd's `StateDirectory=`).
      '';
    };

    maxParallel = mkOption {
      type = nullOr (types.ints.between 1 64);
      default = null;
      description = "Deploys of different targets at once. `null`: 1.";
    };

    adminTokenFile = mkOption {
      type = nullOr secretFile;
      default = null;
      description = ''
        File holding the bearer token of the write API (manual deploys,
        rollbacks, cancels). `null`: the write API is off.
      '';
    };

    readTokenFile = mkOption {
      type = nullOr secretFile;
      default = null;
      description = "File holding a bearer token that reading pages and API then needs. `null`: reading is open.";
    };

    nixFlags = mkOption {
      type = types.listOf types.str;
      default = nixFlags;
      description = ''
        Extra arguments of every nix call, one per list element (they are
        quoted for flakeship). The default turns on flakes, which flakeship
        builds with, whatever {option}`nix.settings` says. Put no access
        token here: the unit file and the Nix store are world-readable; use
        {option}`nixAccessTokensFile`.
      '';
    };

    nixAccessTokensFile = mkOption {
      type = nullOr secretFile;
      default = null;
      example = "/run/secrets/flakeship-nix-access-tokens";
      description = ''
        File holding nix's `access-tokens` for flakeship's builds
        (space-separated `host=token` pairs, like
        `github.com=ghp_...`), for flake inputs in private repositories.
        flakeship hands them to nix in a file only it can read, never on
        nix's command line, and redacts them from deploy logs. `null`: nix's
        own configuration applies.
      '';
    };

    logLevel = mkOption {
      type = nullOr (
        types.enum [
          "debug"
          "info"
          "warn"
          "error"
        ]
      );
      default = null;
      description = "Log level. `null`: `info`.";
    };

    logFormat = mkOption {
      type = nullOr (
        types.enum [
          "text"
          "json"
        ]
      );
      default = null;
      description = "Log format. `null`: `text`.";
    };

    bodyLimit = mkOption {
      type = nullOr types.ints.positive;
      default = null;
      description = "Largest webhook body, in bytes. `null`: 25 MiB.";
    };

    trustedProxies = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [
        "127.0.0.1"
        "::1"
      ];
      description = ''
        The reverse proxies in front of flakeship, as IP addresses or CIDR
        networks. A request from one of them is taken to come from the
        client its `X-Forwarded-For` names (read from the right, past these
        proxies), which wrong tokens are then counted against, and from the
        host its `X-Forwarded-Host` names. `[ ]`: every client is the
        address of its connection, and those headers are ignored.
      '';
    };

    keepDeploys = mkOption {
      type = nullOr (types.ints.between 0 1000000);
      default = null;
      description = ''
        Newest deploys of each target kept however old, with their logs and
        delivery ids (older ones go after {option}`keepFor`). `null`: 100.
      '';
    };

    keepFor = mkOption {
      type = nullOr (
        types.either types.ints.positive (
          types.strMatching "[0-9]+d|([0-9]+(\\.[0-9]*)?(ns|us|µs|ms|s|m|h))+" // {
            description = "days like \"90d\" or a Go duration like \"2160h\"";
          }
        )
      );
      default = null;
      example = "90d";
      description = ''
        Finished deploys beyond the newest {option}`keepDeploys` of their
        target are deleted, with their logs and delivery ids, once older
        than this (seconds, days like `"90d"`, or a Go duration). At least
        30 days: a delivery id must outlive the forges' redelivery window.
        `null`: 30 days.
      '';
    };

    deployLogLimit = mkOption {
      type = nullOr types.ints.positive;
      default = null;
      description = ''
        Largest deploy log, in bytes: further output of the deploy's commands
        is discarded (the build goes on), after a line saying so. `null`: 16 MiB.
      '';
    };

    extraEnvironment = mkOption {
      type = types.attrsOf types.str;
      default = { };
      example = {
        FLAKESHIP_NIX = "/run/current-system/sw/bin/nix";
      };
      description = ''
        More environment variables, taken literally (a `%` is not a systemd
        specifier). They override what the other options render.
      '';
    };

    runAsRoot = mkOption {
      type = types.bool;
      default = rendered.needsRoot;
      defaultText = literalExpression ''any target has activate = "nixos"'';
      description = ''
        Run flakeship as root, without the sandboxing of the service-only
        mode. Switching a NixOS system (`activate = "nixos"`) writes
        `/nix/var/nix/profiles/system` and runs `switch-to-configuration`,
        which only root can do, so this is on when a target does that. A
        switch then never restarts flakeship's own unit (it would kill the
        switch it is running): restart `flakeship.service` to apply a change
        of flakeship itself.
        Otherwise flakeship runs as the system user `flakeship`, restarts
        exactly the configured units (a polkit rule), and builds through the
        nix daemon.
      '';
    };

    targets = mkOption {
      type = types.attrsOf (types.submodule targetOptions);
      default = { };
      description = ''
        The deploy targets, by name: 1 to 63 lower-case letters, digits,
        `-` or `_`, starting with a letter or digit. Each is one repository
        and what to do with its builds.
      '';
    };
  };

  config = mkIf cfg.enable (mkMerge [
    {
      # environment.nix checks what the option types cannot (names, paths,
      # forge-specific requirements) and says what to set.
      assertions = map (message: {
        assertion = false;
        inherit message;
      }) rendered.problems;

      warnings = optional (cfg.runAsRoot && !rendered.needsRoot) ''
        services.flakeship.runAsRoot is on but no target has activate = "nixos":
        flakeship runs as root without its sandbox. Leave runAsRoot at its default.
      '';

      systemd.services.flakeship = {
        description = "flakeship: deploys a Nix build on every push";
        wantedBy = [ "multi-user.target" ];
        wants = [ "network-online.target" ];
        after = [
          "network-online.target"
          "nix-daemon.socket"
        ];
        path = [
          config.nix.package
          pkgs.git
          config.systemd.package
        ];
        environment = {
          # Build through the daemon: flakeship (a user without store write
          # access, or root in a sandbox-less unit) never writes the store.
          NIX_REMOTE = "daemon";
          # nix's evaluation and fetcher caches; CacheDirectory= below.
          XDG_CACHE_HOME = "%C/flakeship";
        }
        // optionalAttrs rendered.userScope {
          # systemctl --user reaches flakeship's own user manager here.
          XDG_RUNTIME_DIR = "/run/user/%U";
        }
        // rendered.environment;

        # Switching a NixOS system may change this unit; restarting it then
        # would kill the switch that flakeship itself is running. A new
        # flakeship takes over at the next start instead.
        restartIfChanged = !rendered.needsRoot;

        serviceConfig = {
          ExecStart = lib.getExe cfg.package;
          User = user;
          Group = group;
          StateDirectory = "flakeship";
          StateDirectoryMode = "0750";
          CacheDirectory = "flakeship";
          CacheDirectoryMode = "0750";
          LoadCredential = rendered.credentials;
          UMask = "0027";
          Restart = "on-failure";
          RestartSec = "5s";
        }
        // optionalAttrs (!cfg.runAsRoot) hardening;
      };

      systemd.tmpfiles.rules = [
        "d ${profilesDir} 0755 ${user} ${group} -"
      ]
      ++ optional (cfg.stateDir != null) "d ${cfg.stateDir} 0750 ${user} ${group} -";

      networking.firewall.allowedTCPPorts = optionals (cfg.openFirewall && listenPort != null) [ listenPort ];
    }

    (mkIf (!cfg.runAsRoot) {
      # A static user, not DynamicUser=: it owns profiles and the state that
      # outlive the service, and polkit's rule names it.
      users.users.flakeship = {
        isSystemUser = true;
        group = "flakeship";
        home = "/var/lib/flakeship";
        description = "flakeship deployer";
        # User-scope targets' units run in flakeship's own user manager,
        # which lingering keeps running without a login.
        linger = mkIf rendered.userScope true;
      };
      users.groups.flakeship = { };
    })

    (mkIf (!cfg.runAsRoot && rendered.systemUnits != [ ]) {
      # Restarting a system unit needs privileges. polkit grants the
      # narrowest ones: user flakeship may start, restart and reset-failed
      # exactly the units of its service targets, asked over D-Bus by
      # systemctl, and the service keeps NoNewPrivileges and an empty
      # capability set. sudo would need a setuid binary (so no
      # NoNewPrivileges) and matches command lines, not units and verbs.
      # polkit sees a unit's primary name: configure units by that name, not
      # by an alias.
      security.polkit.enable = true;
      security.polkit.extraConfig = ''
        // flakeship: restart the units of its service targets, nothing else.
        polkit.addRule(function (action, subject) {
          if (action.id == "org.freedesktop.systemd1.manage-units" &&
              subject.user == "flakeship" &&
              ${builtins.toJSON rendered.systemUnits}.indexOf(action.lookup("unit")) >= 0 &&
              ["start", "restart", "reset-failed"].indexOf(action.lookup("verb")) >= 0) {
            return polkit.Result.YES;
          }
        });
      '';
    })
  ]);
}
