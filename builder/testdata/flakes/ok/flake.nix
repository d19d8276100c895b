{
  description = "flakeship test app: a build that starts and answers healthy";
  outputs = { self }: {
    packages."@system@".default = derivation {
      name = "app-@version@";
      system = "@system@";
      builder = "/bin/sh";
      args = [ "-c" "echo 'building app version @version@'; printf 'version=@version@\\nhealthy=yes\\n' > $out" ];
    };
  };
}
