"""Helpers for the ssh/git tests: a scratch root with users, the real tools with HOME in tmp."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from threading import Event
from typing import Any

import pytest
from fido2 import cbor
from fido2.ctap import STATUS, CtapDevice

from tests.conftest import CliCall, CliResult
from tests.fixtures.fido import SimKey

TOOLS = Path(__file__).parent / "tools"
PASSWD = (
    "root:x:0:0:root:/root:/bin/bash\n"
    "alice:x:1000:1000:Alice:/home/alice:/bin/bash\n"
    "bob:x:1001:1001:Bob:/home/bob:/bin/bash\n"
)


@dataclass
class SshWorld:
    """A root with users alice and bob, a software key, and yktool bound to both."""

    root: Path
    tmp: Path
    device: str
    cli: CliCall

    def yk(self, *args: object, input: str | None = None, device: str | None = None) -> CliResult:
        return self.cli("--root", self.root, "--device", device or self.device, *args, input=input)

    def home(self, user: str = "alice") -> Path:
        return self.root / "home" / user

    def ssh(self, user: str = "alice") -> Path:
        return self.home(user) / ".ssh"

    def env(self) -> dict[str, str]:
        """Environment for the real ssh-keygen / git: HOME and friends in the test's tmp."""
        home = self.tmp / "tool-home"
        home.mkdir(exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "SSH_", "GNUPG"))}
        env.update(
            HOME=str(home),
            GNUPGHOME=str(home / ".gnupg"),
            GIT_CONFIG_NOSYSTEM="1",
            GIT_CONFIG_GLOBAL=str(home / ".gitconfig"),
            XDG_CONFIG_HOME=str(home / ".config"),
            TMPDIR=str(self.tmp),
        )
        return env

    def run(
        self, argv: list[str], *, input: bytes | None = None, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            argv, input=input, capture_output=True, env=env or self.env(), cwd=cwd, check=False, timeout=60
        )


@pytest.fixture
def world(tmp_path: Path, sim_key: SimKey, cli: CliCall) -> SshWorld:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text(PASSWD)
    (root / "etc" / "hostname").write_text("ws1\n")
    for user, uid in (("alice", 1000), ("bob", 1001)):
        home = root / "home" / user
        home.mkdir(parents=True)
        os.chown(home, uid, uid)
    return SshWorld(root, tmp_path, sim_key("a"), cli)


def snapshot(*paths: Path) -> dict[str, tuple[bytes, int, int, int]]:
    """Every file under `paths`: bytes, mode, uid, gid (to prove nothing changed)."""
    out: dict[str, tuple[bytes, int, int, int]] = {}
    for base in paths:
        if base.is_file():
            st = base.stat()
            out[str(base)] = (base.read_bytes(), st.st_mode, st.st_uid, st.st_gid)
            continue
        for dirpath, dirnames, filenames in os.walk(base):
            for name in sorted(dirnames + filenames):
                p = Path(dirpath) / name
                st = p.lstat()
                out[str(p)] = (p.read_bytes() if p.is_file() else b"", st.st_mode, st.st_uid, st.st_gid)
    return out


def sim_state(spec: str) -> bytes:
    return Path(spec.removeprefix("sim:")).read_bytes()


def flags_from_ssh_keygen(world: SshWorld, path: Path) -> int:
    """The sk flags byte as the real ssh-keygen reads it (`-v -y` debug line)."""
    res = world.run(["ssh-keygen", "-v", "-y", "-f", str(path)])
    assert res.returncode == 0, res.stderr
    line = next(x for x in res.stderr.decode().splitlines() if "sk_flags" in x)
    return int(line.rsplit("0x", 1)[1], 16)


class Es256OnlyKey(CtapDevice):
    """The software key as an older authenticator without Ed25519 would present itself (like a
    YubiKey 5 before firmware 5.2.3): getInfo lists ES256 only and an EdDSA-only makeCredential
    is answered UNSUPPORTED_ALGORITHM. Everything else is the real software key."""

    def __init__(self, inner: Any, *, list_algorithms: bool = True) -> None:
        self.inner = inner
        # CTAP 2.0 keys (YubiKey 5 before 5.2) list no algorithms at all
        self.list_algorithms = list_algorithms

    @property
    def capabilities(self) -> int:
        return int(self.inner.capabilities)

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if callable(close):
            close()

    @classmethod
    def list_devices(cls) -> Any:
        return iter(())

    def call(
        self,
        cmd: int,
        data: bytes = b"",
        event: Event | None = None,
        on_keepalive: Callable[[STATUS], None] | None = None,
    ) -> bytes:
        if data[:1] == b"\x01":  # makeCredential
            params = cbor.decode(data[1:])
            assert isinstance(params, dict)
            algs = [p for p in params[4] if p.get("alg") != -8]
            if not algs:
                return bytes([0x26])  # CTAP2_ERR_UNSUPPORTED_ALGORITHM
            params[4] = algs
            data = b"\x01" + cbor.encode(params)
        reply: bytes = self.inner.call(cmd, data, event, on_keepalive)
        if data[:1] == b"\x04" and reply[:1] == b"\x00":  # getInfo
            info = cbor.decode(reply[1:])
            assert isinstance(info, dict)
            if self.list_algorithms:
                info[10] = [a for a in info.get(10, []) if a.get("alg") != -8]
            else:
                info.pop(10, None)
            reply = b"\x00" + cbor.encode(info)
        return reply


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
