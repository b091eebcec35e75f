"""SSH keys on a real key: yktool's files work with OpenSSH's own libfido2 middleware, and
OpenSSH's files work with yktool's signer (tests/test_ssh_*.py prove the rest on the software key).

Needs: pytest hardware-tests --hardware --serial S, plus ssh-keygen built with security-key
support (Debian's is). Touches are announced; nothing outside a temporary folder is written.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from yktool.fido.devices import discard_stale_reports
from yktool.fido.session import EDDSA, KeySession
from yktool.ssh.enroll import make_key, parse_options, sign
from yktool.ssh.keys import SkPrivateKey

EMAIL = "hw@example.com"


def _env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "HOME": str(tmp), "SSH_AUTH_SOCK": ""}


def _verify(tmp: Path, key: SkPrivateKey, message: bytes, sig: Path) -> subprocess.CompletedProcess[bytes]:
    signers = tmp / "allowed_signers"
    signers.write_text(f'{EMAIL} namespaces="git" {key.public.line()}\n')
    return subprocess.run(
        ["ssh-keygen", "-Y", "verify", "-f", str(signers), "-I", EMAIL, "-n", "git", "-s", str(sig)],
        input=message,
        capture_output=True,
        env=_env(tmp),
        timeout=60,
        check=False,
    )


@pytest.mark.real_key_only
def test_openssh_signs_with_a_key_yktool_made(session: KeySession, tmp_path: Path, touch: Any) -> None:
    type_name = "ed25519-sk" if session.supports_algorithm(EDDSA) else "ecdsa-sk"
    key = make_key(session, parse_options([], type_name), "yktool hardware test")
    path = tmp_path / "id_sk"
    path.write_bytes(key.to_file())
    path.chmod(0o600)
    (tmp_path / "msg").write_bytes(b"signed by OpenSSH's middleware\n")
    touch(1)
    signed = subprocess.run(
        ["ssh-keygen", "-Y", "sign", "-n", "git", "-f", str(path), str(tmp_path / "msg")],
        capture_output=True,
        env=_env(tmp_path),
        timeout=120,
        check=False,
    )
    assert signed.returncode == 0, signed.stderr
    good = _verify(tmp_path, key, b"signed by OpenSSH's middleware\n", tmp_path / "msg.sig")
    assert good.returncode == 0, good.stderr


@pytest.mark.real_key_only
def test_yktool_signs_with_a_key_openssh_made(session: KeySession, tmp_path: Path, touch: Any) -> None:
    type_name = "ed25519-sk" if session.supports_algorithm(EDDSA) else "ecdsa-sk"
    path = tmp_path / "id_sk"
    touch(1)
    made = subprocess.run(
        ["ssh-keygen", "-q", "-t", type_name, "-N", "", "-C", "openssh made", "-f", str(path)],
        capture_output=True,
        env=_env(tmp_path),
        timeout=120,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert made.returncode == 0, made.stderr
    key = SkPrivateKey.from_file(path.read_bytes())
    assert key.pub_file() == (tmp_path / "id_sk.pub").read_bytes()
    discard_stale_reports(session.device)  # ssh-keygen's replies reached our handle too
    message = b"signed by yktool through python-fido2\n"
    (tmp_path / "msg.sig").write_bytes(sign(session, key, "git", message))
    good = _verify(tmp_path, key, message, tmp_path / "msg.sig")
    assert good.returncode == 0, good.stderr
