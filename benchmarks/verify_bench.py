"""Wall time of `yktool verify` on this machine next to `lynis audit system --quick`, and the ratio.

    .venv/bin/python benchmarks/verify_bench.py [--runs 5] [--lynis-timeout 300] [--no-lynis]

Both only read the system. yktool runs as the CLI would (a fresh interpreter each run, `--root /
--json verify`); Lynis runs once with `--quick --no-colors --no-log --report-file` pointing into a
temporary folder and HOME set there, so it writes nothing outside /tmp.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def time_verify(runs: int) -> tuple[list[float], dict[str, int], int]:
    times = []
    summary: dict[str, int] = {}
    checks = 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("YKTOOL_")}
    for _ in range(runs):
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "yktool", "--root", "/", "--json", "verify"],
            cwd=REPO,
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        times.append(time.perf_counter() - start)
        if proc.returncode not in (0, 1):
            raise SystemExit(f"yktool verify failed (exit {proc.returncode}): {proc.stderr}")
        data = json.loads(proc.stdout)
        summary, checks = data["summary"], len(data["checks"])
    return times, summary, checks


def time_checks_in_process(runs: int) -> float:
    """Median time of the checks alone (no interpreter start-up), for a steadier number."""
    sys.path.insert(0, str(REPO))
    from yktool.checks import CheckContext, run_checks
    from yktool.host import Host

    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run_checks(CheckContext(Host(Path("/"))))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_lynis(timeout: float) -> tuple[float | None, str]:
    lynis = shutil.which("lynis")
    if lynis is None:
        return None, "lynis not installed"
    with tempfile.TemporaryDirectory(prefix="lynis-bench-") as tmp:
        report = Path(tmp) / "lynis-report.dat"
        env = {**os.environ, "HOME": tmp, "TMPDIR": tmp}
        start = time.perf_counter()
        try:
            proc = subprocess.run(
                [lynis, "audit", "system", "--quick", "--no-colors", "--no-log", "--report-file", str(report)],
                cwd=tmp,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            return None, f"lynis did not finish within {timeout:.0f} s"
        elapsed = time.perf_counter() - start
        tests = ""
        if report.exists():
            lines = report.read_text(errors="replace").splitlines()
            tests = next((ln.split("=", 1)[1] for ln in lines if ln.startswith("lynis_tests_done=")), "")
        note = f"exit {proc.returncode}" + (f", {tests} tests" if tests else "")
        return elapsed, note


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--lynis-timeout", type=float, default=300)
    parser.add_argument("--no-lynis", action="store_true")
    args = parser.parse_args()

    times, summary, checks = time_verify(args.runs)
    median = statistics.median(times)
    print(
        f"yktool verify   {median * 1000:8.0f} ms  (median of {args.runs}, min {min(times) * 1000:.0f} ms, "
        f"{checks} checks: {summary})"
    )
    print(f"  checks alone  {time_checks_in_process(args.runs) * 1000:8.0f} ms  (in-process, no start-up)")
    print(f"  load average  {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    if args.no_lynis:
        return
    lynis, note = time_lynis(args.lynis_timeout)
    if lynis is None:
        print(f"lynis           skipped: {note}")
        return
    print(f"lynis --quick   {lynis * 1000:8.0f} ms  ({note})")
    print(f"ratio           {lynis / median:8.0f} x  (goal: >= 100 x)")


if __name__ == "__main__":
    main()
