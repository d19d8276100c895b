{
  description = "flakeship test app: a build that waits at its test's gate (internal/testenv.Gate), built without the sandbox";
  outputs = { self }: {
    packages."@system@".default = derivation {
      name = "app-gate";
      system = "@system@";
      builder = "/bin/sh";
      args = [ "-c" "echo 'holding @marker@'; @gate@; echo done > $out" ];
    };
  };
}
