"""`yktool demo --scratch DIR`: the README's main job, end to end, and again (idempotent)."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

from tests.conftest import CliCall
from yktool.host import Host
from yktool.luks.header import read_header


def swtpm_running_on(state: Path) -> bool:
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"swtpm" in cmd and f"dir={state}".encode() in cmd:
                return True
    return False


def test_demo_commissions_proves_and_is_idempotent(cli: CliCall, tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    r = cli("--json", "demo", "--scratch", scratch)
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["ok"] is True
    outcomes = {line["stage"]: line["outcome"] for line in report["stages"]}
    assert "opens" in outcomes["test-unlock"]
    assert "PCR policy no longer matches" in outcomes["tamper (PCR 7 changed)"]
    assert "proven to open" in outcomes["commission luks-tpm2"]
    for role in ("primary", "backup"):
        for step in ("pin", "luks-fido2", "ssh", "git", "pam", "udev", "usbguard"):
            assert f"commission {role}.{step}" in outcomes
    verify = [ln for ln in report["stages"] if ln["stage"].startswith("verify ")]
    assert len(verify) >= 15 and all(ln["outcome"].startswith("pass") for ln in verify)
    # one PIN entry per key; touches: one per credential made (LUKS, SSH, pam_u2f)
    assert report["counts"] == {"primary": {"touches": 3, "pin_prompts": 1}, "backup": {"touches": 3, "pin_prompts": 1}}
    assert "replace --new-device" in report["replace_command"]

    # nothing outside the scratch folder; secrets only where they belong, mode 0600
    assert sorted(p.name for p in scratch.iterdir()) == ["keys", "recovery-key.txt", "root", "swtpm"]
    for secret in (
        scratch / "recovery-key.txt",
        scratch / "keys/demo-pin",
        scratch / "root/var/lib/demo/disk.passphrase",
    ):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    pin = (scratch / "keys/demo-pin").read_text()
    recovery = re.search(
        r"[cbdefghijklnrtuv]{8}(?:-[cbdefghijklnrtuv]{8}){7}", (scratch / "recovery-key.txt").read_text()
    )
    assert recovery is not None
    passphrase = (scratch / "root/var/lib/demo/disk.passphrase").read_text()
    for text in (pin, recovery.group(0), passphrase):
        assert text not in r.output
    assert not swtpm_running_on(scratch / "swtpm")  # stopped at the end
    header = read_header(Host(), str(scratch / "root/var/lib/demo/disk.img"))
    assert [t.type for t in header.tokens.values()].count("systemd-tpm2") == 1
    assert [t.type for t in header.tokens.values()].count("systemd-fido2") == 2

    before = (scratch / "root/var/lib/demo/disk.img").read_bytes()
    again = cli("--json", "demo", "--scratch", scratch)
    assert again.exit_code == 0, again.output
    report = json.loads(again.stdout)
    outcomes = {line["stage"]: line["outcome"] for line in report["stages"]}
    assert outcomes["commission"] == "already complete: nothing changed"
    assert "opens" in outcomes["test-unlock"]
    assert report["counts"] == {}
    assert (scratch / "root/var/lib/demo/disk.img").read_bytes() == before  # the re-run changed nothing
    assert not swtpm_running_on(scratch / "swtpm")


def test_demo_text_report(cli: CliCall, tmp_path: Path) -> None:
    r = cli("demo", "--scratch", tmp_path / "s")
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[-1].strip() == "result: everything proven"
    assert "refuses" in r.stdout
    assert "touches and PIN entries: primary: 3 touches, 1 PIN entry; backup: 3 touches, 1 PIN entry" in r.stdout
    assert "replace --new-device" in r.stdout


def test_dry_run_shows_the_plan_and_makes_nothing(cli: CliCall, tmp_path: Path) -> None:
    scratch = tmp_path / "s"
    r = cli("--dry-run", "--json", "demo", "--scratch", scratch)
    assert r.exit_code == 0, r.output
    plan = json.loads(r.stdout)
    assert [s["id"] for s in plan["steps"]][:2] == ["keys", "tpm"] and "commission" in r.stdout
    assert all(s["touches"] == [str(scratch)] for s in plan["steps"])
    assert not scratch.exists()
    assert "Plan: yktool demo" in cli("--dry-run", "demo", "--scratch", scratch).stdout
    assert not scratch.exists() and not swtpm_running_on(scratch / "swtpm")
