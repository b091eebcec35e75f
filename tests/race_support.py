"""Real yktool processes run at the same time, or killed with SIGKILL at a chosen moment.

`python -m yktool` is started through a small runner that can (test instrumentation only, set by
environment):

- `YKTEST_DELAY="module:function=SECONDS;…"`: sleep before each call of those functions, to hold
  a run inside its read-modify-write window (so two runs really overlap);
- `YKTEST_PAUSE="module:function:before|after[#N]"` (also `module:Class.method`) with
  `YKTEST_MARK=FILE`: at that point (of the N-th call) write FILE and wait, so the test kills the
  run exactly there (`kill_at`); `yktool.host:Host.write_file:before#3` is "just before the third
  file write", `yktool.host:Host.run:after#2` "just after the second child command";
- `YKTEST_GO=FILE`: start only once FILE exists, so two runs leave the gate together.

Everything the runs touch is real: cryptsetup, systemd-cryptenroll, the software key's state file,
the root's files. A kill takes the whole process group (the yktool run and any child it is
waiting for, e.g. systemd-cryptenroll half-way through a header write).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

RUNNER = r"""
import importlib, os, sys, time

def _wrap(target, when, action, nth=0):
    modname, path = target.rsplit(":", 1)
    owner = importlib.import_module(modname)
    *parents, attr = path.split(".")
    for name in parents:
        owner = getattr(owner, name)
    orig = getattr(owner, attr)
    calls = [0]
    def wrapped(*a, **k):
        calls[0] += 1
        hit = not nth or calls[0] == nth
        if when == "before" and hit:
            action()
        out = orig(*a, **k)
        if when == "after" and hit:
            action()
        return out
    setattr(owner, attr, wrapped)

for spec in filter(None, os.environ.get("YKTEST_DELAY", "").split(";")):
    target, secs = spec.rsplit("=", 1)
    _wrap(target, "before", lambda s=float(secs): time.sleep(s))
pause = os.environ.get("YKTEST_PAUSE")
if pause:
    point, _, nth = pause.partition("#")
    target, when = point.rsplit(":", 1)
    def _stop():
        with open(os.environ["YKTEST_MARK"], "w") as fh:
            fh.write("reached")
        time.sleep(120)
    _wrap(target, when, _stop, int(nth or 0))
go = os.environ.get("YKTEST_GO")
while go and not os.path.exists(go):
    time.sleep(0.005)
from yktool.cli import main
sys.argv = ["yktool"] + sys.argv[1:]
main()
"""

PROJECT = Path(__file__).resolve().parents[1]


@dataclass
class Run:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("YKTEST_") and k != "YKTOOL_FAULT"}
    env.update(extra or {})
    return env


def start(
    args: list[object], *, env: dict[str, str] | None = None, stdin: bytes | None = None
) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-c", RUNNER, *map(str, args)],
        cwd=PROJECT,
        env=_env(env),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    if proc.stdin is not None:
        if stdin:
            proc.stdin.write(stdin)
        proc.stdin.close()
        proc.stdin = None  # communicate() must not flush it again
    return proc


def finish(proc: subprocess.Popen[bytes], timeout: float = 90) -> Run:
    out, err = proc.communicate(timeout=timeout)
    assert isinstance(proc.args, list)  # start() passes a list
    return Run([str(a) for a in proc.args], proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


def run(args: list[object], *, env: dict[str, str] | None = None, stdin: bytes | None = None) -> Run:
    return finish(start(args, env=env, stdin=stdin))


def together(
    tmp: Path, *runs: tuple[list[object], bytes | None], delay: str | list[str] = "", env: dict[str, str] | None = None
) -> list[Run]:
    """Start every run behind one gate, open it, and wait for all. `delay` (YKTEST_DELAY, one for
    all or one per run) holds each inside its read-modify-write window, so that without a lock
    they would interleave: with one per run, say 0.5 s and 1.5 s, both have read before the first
    writes, and the second writes after the first has finished."""
    gate = tmp / f"go-{time.monotonic_ns()}"
    delays = delay if isinstance(delay, list) else [delay] * len(runs)
    procs = [
        start(args, stdin=stdin, env={**(env or {}), "YKTEST_GO": str(gate), "YKTEST_DELAY": d})
        for (args, stdin), d in zip(runs, delays, strict=True)
    ]
    time.sleep(0.05)
    gate.write_text("go")
    return [finish(p) for p in procs]


def kill_at(
    tmp: Path,
    args: list[object],
    point: str,
    *,
    stdin: bytes | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> bool:
    """Run until `point` (`module:function:before|after`), then SIGKILL the process group there.
    False when the run ended without reaching it (the point is not on this run's path)."""
    mark = tmp / f"mark-{time.monotonic_ns()}"
    proc = start(args, stdin=stdin, env={**(env or {}), "YKTEST_PAUSE": point, "YKTEST_MARK": str(mark)})
    deadline = time.monotonic() + timeout
    while not mark.exists():
        if proc.poll() is not None:
            proc.communicate()
            return False
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise AssertionError(f"{point} not reached within {timeout} s")
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    return True


def kill_loop(
    tmp: Path,
    args: list[object],
    points: list[str],
    check: Callable[[], None],
    *,
    stdin: bytes | None = None,
    env: dict[str, str] | None = None,
) -> int:
    """Kill a run at each of `points` in turn (each attempt picks up what the last one left),
    `check` after every kill, then let one run finish (exit 0). Returns how many kills hit."""
    hits = 0
    for point in points:
        if kill_at(tmp, args, point, stdin=stdin, env=env):
            hits += 1
        check()
    final = run(args, stdin=stdin, env=env)
    assert final.returncode == 0, final.output
    check()
    return hits


def kill_after(
    args: list[object], seconds: float, *, stdin: bytes | None = None, env: dict[str, str] | None = None
) -> int | None:
    """SIGKILL the run's process group `seconds` after it started (None: it had finished)."""
    proc = start(args, stdin=stdin, env=env)
    try:
        proc.wait(timeout=seconds)
        proc.communicate()
        return proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return None
