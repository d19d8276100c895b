# The source flakeship is built and checked from: exactly what `go build`,
# `go mod vendor`, go vet, staticcheck and `go test ./...` read, so editing
# docs, scripts or nix files rebuilds nothing and the flake's `go` check has
# every file its tests open.
#
#   - go.mod and go.sum;
#   - every .go file (tests too: `go mod vendor` vendors their imports, and
#     vendorHash must match);
#   - what the code embeds: store/migrations, server/templates, server/static;
#   - every testdata directory, whole: recorded deliveries, test flakes, the
#     health server the e2e tests build, and fuzz corpora, which `go test`
#     runs as regression cases.
#
# Builtins only, no nixpkgs, so scripts/check-src evaluates this very
# selection with any nix and runs the `go` check's commands on it. Hidden
# directories (.git), a vendor directory and symlinks (result links) are
# never taken; a directory is taken only when something in it is, as
# lib.fileset does.
{
  root ? ../.,
}:
let
  rootString = toString root;
  prefixLength = builtins.stringLength rootString + 1;

  # "server/testdata/x" for the filter's absolute path string.
  relative = path: builtins.substring prefixLength (-1) (toString path);
  components = path: builtins.filter builtins.isString (builtins.split "/" (relative path));

  hasSuffix =
    suffix: s:
    let
      n = builtins.stringLength s;
      m = builtins.stringLength suffix;
    in
    n >= m && builtins.substring (n - m) m s == suffix;
  hasPrefix = prefix: s: builtins.substring 0 (builtins.stringLength prefix) s == prefix;

  # Directories taken whole, below the root.
  wholeDirectories = [
    "store/migrations"
    "server/templates"
    "server/static"
  ];
  inWholeDirectory = rel: builtins.any (dir: rel == dir || hasPrefix "${dir}/" rel) wholeDirectories;
  inTestdata = path: builtins.elem "testdata" (components path);

  # .git and other hidden directories; a vendor directory, which
  # buildGoModule refuses (it vendors from go.mod itself).
  skippedDirectory = path: hasPrefix "." (baseNameOf (toString path)) || relative path == "vendor";

  fileSelected =
    path:
    let
      rel = relative path;
    in
    rel == "go.mod"
    || rel == "go.sum"
    || hasSuffix ".go" rel
    || inWholeDirectory rel
    || inTestdata path;

  # Whether path, of the given type, is part of the source. A directory is
  # when anything in it is, so no empty docs/ or scripts/ appears; symlinks
  # (result links) never are.
  selected =
    path: type:
    if type == "regular" then
      fileSelected path
    else if type == "directory" then
      !(skippedDirectory path)
      && (
        let
          entries = builtins.readDir (root + "/${relative path}");
        in
        builtins.any (name: selected "${toString path}/${name}" entries.${name}) (
          builtins.attrNames entries
        )
      )
    else
      false;
in
builtins.path {
  name = "source";
  path = root;
  filter = selected;
}
