"""pam_u2f on a real key: a line yktool registered is accepted by the real pam_u2f talking to the
key itself over libfido2 (not manual mode), in a private mount namespace; the host's /etc/pam.d
is hashed before and after. tests/test_pam_real.py proves the rest with the software key.

Needs: pytest hardware-tests --hardware --serial S, root, unshare, pamtester, libpam-u2f.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from yktool.fido.session import KeySession
from yktool.host import Host
from yktool.pam.authfile import CENTRAL_AUTHFILE
from yktool.pam.register import RegisterRequest, plain_target
from yktool.pam.register import register as pam_register

ORIGIN = "pam://yktool-hw-test"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("pamtester") is None or shutil.which("unshare") is None,
    reason="needs root, unshare and pamtester",
)


def _pam_d_digest() -> str:
    h = hashlib.sha256()
    for p in sorted(Path("/etc/pam.d").rglob("*")):
        h.update(str(p).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.mark.real_key_only
def test_real_pam_u2f_with_the_real_key(session: KeySession, tmp_path: Path, touch: Any) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    host = Host(root)
    target = plain_target(host, "root", CENTRAL_AUTHFILE)
    result = pam_register(host, session, RegisterRequest(user="root", origin=ORIGIN, target=target))
    assert result.changed
    authfile = root / "etc/u2f_mappings"
    before = _pam_d_digest()
    pamd = tmp_path / "pam.d"
    pamd.mkdir()
    (pamd / "yktest").write_text(f"auth required pam_u2f.so authfile={authfile} cue origin={ORIGIN}\n")
    touch(1)
    run = subprocess.run(
        [
            "unshare",
            "-m",
            "sh",
            "-c",
            'mount --bind "$1" /etc/pam.d && exec pamtester yktest root authenticate',
            "sh",
            str(pamd),
        ],
        capture_output=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert run.returncode == 0, run.stderr
    assert _pam_d_digest() == before
