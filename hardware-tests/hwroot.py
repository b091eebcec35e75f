"""A scratch root for hardware tests: one user whose uid is ours, a home, a hostname."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def make_root(tmp: Path, user: str = "tester") -> Path:
    root = tmp / "root"
    (root / "etc").mkdir(parents=True)
    home = root / "home" / user
    home.mkdir(parents=True)
    uid, gid = os.getuid(), os.getgid()
    (root / "etc/passwd").write_text(f"root:x:0:0:root:/root:/bin/sh\n{user}:x:{uid}:{gid}::/home/{user}:/bin/sh\n")
    (root / "etc/group").write_text(f"root:x:0:\n{user}:x:{gid}:\n")
    (root / "etc/hostname").write_text("hwtest\n")
    return root


def tool_env(tmp: Path) -> dict[str, str]:
    """HOME and git/ssh config pointed into tmp: the machine's own config is never read or written."""
    home = tmp / "tool-home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "SSH_"))}
    env.update(HOME=str(home), GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=str(home / ".gitconfig"), SSH_AUTH_SOCK="")
    return env


def run(
    argv: list[str], env: dict[str, str], cwd: Path | None = None, input: bytes | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        env=env,
        cwd=cwd,
        input=input.decode() if input else None,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
