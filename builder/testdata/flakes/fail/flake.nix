{
  description = "flakeship test app: a build that fails";
  outputs = { self }: {
    packages."@system@".default = derivation {
      name = "app-@version@-fail";
      system = "@system@";
      builder = "/bin/sh";
      args = [ "-c" "echo 'compiling app version @version@'; echo 'error: this build fails on purpose' >&2; exit 1" ];
    };
  };
}
