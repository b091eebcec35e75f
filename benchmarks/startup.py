"""Cold start of `yktool --help` next to `ykman --help`: median wall time of N fresh processes.

    .venv/bin/python benchmarks/startup.py [-n 20]

Each run is a new interpreter (nothing imported yet), so this measures what a person waits for
when typing the command. yktool's command groups are imported only when called, and tpm2-pytss,
python-fido2 and yubikey-manager only inside the commands that need them.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def measure(argv: list[str], runs: int) -> list[float]:
    times = []
    subprocess.run(argv, capture_output=True, check=True)  # warm the page cache once: we time Python, not the disk
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return times


def tool(name: str) -> str | None:
    local = Path(sys.executable).with_name(name)
    return str(local) if local.exists() else shutil.which(name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("-n", "--runs", type=int, default=20, help="runs per command (default 20)")
    args = parser.parse_args()
    rows = []
    for name in ("yktool", "ykman"):
        exe = tool(name)
        if exe is None:
            print(f"{name}: not installed, skipped")
            continue
        times = measure([exe, "--help"], args.runs)
        rows.append((name, statistics.median(times), min(times), max(times)))
    print(f"cold start of `--help`, {args.runs} runs each (median / min / max, milliseconds)")
    for name, med, lo, hi in rows:
        print(f"  {name:<7} {med * 1000:7.1f}  {lo * 1000:7.1f}  {hi * 1000:7.1f}")
    if len(rows) == 2:
        print(f"  yktool takes {rows[0][1] / rows[1][1]:.2f}x the time of ykman")
    return 0


if __name__ == "__main__":
    sys.exit(main())
