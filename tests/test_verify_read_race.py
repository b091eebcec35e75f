"""verify's reads (CheckContext.read) open the file on the fd Host's walk holds, O_NOFOLLOW at the
last name: a link swapped in after the walk looked cannot send root through it (issue 12,
item 11). The swap is made deterministic by doing it right after the walk returns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from yktool.checks.base import CheckContext, Unreadable
from yktool.host import Host

SECRET = b"root:$6$rootsecrethash$abcdefghijklmnop:19000:0:99999:7:::\n"


def test_a_link_swapped_in_after_the_walk_is_never_read_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/shadow").write_bytes(SECRET)
    fstab = root / "etc/fstab"
    fstab.write_text("/dev/sda1 / ext4 defaults 0 1\n")
    real_locate = Host._locate

    def locate_then_swap(self: Host, path: Any, **kw: Any) -> Any:
        spot = real_locate(self, path, **kw)
        if str(path) == "/etc/fstab" and not fstab.is_symlink():
            fstab.unlink()
            fstab.symlink_to(root / "etc/shadow")  # between the look and the read
        return spot

    monkeypatch.setattr(Host, "_locate", locate_then_swap)
    ctx = CheckContext(Host(root))
    with pytest.raises(Unreadable) as err:
        ctx.read("/etc/fstab")
    assert "became a link" in err.value.reason
    assert "rootsecrethash" not in str(err.value)


def test_reads_still_see_plain_files_and_say_what_is_not_one(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc/folder").mkdir(parents=True)
    (root / "etc/fstab").write_bytes(b"ok \xff\n")
    ctx = CheckContext(Host(root))
    assert ctx.read("/etc/fstab") == b"ok \xff\n".decode("utf-8", "surrogateescape")
    assert ctx.read("/etc/missing") is None
    assert ctx.read("/etc/missing/below") is None
    with pytest.raises(Unreadable, match="is a folder"):
        ctx.read("/etc/folder")
