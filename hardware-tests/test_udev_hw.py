"""The removal-lock rules yktool writes match the real key: `udevadm test --action=remove` on the
key's own HID device, and on its USB device where it has one, runs yktool's lock program. Runs in
a private mount namespace with the rules folder and udev's run-time data replaced by copies, so
the machine's udev is untouched."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from hwroot import make_root, run, tool_env

pytestmark = [
    pytest.mark.real_key_only,
    pytest.mark.skipif(
        shutil.which("udevadm") is None or shutil.which("unshare") is None, reason="needs udevadm and unshare"
    ),
]


def _hid_device(hw_key: Any) -> Path:
    """The HID device above the key's hidraw node (every HID key has one)."""
    return (Path("/sys/class/hidraw") / Path(hw_key.spec.removeprefix("hid:")).name / "device").resolve()


def _usb_device(hid: Path) -> Path | None:
    path = hid
    while path != Path("/sys") and not (path / "idVendor").exists():
        path = path.parent
    return path if (path / "idVendor").exists() else None


def _sockets(folder: str, names: list[str]) -> list[str]:
    """udevd's control socket (/run/udev/control): it cannot be copied, and `udevadm test` needs
    only the database."""
    return [n for n in names if stat.S_ISSOCK(os.lstat(os.path.join(folder, n)).st_mode)]


@pytest.fixture(scope="module")
def rules(yktool_cmd: list[str], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the rules folder `yktool udev install` wrote for this key, a copy of /run/udev)."""
    tmp = tmp_path_factory.mktemp("udev")
    root = make_root(tmp)
    made = run([*yktool_cmd, "--root", str(root), "--json", "udev", "install"], tool_env(tmp))
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)
    run_copy = tmp / "run-udev"
    shutil.copytree("/run/udev", run_copy, symlinks=True, ignore_dangling_symlinks=True, ignore=_sockets)
    return root / "etc/udev/rules.d", run_copy


def _runs_the_lock_program(rules: tuple[Path, Path], device: Path) -> None:
    folder, run_copy = rules
    script = (
        f"mount --bind {folder} /etc/udev/rules.d && mount --bind {run_copy} /run/udev && "
        f"udevadm test --action=remove {device}"
    )
    out = subprocess.run(
        ["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    text = out.stdout + out.stderr
    assert any("run" in ln.lower() and "yktool-lock" in ln for ln in text.splitlines()), text[-3000:]


def test_rule_matches_the_keys_hid_device_on_removal(hw_key: Any, rules: tuple[Path, Path]) -> None:
    _runs_the_lock_program(rules, _hid_device(hw_key))


def test_rule_matches_the_keys_usb_device_on_removal(hw_key: Any, rules: tuple[Path, Path]) -> None:
    hid = _hid_device(hw_key)
    usb = _usb_device(hid)
    if usb is None:
        pytest.skip(f"no USB device above {hid} (not a USB key: the HID rule alone applies)")
    _runs_the_lock_program(rules, usb)
