"""The real interactive wizard, typed into through tmux (send-keys / capture-pane): questionary
questions, the PINs asked twice without echo, the recovery key shown once and cleared. Ends
with every step proven by its consumer and verify green for what the scratch root covers."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.flows_support import (
    EMAIL,
    ORIGIN,
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


class Tmux:
    """One private tmux server (its own socket) running one command in a 200x60 pane."""

    def __init__(self, name: str, command: str) -> None:
        self.socket = name
        self.run("new-session", "-d", "-s", "w", "-x", "200", "-y", "60", command)

    def run(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True,
                              check=False).stdout

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "w", "-S", "-2000")

    def wait_for(self, text: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            shown = self.screen()
            if text in shown:
                return shown
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {text!r}; the pane shows:\n{shown}")
            time.sleep(0.1)

    def keys(self, *keys: str) -> None:
        self.run("send-keys", "-t", "w", *keys)

    def type(self, text: str) -> None:
        self.run("send-keys", "-t", "w", "-l", text)
        self.run("send-keys", "-t", "w", "Enter")

    def kill(self) -> None:
        self.run("kill-server")


def test_interactive_wizard_in_tmux(tmp_path: Path) -> None:
    with fresh_setup(tmp_path) as (scratch, tcti):
        argv = [YKTOOL, "--root", str(scratch / ROOT), "--tpm", tcti, "--device", spec(scratch, "primary"),
                "commission", "--user", "alice", "--luks-device", str(IMAGE), "--pam-origin", ORIGIN,
                "--backup-device", spec(scratch, "backup"), "--unlock-key-file", str(PASSPHRASE),
                "--verify-only", ",".join(VERIFY_ITEMS)]
        command = f"{shlex.join(argv)}; echo WIZARD-EXIT=$?; sleep 600"
        tmux = Tmux(f"yktool-test-{os.getpid()}-{time.monotonic_ns()}", command)
        try:
            tmux.wait_for("Host kind?")
            tmux.keys("Enter")                      # linux (the default: no /etc/NIXOS)
            tmux.wait_for("Which steps?")
            tmux.keys("Enter")                      # all of them, as checked
            tmux.wait_for("Email for git signing?")
            tmux.type(EMAIL)
            tmux.wait_for("Nickname of the first key?")
            tmux.keys("Enter")                      # primary
            tmux.wait_for("Nickname of the backup key?")
            tmux.keys("Enter")                      # backup
            shown = tmux.wait_for("Go ahead?")
            assert "Plan: commission this linux host for alice" in shown
            assert "allow the backup key through USBGuard" in shown
            tmux.keys("Enter")                      # yes
            shown = tmux.wait_for("Press any key once it is written down")
            assert "RECOVERY KEY for /var/lib/demo/disk.img" in shown
            recovery = shown.split("write it down now:")[1].split()[0]
            tmux.keys("Enter")
            for role in ("primary", "backup"):
                tmux.wait_for(f"New PIN for the {role} key")
                tmux.type(PIN)
                tmux.wait_for(f"New PIN for the {role} key (backup; it has none yet) (again)" if role == "backup"
                              else "(again)")
                tmux.type(PIN)
            shown = tmux.wait_for("WIZARD-EXIT=", timeout=90)
        finally:
            tmux.kill()
        assert "WIZARD-EXIT=0" in shown, shown
        assert PIN not in shown and recovery not in shown.split("Press any key")[-1]
        assert "touches and PIN entries: primary: 5 touches, 1 PIN entry; backup: 5 touches, 1 PIN entry" in shown
        assert "FAIL" not in shown
        # every step proven by its consumer
        assert passphrase_opens(scratch)
        r = subprocess.run(["cryptsetup", "open", "--test-passphrase",  # noqa: S607
                            str(scratch / ROOT / str(IMAGE).lstrip("/"))], input=recovery.encode(),
                           capture_output=True, check=False)
        assert r.returncode == 0, r.stderr
        for role, key_file in (("primary", "id_ed25519_sk"), ("backup", "id_ed25519_sk_backup")):
            assert key_opens_image(scratch, spec(scratch, role), PIN), role
            signed = ssh_signs(scratch, f"/home/alice/.ssh/{key_file}", spec(scratch, role), PIN, tmp_path)
            assert signed.returncode == 0, signed.stderr
            (tmp_path / role).mkdir()
            assert pam_accepts(scratch, spec(scratch, role), tmp_path / role), role
