"""The real libpam (through pamtester) in one private mount namespace, serving many stacks.

`PamNamespace(pamd)` starts `unshare -m`, binds the temporary folder `pamd` over /etc/pam.d
(inside the namespace only: the machine's own /etc/pam.d is never read or written) and runs
`pamtester SERVICE USER authenticate` with no input, on request, several at once. The test
rewrites the files in `pamd` between requests; the bind mount shows them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

_SERVER = r"""
import json, subprocess, sys
for line in sys.stdin:
    runs = [subprocess.Popen(["pamtester", service, user, "authenticate"], stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for service, user in json.loads(line)]
    out = []
    for p in runs:
        o, e = p.communicate()
        out.append([p.returncode, o.decode(errors="replace") + e.decode(errors="replace")])
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
"""


class PamNamespace:
    def __init__(self, pamd: Path) -> None:
        script = 'mount --bind "$1" /etc/pam.d && exec "$2" -c "$3"'
        self.proc = subprocess.Popen(
            ["unshare", "-m", "sh", "-c", script, "sh", str(pamd), sys.executable, _SERVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def authenticate(self, runs: list[tuple[str, str]]) -> list[tuple[int, str]]:
        """(exit code, output) of `pamtester SERVICE USER authenticate` per (service, user)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(runs) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the pamtester namespace ended (exit {self.proc.wait()})")
        return [(rc, out) for rc, out in json.loads(line)]

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=10)
