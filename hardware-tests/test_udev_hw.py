"""The removal-lock rule yktool writes matches the real key: `udevadm test --action=remove` on the
key's own USB device runs yktool's lock program. Runs in a private mount namespace with the rules
folder and udev's run-time data replaced by copies, so the machine's udev is untouched."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from hwroot import make_root, run, tool_env


def _usb_device(hidraw: str) -> Path:
    node = Path("/sys/class/hidraw") / Path(hidraw).name / "device"
    path = node.resolve()
    while path != Path("/sys") and not (path / "idVendor").exists():
        path = path.parent
    if not (path / "idVendor").exists():
        pytest.skip(f"no USB device above {node} (not a USB key?)")
    return path


@pytest.mark.real_key_only
@pytest.mark.skipif(shutil.which("udevadm") is None or shutil.which("unshare") is None,
                    reason="needs udevadm and unshare")
def test_rule_matches_the_key_on_removal(hw_key: Any, yktool_cmd: list[str], tmp_path: Path) -> None:
    root = make_root(tmp_path)
    env = tool_env(tmp_path)
    made = run([*yktool_cmd, "--root", str(root), "--json", "udev", "install"], env)
    assert made.returncode == 0, made.stderr
    rules = root / "etc/udev/rules.d"
    assert json.loads(made.stdout)
    usb = _usb_device(hw_key.spec.removeprefix("hid:"))
    run_copy = tmp_path / "run-udev"
    shutil.copytree("/run/udev", run_copy, symlinks=True, ignore_dangling_symlinks=True)
    script = (f"mount --bind {rules} /etc/udev/rules.d && mount --bind {run_copy} /run/udev && "
              f"udevadm test --action=remove {usb}")
    out = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=120)
    text = out.stdout + out.stderr
    assert "yktool-lock" in text and any("run" in ln.lower() and "yktool-lock" in ln for ln in text.splitlines()), \
        text[-3000:]
