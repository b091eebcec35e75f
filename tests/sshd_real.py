"""Debian's real sshd (unpacked by scripts/fetch-sshd, never installed) in a private mount namespace.

`SshdNamespace(root)` starts one `unshare -m` that binds the temporary root's /etc/ssh,
/etc/passwd, /etc/group and /run over the machine's (inside the namespace only: the machine's
own /etc/ssh is never read or written), then serves `sshd -T -C …` runs on request. The test
rewrites the files under the temporary root between requests; the bind mounts show them.
sshd -T needs its privilege separation user (`sshd` in the bound passwd), /run/sshd and a host
key (a throwaway one in the bound /etc/ssh).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".venv/cache/openssh"
SSHD = CACHE / "usr/sbin/sshd"
LIBS = CACHE / "usr/lib/x86_64-linux-gnu"

_SERVER = r"""
import json, os, subprocess, sys
env = {"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": sys.argv[2]}
for line in sys.stdin:
    runs = [subprocess.Popen([sys.argv[1], *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
            for argv in json.loads(line)]
    out = []
    for p in runs:
        o, e = p.communicate()
        out.append([p.returncode, o.decode(errors="replace"), e.decode(errors="replace")])
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
"""


def ensure_sshd() -> Path:
    """The unpacked sshd, fetched now if missing (scripts/setup does it; a failure is an error)."""
    if not SSHD.exists():
        subprocess.run([str(REPO / "scripts/fetch-sshd")], check=True)
    if not SSHD.exists():
        raise RuntimeError("scripts/fetch-sshd did not produce .venv/cache/openssh/usr/sbin/sshd")
    return SSHD


class SshdNamespace:
    """One private mount namespace serving batches of `sshd ARGS…` runs (concurrently)."""

    def __init__(self, root: Path) -> None:
        sshd = ensure_sshd()
        for d in ("etc/ssh", "run/sshd"):
            (root / d).mkdir(parents=True, exist_ok=True)
        key = root / "etc/ssh/ssh_host_ed25519_key"
        if not key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        script = (
            'mount --bind "$1/etc/ssh" /etc/ssh && mount --bind "$1/etc/passwd" /etc/passwd && '
            'mount --bind "$1/etc/group" /etc/group && mount --bind "$1/run" /run && '
            'exec "$2" -c "$3" "$4" "$5"'
        )
        self.proc = subprocess.Popen(
            ["unshare", "-m", "sh", "-c", script, "sh", str(root), sys.executable, _SERVER, str(sshd), str(LIBS)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ},
        )

    def run(self, argvs: list[list[str]]) -> list[tuple[int, str, str]]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(argvs) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the sshd namespace ended (exit {self.proc.wait()})")
        return [(rc, out, err) for rc, out, err in json.loads(line)]

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=10)
