"""ssh into a throwaway sshd on 127.0.0.1 with an ed25519-sk key made by yktool and authorized by
`yktool ssh authorize`. The machine's own sshd and ~/.ssh are never used."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from hwroot import run, tool_env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(server: subprocess.Popen[bytes], port: int, log: Path) -> None:
    """Until sshd accepts connections (a slow machine takes more than a moment); its log if it died."""
    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        assert server.poll() is None, f"sshd exited {server.returncode}:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"sshd did not listen on 127.0.0.1:{port}:\n{log.read_text()}"
        time.sleep(0.1)


@pytest.mark.real_key_only
@pytest.mark.skipif(
    shutil.which("sshd") is None and not Path("/usr/sbin/sshd").exists(),
    reason="needs sshd (openssh-server) to run a throwaway server on 127.0.0.1",
)
def test_ssh_login_with_the_key(yktool_cmd: list[str], ssh_key_root: Path, tmp_path: Path, touch: Any) -> None:
    root = ssh_key_root
    env = tool_env(tmp_path)
    authorized = run([*yktool_cmd, "--root", str(root), "ssh", "authorize", "--user", "tester"], env)
    assert authorized.returncode == 0, authorized.stderr
    keys = root / "home/tester/.ssh/authorized_keys"
    host_key = tmp_path / "host_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True, env=env)
    port = _free_port()
    config = tmp_path / "sshd_config"
    config.write_text(
        f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {host_key}\nAuthorizedKeysFile {keys}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
        f"PidFile {tmp_path}/sshd.pid\nPermitRootLogin prohibit-password\n"
    )
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    log = tmp_path / "sshd.log"
    with log.open("w") as out:
        server = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stdout=out, stderr=out)
    try:
        _wait_listening(server, port, log)
        touch(1)
        user = os.environ.get("USER") or "root"
        login = subprocess.run(
            [
                "ssh",
                "-F",
                "/dev/null",
                "-i",
                str(root / "home/tester/.ssh/id_ed25519_sk"),
                "-p",
                str(port),
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                f"UserKnownHostsFile={tmp_path}/known_hosts",
                "-o",
                "BatchMode=yes",
                f"{user}@127.0.0.1",
                "echo",
                "logged-in-with-the-key",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert login.returncode == 0, login.stderr + log.read_text()
        assert "logged-in-with-the-key" in login.stdout
    finally:
        server.terminate()
        server.wait(timeout=10)
