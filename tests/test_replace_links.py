"""Running as root, `replace` refuses a user's link on any file its plan will read or write
before its first step (issue 12: one plan, checked whole, then acted on). It used to meet the
link only at the step that wrote the file: by then the lost key's LUKS keyslot was wiped (or the
new key enrolled) and its pam_u2f credential dropped. Each run here must exit 4 naming the link
and leave the whole root — the LUKS image, the authfile, authorized_keys, allowed_signers, the
registry — byte for byte as it was."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tests.conftest import CliCall
from tests.flows_support import copy_scratch, demo_pin, spec
from yktool.demo import IMAGE, KEYS, PASSPHRASE, ROOT, Demo

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the links matter when yktool runs as root")

SHADOW = b"root:$6$rootsecrethash$abcdefghijklmnop:19000:0:99999:7:::\n"
WATCHED = [
    str(IMAGE).lstrip("/"),
    "etc/u2f_mappings",
    "etc/yktool/keys.toml",
    "home/alice/.ssh/authorized_keys",
    "home/alice/.ssh/allowed_signers",
]


@pytest.fixture(scope="module")
def commissioned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    scratch = tmp_path_factory.mktemp("replinks") / "demo"
    ctx = Demo(scratch).run()
    assert all(line.ok for line in ctx.lines)
    shadow = scratch / ROOT / "etc/shadow"
    shadow.write_bytes(SHADOW)
    shadow.chmod(0o600)
    return scratch


def snapshot(root: Path) -> dict[str, tuple[int, int, int, str]]:
    """Every name under the root: mode, owner, group and the sha256 of its bytes (or link target)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            if p.is_symlink():
                body = "-> " + os.readlink(p)
            elif p.is_file():
                body = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                body = ""
            out[str(p.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, body)
    return out


@pytest.mark.parametrize(
    ("link", "lost", "with_new"),
    [
        # the revocation file is written last, by revoke.ssh; the new key's LUKS enrollment came first
        (".ssh/revoked_signers", "primary", True),
        # authorized_keys: the new key is authorized there (new.ssh) after new.luks
        (".ssh/authorized_keys", "primary", True),
        # revoke only: allowed_signers and ~/.gitconfig are met in revoke.ssh, after revoke.luks
        # wiped the lost key's keyslot and revoke.pam dropped its credential
        (".ssh/allowed_signers", "primary", False),
        (".gitconfig", "primary", False),
    ],
)
def test_replace_refuses_a_users_link_before_its_first_step(
    commissioned: Path, tmp_path: Path, cli: CliCall, link: str, lost: str, with_new: bool
) -> None:
    scratch = copy_scratch(commissioned, tmp_path / "demo")
    root = scratch / ROOT
    target = root / "home/alice" / link
    target.unlink(missing_ok=True)
    os.symlink("/etc/shadow", target)
    os.lchown(target, 1000, 1000)
    (scratch / KEYS / f"{lost}.json").unlink()
    present = "backup" if lost == "primary" else "primary"
    before = snapshot(root)
    assert all(w in before for w in WATCHED)
    args: list[object] = [
        "--root",
        root,
        "--device",
        spec(scratch, present),
        "--yes",
        "replace",
        "--lost",
        lost,
        "--unlock-key-file",
        str(PASSPHRASE),
    ]
    if with_new:
        args += ["--new-device", spec(scratch, "new"), "--new-pin-stdin"]
    res = cli(*args, input=demo_pin(scratch) + "\n" if with_new else None)
    assert res.exit_code == 4, res.output
    assert f"/home/alice/{link}" in res.stderr and "will not follow it" in res.stderr, res.stderr
    assert "Traceback" not in res.output and "rootsecrethash" not in res.output
    after = snapshot(root)
    assert {k: v for k, v in after.items() if before.get(k) != v} == {}
    assert set(before) == set(after)
