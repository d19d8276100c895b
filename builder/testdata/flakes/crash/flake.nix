{
  description = "flakeship test app: a build that exits 1 as it starts";
  outputs = { self }: {
    packages."@system@".default = derivation {
      name = "app-@version@-crash";
      system = "@system@";
      builder = "/bin/sh";
      args = [ "-c" "echo 'building app version @version@'; printf 'version=@version@\\ncrash=yes\\n' > $out" ];
    };
  };
}
