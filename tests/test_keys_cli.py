"""`yktool keys list`: the registry as people and scripts see it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import CliCall
from yktool.host import Host
from yktool.inventory import REGISTRY_PATH, Registry


def _register(root: Path) -> None:
    host = Host(root)
    with Registry.update(host) as reg:
        reg.ensure_key("primary", aaguid="cb69481e-8ff7-4039-93ec-0a2729a154a8", serial=12345678)
        reg.record("primary", "luks", credential_id="QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=", uuid="0f1e", keyslot=1)
        reg.record("primary", "ssh", credential_id="eHl6", path="/home/a/.ssh/id_ed25519_sk")
        reg.ensure_key("backup")


def test_keys_list_json_has_every_key_and_enrollment(cli: CliCall, root: Path) -> None:
    _register(root)
    r = cli("--root", root, "--json", "keys", "list")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    by_name = {k["nickname"]: k for k in data["keys"]}
    assert set(by_name) == {"primary", "backup"}
    primary = by_name["primary"]
    assert primary["aaguid"] == "cb69481e-8ff7-4039-93ec-0a2729a154a8"
    assert primary["serial"] == 12345678
    assert primary["added"]  # the date it was first registered
    kinds = [e["kind"] for e in primary["enrollments"]]
    assert kinds == ["luks", "ssh"]
    assert primary["enrollments"][0]["keyslot"] == 1
    assert by_name["backup"]["enrollments"] == []
    assert by_name["backup"]["serial"] is None


def test_keys_list_text(cli: CliCall, root: Path) -> None:
    _register(root)
    r = cli("--root", root, "keys", "list")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].startswith("primary  cb69481e-8ff7-4039-93ec-0a2729a154a8  serial 12345678")
    assert "luks" in lines[1] and "keyslot=1" in lines[1]
    assert "ssh" in lines[2] and "/home/a/.ssh/id_ed25519_sk" in lines[2]
    assert any(line.startswith("backup") for line in lines)
    assert "(no enrollments)" in r.stdout


def test_keys_list_empty_registry(cli: CliCall, root: Path) -> None:
    r = cli("--root", root, "keys", "list")
    assert r.exit_code == 0
    assert "no keys registered yet" in r.stdout
    r = cli("--root", root, "--json", "keys", "list")
    assert json.loads(r.stdout)["keys"] == []
    assert not (root / "etc").exists()  # listing creates nothing


def test_keys_list_malformed_registry_is_a_usage_error(cli: CliCall, root: Path) -> None:
    path = root / REGISTRY_PATH.lstrip("/")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"[[keys]\nnickname = 'x'\n")
    before = path.read_bytes()
    r = cli("--root", root, "keys", "list")
    assert r.exit_code == 2
    assert "not valid TOML" in r.stderr
    assert "hint:" in r.stderr
    assert "Traceback" not in r.output
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    "body",
    [
        "keys = [1]\n",
        "keys = 'primary'\n",
        "[[keys]]\nnickname = 'a'\nenrollments = 3\n",
        "[[keys]]\nnickname = 'a'\nenrollments = ['ab']\n",
        "[[keys]]\nnickname = 'a'\nserial = 'x'\n",
    ],
)
def test_keys_list_registry_of_the_wrong_shape_is_a_usage_error(cli: CliCall, root: Path, body: str) -> None:
    path = root / REGISTRY_PATH.lstrip("/")
    path.parent.mkdir(parents=True)
    path.write_text("version = 1\n" + body)
    before = path.read_bytes()
    r = cli("--root", root, "keys", "list")
    assert r.exit_code == 2, r.output
    assert REGISTRY_PATH in r.stderr and "hint:" in r.stderr
    assert "Traceback" not in r.output
    assert path.read_bytes() == before
