"""`yktool replace` on NixOS: the lost key's pam_u2f credential is dropped from the agenix
authfile and the new key's added, the whole file encrypted again to the host key (read back with
the real `age`); the kept key's credential stays."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import CliCall
from tests.flows_support import ORIGIN
from yktool.demo import build_root
from yktool.host import Host
from yktool.inventory import Registry
from yktool.pam.authfile import Authfile

pytestmark = pytest.mark.skipif(shutil.which("age") is None, reason="needs age")


def test_replace_reencrypts_the_agenix_authfile(tmp_path: Path, cli: CliCall) -> None:
    root = tmp_path / "root"
    root.mkdir()
    host = Host(root)
    build_root(host)
    host.write_file("/etc/NIXOS", "", 0o644)
    hostkey = root / "etc/ssh/ssh_host_ed25519_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(hostkey)], check=True)
    keys = tmp_path / "keys"
    keys.mkdir()
    age_file = tmp_path / "flake/secrets/yubikey-auth.age"
    age_file.parent.mkdir(parents=True)
    r = cli(
        "--root",
        root,
        "--device",
        f"sim:{keys}/a.json",
        "--yes",
        "commission",
        "--kind",
        "nixos",
        "--steps",
        "pam",
        "--user",
        "alice",
        "--pam-origin",
        ORIGIN,
        "--age-host-key",
        "/etc/ssh/ssh_host_ed25519_key.pub",
        "--age-file",
        age_file,
        "--backup-device",
        f"sim:{keys}/b.json",
        "--new-pin-stdin",
        input="1234\n1234\n",
    )
    assert r.exit_code == 0, r.output

    def creds() -> list[str]:
        plain = subprocess.run(
            ["age", "-d", "-i", str(hostkey), str(age_file)], capture_output=True, check=True
        ).stdout.decode()
        return [c.key_handle for c in Authfile.parse(plain).credentials_of("alice")]

    before = creds()
    reg = Registry.load(host)
    handle = {k.nickname: str(e["credential_id"]) for k, e in reg.enrollments("pam")}
    (keys / "a.json").unlink()  # key A is lost
    r = cli(
        "--root",
        root,
        "--device",
        f"sim:{keys}/b.json",
        "--yes",
        "--json",
        "replace",
        "--lost",
        "primary",
        "--new-device",
        f"sim:{keys}/c.json",
        "--new-pin-stdin",
        input="1234\n",
    )
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert [(f["area"], f["owner"]) for f in report["lost"]] == [("pam", "primary")]
    after = creds()
    assert handle["primary"] in before and handle["primary"] not in after
    assert handle["backup"] in after and len(after) == 2
    assert sorted(k.nickname for k in Registry.load(host).keys) == ["backup", "primary-2"]
    # without a way to read the age file, replace says what to pass, and changes nothing
    (hostkey).rename(tmp_path / "moved-key")
    r = cli(
        "--root",
        root,
        "--device",
        f"sim:{keys}/b.json",
        "--yes",
        "replace",
        "--lost",
        "primary-2",
        "--new-device",
        f"sim:{keys}/d.json",
    )
    assert r.exit_code == 2 and "--age-identity" in r.stderr, r.output
