"""OpenSSH and git against the emulated key, in the guest: a scratch root for yktool, the real
ssh-keygen/ssh/git (through libfido2 and /dev/hidraw), and a throwaway sshd on 127.0.0.1.

The sshd is Debian's, unpacked (never installed) by scripts/test-vm into .venv/vm. It needs its
privilege-separation user `sshd` and /run/sshd: the guest's /etc/passwd gets it through a bind
mount of a copy (the guest's only; undone at the end).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from click.testing import CliRunner

from tests.vm.support import run
from yktool.cli import main_group  # imported before any plug(): the emulator's fork starts warm

REPO = Path(__file__).resolve().parents[2]
SSHD = REPO / ".venv/vm/openssh-server/usr/sbin/sshd"
LIBWRAP = REPO / ".venv/vm/libwrap0/usr/lib/x86_64-linux-gnu"
PIN = "482916"
PASSWD = "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000:Alice:/home/alice:/bin/bash\n"


@contextmanager
def timed(step: str) -> Iterator[None]:
    """How long a step took in the guest, on the console (the tier's time budget is tight)."""
    start = time.monotonic()
    try:
        yield
    finally:
        print(f"vm-time {time.monotonic() - start:5.1f}s  {step}", file=sys.__stderr__, flush=True)


@dataclass
class Yk:
    """yktool in this process (no fresh interpreter: ~6 s each under TCG) on a scratch root."""

    root: Path
    calls: list[list[str]] = field(default_factory=list)

    def __call__(self, device: str, *args: str, input: str | None = None) -> str:
        argv = ["--root", str(self.root), "--device", device, *args]
        self.calls.append(argv)
        with timed("yktool " + " ".join(args[:2])):
            res = CliRunner().invoke(main_group, argv, input=input, catch_exceptions=False)
        assert res.exit_code == 0, f"yktool {' '.join(args)} exited {res.exit_code}:\n{res.output}"
        return res.stdout


def scratch_root(base: Path) -> Path:
    root = base / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text(PASSWD)
    (root / "etc/hostname").write_text("vm1\n")
    home = root / "home/alice"
    home.mkdir(parents=True)
    os.chown(home, 1000, 1000)
    return root


def tool_env(base: Path, *, home: Path | None = None) -> dict[str, str]:
    """The real tools' environment: a private HOME, the PIN through SSH_ASKPASS (forced: there is
    no terminal), no agent, no system git config."""
    askpass = base / "askpass"
    if not askpass.exists():
        askpass.write_text(f"#!/bin/sh\necho {PIN}\n")
        askpass.chmod(0o700)
    home = home or base / "tool-home"
    home.mkdir(parents=True, exist_ok=True)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SSH_", "GIT_", "DISPLAY", "WAYLAND")) and k != "YKTOOL_DEVICE"
    }
    env.update(
        HOME=str(home),
        SSH_ASKPASS=str(askpass),
        SSH_ASKPASS_REQUIRE="force",
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=str(home / ".gitconfig"),
        TMPDIR=str(base),
    )
    return env


def public_blobs(*pub_files: Path) -> set[str]:
    """The `type base64` part of each .pub (comments differ between the tools)."""
    return {" ".join(f.read_text().split()[:2]) for f in pub_files}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _bound_copy(path: str, text: str, base: Path, mode: int) -> Iterator[None]:
    """`path` reads as `text` in the guest while the block runs (a bind mount of a copy)."""
    copy = base / Path(path).name
    copy.write_text(text)
    copy.chmod(mode)
    run(["mount", "--bind", copy, path], check=True)
    try:
        yield
    finally:
        run(["umount", path])


@contextmanager
def guest_accounts(base: Path) -> Iterator[None]:
    """sshd's privilege-separation user, and root's shadow entry not locked ("!"): virtme-ng's
    /etc/shadow locks it, and sshd without PAM refuses a locked account even for a public key."""
    passwd = Path("/etc/passwd").read_text()
    if not any(line.startswith("sshd:") for line in passwd.splitlines()):
        passwd = passwd.rstrip("\n") + "\nsshd:x:105:65534::/run/sshd:/usr/sbin/nologin\n"
    shadow = [ln for ln in Path("/etc/shadow").read_text().splitlines() if not ln.startswith("root:")]
    shadow.insert(0, "root:*:19000:0:99999:7:::")
    with (
        _bound_copy("/etc/passwd", passwd, base, 0o644),
        _bound_copy("/etc/shadow", "\n".join(shadow) + "\n", base, 0o640),
    ):
        yield


@dataclass
class Sshd:
    port: int
    log: Path

    def ssh(self, identity: Path, env: dict[str, str], base: Path, user: str = "root") -> subprocess.Popen[str]:
        """A non-interactive login running `echo logged-in` (BatchMode: no password, no questions)."""
        argv = [
            "ssh",
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            f"IdentityFile={identity}",
            "-o",
            f"UserKnownHostsFile={base / 'known_hosts'}",
            "-o",
            "StrictHostKeyChecking=accept-new",
            "-o",
            "ConnectTimeout=30",
            "-p",
            str(self.port),
            # curve25519 alone: the default sntrup761 hybrid costs seconds per login under TCG
            "-o",
            "KexAlgorithms=curve25519-sha256",
            f"{user}@127.0.0.1",
            "echo",
            "logged-in",
        ]
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )


@contextmanager
def sshd(base: Path, authorized_keys: Path) -> Iterator[Sshd]:
    """Debian's sshd on 127.0.0.1 with a private config: public keys only, from `authorized_keys`."""
    assert SSHD.exists(), f"{SSHD} is missing: scripts/test-vm unpacks openssh-server there"
    folder = base / "sshd"
    folder.mkdir()
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", folder / "host_ed25519"], check=True)
    port = _free_port()
    config = folder / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {folder / 'host_ed25519'}",
                f"PidFile {folder / 'sshd.pid'}",
                f"AuthorizedKeysFile {authorized_keys}",
                "StrictModes no",  # the scratch root lives under the guest's /tmp (mode 1777)
                "AuthenticationMethods publickey",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PermitRootLogin prohibit-password",
                "UsePAM no",
                "LogLevel VERBOSE",
                "",
            ]
        )
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    log = folder / "sshd.log"
    with guest_accounts(base):
        run([SSHD, "-t", "-f", config], env={"LD_LIBRARY_PATH": str(LIBWRAP)}, check=True)
        with log.open("w") as out:
            proc = subprocess.Popen(
                [str(SSHD), "-D", "-e", "-f", str(config)],
                stdout=out,
                stderr=out,
                env={**os.environ, "LD_LIBRARY_PATH": str(LIBWRAP)},
            )
        try:
            deadline = time.monotonic() + 60
            while True:
                with suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
                assert proc.poll() is None, f"sshd exited {proc.returncode}:\n{log.read_text()}"
                assert time.monotonic() < deadline, f"sshd did not listen:\n{log.read_text()}"
                time.sleep(0.1)
            yield Sshd(port, log)
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
