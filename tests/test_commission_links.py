"""Running as root, `commission` refuses a user's link on a file its plan will write before its
first step: it used to meet `~/.ssh/authorized_keys -> /etc/shadow` only at the ssh step, after
the TPM2 keyslot and the recovery key were added to the LUKS volume (issue 12: one plan,
checked whole, then acted on)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import CliCall
from tests.flows_support import EMAIL, ORIGIN, fresh_setup, spec, tree_bytes
from yktool.demo import IMAGE, PASSPHRASE, ROOT

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the links matter when yktool runs as root")

SHADOW = b"root:$6$rootsecrethash$abcdefghijklmnop:19000:0:99999:7:::\n"


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    with fresh_setup(tmp_path) as setup:
        yield setup


@pytest.mark.parametrize("link", [".ssh/authorized_keys", ".ssh/allowed_signers", ".gitconfig"])
def test_commission_refuses_a_users_link_before_its_first_step(
    fresh: tuple[Path, str], cli: CliCall, link: str
) -> None:
    scratch, tcti = fresh
    root = scratch / ROOT
    (root / "etc/shadow").write_bytes(SHADOW)
    (root / "etc/shadow").chmod(0o600)
    home = root / "home/alice"
    (home / ".ssh").mkdir(parents=True, exist_ok=True)
    for p in (home, home / ".ssh"):
        os.chown(p, 1000, 1000)
    os.symlink("/etc/shadow", home / link)
    os.lchown(home / link, 1000, 1000)
    before = tree_bytes(root)
    assert str(IMAGE).lstrip("/") in before
    r = cli(
        "--root",
        root,
        "--tpm",
        tcti,
        "--device",
        spec(scratch, "primary"),
        "--yes",
        "commission",
        "--kind",
        "linux",
        "--user",
        "alice",
        "--luks-device",
        str(IMAGE),
        "--git-email",
        EMAIL,
        "--pam-origin",
        ORIGIN,
        "--backup-device",
        spec(scratch, "backup"),
        "--unlock-key-file",
        str(PASSPHRASE),
        "--recovery-key-file",
        str(scratch / "recovery.txt"),
        "--new-pin-stdin",
        input="4321\n" * 4,
    )
    assert r.exit_code == 4, r.output
    assert f"/home/alice/{link}" in r.stderr and "will not follow it" in r.stderr, r.stderr
    assert "Traceback" not in r.output and "rootsecrethash" not in r.output
    assert tree_bytes(root) == before
    assert os.readlink(home / link) == "/etc/shadow"
    assert not (scratch / "recovery.txt").exists()
