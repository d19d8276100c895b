{
  description = "flakeship test system: a NixOS-like toplevel whose switch-to-configuration records its calls";
  # Its builder needs mkdir and chmod, which only the host has: the test
  # builds it with the sandbox off (see nixos_test.go).
  outputs = { self }:
    let
      switchToConfiguration = builtins.toFile "switch-to-configuration" ''
        #!/bin/sh
        # Records "v<version> <arguments>" (and whether it was asked to
        # install the boot loader) and exits @exit@.
        line="v@version@ $*"
        if [ "$NIXOS_INSTALL_BOOTLOADER" = 1 ]; then
          line="$line install-bootloader"
        fi
        echo "switch-to-configuration of version @version@: $*"
        echo "$line" >> '@record@'
        exit @exit@
      '';
    in {
      nixosConfigurations.test.config.system.build.toplevel = derivation {
        name = "nixos-system-test-@version@";
        system = "@system@";
        builder = "/bin/sh";
        PATH = "/usr/bin:/bin:/run/current-system/sw/bin";
        args = [ "-c" ''
          echo 'building system version @version@'
          mkdir -p "$out/bin"
          cp ${switchToConfiguration} "$out/bin/switch-to-configuration"
          chmod 555 "$out/bin/switch-to-configuration"
        '' ];
      };
    };
}
