"""LUKS2 FIDO2 enrollment on a real key through both backends, each unlocked the other's way:
systemd-cryptenroll's token is opened by yktool's own derivation (`luks test-unlock`), and
yktool's native token is opened by cryptsetup's systemd-fido2 plugin (libfido2). Image files
only; tokens without a PIN so no PIN is typed."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from hwroot import make_root, run, tool_env


def _image(root: Path) -> tuple[str, str]:
    img, key = root / "disk.img", root / "disk.key"
    key.write_bytes(b"hardware-test-passphrase")
    key.chmod(0o600)
    subprocess.run(["truncate", "-s", "32M", str(img)], check=True)
    subprocess.run(
        [
            "cryptsetup",
            "luksFormat",
            "--type",
            "luks2",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
            "--batch-mode",
            "--key-file",
            str(key),
            str(img),
        ],
        check=True,
        capture_output=True,
    )
    return "/disk.img", "/disk.key"


def _enroll(yktool_cmd: list[str], root: Path, backend: str, env: dict[str, str]) -> None:
    img, key = "/disk.img", "/disk.key"
    out = run(
        [
            *yktool_cmd,
            "--root",
            str(root),
            "luks",
            "enroll-fido2",
            img,
            "--backend",
            backend,
            "--no-pin",
            "--unlock-key-file",
            key,
        ],
        env,
    )
    assert out.returncode == 0, out.stderr


@pytest.mark.real_key_only
def test_systemd_backend_token_opens_through_yktool(yktool_cmd: list[str], tmp_path: Path, touch: Any) -> None:
    root = make_root(tmp_path)
    env = tool_env(tmp_path)
    img, _ = _image(root)
    touch(2)  # systemd-cryptenroll: makeCredential and the first assertion
    _enroll(yktool_cmd, root, "systemd", env)
    touch(1)
    opened = run([*yktool_cmd, "--root", str(root), "luks", "test-unlock", img], env)
    assert opened.returncode == 0, opened.stdout + opened.stderr
    assert "opens" in opened.stdout


@pytest.mark.requires(extensions=("hmac-secret",))
def test_native_backend_token_opens_through_yktool_and_systemds_plugin(
    yktool_cmd: list[str], tmp_path: Path, touch: Any, pytestconfig: pytest.Config
) -> None:
    root = make_root(tmp_path)
    env = tool_env(tmp_path)
    img, _ = _image(root)
    touch(2)
    _enroll(yktool_cmd, root, "native", env)
    touch(1)
    opened = run([*yktool_cmd, "--root", str(root), "luks", "test-unlock", img], env)
    assert opened.returncode == 0, opened.stdout + opened.stderr
    if (pytestconfig.getoption("hw_device") or "").startswith("sim:"):
        return  # libfido2 (systemd's plugin) cannot see the software key
    touch(1)
    plugin = subprocess.run(
        [
            "cryptsetup",
            "open",
            "--test-passphrase",
            "--token-only",
            "--token-type",
            "systemd-fido2",
            str(root / "disk.img"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert plugin.returncode == 0, plugin.stderr
