"""`yktool nixos module`: one module rendered from the key registry, proven with the real Nix.

A NixOS root is commissioned with two software keys (LUKS2 FIDO2 + TPM2 on the demo image,
pam_u2f into an agenix file, udev, USBGuard, SSH and git). Then: every emitted file passes
`nix-instantiate --parse`; the module, called with `{ config, lib, pkgs, ... }` that the test
passes, evaluates (`--eval --strict`) to exactly the option paths and value types nixpkgs and
agenix declare; a replace rewrites it (new key and backup in, lost key out, one lock program);
`--flake` on a tree laid out like the hardening checklist's NixOS configuration (docs/verify.md)
picks its own USBGuard list option, its `nix-secrets/secrets/` folder and LUKS name, a plain
flake the standard ones; the .age file decrypts with the host key to the authfile byte for byte
(the real `age`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CliCall
from tests.flows_support import EMAIL, ORIGIN, copy_scratch, demo_pin, fresh_setup, spec
from yktool.demo import IMAGE, KEYS, PASSPHRASE, PIN_FILE, ROOT
from yktool.host import Host
from yktool.inventory import Registry
from yktool.luks.header import read_header
from yktool.pam.authfile import Authfile

pytestmark = pytest.mark.skipif(
    shutil.which("age") is None or shutil.which("nix-instantiate") is None,
    reason="needs age and nix-instantiate (scripts/setup installs both)",
)

HOST_KEY = "etc/ssh/ssh_host_ed25519_key"


@pytest.fixture(scope="module")
def commissioned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A NixOS demo root, commissioned with the primary and the backup key; the age file in
    `flake-src/yubikey-auth.age` (outside any flake: where a first commission put it)."""
    base = tmp_path_factory.mktemp("nixos")
    with fresh_setup(base) as (scratch, tcti):
        root = scratch / ROOT
        (root / "etc/NIXOS").write_text("")
        (root / "etc/ssh").mkdir(exist_ok=True)
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "root@demo-host", "-f", str(root / HOST_KEY)],
            check=True,
        )
        (scratch / "flake-src").mkdir()
        from click.testing import CliRunner

        from yktool.cli import main_group

        pin = "4321"  # the keys are new: commission sets this PIN on both
        (scratch / KEYS).mkdir(exist_ok=True)
        (scratch / KEYS / PIN_FILE).write_text(pin)
        args = [
            "--root",
            str(root),
            "--tpm",
            tcti,
            "--device",
            spec(scratch, "primary"),
            "--yes",
            "commission",
            "--kind",
            "nixos",
            "--user",
            "alice",
            "--luks-device",
            str(IMAGE),
            "--steps",
            "luks-fido2,luks-tpm2,ssh,git,pam,udev,usbguard",
            "--git-email",
            EMAIL,
            "--pam-origin",
            ORIGIN,
            "--age-host-key",
            "/" + HOST_KEY + ".pub",
            "--age-file",
            str(scratch / "flake-src/yubikey-auth.age"),
            "--backup-device",
            spec(scratch, "backup"),
            "--unlock-key-file",
            str(PASSPHRASE),
            "--pin-stdin",
            "--new-pin-stdin",
        ]
        r = CliRunner().invoke(main_group, args, input=f"{pin}\n{pin}\n{pin}\n{pin}\n", catch_exceptions=False)
        assert r.exit_code == 0, r.stdout + r.stderr
    return scratch


@pytest.fixture
def scratch(commissioned: Path, tmp_path: Path) -> Path:
    """A copy of the commissioned scratch whose registry names the copy's age file."""
    copy = copy_scratch(commissioned, tmp_path / "demo")
    registry = copy / ROOT / "etc/yktool/keys.toml"
    registry.write_text(registry.read_text().replace(str(commissioned), str(copy)))
    return copy


def parse(path: Path) -> None:
    r = subprocess.run(["nix-instantiate", "--parse", str(path)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr


EVAL = """
let
  module = import {module};
  # the module's interface: the arguments NixOS passes it (pkgs reduced to what it calls)
  args = {{
    config.age.secrets.{secret}.path = "/run/agenix/{secret}";
    lib = {{ }};
    pkgs.writeShellScript = name: text: "/nix/store/00000000000000000000000000000000-" + name;
  }};
  out = module args;
  types = v: if builtins.isAttrs v then builtins.mapAttrs (_: types) v
             else if builtins.isList v then map types v else builtins.typeOf v;
  plain = v: if builtins.isAttrs v then builtins.mapAttrs (_: plain) v
             else if builtins.isList v then map plain v
             else if builtins.typeOf v == "path" then toString v else v;
in {{ types = types out; values = plain out; }}
"""


def evaluate(module: Path, secret: str = "yubikey-auth") -> dict[str, Any]:  # noqa: S107 - a secret's name
    expr = EVAL.format(module=module, secret=secret)
    r = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "-E", expr], capture_output=True, text=True, check=False
    )
    assert r.returncode == 0, r.stderr
    data: dict[str, Any] = json.loads(r.stdout)
    return data


def leaves(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(leaves(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def usb_serials(host: Host) -> dict[str, str]:
    return {k.nickname: str(e.get("serial", "")) for k, e in Registry.load(host).enrollments("udev")}


def test_module_evaluates_to_the_nixos_option_paths_and_types(scratch: Path, cli: CliCall, tmp_path: Path) -> None:
    root = scratch / ROOT
    host = Host(root)
    out = tmp_path / "cfg/yktool.nix"
    out.parent.mkdir()
    r = cli("--root", root, "--json", "nixos", "module", "--out", out, "--home-manager")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    parse(out)
    uuid = read_header(host, IMAGE).uuid
    name = f"luks-{uuid}"
    got = evaluate(out)
    types = leaves(got["types"])
    svc = "security.pam.services"
    assert types == {
        "age.secrets.yubikey-auth.file": "path",
        "age.secrets.yubikey-auth.owner": "string",
        "age.secrets.yubikey-auth.group": "string",
        "age.secrets.yubikey-auth.mode": "string",
        "security.pam.u2f.enable": "bool",
        "security.pam.u2f.control": "string",
        "security.pam.u2f.settings.authfile": "string",
        "security.pam.u2f.settings.origin": "string",
        "security.pam.u2f.settings.cue": "bool",
        f"{svc}.sudo.u2fAuth": "bool",
        f"{svc}.login.u2fAuth": "bool",
        f"{svc}.greetd.u2fAuth": "bool",
        "services.udev.extraRules": "string",
        "services.usbguard.rules": "string",
        "boot.initrd.systemd.enable": "bool",
        f"boot.initrd.luks.devices.{name}.crypttabExtraOpts": ["string", "string"],
    }
    values = leaves(got["values"])
    assert values["security.pam.u2f.settings.authfile"] == "/run/agenix/yubikey-auth"
    assert values["security.pam.u2f.settings.origin"] == ORIGIN
    assert values["security.pam.u2f.control"] in ("sufficient", "required")
    assert values["age.secrets.yubikey-auth.file"] == str(scratch / "flake-src/yubikey-auth.age")
    assert values["age.secrets.yubikey-auth.mode"] == "0400"  # no screen locker in this root
    opts = values[f"boot.initrd.luks.devices.{name}.crypttabExtraOpts"]
    assert opts == ["fido2-device=auto", "tpm2-device=auto"] and all("\n" not in o for o in opts)
    # one lock program, two removal rules per key (its USB device, its HID device), by serial
    rules = values["services.udev.extraRules"]
    remove_lines = [ln for ln in rules.splitlines() if ln.startswith('ACTION=="remove"')]
    assert len(remove_lines) == 4
    assert rules.count("/nix/store/00000000000000000000000000000000-yktool-lock ") == 4
    assert out.read_text().count("pkgs.writeShellScript") == 1
    serials = usb_serials(host)
    assert len(set(serials.values())) == 2
    for nick, serial in serials.items():
        assert sum(f'ENV{{ID_SERIAL_SHORT}}=="{serial}"' in ln for ln in remove_lines) == 1, nick
        assert sum(f'ENV{{HID_UNIQ}}=="{serial}"' in ln and 'SUBSYSTEM=="hid"' in ln for ln in remove_lines) == 1, nick
    usbguard = values["services.usbguard.rules"]
    assert [ln for ln in usbguard.splitlines() if ln.startswith("allow ")] == [
        next(str(e["rule"]) for k, e in Registry.load(host).enrollments("usbguard") if k.nickname == nick)
        for nick in ("primary", "backup")
    ]
    # the secrets.nix entry (printed: no tree) parses inside an attribute set, scoped to the host key
    entry = report["secrets_nix_entry"]
    host_pub = " ".join((root / (HOST_KEY + ".pub")).read_text().split()[:2])
    assert entry == f'"yubikey-auth.age".publicKeys = [ "{host_pub}" ];'
    (tmp_path / "secrets.nix").write_text("{\n  " + entry + "\n}\n")
    parse(tmp_path / "secrets.nix")
    # the Home Manager snippet parses too
    hm = tmp_path / "home.nix"
    hm.write_text(report["home_manager"]["alice"])
    parse(hm)
    assert 'format = "ssh";' in hm.read_text() and "id_ed25519_sk" in hm.read_text()
    # regenerating changes nothing (the module is rendered, not appended to)
    before = out.read_bytes()
    r = cli("--root", root, "--json", "nixos", "module", "--out", out)
    assert r.exit_code == 0 and json.loads(r.stdout)["changed"] is False and out.read_bytes() == before


def test_two_keys_then_replace_rewrites_the_module(scratch: Path, cli: CliCall, tmp_path: Path) -> None:
    root = scratch / ROOT
    host = Host(root)
    flake = tmp_path / "flake"
    flake.mkdir()
    (flake / "flake.nix").write_text("{ outputs = { ... }: { }; }\n")
    out = flake / "yktool.nix"
    r = cli("--root", root, "nixos", "module", "--flake", flake)
    assert r.exit_code == 0, r.output
    lost_serial = usb_serials(host)["primary"]
    assert lost_serial in out.read_text()
    (scratch / KEYS / "primary.json").unlink()  # key A is lost
    r = cli(
        "--root",
        root,
        "--device",
        spec(scratch, "backup"),
        "--yes",
        "--json",
        "replace",
        "--lost",
        "primary",
        "--new-device",
        spec(scratch, "new"),
        "--unlock-key-file",
        str(PASSPHRASE),
        "--new-pin-stdin",
        input=demo_pin(scratch) + "\n",
    )
    assert r.exit_code == 0, r.output
    steps = {s["id"]: s for s in json.loads(r.stdout)["steps"]}
    assert "rewrote the NixOS module" in steps["nixos.module"]["detail"], steps["nixos.module"]
    serials = usb_serials(host)
    assert sorted(serials) == ["backup", "primary-2"]
    # NixOS generates /etc: the new key's rules went into the module, not into /etc
    assert not (root / "etc/udev").exists() and not (root / "etc/usbguard").exists()
    text = out.read_text()
    parse(out)
    assert lost_serial not in text
    assert all(s in text for s in serials.values())
    assert text.count("pkgs.writeShellScript") == 1 and "# Keys: backup, primary-2" in text
    values = leaves(evaluate(out)["values"])
    assert [ln for ln in values["services.usbguard.rules"].splitlines() if ln.startswith("allow ")] == [
        f'allow id 1209:0001 serial "{serials[n]}" name "yktool software key" with-interface 03:00:00'
        for n in ("backup", "primary-2")
    ]
    # the authfile holds the new and the backup key's credentials, not the lost one's
    # the flake's copy was rewritten from it too (yktool's own copy: replaced, though a key is gone)
    plain = _decrypt(root, flake / "secrets/yubikey-auth.age").decode()
    assert plain.encode() == _decrypt(root, scratch / "flake-src/yubikey-auth.age")
    registry_ids = {str(e["credential_id"]) for _k, e in Registry.load(host).enrollments("pam")}
    import base64

    on_line = {base64.b64encode(c.credential_id or b"").decode() for c in Authfile.parse(plain).credentials_of("alice")}
    assert on_line == registry_ids and len(on_line) == 2


def _checklist_config_tree(flake: Path, uuid: str, host_pub: str) -> None:
    """A tree laid out like the hardening checklist's NixOS configuration: hosts/,
    modules/profiles/hardware/usbguard.nix declaring modules.hardware.usbguard.rules (a list),
    nix-secrets/secrets/secrets.nix."""
    files = {
        "flake.nix": "{\n  outputs = { self, nixpkgs, ... }: {\n    nixosConfigurations.demo-host = "
        "nixpkgs.lib.nixosSystem { modules = [ ./hosts/demo-host ]; };\n  };\n}\n",
        "hosts/demo-host/default.nix": "{ ... }:\n{\n  imports = [ ./hardware-configuration.nix ];\n"
        '  modules.profiles.hardware = [ "yubikey" ];\n}\n',
        "hosts/demo-host/hardware-configuration.nix": "{ config, lib, ... }:\n{\n"
        f'  boot.initrd.luks.devices."cryptroot".device = "/dev/disk/by-uuid/{uuid}";\n'
        '  fileSystems."/" = { device = "/dev/mapper/cryptroot"; fsType = "btrfs"; };\n}\n',
        "hosts/other/hardware-configuration.nix": "{ ... }:\n{\n"
        '  boot.initrd.luks.devices."luks-x".device = "/dev/disk/by-uuid/0000-1111";\n}\n',
        "modules/profiles/hardware/usbguard.nix": "{ config, lib, ... }:\nwith lib;\n"
        "let cfg = config.modules.hardware.usbguard;\nin {\n"
        '  options.modules.hardware.usbguard = {\n    enable = mkEnableOption "usbguard";\n'
        "    rules = mkOption { type = types.listOf types.str; default = [ ]; };\n  };\n"
        "  config = mkIf cfg.enable {\n    services.usbguard = {\n      enable = true;\n"
        '      implicitPolicyTarget = "block";\n      rules = concatStringsSep "\\n" cfg.rules;\n'
        "    };\n  };\n}\n",
        "modules/profiles/hardware/yubikey.nix": "{ pkgs, ... }:\n{\n"
        "  environment.systemPackages = [ pkgs.hyprlock ];\n}\n",
        "nix-secrets/secrets/secrets.nix": f'let\n  demo-host = "{host_pub}";\n'
        '  bio-smart = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOtherHostKeyOtherHostKeyOtherHostKey00";\n'
        'in\n{\n  "smtp-password".publicKeys = [ demo-host bio-smart ];\n}\n',
    }
    for rel, text in files.items():
        (flake / rel).parent.mkdir(parents=True, exist_ok=True)
        (flake / rel).write_text(text)


def _decrypt(root: Path, path: Path) -> bytes:
    return subprocess.run(["age", "-d", "-i", str(root / HOST_KEY), str(path)], capture_output=True, check=True).stdout


def test_flake_like_the_host_page_gets_its_own_usbguard_option_and_secrets_folder(
    scratch: Path, cli: CliCall, tmp_path: Path
) -> None:
    root = scratch / ROOT
    host = Host(root)
    flake = tmp_path / "nix-config"
    uuid = read_header(host, IMAGE).uuid
    host_pub = " ".join((root / (HOST_KEY + ".pub")).read_text().split()[:2])
    _checklist_config_tree(flake, uuid, host_pub)
    subprocess.run(["git", "init", "-q", str(flake)], check=True)
    r = cli("--root", root, "--json", "nixos", "module", "--flake", flake)
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    out = flake / "hosts/demo-host/yktool.nix"
    # new files a flake would not see until git knows them
    assert any(
        n.endswith("add hosts/demo-host/yktool.nix nix-secrets/secrets/yubikey-auth.age") for n in report["notes"]
    ), report["notes"]
    assert report["module"] == str(out) and report["usbguard_option"] == "modules.hardware.usbguard.rules"
    parse(out)
    text = out.read_text()
    assert "services.usbguard.rules" not in text.split("{ config, lib, pkgs, ... }:")[1]
    assert "file = ../../nix-secrets/secrets/yubikey-auth.age;" in text
    got = evaluate(out)
    types, values = leaves(got["types"]), leaves(got["values"])
    assert types["modules.hardware.usbguard.rules"] == ["string", "string"]
    assert "services.usbguard.rules" not in types
    assert types["boot.initrd.luks.devices.cryptroot.crypttabExtraOpts"] == ["string", "string"]
    assert types["security.pam.services.hyprlock.u2fAuth"] == "bool"  # the tree's locker
    assert values["age.secrets.yubikey-auth.mode"] == "0444"  # hyprlock reads it as the user
    # the authfile, in the tree's folder, decrypts with the host key to the registry's authfile
    age_file = flake / "nix-secrets/secrets/yubikey-auth.age"
    assert _decrypt(root, age_file) == _decrypt(root, scratch / "flake-src/yubikey-auth.age")
    import base64

    lines = Authfile.parse(_decrypt(root, age_file).decode()).credentials_of("alice")
    assert {base64.b64encode(c.credential_id or b"").decode() for c in lines} == {
        str(e["credential_id"]) for _k, e in Registry.load(host).enrollments("pam")
    }
    from yktool import agefile

    host_recipient = agefile.parse_recipient(host_pub)
    assert agefile.header_recipients(age_file.read_bytes()) == ([agefile.ssh_tag(host_recipient)], 0)  # this host only
    # secrets.nix: a diff adding the entry in that configuration's style (no .age, the host's let name)
    diff = report["secrets_nix_diff"]
    assert '+  "yubikey-auth".publicKeys = [ demo-host ];' in diff, diff
    patch = tmp_path / "secrets.diff"
    patch.write_text(diff)
    subprocess.run(["patch", "-p1", "-i", str(patch)], cwd=flake, check=True, capture_output=True)
    parse(flake / "nix-secrets/secrets/secrets.nix")
    # again: nothing changes, the age file is not re-encrypted, secrets.nix has the entry
    subprocess.run(["git", "-C", str(flake), "add", "-A"], check=True)
    age_before = age_file.read_bytes()
    r = cli("--root", root, "--json", "nixos", "module", "--flake", flake)
    report = json.loads(r.stdout)
    assert r.exit_code == 0 and not report["changed"] and not report["age_written"] and report["secrets_nix_diff"] == ""
    assert not any("git -C" in n for n in report["notes"])
    assert age_file.read_bytes() == age_before


def test_plain_flake_gets_the_standard_options(scratch: Path, cli: CliCall, tmp_path: Path) -> None:
    root = scratch / ROOT
    flake = tmp_path / "plain"
    flake.mkdir()
    (flake / "flake.nix").write_text("{ outputs = { ... }: { }; }\n")
    (flake / "configuration.nix").write_text("{ ... }:\n{\n  imports = [ ./yktool.nix ];\n}\n")
    os.chown(flake, 1000, 1000)  # alice's checkout: what yktool adds to it is hers to commit
    r = cli("--root", root, "--json", "nixos", "module", "--flake", flake)
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    out = flake / "yktool.nix"
    assert report["module"] == str(out) and report["usbguard_option"] == "services.usbguard.rules"
    text = out.read_text()
    assert "file = ./secrets/yubikey-auth.age;" in text and "modules.hardware" not in text
    assert _decrypt(root, flake / "secrets/yubikey-auth.age") == _decrypt(root, scratch / "flake-src/yubikey-auth.age")
    assert report["secrets_nix_entry"].startswith('"yubikey-auth.age".publicKeys = [ "ssh-ed25519 ')
    made = (out, flake / "secrets", flake / "secrets/yubikey-auth.age")
    assert {(p.stat().st_uid, p.stat().st_gid) for p in made} == {(1000, 1000)}
    uuid = read_header(Host(root), IMAGE).uuid
    types = leaves(evaluate(out)["types"])
    assert types["services.usbguard.rules"] == "string"
    assert types[f"boot.initrd.luks.devices.luks-{uuid}.crypttabExtraOpts"] == ["string", "string"]
    # disko names the mapping, not hardware-configuration.nix: said, not guessed; --luks-name sets it
    (flake / "disko.nix").write_text(
        '{ disko.devices.disk.main.content.partitions.luks.content = { type = "luks"; name = "crypted"; }; }\n'
    )
    r = cli("--root", root, "--json", "nixos", "module", "--flake", flake)
    assert any(
        "disko names LUKS volumes crypted" in n and f"--luks-name {uuid}=NAME" in n
        for n in json.loads(r.stdout)["notes"]
    ), r.stdout
    r = cli("--root", root, "--json", "nixos", "module", "--flake", flake, "--luks-name", f"{uuid}=crypted")
    assert r.exit_code == 0, r.output
    types = leaves(evaluate(out)["types"])
    assert types["boot.initrd.luks.devices.crypted.crypttabExtraOpts"] == ["string", "string"]
    assert f"--luks-name {uuid}=crypted" in out.read_text()  # the regenerate command keeps it
    r = cli("--root", root, "nixos", "module", "--flake", flake, "--luks-name", "crypted")
    assert r.exit_code == 2 and "is not UUID=NAME" in r.stderr


def test_bad_input_is_a_clear_error_and_writes_nothing(scratch: Path, cli: CliCall, tmp_path: Path) -> None:
    root = scratch / ROOT
    nowhere = tmp_path / "not-a-flake"
    nowhere.mkdir()
    r = cli("--root", root, "nixos", "module", "--flake", nowhere)
    assert r.exit_code == 2 and "no flake.nix" in r.stderr and "Traceback" not in r.output
    assert list(nowhere.iterdir()) == []
    mine = tmp_path / "hand-written.nix"
    mine.write_text("{ ... }: { }\n")
    r = cli("--root", root, "nixos", "module", "--out", mine)
    assert r.exit_code == 4 and "not generated by yktool" in r.stderr
    assert mine.read_text() == "{ ... }: { }\n"
    # a yubikey-auth.age the tree already had, with a credential the registry's authfile lacks
    flake = tmp_path / "flake"
    (flake / "secrets").mkdir(parents=True)
    (flake / "flake.nix").write_text("{ outputs = { ... }: { }; }\n")
    from yktool import agefile

    host_recipient = agefile.parse_recipient((root / (HOST_KEY + ".pub")).read_text())
    bob = _decrypt(root, scratch / "flake-src/yubikey-auth.age").replace(b"alice:", b"bob:")
    theirs = agefile.encrypt(bob, [host_recipient])
    (flake / "secrets/yubikey-auth.age").write_bytes(theirs)
    r = cli("--root", root, "nixos", "module", "--flake", flake)
    assert r.exit_code == 4 and "would drop them" in r.stderr and "bob" in r.stderr, r.output
    assert (flake / "secrets/yubikey-auth.age").read_bytes() == theirs and not (flake / "yktool.nix").exists()
    (root / HOST_KEY).rename(tmp_path / "moved")
    (root / (HOST_KEY + ".pub")).rename(tmp_path / "moved.pub")
    r = cli("--root", root, "nixos", "module", "--out", tmp_path / "new.nix")
    assert r.exit_code == 2 and "--age-host-key" in r.stderr and not (tmp_path / "new.nix").exists()


def test_rules_only_the_usbguard_rule_file_holds_are_named_before_they_are_dropped(
    scratch: Path, cli: CliCall, tmp_path: Path
) -> None:
    root = scratch / ROOT
    (root / "var/lib/usbguard").mkdir(parents=True)
    keyboard = 'allow id 046d:c539 serial "" name "USB Receiver" with-interface { 03:01:01 03:01:02 }'
    (root / "var/lib/usbguard/rules.conf").write_text(keyboard + "\n")
    r = cli("--root", root, "--json", "nixos", "module", "--out", tmp_path / "yktool.nix")
    assert r.exit_code == 0, r.output
    notes = " ".join(json.loads(r.stdout)["notes"])
    assert "1 rule(s) the module does not" in notes and "046d:c539" in notes and "keyboard" in notes


def test_dry_run_renders_and_writes_nothing(scratch: Path, cli: CliCall, tmp_path: Path) -> None:
    from tests.flows_support import tree_bytes

    root = scratch / ROOT
    flake = tmp_path / "flake"
    flake.mkdir()
    (flake / "flake.nix").write_text("{ outputs = { ... }: { }; }\n")
    before_root, before_flake = tree_bytes(root), tree_bytes(flake)
    r = cli("--root", root, "--dry-run", "nixos", "module", "--flake", flake)
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("# Generated by yktool") and "nothing written" in r.stderr
    assert "would be written" in r.stderr
    assert tree_bytes(root) == before_root and tree_bytes(flake) == before_flake
    assert sorted(p.name for p in flake.iterdir()) == ["flake.nix"]
