"""`yktool demo --scratch DIR`: the README's main job, end to end, and again (idempotent)."""

from __future__ import annotations

import json
import os
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


def test_demo_proves_enrollment_and_tamper_refusal_and_is_idempotent(cli: CliCall, tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    r = cli("--json", "demo", "--scratch", scratch)
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["ok"] is True
    outcomes = {line["stage"]: line["outcome"] for line in report["stages"]}
    assert "opens" in outcomes["test-unlock"]
    assert "PCR policy no longer matches" in outcomes["tamper (PCR 7 changed)"]
    assert "enrolled and proven" in outcomes["TPM2 enrollment"]

    passphrase = scratch / "disk.passphrase"
    assert stat.S_IMODE(passphrase.stat().st_mode) == 0o600
    assert sorted(p.name for p in scratch.iterdir()) == ["disk.img", "disk.passphrase", "swtpm"]
    assert not swtpm_running_on(scratch / "swtpm")  # stopped at the end
    header = read_header(Host(), str(scratch / "disk.img"))
    assert [t.type for t in header.tokens.values()].count("systemd-tpm2") == 1

    before = (scratch / "disk.img").read_bytes()
    again = cli("--json", "demo", "--scratch", scratch)
    assert again.exit_code == 0, again.output
    outcomes = {line["stage"]: line["outcome"] for line in json.loads(again.stdout)["stages"]}
    assert "already enrolled" in outcomes["TPM2 enrollment"]
    assert outcomes["recovery key"] == "already enrolled"
    assert "opens" in outcomes["test-unlock"]
    assert (scratch / "disk.img").read_bytes() == before  # the re-run changed nothing
    assert not swtpm_running_on(scratch / "swtpm")


def test_demo_text_report(cli: CliCall, tmp_path: Path) -> None:
    r = cli("demo", "--scratch", tmp_path / "s")
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[-1].strip() == "result: everything proven"
    assert "refuses" in r.stdout
