"""`yktool luks status` on real LUKS images, and its errors for bad input."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.conftest import CliCall
from tests.fixtures.luks import LuksImage
from yktool.host import Host
from yktool.luks.header import read_header


def test_status_of_a_fresh_image(cli: CliCall, luks2_image: LuksImage) -> None:
    r = cli("--json", "luks", "status", luks2_image.path)
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["version"] == 2
    slots = [(s["id"], s["role"], s["kdf"], s["iterations"]) for s in data["keyslots"]]
    assert slots == [(0, "password", "pbkdf2", 1000)]
    assert data["tokens"] == []
    text = cli("luks", "status", luks2_image.path).stdout
    assert "LUKS2" in text and "password" in text and "1000 iterations" in text


def test_unknown_token_kept_raw_and_mapped_to_its_slot(cli: CliCall, luks2_image: LuksImage) -> None:
    token = {"type": "acme-hsm", "keyslots": ["0"], "acme-serial": "42"}
    subprocess.run(
        ["cryptsetup", "token", "import", str(luks2_image.path)],
        input=json.dumps(token).encode(),
        check=True,
        capture_output=True,
    )
    data = json.loads(cli("--json", "luks", "status", luks2_image.path).stdout)
    assert data["tokens"] == [{"id": 0, "type": "acme-hsm", "keyslots": [0], "known": False, "raw": token}]
    assert data["slot_tokens"] == {"0": [0]}
    assert data["keyslots"][0]["role"] == "token:acme-hsm"
    assert "acme-hsm (unknown type)" in cli("luks", "status", luks2_image.path).stdout


def test_read_header_is_the_library_entry(luks2_image: LuksImage) -> None:
    header = read_header(Host(), str(luks2_image.path))
    assert header.usable_slots == [0] and header.knowledge_slots == [0] and header.hardware_slots == []


def test_not_luks(cli: CliCall, tmp_path: Path) -> None:
    f = tmp_path / "plain.img"
    f.write_bytes(b"\0" * 4096)
    r = cli("luks", "status", f)
    assert r.exit_code == 2
    assert "is not a LUKS device" in r.stderr and "hint:" in r.stderr


def test_luks1_says_how_to_convert(cli: CliCall, luks1_image: LuksImage) -> None:
    before = luks1_image.header_digest()
    r = cli("luks", "status", luks1_image.path)
    assert r.exit_code == 2
    first, hint = r.stderr.strip().splitlines()
    assert "is LUKS1" in first and "need LUKS2" in first
    assert "cryptsetup convert --type luks2" in hint and "luksHeaderBackup" in hint
    assert luks1_image.header_digest() == before


def test_missing_file_is_no_device(cli: CliCall, tmp_path: Path) -> None:
    r = cli("luks", "status", tmp_path / "nope.img")
    assert r.exit_code == 3
    assert "no such file or block device" in r.stderr and "hint:" in r.stderr


def test_missing_cryptsetup_is_exit_5_with_the_package(cli: CliCall, luks2_image: LuksImage, tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    r = cli("luks", "status", luks2_image.path, env={"PATH": str(empty)})
    assert r.exit_code == 5
    assert "cryptsetup is not installed" in r.stderr and "apt-get install cryptsetup-bin" in r.stderr


def test_json_error_on_bad_input(cli: CliCall, tmp_path: Path) -> None:
    r = cli("--json", "luks", "status", tmp_path / "nope.img")
    assert r.exit_code == 3
    data = json.loads(r.stdout)
    assert data["ok"] is False and data["exit_code"] == 3 and data["hint"]
