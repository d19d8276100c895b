{
  description = "flakeship test app: a build that never ends (the sandbox has only sh builtins, so it spins)";
  outputs = { self }: {
    packages."@system@".default = derivation {
      name = "app-spin";
      system = "@system@";
      builder = "/bin/sh";
      args = [ "-c" "echo 'spinning @marker@'; while :; do :; done" ];
    };
  };
}
