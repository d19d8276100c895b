# flakeship's environment contract (DESIGN.md, "Configuration"), rendered
# from settings shaped like the NixOS module's services.flakeship options.
#
# Plain builtins only, no nixpkgs lib and no pkgs: the module imports it, and
# the Go test suite (config/nixmodule_test.go) evaluates it with nothing but
# nix and feeds the result to config.Load, so what the module renders is what
# the server parses.
#
# An option that is missing or null renders nothing: flakeship's own default
# applies. The result:
#
#   environment  the FLAKESHIP_* variables (and extraEnvironment), written
#                for systemd's Environment=, which expands specifiers: a
#                literal '%' is written '%%'.
#   credentials  LoadCredential= entries "ID:PATH". Secrets are never put
#                in the environment: each *_FILE variable names "%d/ID", the
#                unit's credentials directory, where systemd copies PATH
#                (reading it as root) before the service starts.
#   problems     what is wrong with the settings, one message each, naming
#                the option and what to set; the module makes each one an
#                assertion. The rendering never fails on bad settings.
#   systemUnits  the system-scope units that service targets restart.
#   userScope    whether a target's unit is in flakeship's user manager.
#   needsRoot    whether a target activates a whole NixOS system.
#   moduleDefaults  the defaults where the module differs from flakeship's
#                own (its options use them; the Go test applies them too).
cfg:
let
  inherit (builtins)
    any
    attrNames
    concatMap
    concatStringsSep
    elem
    filter
    genList
    isAttrs
    isInt
    isList
    isPath
    isString
    listToAttrs
    match
    replaceStrings
    stringLength
    substring
    toJSON
    ;

  optionPath = "services.flakeship";

  # The value of setting name in attrs, null when it is missing.
  get = attrs: name: if isAttrs attrs then attrs.${name} or null else null;

  chars = s: genList (i: substring i 1 s) (stringLength s);
  toUpper = replaceStrings (chars "abcdefghijklmnopqrstuvwxyz") (chars "ABCDEFGHIJKLMNOPQRSTUVWXYZ");
  hasPrefix = p: s: substring 0 (stringLength p) s == p;

  # systemd expands specifiers (%d, %h, %%, ...) in Environment= values.
  escapeSpecifiers = replaceStrings [ "%" ] [ "%%" ];

  # systemd rejects environment values with non-printable characters, and
  # flakeship has no setting that takes one.
  hasControl = s: match "[^[:cntrl:]]*" s == null;

  # A setting's value as the string flakeship parses: strings as they are,
  # whole numbers in decimal. Anything else is a problem (see valueProblems).
  asString = v: if isInt v then toString v else if isString v then v else null;

  # A Go duration: a whole number of seconds, or a string like "30s".
  asDuration = v: if isInt v then "${toString v}s" else asString v;

  # One word of FLAKESHIP_NIX_FLAGS, which flakeship splits like a POSIX
  # shell without any expansion (splitWords in config/load.go): a plain word
  # stays as it is, anything else goes in single quotes, where everything is
  # literal; a single quote itself is written '\'' (end the quotes, an
  # escaped quote, quote again).
  shellWord =
    w: if match "[A-Za-z0-9_./:=@,+-]+" w != null then w else "'" + replaceStrings [ "'" ] [ "'\\''" ] w + "'";

  # A variable with its value, escaped for Environment=; nothing for null.
  variable =
    name: value:
    if value == null then
      [ ]
    else
      [
        {
          inherit name;
          value = escapeSpecifiers value;
        }
      ];

  # A secret given as a file: the variable NAME_FILE points into the unit's
  # credentials directory (%d, $CREDENTIALS_DIRECTORY; systemd expands it in
  # Environment= too), and LoadCredential= copies the file there. Files that
  # secretProblems refuses render nothing.
  secret =
    name: id: file:
    if file == null || secretProblems "" file != [ ] then
      {
        variables = [ ];
        credentials = [ ];
      }
    else
      {
        variables = [
          {
            inherit name;
            value = "%d/${id}";
          }
        ];
        credentials = [ "${id}:${file}" ];
      };

  secretProblems =
    option: file:
    if file == null then
      [ ]
    else if isPath file then
      [
        "${option}: a Nix path would be copied into the world-readable Nix store; give the secret's location as a string, like \"/run/secrets/flakeship\""
      ]
    else if !isString file || !hasPrefix "/" file then
      [ "${option}: want an absolute path as a string, like \"/run/secrets/flakeship\"" ]
    else if hasPrefix "/nix/store/" file then
      [
        "${option}: ${file} is in the Nix store, which every user can read; keep secrets outside it (agenix, sops-nix, or a root-only file)"
      ]
    else if hasControl file || match "[^%[:space:]\"'\\\\]*" file == null then
      [
        "${option}: the path ${toJSON file} has a space, quote, backslash or '%', which systemd's LoadCredential= would not take literally; move the file"
      ]
    else
      [ ];

  # Problems of a plain setting: a string or a whole number without control
  # characters, or nothing.
  valueProblems =
    option: v:
    if v == null then
      [ ]
    else if asString v == null then
      [ "${option}: want a string, got a ${builtins.typeOf v}" ]
    else if hasControl (asString v) then
      [ "${option}: the value has a control character (a newline?), which systemd would drop" ]
    else
      [ ];

  durationProblems =
    option: v:
    if isInt v && v <= 0 then
      [ "${option}: want a positive number of seconds or a duration like \"30s\", got ${toString v}" ]
    else
      valueProblems option v;

  # FLAKESHIP_KEEP_FOR is at least 30 days (config.MinKeepFor): delivery ids
  # must outlive the forges' redelivery windows. Whole seconds and whole
  # days are checked here; flakeship checks Go durations at start-up.
  keepForProblems =
    option: v:
    let
      days = if isString v then match "0*([0-9]+)d" v else null;
      short =
        (isInt v && v < 30 * 24 * 3600) || (days != null && builtins.fromJSON (builtins.head days) < 30);
    in
    if short then
      [ "${option}: want at least 30 days (\"30d\"), so that delivery ids outlive the forges' redelivery windows, got ${toJSON v}" ]
    else
      durationProblems option v;

  targets = if isAttrs (get cfg "targets") then cfg.targets else { };
  names = attrNames targets; # sorted: FLAKESHIP_TARGETS lists them in this order

  # NAME upper-cased, '-' as '_' (targetVarPrefix in config/load.go).
  targetPrefix = name: "FLAKESHIP_TARGET_${toUpper (replaceStrings [ "-" ] [ "_" ] name)}_";

  # Credential IDs. Targets get their own namespace so that no target name
  # can collide with the global tokens ("flakeship-target-admin-token" is
  # not "flakeship-admin-token"), and the suffixes differ, so no two
  # targets' IDs can collide either.
  webhookCredential = name: "flakeship-target-${name}-webhook";
  tokenCredential = name: "flakeship-target-${name}-token";

  activateOf = t: if get t "activate" == null then "service" else t.activate;
  scopeOf = t: if get t "systemdScope" == null then "system" else t.systemdScope;

  renderTarget =
    name:
    let
      t = targets.${name};
      p = targetPrefix name;
      # Suffix = value; null renders nothing.
      plain = {
        FORGE = asString (get t "forge");
        REPO = asString (get t "repo");
        FORGE_URL = asString (get t "forgeUrl");
        CLONE_URL = asString (get t "cloneUrl");
        BRANCH = asString (get t "branch");
        ATTR = asString (get t "attr");
        ACTIVATE = asString (get t "activate");
        NIXOS_ACTION = asString (get t "nixosAction");
        UNIT = asString (get t "unit");
        SYSTEMD_SCOPE = asString (get t "systemdScope");
        PROFILE = asString (get t "profile");
        HEALTH_URL = asString (get t "healthUrl");
        HEALTH_TIMEOUT = asDuration (get t "healthTimeout");
        BUILD_TIMEOUT = asDuration (get t "buildTimeout");
        STATUS_CONTEXT = asString (get t "statusContext");
      };
      webhook = secret "${p}WEBHOOK_SECRET_FILE" (webhookCredential name) (get t "webhookSecretFile");
      token = secret "${p}TOKEN_FILE" (tokenCredential name) (get t "tokenFile");
    in
    {
      variables =
        concatMap (s: variable "${p}${s}" plain.${s}) (attrNames plain)
        ++ webhook.variables
        ++ token.variables;
      credentials = webhook.credentials ++ token.credentials;
    };

  targetProblems =
    name:
    let
      t = targets.${name};
      o = "${optionPath}.targets.${if match "[A-Za-z0-9_-]+" name != null then name else toJSON name}";
      forge = get t "forge";
    in
    (
      if match "[a-z0-9][a-z0-9_-]{0,62}" name == null then
        [
          "${o}: a target name is 1 to 63 lower-case letters, digits, '-' or '_', starting with a letter or digit"
        ]
      else
        [ ]
    )
    ++ (
      if !isAttrs t then
        [ "${o}: want an attribute set of the target's settings" ]
      else
        (
          if forge == null then
            [ "${o}.forge: required: \"github\", \"forgejo\" or \"gitea\"" ]
          else if !elem forge [ "github" "forgejo" "gitea" ] then
            [ "${o}.forge: want \"github\", \"forgejo\" or \"gitea\", got ${toJSON forge}" ]
          else
            [ ]
        )
        ++ (if get t "repo" == null then [ "${o}.repo: required: owner/name of the repository on the forge" ] else [ ])
        ++ (
          if elem forge [ "forgejo" "gitea" ] && get t "forgeUrl" == null then
            [ "${o}.forgeUrl: required for forge ${forge}: the instance's URL, like \"https://codeberg.org/\"" ]
          else
            [ ]
        )
        ++ (
          if get t "webhookSecretFile" == null then
            [ "${o}.webhookSecretFile: required: the file holding the webhook's secret" ]
          else
            [ ]
        )
        ++ (
          if get t "nixosAction" != null && activateOf t != "nixos" then
            [ "${o}.nixosAction: only a target with activate = \"nixos\" switches a NixOS system" ]
          else
            [ ]
        )
        ++ secretProblems "${o}.webhookSecretFile" (get t "webhookSecretFile")
        ++ secretProblems "${o}.tokenFile" (get t "tokenFile")
        ++ durationProblems "${o}.healthTimeout" (get t "healthTimeout")
        ++ durationProblems "${o}.buildTimeout" (get t "buildTimeout")
        ++ concatMap (s: valueProblems "${o}.${s}" (get t s)) [
          "forge"
          "repo"
          "forgeUrl"
          "cloneUrl"
          "branch"
          "attr"
          "activate"
          "nixosAction"
          "unit"
          "systemdScope"
          "profile"
          "healthUrl"
          "statusContext"
        ]
    );

  # Targets whose names give the same variables ("a-b" and "a_b").
  prefixProblems = concatMap (
    a:
    concatMap (
      b:
      if a < b && targetPrefix a == targetPrefix b then
        [
          "${optionPath}.targets: ${toJSON a} and ${toJSON b} would both be configured by ${targetPrefix a}* variables; rename one"
        ]
      else
        [ ]
    ) names
  ) names;

  nixFlags = get cfg "nixFlags";
  nixFlagsProblems =
    if nixFlags == null then
      [ ]
    else if !isList nixFlags || any (w: !isString w) nixFlags then
      [ "${optionPath}.nixFlags: want a list of strings, one per argument" ]
    else if any hasControl nixFlags then
      [ "${optionPath}.nixFlags: an argument has a control character (a newline?), which systemd would drop" ]
    else
      [ ];

  # FLAKESHIP_TRUSTED_PROXIES is a comma-separated list: an entry with a
  # comma, a space or anything else that is no part of an address would
  # change the list. flakeship itself checks the addresses.
  trustedProxies = get cfg "trustedProxies";
  trustedProxiesProblems =
    if trustedProxies == null then
      [ ]
    else if !isList trustedProxies || any (p: !isString p) trustedProxies then
      [ "${optionPath}.trustedProxies: want a list of strings, one IP address or CIDR network each" ]
    else
      concatMap (
        p:
        if match "[0-9A-Fa-f.:]+(/[0-9]+)?" p == null then
          [ "${optionPath}.trustedProxies: want an IP address or a CIDR network like \"10.0.0.0/8\", got ${toJSON p}" ]
        else
          [ ]
      ) trustedProxies;

  extra = get cfg "extraEnvironment";
  extraEnvironment = if isAttrs extra then extra else { };
  extraProblems =
    (if extra != null && !isAttrs extra then [ "${optionPath}.extraEnvironment: want an attribute set" ] else [ ])
    ++ concatMap (
      n:
      (
        if match "[A-Za-z_][A-Za-z0-9_]*" n == null then
          [ "${optionPath}.extraEnvironment: ${toJSON n} is not a variable name systemd accepts" ]
        else
          [ ]
      )
      ++ valueProblems "${optionPath}.extraEnvironment.${n}" extraEnvironment.${n}
    ) (attrNames extraEnvironment);

  admin = secret "FLAKESHIP_ADMIN_TOKEN_FILE" "flakeship-admin-token" (get cfg "adminTokenFile");
  read = secret "FLAKESHIP_READ_TOKEN_FILE" "flakeship-read-token" (get cfg "readTokenFile");
  nixTokens = secret "FLAKESHIP_NIX_ACCESS_TOKENS_FILE" "flakeship-nix-access-tokens" (
    get cfg "nixAccessTokensFile"
  );
  rendered = map renderTarget names;

  globalVariables =
    variable "FLAKESHIP_LISTEN" (asString (get cfg "listen"))
    ++ variable "FLAKESHIP_PUBLIC_URL" (asString (get cfg "publicUrl"))
    ++ variable "FLAKESHIP_STATE_DIR" (asString (get cfg "stateDir"))
    ++ variable "FLAKESHIP_MAX_PARALLEL" (asString (get cfg "maxParallel"))
    ++ variable "FLAKESHIP_NIX_FLAGS" (
      if nixFlagsProblems != [ ] || nixFlags == null || nixFlags == [ ] then
        null
      else
        concatStringsSep " " (map shellWord nixFlags)
    )
    ++ variable "FLAKESHIP_LOG_LEVEL" (asString (get cfg "logLevel"))
    ++ variable "FLAKESHIP_LOG_FORMAT" (asString (get cfg "logFormat"))
    ++ variable "FLAKESHIP_BODY_LIMIT" (asString (get cfg "bodyLimit"))
    ++ variable "FLAKESHIP_TRUSTED_PROXIES" (
      if trustedProxiesProblems != [ ] || trustedProxies == null || trustedProxies == [ ] then
        null
      else
        concatStringsSep "," trustedProxies
    )
    ++ variable "FLAKESHIP_KEEP_DEPLOYS" (asString (get cfg "keepDeploys"))
    ++ variable "FLAKESHIP_KEEP_FOR" (asDuration (get cfg "keepFor"))
    ++ variable "FLAKESHIP_DEPLOY_LOG_LIMIT" (asString (get cfg "deployLogLimit"))
    ++ variable "FLAKESHIP_TARGETS" (if names == [ ] then null else concatStringsSep "," names)
    ++ admin.variables
    ++ read.variables
    ++ nixTokens.variables;

  serviceTargets = filter (n: isAttrs targets.${n} && activateOf targets.${n} == "service") names;

  needsRoot = any (n: isAttrs targets.${n} && activateOf targets.${n} == "nixos") names;
  runAsRoot = get cfg "runAsRoot";

  profilesDir = "/nix/var/nix/profiles/flakeship";
in
{
  moduleDefaults = {
    # Flakes on, whatever nix.settings says: flakeship builds flakes.
    nixFlags = [
      "--extra-experimental-features"
      "nix-command flakes"
    ];
    # flakeship's own default profile is $STATE_DIRECTORY/profiles/<name>,
    # but the state directory is private (the database, deploy logs, git
    # caches of possibly private repositories), and a deployed unit running
    # as its own user must reach its profile. Profiles under
    # /nix/var/nix/profiles are world-readable and garbage-collector roots.
    inherit profilesDir;
    profile = name: target: if activateOf target == "nixos" then null else "${profilesDir}/${name}";
  };

  # extraEnvironment comes last: it is the way to set what has no option.
  environment = listToAttrs (
    globalVariables ++ concatMap (r: r.variables) rendered
  ) // builtins.mapAttrs (n: v: if asString v == null then "" else escapeSpecifiers (asString v)) extraEnvironment;

  credentials =
    admin.credentials ++ read.credentials ++ nixTokens.credentials ++ concatMap (r: r.credentials) rendered;

  problems =
    (if names == [ ] then [ "${optionPath}.targets: define at least one target to deploy" ] else [ ])
    ++ concatMap targetProblems names
    ++ prefixProblems
    ++ nixFlagsProblems
    ++ trustedProxiesProblems
    ++ extraProblems
    ++ secretProblems "${optionPath}.adminTokenFile" (get cfg "adminTokenFile")
    ++ secretProblems "${optionPath}.readTokenFile" (get cfg "readTokenFile")
    ++ secretProblems "${optionPath}.nixAccessTokensFile" (get cfg "nixAccessTokensFile")
    ++ concatMap (s: valueProblems "${optionPath}.${s}" (get cfg s)) [
      "listen"
      "publicUrl"
      "stateDir"
      "maxParallel"
      "logLevel"
      "logFormat"
      "bodyLimit"
      "keepDeploys"
      "deployLogLimit"
    ]
    ++ keepForProblems "${optionPath}.keepFor" (get cfg "keepFor")
    ++ (
      if needsRoot && runAsRoot == false then
        [
          "${optionPath}.runAsRoot: activate = \"nixos\" (target ${
            concatStringsSep ", " (filter (n: isAttrs targets.${n} && activateOf targets.${n} == "nixos") names)
          }) switches the whole system, which only root can do: set runAsRoot = true, or activate = \"service\""
        ]
      else
        [ ]
    );

  systemUnits = map (
    n:
    let
      unit = get targets.${n} "unit";
    in
    if unit == null then "${n}.service" else unit
  ) (filter (n: scopeOf targets.${n} == "system") serviceTargets);

  userScope = any (n: isAttrs targets.${n} && scopeOf targets.${n} == "user") names;

  inherit needsRoot;
}
