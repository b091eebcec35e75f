"""`yktool commission --kind nixos`: /etc is generated, so the pam_u2f authfile becomes an agenix
secret (encrypted to the host key, both keys' credentials in it, read back with the real `age`),
and the udev/USBGuard rules are printed as Nix (parsed by nix-instantiate) instead of written."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import CliCall
from tests.flows_support import ORIGIN
from yktool import pam_u2f as pu
from yktool.demo import build_root
from yktool.host import Host

pytestmark = pytest.mark.skipif(shutil.which("age") is None, reason="needs age")


def test_nixos_commission_writes_the_agenix_secret_and_prints_nix(tmp_path: Path, cli: CliCall) -> None:
    root = tmp_path / "root"
    root.mkdir()
    host = Host(root)
    build_root(host)
    host.write_file("/etc/NIXOS", "", 0o644)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "root@demo-host", "-f",  # noqa: S607
                    str(root / "etc/ssh/ssh_host_ed25519_key")], check=True)
    keys = tmp_path / "keys"
    keys.mkdir()
    age_file = tmp_path / "flake/secrets/yubikey-auth.age"
    age_file.parent.mkdir(parents=True)
    etc_before = sorted(str(p.relative_to(root)) for p in (root / "etc").rglob("*"))
    r = cli("--root", root, "--device", f"sim:{keys}/a.json", "--yes", "--json", "commission",
            "--steps", "pam,udev,usbguard,verify", "--user", "alice", "--pam-origin", ORIGIN,
            "--age-host-key", "/etc/ssh/ssh_host_ed25519_key.pub", "--age-file", age_file,
            "--backup-device", f"sim:{keys}/b.json", "--new-pin-stdin", input="1234\n1234\n")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    # verify: only what the root already shows (PAM, udev and USBGuard come from the printed Nix)
    assert report["ok"] and {v["id"] for v in report["verify"]} == {"hw.registry.backup"}
    # the host decrypts its authfile with the real age: alice's line holds both keys
    plain = subprocess.run(["age", "-d", "-i", str(root / "etc/ssh/ssh_host_ed25519_key"), str(age_file)],  # noqa: S607
                           capture_output=True, check=True).stdout.decode()
    assert len(pu.Authfile.parse(plain).credentials_of("alice")) == 2
    # /etc untouched apart from the registry and the flow's state (NixOS generates it)
    etc_after = sorted(str(p.relative_to(root)) for p in (root / "etc").rglob("*"))
    assert [p for p in etc_after if p not in etc_before and not p.startswith("etc/yktool")] == []
    assert not (root / "etc/udev").exists() and not (root / "etc/u2f_mappings").exists()
    # every printed Nix snippet parses
    notes = "\n".join(report["notes"])
    assert "security.pam.u2f" in notes and "services.udev.extraRules" in notes and "usbguard" in notes
    from yktool.nix import check_parse

    for chunk in notes.split("--- ")[1:]:
        body = chunk.split("---\n", 1)[1]
        if "secrets.nix" in chunk.split("---")[0]:
            body = "{ " + body + " }"
        elif body.lstrip().startswith("modules.hardware.usbguard"):
            body = "{ " + body + " }"
        check_parse(Host(), body)
