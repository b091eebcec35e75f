"""The real interactive wizard, typed into through tmux (send-keys / capture-pane) on an 80×24
terminal, with no answering flags: every answer checked as it is typed (a user not in the root's
passwd, a LUKS image typed as the machine sees it, a malformed email), a wrong PIN asked again
with the attempts left, a mismatched new PIN asked again, the recovery key shown once, a Ctrl-C —
then one resume that asks nothing already answered. Ends with every step proven by its consumer."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.flows_support import (
    EMAIL,
    YKTOOL,
    fresh_setup,
    key_opens_image,
    pam_accepts,
    passphrase_opens,
    spec,
    ssh_signs,
)
from yktool.demo import IMAGE, PASSPHRASE, ROOT, VERIFY_ITEMS

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")

PIN = "5678"
WIDTH, HEIGHT = 80, 24


class Tmux:
    """One private tmux server (its own socket) running one command in a pane of the given size."""

    def __init__(self, name: str, command: str, width: int = 200, height: int = 60) -> None:
        self.socket = name
        self.run("new-session", "-d", "-s", "w", "-x", str(width), "-y", str(height), command)

    def run(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, check=False).stdout

    def screen(self) -> str:
        """The pane with its scroll-back; a line that filled the width is joined to the next (the
        prompts wrap long questions themselves, which tmux's -J does not undo)."""
        shown = self.run("capture-pane", "-p", "-J", "-t", "w", "-S", "-2000")
        width = int(self.run("display-message", "-p", "-t", "w", "#{pane_width}").strip() or 0)
        out: list[str] = []
        for line in shown.splitlines():
            if out and len(out[-1]) % width == 0 and out[-1] and width:
                out[-1] += line
            else:
                out.append(line)
        return "\n".join(out)

    def visible(self) -> str:
        """What the terminal shows now (no scroll-back), wrapped lines joined: a line longer
        than the pane comes back longer than the pane."""
        return self.run("capture-pane", "-p", "-J", "-t", "w")

    def wait_for(self, text: str, timeout: float = 30.0, count: int = 1) -> str:
        deadline = time.monotonic() + timeout
        while True:
            shown = self.screen()
            if shown.count(text) >= count:
                return shown
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {text!r}; the pane shows:\n{shown}")
            time.sleep(0.1)

    def keys(self, *keys: str) -> None:
        self.run("send-keys", "-t", "w", *keys)

    def type(self, text: str) -> None:
        self.run("send-keys", "-t", "w", "-l", text)
        self.run("send-keys", "-t", "w", "Enter")

    def retype(self, text: str) -> None:
        """Replace what the prompt holds (a default, or a refused answer) with `text`."""
        self.run("send-keys", "-t", "w", "C-e", "C-u")
        self.type(text)

    def kill(self) -> None:
        self.run("kill-server")


def _commission_command(scratch: Path, tcti: str, tag: str) -> str:
    # only the machine's parts are flags (the root, the TPM, the two keys, which checks verify
    # runs): every answer is typed
    argv = [
        YKTOOL,
        "--root",
        str(scratch / ROOT),
        "--tpm",
        tcti,
        "--device",
        spec(scratch, "primary"),
        "commission",
        "--backup-device",
        spec(scratch, "backup"),
        "--verify-only",
        ",".join(VERIFY_ITEMS),
    ]
    return f"{shlex.join(argv)}; echo {tag}-EXIT=$?; sleep 600"


def _fits(screen: str, first: str, last: str) -> list[str]:
    """The lines from `first` to `last` on the visible screen: all there, none wider than the pane."""
    lines = screen.splitlines()
    start = next(i for i, ln in enumerate(lines) if first in ln)
    end = next(i for i, ln in enumerate(lines) if last in ln)
    block = lines[start : end + 1]
    assert len(lines) <= HEIGHT and all(len(ln) <= WIDTH for ln in block), "\n".join(block)
    return block


def test_interactive_wizard_in_tmux_with_mistakes_a_ctrl_c_and_one_resume(tmp_path: Path) -> None:
    base = Path(tempfile.mkdtemp(prefix="ykw", dir="/tmp"))  # a short root: the plan names it
    try:
        _wizard(base, tmp_path)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _wizard(base: Path, tmp_path: Path) -> None:
    with fresh_setup(base) as (scratch, tcti):
        root = scratch / ROOT
        passphrase = (root / str(PASSPHRASE).lstrip("/")).read_text()
        # the primary key has a PIN already (it is asked, and typed wrong once); the backup has none
        r = subprocess.run(
            [YKTOOL, "--device", spec(scratch, "primary"), "key", "pin", "set", "--pin-stdin"],
            input=f"{PIN}\n",
            capture_output=True,
            text=True,
            check=False,
        )
        assert r.returncode == 0, r.stderr
        tmux = Tmux(
            f"yktool-test-{os.getpid()}-{time.monotonic_ns()}",
            _commission_command(scratch, tcti, "FIRST"),
            WIDTH,
            HEIGHT,
        )
        try:
            tmux.wait_for("Host kind?")
            tmux.keys("Enter")  # linux (the default: no /etc/NIXOS)
            tmux.wait_for("Whose host is it")
            tmux.retype("bob")  # not in the root's passwd: refused as typed
            tmux.wait_for("no user bob in the root's /etc/passwd: the user must exist there")
            tmux.retype("alice")
            tmux.wait_for(f"as the root sees them inside {root}")
            tmux.type(f"{root}/var/lib/demo/disk.img")  # the machine's path: refused, with what to type
            tmux.wait_for("type it as the root sees it: /var/lib/demo/disk.img")
            tmux.retype(str(IMAGE))
            tmux.wait_for("Which steps?")
            tmux.keys("Enter")  # all of them, as checked
            tmux.wait_for("Email for git signing?")
            tmux.type("alice at demo-host")
            tmux.wait_for("does not look like an email address")
            tmux.retype(EMAIL)
            tmux.wait_for("pam_u2f origin")
            tmux.keys("Enter")  # pam://demo-host, the root's hostname
            tmux.wait_for("Nickname of the first key?")
            tmux.keys("Enter")  # primary
            tmux.wait_for("Nickname of the backup key?")
            tmux.keys("Enter")  # backup
            tmux.wait_for("Show the full plan?")
            summary = _fits(tmux.visible(), f"commission: {root}", "Show the full plan?")
            assert any("each key: 3 touches, 1 PIN" in ln for ln in summary), summary
            assert any("host demo-host (linux), for alice; 17 steps" in ln for ln in summary), summary
            tmux.keys("Enter")  # no
            tmux.wait_for("Go ahead?")
            tmux.keys("Enter")  # yes
            tmux.wait_for("Current passphrase (or recovery key) of /var/lib/demo/disk.img")
            tmux.type(passphrase)
            shown = tmux.wait_for("Press any key once it is written down")
            assert "RECOVERY KEY for /var/lib/demo/disk.img" in shown
            recovery = shown.split("write it down now:")[1].split()[0]
            tmux.keys("Enter")
            tmux.wait_for("PIN of the key:")
            tmux.type("0000")  # wrong: asked again, with the attempts left
            tmux.wait_for("wrong PIN for the primary key (7 attempts left)")
            tmux.wait_for("PIN of the key:", count=2)
            tmux.type(PIN)
            tmux.wait_for("New PIN for the backup key (backup; it has none yet):", timeout=60)
            tmux.type(PIN)
            tmux.wait_for("(again)")
            tmux.type("9999")  # mismatched: asked again
            tmux.wait_for("the two entries differ")
            tmux.wait_for("New PIN for the backup key (backup; it has none yet):", count=2)
            tmux.keys("C-c")  # the person stops here
            first = tmux.wait_for("FIRST-EXIT=")
        finally:
            tmux.kill()
        assert "FIRST-EXIT=10" in first, first  # 10: interrupted (yktool --help lists the exit codes)
        assert "run the same command again to resume" in first
        assert "Traceback" not in first

        tmux = Tmux(
            f"yktool-test-{os.getpid()}-{time.monotonic_ns()}",
            _commission_command(scratch, tcti, "RESUMED"),
            WIDTH,
            HEIGHT,
        )
        try:
            shown = tmux.wait_for("Resume the run started")
            assert f"on {root} (9 of 17 steps done)?" in " ".join(shown.split()), shown
            tmux.keys("Enter")  # resume
            tmux.wait_for("New PIN for the backup key (backup; it has none yet):", timeout=60)
            tmux.type(PIN)
            tmux.wait_for("(again)")
            tmux.type(PIN)
            tmux.wait_for("Current passphrase (or recovery key) of /var/lib/demo/disk.img", timeout=60)
            tmux.type(passphrase)  # a secret: never kept, so asked again
            resumed = tmux.wait_for("RESUMED-EXIT=", timeout=90)
            ending = tmux.visible()
        finally:
            tmux.kill()
        assert "RESUMED-EXIT=0" in resumed, resumed
        for asked in (
            "Host kind?",
            "Whose host",
            "LUKS2 device",
            "Which steps?",
            "Email for",
            "pam_u2f origin",
            "Nickname",
            "Show the full plan?",
            "Go ahead?",
            "PIN of the key",
        ):
            assert asked not in resumed, asked  # nothing answered before is asked again
        assert PIN not in first + resumed and recovery not in first.split("Press any key")[-1] + resumed
        assert "touches and PIN entries: backup: 3 touches, 1 PIN entry" in resumed
        assert "FAIL" not in resumed and "Traceback" not in resumed
        assert "Next steps" in ending and "Store the recovery key offline" not in ending  # shown in run 1
        # every step proven by its consumer
        assert passphrase_opens(scratch)
        opened = subprocess.run(
            ["cryptsetup", "open", "--test-passphrase", str(root / str(IMAGE).lstrip("/"))],
            input=recovery.encode(),
            capture_output=True,
            check=False,
        )
        assert opened.returncode == 0, opened.stderr
        for role, key_file in (("primary", "id_ed25519_sk"), ("backup", "id_ed25519_sk_backup")):
            assert key_opens_image(scratch, spec(scratch, role), PIN), role
            (tmp_path / role).mkdir()
            signed = ssh_signs(scratch, f"/home/alice/.ssh/{key_file}", spec(scratch, role), PIN, tmp_path / role)
            assert signed.returncode == 0, signed.stderr
            assert pam_accepts(scratch, spec(scratch, role), tmp_path / role), role
