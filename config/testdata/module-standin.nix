# Evaluates nix/module.nix with a stand-in for nixpkgs' lib written with
# builtins alone (nixpkgs cannot be fetched where the tests run): just enough
# to read the options the module declares, fill in their defaults as the
# module system would, and return the module's assertions.
#
# An option without a default that a setting leaves out throws here, as
# NixOS's "used but not defined" error would, before any assertion is seen.
{ settings }:
let
  inherit (builtins)
    attrNames
    filter
    listToAttrs
    mapAttrs
    ;
  type = name: extra: { inherit name; } // extra;
  types = {
    str = type "str" { };
    bool = type "bool" { };
    package = type "package" { };
    enum = values: type "enum" { inherit values; };
    strMatching = re: type "strMatching" { inherit re; };
    nullOr = elem: type "nullOr" { inherit elem; };
    either = a: b: type "either" { inherit a b; };
    ints = {
      positive = type "positive" { };
      between = lo: hi: type "between" { inherit lo hi; };
    };
    listOf = elem: type "listOf" { inherit elem; };
    attrsOf = elem: type "attrsOf" { inherit elem; };
    submodule = module: type "submodule" { inherit module; };
  };
  lib = {
    inherit types filter;
    mkOption = attrs: attrs // { _type = "option"; };
    mkEnableOption = description: {
      _type = "option";
      type = types.bool;
      default = false;
      inherit description;
    };
    literalExpression = text: {
      _type = "literalExpression";
      inherit text;
    };
    mkIf = condition: content: { _type = "if"; inherit condition content; };
    mkMerge = contents: { _type = "merge"; inherit contents; };
    optional = c: x: if c then [ x ] else [ ];
    optionals = c: xs: if c then xs else [ ];
    optionalAttrs = c: a: if c then a else { };
    hasPrefix = p: s: builtins.substring 0 (builtins.stringLength p) s == p;
    mapAttrsToList = f: a: map (n: f n a.${n}) (attrNames a);
    toInt = s: builtins.fromJSON s;
    unique = builtins.foldl' (acc: x: if builtins.elem x acc then acc else acc ++ [ x ]) [ ];
    getExe = p: "${p}/bin/flakeship";
  };
  pkgs = {
    git = "git";
    stdenv.hostPlatform.system = "x86_64-linux";
  };
  self.packages.x86_64-linux.default = "flakeship";

  # The module's option declarations do not depend on config.
  declared = (import ../../nix/module.nix { inherit self; } {
    config = { };
    inherit lib pkgs;
  }).options.services.flakeship;
  targetModule = declared.targets.type.elem.module;
  targetOptions = name: (targetModule { inherit name; config = { }; }).options;

  # A setting if given, else the option's default.
  withDefaults = options: given: mapAttrs (n: o: if given ? ${n} then given.${n} else o.default) options;
  missingDefaults = options: filter (n: !(options.${n} ? default)) (attrNames options);

  cfg = withDefaults declared settings // {
    targets = mapAttrs (name: t: withDefaults (targetOptions name) t) (settings.targets or { });
  };
  module = import ../../nix/module.nix { inherit self; } {
    config = {
      services.flakeship = cfg;
      nix.package = "nix";
      systemd.package = "systemd";
    };
    inherit lib pkgs;
  };
  enabled = module.config;
  first = builtins.head enabled.content.contents;
in
{
  # Options that NixOS would report as "used but not defined" when unset.
  withoutDefault = {
    global = missingDefaults declared;
    target = missingDefaults (targetOptions "t");
  };
  assertions = if enabled.condition then map (a: a.message) (filter (a: !a.assertion) first.assertions) else [ ];
}
