{
  description = "flakeship test app: a build that starts but answers unhealthy";
  outputs = { self }: {
    packages."@system@".default = derivation {
      name = "app-@version@-unhealthy";
      system = "@system@";
      builder = "/bin/sh";
      args = [ "-c" "echo 'building app version @version@'; printf 'version=@version@\\nhealthy=no\\n' > $out" ];
    };
  };
}
