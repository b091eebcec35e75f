"""`pam check` and verify's `pam.*` checks judge pam_u2f by one set of findings (yktool.pam.check):
given the same authfile and pam.d, they say the same thing about every rule; and what they print
from those files reaches the terminal escaped."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import CliCall
from tests.fixtures.roots import U2F_MAPPINGS

BASE = "auth required pam_u2f.so cue authfile=/etc/u2f_mappings origin=pam://fixture"
FIXED = "/nix/store/0a1b-pam_u2f-1.3.1/lib/security/pam_u2f.so"  # CVE-2025-23013 fixed in 1.3.1
PASSWD = (
    "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/bash\nbob:x:1001:1001::/home/bob:/bin/bash\n"
)
# the codes of yktool.pam.check's line and file rules (what both sides judge by)
SHARED = {
    "alwaysok",
    "nouserok",
    "no-cue",
    "origin-hostname",
    "manual",
    "debug",
    "module-missing",
    "authfile-writable",
    "authfile-owner",
    "authfile-folder-writable",
    "authfile-unreadable",
}


def _authfile_in_alices_folder(root: Path) -> None:
    (root / "etc/yubico").mkdir()
    (root / "etc/yubico/u2f_keys").write_text(U2F_MAPPINGS)
    os.chown(root / "etc/yubico", 1000, 1000)


def _per_user_file_of_bob(root: Path) -> None:
    keys = root / "home/alice/.config/Yubico/u2f_keys"
    keys.parent.mkdir(parents=True)
    keys.write_text(U2F_MAPPINGS)
    os.chown(keys, 1001, 1001)


def _modules_without_pam_u2f(root: Path) -> None:
    """A tree with PAM modules (so it can tell one is missing), pam_u2f.so not among them."""
    folder = root / "usr/lib/x86_64-linux-gnu/security"
    folder.mkdir(parents=True)
    (folder / "pam_unix.so").write_bytes(b"")


def _alices_relative_file_group_writable(root: Path) -> None:
    keys = root / "home/alice/.u2f_keys"
    keys.parent.mkdir(parents=True)
    keys.write_text(U2F_MAPPINGS)
    keys.chmod(0o664)
    os.chown(keys, 1000, 1000)


Setup = Callable[[Path], None] | None
# id, service, its pam.d text, what else the root holds, the finding's code and severity (None: no
# finding), verify's status
ROWS: list[tuple[str, str, str, Setup, str | None, str | None, str]] = [
    ("clean", "sudo", BASE, None, None, None, "pass"),
    ("alwaysok", "sudo", BASE + " alwaysok", None, "alwaysok", "error", "fail"),
    ("nouserok-required", "sudo", BASE + " nouserok", None, "nouserok", "warning", "fail"),
    # pam-u2f's version unknown: before the CVE-2025-23013 fix a `sufficient` rule lets the user in
    (
        "nouserok-sufficient",
        "sudo",
        BASE.replace("required", "sufficient") + " nouserok",
        None,
        "nouserok",
        "error",
        "fail",
    ),
    (
        "nouserok-sufficient-fixed",
        "sudo",
        BASE.replace("required pam_u2f.so", f"sufficient {FIXED}") + " nouserok",
        None,
        "nouserok",
        "warning",
        "fail",
    ),
    (
        "nouserok-success-done-old",
        "sudo",
        BASE.replace("required pam_u2f.so", "[success=done default=ignore] " + FIXED.replace("1.3.1", "1.2.2"))
        + " nouserok",
        None,
        "nouserok",
        "error",
        "fail",
    ),
    ("no-cue", "sudo", BASE.replace(" cue", ""), None, "no-cue", "warning", "fail"),
    ("origin-hostname", "sudo", BASE.replace(" origin=pam://fixture", ""), None, "origin-hostname", "warning", "pass"),
    ("manual", "sudo", BASE + " manual", None, "manual", "warning", "pass"),
    ("debug", "sudo", BASE + " debug", None, "debug", "info", "pass"),
    ("module-missing", "sudo", BASE, _modules_without_pam_u2f, "module-missing", "error", "fail"),
    # `-auth` only silences libpam's log: the rule still answers MODULE_UNKNOWN
    ("module-missing-dash-auth", "sudo", "-" + BASE, _modules_without_pam_u2f, "module-missing", "error", "fail"),
    # `sufficient` ignores MODULE_UNKNOWN: nobody is locked out, but the key is never asked
    (
        "module-missing-sufficient",
        "sudo",
        BASE.replace("required", "sufficient"),
        _modules_without_pam_u2f,
        "module-missing",
        "warning",
        "fail",
    ),
    (
        "group-writable",
        "sudo",
        BASE,
        lambda r: (r / "etc/u2f_mappings").chmod(0o664),
        "authfile-writable",
        "error",
        "fail",
    ),
    (
        "others-writable",
        "sudo",
        BASE,
        lambda r: (r / "etc/u2f_mappings").chmod(0o646),
        "authfile-writable",
        "error",
        "fail",
    ),
    (
        "central-owned-by-alice",
        "sudo",
        BASE,
        lambda r: os.chown(r / "etc/u2f_mappings", 1000, 1000),
        "authfile-owner",
        "error",
        "fail",
    ),
    (
        "per-user-file-owned-by-bob",
        "sudo",
        "auth required pam_u2f.so cue origin=pam://fixture",
        _per_user_file_of_bob,
        "authfile-owner",
        "error",
        "fail",
    ),
    # pam_u2f reads a relative authfile= under each user's home
    (
        "relative-authfile-writable",
        "sudo",
        "auth required pam_u2f.so cue authfile=.u2f_keys origin=pam://fixture",
        _alices_relative_file_group_writable,
        "authfile-writable",
        "error",
        "fail",
    ),
    # whoever owns the authfile's folder can swap it for a link to a root-owned file they write lines into
    (
        "authfile-folder-alices",
        "sudo",
        BASE.replace("/etc/u2f_mappings", "/etc/yubico/u2f_keys"),
        _authfile_in_alices_folder,
        "authfile-folder-writable",
        "error",
        "fail",
    ),
    (
        "locker-cannot-read",
        "hyprlock",
        BASE,
        lambda r: (r / "etc/u2f_mappings").chmod(0o600),
        "authfile-unreadable",
        "error",
        "fail",
    ),
]


def _root(root: Path, service: str, rule: str, setup: Setup) -> None:
    (root / "etc/pam.d").mkdir(parents=True)
    (root / "etc/passwd").write_text(PASSWD)
    (root / "etc/hostname").write_text("fixture\n")
    (root / f"etc/pam.d/{service}").write_text(rule + "\n")
    (root / "etc/u2f_mappings").write_text(U2F_MAPPINGS)
    (root / "etc/u2f_mappings").chmod(0o644)
    if setup is not None:
        setup(root)


@pytest.mark.parametrize(
    ("service", "rule", "setup", "code", "severity", "status"), [r[1:] for r in ROWS], ids=[r[0] for r in ROWS]
)
def test_verify_and_pam_check_agree(
    cli: CliCall, root: Path, service: str, rule: str, setup: Setup, code: str | None, severity: str | None, status: str
) -> None:
    _root(root, service, rule, setup)
    checked = cli("--root", root, "--json", "pam", "check", "--service", service)
    findings = [f for f in json.loads(checked.stdout)["findings"] if f["code"] in SHARED]
    verified = cli("--root", root, "--json", "verify", "--only", f"pam.{service}")
    result = next(c for c in json.loads(verified.stdout)["checks"] if c["id"] == f"pam.{service}")
    notes = [e["note"] for e in result["evidence"] if e.get("note")]
    # the finding the row is about, and only it, on both sides
    assert [(f["code"], f["severity"]) for f in findings] == ([(code, severity)] if code else []), findings
    assert result["status"] == status, result
    if status == "fail":
        assert result["reason"] == findings[0]["message"] and result["fix"] == findings[0]["hint"], result
        assert notes == []
    else:
        assert notes == [f["message"] for f in findings], result
    # pam check's exit status says whether one of them is an error
    assert checked.exit_code == (1 if severity == "error" else 0), checked.stdout


def test_cve_2025_23013_is_named_on_both_sides_only_where_it_applies(cli: CliCall, root: Path) -> None:
    _root(root, "sudo", BASE.replace("required", "sufficient") + " nouserok", None)
    verified = cli("--root", root, "--json", "verify", "--only", "pam.sudo")
    reason = json.loads(verified.stdout)["checks"][0]["reason"]
    assert "CVE-2025-23013" in reason and "without a password" in reason
    (root / "etc/pam.d/sudo").write_text(BASE + " nouserok\n")  # required: the password stays
    verified = cli("--root", root, "--json", "verify", "--only", "pam.sudo")
    assert "CVE-2025-23013" not in json.loads(verified.stdout)["checks"][0]["reason"]


def test_pam_check_prints_what_files_hold_escaped(cli: CliCall, root: Path) -> None:
    """A service file's name, an authfile's user names and their bytes reach the terminal as `\\xNN`:
    an ESC from a file must not move root's cursor or forge a line of the report."""
    _root(root, "sudo", BASE, None)
    evil = "evil\x1b]0;owned\x07"
    (root / f"etc/pam.d/{evil}").write_text(BASE + " alwaysok\n")
    (root / "etc/u2f_mappings").write_bytes(U2F_MAPPINGS.encode() + b"m\xfcll\x1b[2Jer:x\nm\xfcll\x1b[2Jer:y\n")
    res = cli("--root", root, "pam", "check")
    assert res.exit_code == 1
    shown = res.stdout + res.stderr
    assert "\x1b" not in shown and "\x07" not in shown and "\udcfc" not in shown
    assert "evil\\x1b]0;owned\\x07" in res.stdout and "evil\\x1b]0;owned\\x07" in res.stderr
    assert "m\\xfcll\\x1b[2Jer" in res.stdout


def test_an_unreadable_dpkg_status_leaves_the_version_unknown_not_the_verdict(cli: CliCall, root: Path) -> None:
    """A user's link at /var/lib/dpkg/status is not followed; pam-u2f's version is then unknown (the
    careful reading: CVE-2025-23013 may apply), and both sides still judge the rule."""
    _root(root, "sudo", BASE.replace("required", "sufficient") + " nouserok", None)
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "home/alice").mkdir(parents=True)
    (root / "home/alice/status").write_text("Package: libpam-u2f\nStatus: install ok installed\nVersion: 1.3.1-1\n")
    os.symlink("/home/alice/status", root / "var/lib/dpkg/status")
    os.lchown(root / "var/lib/dpkg/status", 1000, 1000)
    checked = cli("--root", root, "--json", "pam", "check", "--service", "sudo")
    data = json.loads(checked.stdout)
    assert checked.exit_code == 1 and data["pam_u2f_version"] == "unknown"
    assert [f["severity"] for f in data["findings"] if f["code"] == "nouserok"] == ["error"]
    verified = cli("--root", root, "--json", "verify", "--only", "pam.sudo")
    result = json.loads(verified.stdout)["checks"][0]
    assert result["status"] == "fail" and "CVE-2025-23013" in result["reason"], result
