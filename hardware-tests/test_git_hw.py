"""Git commit signing with the real git and OpenSSH's own ssh-keygen (libfido2), key made by yktool."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from hwroot import run, tool_env


@pytest.mark.real_key_only
def test_real_git_signs_and_verifies_with_a_key_yktool_made(
    yktool_cmd: list[str], ssh_key_root: Path, tmp_path: Path, touch: Any
) -> None:
    root = ssh_key_root
    env = tool_env(tmp_path)
    repo = root / "home/tester/repo"
    assert run(["git", "init", "-q", str(repo)], env).returncode == 0
    configured = run(
        [
            *yktool_cmd,
            "--root",
            str(root),
            "git",
            "signing",
            "--email",
            "hw@example.com",
            "--user",
            "tester",
            "--repo",
            "/home/tester/repo",
        ],
        env,
    )
    assert configured.returncode == 0, configured.stderr
    # the config names ~/ paths of the user; point HOME at the user's home inside the root
    env["HOME"] = str(root / "home/tester")
    touch(1)
    commit = run(["git", "-c", "user.name=HW", "commit", "-q", "-S", "--allow-empty", "-m", "signed"], env, repo)
    assert commit.returncode == 0, commit.stderr
    verified = subprocess.run(
        ["git", "verify-commit", "HEAD"], env=env, cwd=repo, capture_output=True, text=True, timeout=60, check=False
    )
    assert verified.returncode == 0, verified.stderr
    assert 'Good "git" signature for hw@example.com' in verified.stderr
