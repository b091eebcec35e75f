"""Drive the real pam_u2f (manual mode) through the real pamtester, in a private mount namespace.

`authenticate(tmp, authfile, origin, answer)` writes a one-rule PAM service into a temporary
folder, bind-mounts it over /etc/pam.d inside `unshare -m` (the machine's /etc/pam.d is never
touched) and runs `pamtester yktest root authenticate`. pam_u2f prints, per credential of the
user, the challenge, the origin and the key handle; then asks four answers per credential in
order until one verifies. `answer(challenge_b64, origin, key_handle_b64)` returns those four
lines, or None to send a well-formed wrong answer (so pam_u2f moves on to the next credential).

misc_conv reads a whole pipe buffer per prompt, so each answer is written only after its
prompt ("Response #N: " on stderr) has appeared; pamtester runs under `stdbuf -o0`
because its stdout (the challenges) is a pipe and would otherwise be held back until exit.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fido2 import cbor

Answer = Callable[[str, str, str], "list[str] | None"]


@dataclass
class PamRun:
    returncode: int
    stdout: str
    stderr: str
    answered_with: list[int]  # index (0-based) of the credentials answered for real

    @property
    def authenticated(self) -> bool:
        return self.returncode == 0 and "successfully authenticated" in (self.stdout + self.stderr)


def pam_d_digest() -> str:
    """A digest of the machine's /etc/pam.d (names, modes, contents), to prove it is untouched."""
    h = hashlib.sha256()
    for p in sorted(Path("/etc/pam.d").rglob("*")):
        h.update(str(p).encode())
        if p.is_file():
            h.update(oct(p.stat().st_mode).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def _prompts_at_least(err: list[bytes], n: int) -> bool:
    return b"".join(err).decode(errors="replace").count("Response #") >= n


def wrong_answer(challenge: str, origin: str) -> list[str]:
    auth_data = hashlib.sha256(origin.encode()).digest() + b"\x01" + b"\0\0\0\1"
    fake_sig = bytes.fromhex("3006020101020101")
    return [challenge, origin, base64.b64encode(cbor.encode(auth_data)).decode(), base64.b64encode(fake_sig).decode()]


def authenticate(
    tmp: Path,
    authfile: Path,
    origin: str,
    answer: Answer,
    *,
    user: str = "root",
    extra_args: str = "",
    timeout: float = 30,
) -> PamRun:
    pamd = tmp / "pam.d"
    pamd.mkdir(exist_ok=True)
    (pamd / "yktest").write_text(
        f"auth required pam_u2f.so authfile={authfile} manual debug origin={origin} {extra_args}\n"
    )
    script = 'mount --bind "$1" /etc/pam.d && exec stdbuf -o0 pamtester yktest "$2" authenticate'
    proc = subprocess.Popen(
        ["unshare", "-m", "sh", "-c", script, "sh", str(pamd), user],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out: list[bytes] = []
    err: list[bytes] = []

    def pump(stream: io.BufferedReader, sink: list[bytes]) -> None:
        while True:
            chunk = stream.read1(4096)
            if not chunk:
                break
            sink.append(chunk)

    threads = [
        threading.Thread(target=pump, args=(proc.stdout, out), daemon=True),
        threading.Thread(target=pump, args=(proc.stderr, err), daemon=True),
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout

    def wait_for(cond: Callable[[], bool]) -> bool:
        while not cond():
            if proc.poll() is not None or time.monotonic() > deadline:
                return cond()
            time.sleep(0.01)
        return True

    marker = "Please pass the challenge(s)"
    wait_for(lambda: marker in b"".join(out).decode(errors="replace"))
    text = b"".join(out).decode(errors="replace")
    blocks = text.split("Challenge #")[1:]
    challenges = []
    for block in blocks:
        lines = block.splitlines()
        challenges.append((lines[1].strip(), lines[2].strip(), lines[3].strip()))
    answered: list[int] = []
    assert proc.stdin is not None
    sent = 0
    for i, (challenge, org, kh) in enumerate(challenges):
        given = answer(challenge, org, kh)
        if given is None:
            lines = wrong_answer(challenge, org)
        else:
            lines = given
            answered.append(i)
        for line in lines:
            sent += 1
            if not wait_for(functools.partial(_prompts_at_least, err, sent)):
                break
            proc.stdin.write(line.encode() + b"\n")
            proc.stdin.flush()
        if proc.poll() is not None:
            break
    try:
        proc.stdin.close()
    except BrokenPipeError:
        pass
    proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    for t in threads:
        t.join(timeout=5)
    return PamRun(
        proc.returncode, b"".join(out).decode(errors="replace"), b"".join(err).decode(errors="replace"), answered
    )


def run_stack(tmp: Path, stack: str, user: str, timeout: float = 30) -> PamRun:
    """Run a whole PAM service `stack` (rules as text) through pamtester for `user` with no
    input at all, in the same private mount namespace as `authenticate`."""
    pamd = tmp / "pam.d"
    pamd.mkdir(exist_ok=True)
    (pamd / "yktest").write_text(stack)
    script = 'mount --bind "$1" /etc/pam.d && exec pamtester yktest "$2" authenticate'
    proc = subprocess.run(
        ["unshare", "-m", "sh", "-c", script, "sh", str(pamd), user],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return PamRun(proc.returncode, proc.stdout, proc.stderr, [])
