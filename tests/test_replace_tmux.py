"""The replace wizard on a real terminal (tmux): it asks which key was lost, listing the
registry, and a forced loss is gone ahead with only once the key's name is typed."""

from __future__ import annotations

import os
import shlex
import shutil
import time
from pathlib import Path

import pytest

from tests.flows_support import YKTOOL, demo_pin, key_opens_image, spec, tree_bytes
from tests.test_commission_tmux import Tmux
from yktool.demo import KEYS, PASSPHRASE, ROOT
from yktool.host import Host
from yktool.inventory import Registry

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")


def _tmux(argv: list[str]) -> Tmux:
    return Tmux(
        f"yktool-replace-{os.getpid()}-{time.monotonic_ns()}", f"{shlex.join(argv)}; echo WIZARD-EXIT=$?; sleep 600"
    )


def test_the_wizard_asks_which_key_was_lost(scratch: Path) -> None:
    pin = demo_pin(scratch)
    (scratch / KEYS / "primary.json").unlink()  # lost
    argv = [
        YKTOOL,
        "--root",
        str(scratch / ROOT),
        "--device",
        spec(scratch, "backup"),
        "replace",
        "--new-device",
        spec(scratch, "new"),
        "--unlock-key-file",
        str(PASSPHRASE),
    ]
    tmux = _tmux(argv)
    try:
        shown = tmux.wait_for("Which key was lost?")
        assert "primary — luks, ssh, git, pam, udev, usbguard; not plugged in" in shown
        assert "backup — luks, ssh, git, pam, udev, usbguard; plugged in (present-1)" in shown
        tmux.keys("Space")  # primary (the first): marked
        tmux.keys("Enter")
        shown = tmux.wait_for("Show the full plan?")
        assert "lost primary, revoked:" in shown and "kept: backup (plugged in)" in shown
        tmux.keys("y")  # yes: the full plan
        shown = tmux.wait_for("Go ahead?")
        assert "Lost (primary), as named" in shown and "note: backup (plugged in, present-1): kept" in shown
        tmux.keys("Enter")  # yes
        tmux.wait_for("New PIN for the new key")
        tmux.type(pin)
        tmux.wait_for("(again)")
        tmux.type(pin)
        shown = tmux.wait_for("WIZARD-EXIT=", timeout=90)
    finally:
        tmux.kill()
    assert "WIZARD-EXIT=0" in shown, shown
    assert "replaced primary with primary-2" in shown
    assert sorted(k.nickname for k in Registry.load(Host(scratch / ROOT)).keys) == ["backup", "primary-2"]
    assert key_opens_image(scratch, spec(scratch, "new"), pin)


def test_a_forced_loss_needs_the_name_typed(scratch: Path) -> None:
    """Revoke-only of alice's only SSH key with --force: typing another name changes nothing."""
    root = scratch / ROOT
    path = root / "home/alice/.ssh/authorized_keys"
    backup = next(
        str(e["public_key"]).split()[1]
        for k, e in Registry.load(Host(root)).enrollments("ssh")
        if k.nickname == "backup"
    )
    path.write_text("".join(ln for ln in path.read_text().splitlines(keepends=True) if backup not in ln))
    (scratch / KEYS / "primary.json").unlink()
    argv = [
        YKTOOL,
        "--root",
        str(root),
        "--device",
        spec(scratch, "backup"),
        "replace",
        "--lost",
        "primary",
        "--force",
        "--unlock-key-file",
        str(PASSPHRASE),
    ]
    before = tree_bytes(root)
    tmux = _tmux(argv)
    try:
        shown = tmux.wait_for("Show the full plan?")
        # the summary says it (wrapped to the screen)
        screen = " ".join(shown.split())
        assert "FORCED: " in screen and "no more SSH login by key" in screen, shown
        tmux.keys("Enter")  # no
        shown = tmux.wait_for("Type primary to go ahead anyway")
        assert "alice would be left without any SSH key" in shown
        tmux.type("backup")
        shown = tmux.wait_for("WIZARD-EXIT=")
    finally:
        tmux.kill()
    assert "WIZARD-EXIT=4" in shown and "not confirmed" in shown, shown
    assert tree_bytes(root) == before
    tmux = _tmux(argv)
    try:
        tmux.wait_for("Show the full plan?")
        tmux.keys("Enter")  # no
        tmux.wait_for("Type primary to go ahead anyway")
        tmux.type("primary")
        tmux.wait_for("Go ahead?")
        tmux.keys("Enter")
        shown = tmux.wait_for("WIZARD-EXIT=", timeout=90)
    finally:
        tmux.kill()
    assert "WIZARD-EXIT=0" in shown, shown
    assert backup not in path.read_text() and "sk-ssh" not in path.read_text()
    assert sorted(k.nickname for k in Registry.load(Host(root)).keys) == ["backup"]
