# A NixOS VM test of the module and the whole pipeline, as a user would run
# it: flakeship as its unprivileged user deploys a tiny web service from a
# local git repository when a signed GitHub push webhook arrives, and rolls
# it back when a push makes it unhealthy.
#
#   nix build .#checks.x86_64-linux.vm          (needs KVM)
#   nix run .#checks.x86_64-linux.vm.driverInteractive
{ self }:
{ hostPkgs, lib, ... }:
let
  system = hostPkgs.stdenv.hostPlatform.system; # the VM's too
  webhookSecret = "vm-test-webhook-secret";

  # The deployed repository's flake. It has no inputs (the VM has no
  # network, so no nixpkgs): its package copies server.py into bin/, using
  # the VM's own tools, which is why the VM's nix builds without a sandbox.
  appFlake = ''
    {
      outputs = { self }: {
        packages.${system}.default = derivation {
          name = "hello";
          system = "${system}";
          builder = "/bin/sh";
          args = [
            "-c"
            "/run/current-system/sw/bin/mkdir -p $out/bin && /run/current-system/sw/bin/cp ''${./server.py} $out/bin/hello && /run/current-system/sw/bin/chmod 0755 $out/bin/hello"
          ];
        };
      };
    }
  '';
in
{
  name = "flakeship";

  nodes.machine =
    { pkgs, ... }:
    {
      imports = [ self.nixosModules.default ];

      services.flakeship = {
        enable = true;
        listen = "127.0.0.1:8080";
        logLevel = "debug";
        targets.hello = {
          forge = "github";
          repo = "acme/hello";
          cloneUrl = "file:///srv/git/hello.git";
          healthUrl = "http://127.0.0.1:3000/";
          healthTimeout = 15;
          webhookSecretFile = "/run/secrets/hello-webhook";
        };
      };

      # The deployed service runs the program from flakeship's profile, as
      # a user of its own: the profile must be reachable by other users.
      systemd.services.hello.serviceConfig = {
        ExecStart = "/nix/var/nix/profiles/flakeship/hello/bin/hello";
        DynamicUser = true;
      };

      # A root-only secret, outside the Nix store's view of the unit.
      systemd.tmpfiles.rules = [
        "d /run/secrets 0700 root root -"
        "f /run/secrets/hello-webhook 0400 root root - ${webhookSecret}"
      ];

      nix.settings = {
        sandbox = false; # the app's builder uses /run/current-system/sw/bin
        substituters = lib.mkForce [ ];
        flake-registry = "";
      };

      programs.git = {
        enable = true;
        config = {
          init.defaultBranch = "main";
          user.name = "VM test";
          user.email = "vm-test@example.com";
          # The bare repository is root's; flakeship's user fetches from it.
          safe.directory = "*";
        };
      };

      environment.systemPackages = [
        pkgs.curl
        pkgs.jq
        pkgs.python3
      ];
    };

  testScript = ''
    import base64
    import hashlib
    import hmac
    import json
    import uuid

    SECRET = ${builtins.toJSON webhookSecret}.encode()
    APP_FLAKE = ${builtins.toJSON appFlake}
    ENDS = ["succeeded", "failed", "rolled_back", "superseded", "cancelled", "interrupted"]


    def write(path, data):
        """Writes bytes to a file in the VM, byte for byte."""
        machine.succeed(f"echo {base64.b64encode(data).decode()} | base64 -d > {path}")


    def server_py(version, status):
        """The app: answers every GET with its version and the given status."""
        return "\n".join([
            "#!/run/current-system/sw/bin/python3",
            "import http.server",
            "class Handler(http.server.BaseHTTPRequestHandler):",
            "    def do_GET(self):",
            f"        body = b\"version={version}\\n\"",
            f"        self.send_response({status})",
            "        self.send_header(\"Content-Length\", str(len(body)))",
            "        self.end_headers()",
            "        self.wfile.write(body)",
            "http.server.HTTPServer((\"127.0.0.1\", 3000), Handler).serve_forever()",
            "",
        ]).encode()


    def deliver(sha, signature=None):
        """Sends GitHub's push delivery for sha; returns (status, body)."""
        body = json.dumps({
            "ref": "refs/heads/main",
            "before": "0" * 40,
            "after": sha,
            "repository": {"full_name": "acme/hello"},
            "pusher": {"name": "vm-test"},
            "head_commit": {"id": sha, "message": "push", "author": {"name": "VM test"}},
        }).encode()
        if signature is None:
            signature = hmac.new(SECRET, body, hashlib.sha256).hexdigest()
        write("/tmp/body.json", body)
        out = machine.succeed(
            "curl -sS -o /tmp/answer.json -w '%{http_code}'"
            " -H 'Content-Type: application/json'"
            " -H 'X-GitHub-Event: push'"
            f" -H 'X-GitHub-Delivery: {uuid.uuid4()}'"
            f" -H 'X-Hub-Signature-256: sha256={signature}'"
            " --data-binary @/tmp/body.json http://127.0.0.1:8080/hooks/github"
        )
        return int(out), json.loads(machine.succeed("cat /tmp/answer.json"))


    def push(message, version, status):
        """Commits the app at version, pushes it, delivers the webhook and
        returns the deploy record once the deploy has ended."""
        write("/srv/work/server.py", server_py(version, status))
        machine.succeed(
            "git -C /srv/work add -A",
            f"git -C /srv/work commit -q -m {json.dumps(message)}",
            "git -C /srv/work push -q /srv/git/hello.git main",
        )
        sha = machine.succeed("git -C /srv/work rev-parse HEAD").strip()
        code, answer = deliver(sha)
        assert code == 202, f"webhook answered {code}: {answer}"
        url = f"http://127.0.0.1:8080/api/deploys/{answer['deploy_id']}"
        machine.wait_until_succeeds(
            f"curl -sf {url} | jq -e '.state as $s | {json.dumps(ENDS)} | index($s)'",
            timeout=300,
        )
        deploy = json.loads(machine.succeed(f"curl -sf {url}"))
        assert deploy["sha"] == sha, deploy
        return deploy


    def serves(version):
        machine.succeed(f"curl -sf http://127.0.0.1:3000/ | grep -qx version={version}")


    machine.wait_for_unit("flakeship.service")
    machine.wait_for_open_port(8080)
    machine.succeed("mkdir -p /srv/work /srv/git")
    machine.succeed("git init -q /srv/work", "git init -q --bare /srv/git/hello.git")
    write("/srv/work/flake.nix", APP_FLAKE.encode())

    with subtest("flakeship runs as its own user, its secret outside the unit"):
        assert machine.succeed("systemctl show -p User --value flakeship.service").strip() == "flakeship"
        machine.fail(f"systemctl show -p Environment flakeship.service | grep -F {SECRET.decode()}")
        machine.fail(f"grep -rF {SECRET.decode()} /etc/systemd/system/flakeship.service")

    with subtest("a signed push deploys"):
        deploy = push("version 1", 1, 200)
        assert deploy["state"] == "succeeded", deploy
        assert [s["name"] for s in deploy["steps"]] == ["fetch", "build", "activate", "verify"], deploy
        machine.succeed("systemctl is-active hello.service")
        serves(1)

    with subtest("a delivery with a wrong signature is refused"):
        sha = machine.succeed("git -C /srv/work rev-parse HEAD").strip()
        code, answer = deliver(sha, signature="0" * 64)
        assert code == 401, f"wrong signature answered {code}: {answer}"

    with subtest("a push that comes up unhealthy is rolled back"):
        deploy = push("version 2: answers 500", 2, 500)
        assert deploy["state"] == "rolled_back", deploy
        machine.succeed("systemctl is-active hello.service")
        serves(1)

    with subtest("the next good push deploys"):
        deploy = push("version 3", 3, 200)
        assert deploy["state"] == "succeeded", deploy
        serves(3)

    with subtest("polkit lets flakeship restart its unit and no other"):
        machine.succeed("runuser -u flakeship -- systemctl --no-ask-password restart hello.service")
        machine.fail("runuser -u flakeship -- systemctl --no-ask-password restart nix-daemon.service")
        machine.fail("runuser -u flakeship -- systemctl --no-ask-password stop hello.service")
  '';
}
