"""A daemon counts as running only when the kernel's /proc says it is that program, run by root.

Real processes on this machine (read through the live /proc): a user's process renamed to
`usbguard-daemon` (prctl PR_SET_NAME, the comm the old check compared) must not pass
hw.usbguard.running; a root process renamed so, whose program is python, must not either; the
program itself, under that name and run by root, does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from yktool.checks import CheckContext, run_checks
from yktool.host import Host

RENAME = (
    "import ctypes, time; ctypes.CDLL(None).prctl(15, b'usbguard-daemon', 0, 0, 0); "
    "print('ready', flush=True); time.sleep(60)"
)

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root (to run a process as another user) and setpriv",
)


def usbguard_running() -> str:
    ctx = CheckContext(Host(Path("/")))
    return {r.id: r for r in run_checks(ctx, only=["hw.usbguard.running"])}["hw.usbguard.running"].status


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        p.kill()
        p.wait()


def _start(procs: list[subprocess.Popen[bytes]], argv: list[str]) -> None:
    p = subprocess.Popen(argv, stdout=subprocess.PIPE)
    procs.append(p)
    assert p.stdout is not None
    if argv[-1] == RENAME:
        assert p.stdout.readline() == b"ready\n"
    else:
        time.sleep(0.2)


def test_a_users_process_named_like_the_daemon_is_not_the_daemon(started: list[subprocess.Popen[bytes]]) -> None:
    if usbguard_running() == "pass":
        pytest.skip("a real usbguard-daemon runs on this machine")
    _start(started, ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", RENAME])
    assert usbguard_running() == "fail"  # main: pass (comm alone)
    _start(started, [sys.executable, "-c", RENAME])  # root, but the program is python
    assert usbguard_running() == "fail"


def test_the_program_itself_run_by_root_counts(started: list[subprocess.Popen[bytes]], tmp_path: Path) -> None:
    program = tmp_path / "usbguard-daemon"
    shutil.copy("/bin/sleep", program)
    _start(started, [str(program), "60"])
    assert usbguard_running() == "pass"
