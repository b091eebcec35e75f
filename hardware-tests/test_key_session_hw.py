"""KeySession and `yktool key` on a real key: what tests/test_session.py proves on the software key.

Needs: pytest hardware-tests --hardware --serial S (see docs/hardware-tests.md). Touches are
announced; a key with a PIN (with --allow-used-key) asks for it once on the terminal.
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import pytest

from yktool.fido.session import ES256, KeySession

RP = "yktool-hardware-test.invalid"
ZERO = b"\0" * 32


def test_make_get_probe_es256(session: KeySession) -> None:
    cred = session.make_credential(RP, algorithms=(ES256,))
    a = session.get_assertion(RP, ZERO, allow=[cred.credential_id])
    cred.public_key.verify(bytes(a.auth_data) + ZERO, a.signature)
    assert a.user_present
    touches = session.touches
    assert session.probe(RP, cred.credential_id) is True
    assert session.probe(RP, os.urandom(64)) is False
    assert session.touches == touches


@pytest.mark.requires(extensions=("hmac-secret",))
def test_hmac_secret_stable(session: KeySession) -> None:
    cred = session.make_credential(RP, hmac_secret=True)
    salt = os.urandom(32)
    first = session.get_assertion(RP, ZERO, allow=[cred.credential_id], hmac_salt=salt).hmac_output
    again = session.get_assertion(RP, ZERO, allow=[cred.credential_id], hmac_salt=salt).hmac_output
    assert first is not None and first == again


@pytest.fixture(scope="module")
def key_info(yktool_cmd: list[str]) -> dict[str, Any]:
    """`yktool --json key info` on the key under test."""
    out = subprocess.run(
        [*yktool_cmd, "--json", "key", "info"], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def test_key_info_json_names_the_key(hw_key: Any, key_info: dict[str, Any]) -> None:
    assert key_info["software"] is hw_key.spec.startswith("sim:") and key_info["aaguid"]


def test_key_info_json_has_yubikey_facts(hw_key: Any, key_info: dict[str, Any]) -> None:
    if not hw_key.serial:
        pytest.skip("not a YubiKey (no serial through yubikey-manager): no YubiKey facts to compare")
    assert str(key_info["yubikey"]["serial"]) == hw_key.serial
    assert key_info["yubikey"]["firmware"]
