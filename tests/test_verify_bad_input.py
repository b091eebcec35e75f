"""Bad input never crashes `yktool verify`: it becomes a warn with the reason, and nothing changes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import CliCall
from tests.fixtures.roots import FixtureRoot, w

REPO = Path(__file__).resolve().parent.parent


def run_json(cli: CliCall, root: Path, *args: str) -> dict[str, dict[str, object]]:
    res = cli("--root", root, "--json", "verify", *args)
    assert res.exit_code in (0, 1), res.output
    assert "Traceback" not in res.output
    return {c["id"]: c for c in json.loads(res.stdout)["checks"]}


def tree_digest(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath, name)
            if not p.is_symlink():
                out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest() + oct(p.stat().st_mode)
    return out


def test_verify_changes_nothing_under_the_root(cli: CliCall, hardened_root: FixtureRoot) -> None:
    before = tree_digest(hardened_root.root), hardened_root.secrets.read_bytes()
    res = cli(*hardened_root.verify_args())
    assert res.exit_code == 0
    assert (tree_digest(hardened_root.root), hardened_root.secrets.read_bytes()) == before


def test_empty_root_reports_without_crashing(cli: CliCall, root: Path) -> None:
    checks = run_json(cli, root)
    assert checks["sysctl.kernel.kptr_restrict"]["status"] == "warn"
    assert "no /proc/sys under the root" in str(checks["sysctl.kernel.kptr_restrict"]["reason"])
    assert checks["boot.luks.root"]["status"] == "fail"
    assert checks["boot.secureboot"]["status"] == "warn"  # no /sys: cannot tell


def test_missing_proc_is_a_warn_with_the_reason(cli: CliCall, hardened_root: FixtureRoot) -> None:
    shutil.rmtree(hardened_root.root / "proc")
    (hardened_root.root / "etc/sysctl.d/90-hardening.conf").unlink()
    checks = run_json(cli, hardened_root.root, "--only", "sysctl,kernel.coredump")
    for cid, c in checks.items():
        assert c["status"] == "warn", cid
        assert "no /proc/sys under the root" in str(c["reason"]) or "cannot read" in str(c["reason"]), c


@pytest.mark.parametrize(
    "garbage", [b"\x00\x01\x02binary\xff\xfe", b"this is not { an sshd config\n=oops\n", b"PasswordAuthentication\n"]
)
def test_garbage_sshd_config_is_a_warn(cli: CliCall, hardened_root: FixtureRoot, garbage: bytes) -> None:
    cfg = hardened_root.root / "etc/ssh/sshd_config"
    cfg.write_bytes(garbage)
    (hardened_root.root / "etc/ssh/sshd_config.d/10-hardening.conf").unlink()
    checks = run_json(cli, hardened_root.root, "--only", "ssh")
    for key in ("passwordauthentication", "maxauthtries", "logingracetime"):
        c = checks[f"ssh.{key}"]
        assert c["status"] == "warn", c
        assert "/etc/ssh/sshd_config" in str(c["reason"]), c
    assert checks["ssh.sk_key"]["status"] == "pass"


def test_garbage_values_and_malformed_files_are_warns(cli: CliCall, hardened_root: FixtureRoot) -> None:
    r = hardened_root.root
    w(r, "/proc/sys/kernel/kptr_restrict", "banana\n")
    w(r, "/etc/fail2ban/jail.local", "[sshd\nenabled = true\n")
    w(r, "/etc/yktool/keys.toml", "this is = = not toml")
    checks = run_json(cli, r, "--secrets", str(hardened_root.secrets))
    assert checks["sysctl.kernel.kptr_restrict"]["status"] == "warn"
    assert "'banana', not a number" in str(checks["sysctl.kernel.kptr_restrict"]["reason"])
    assert checks["net.fail2ban.jails"]["status"] == "warn"
    assert "/etc/fail2ban/jail.local: not an INI file" in str(checks["net.fail2ban.jails"]["reason"])
    assert checks["hw.registry.backup"]["status"] == "warn"
    assert "not valid TOML" in str(checks["hw.registry.backup"]["reason"])


def test_secrets_path_missing_or_a_folder(cli: CliCall, hardened_root: FixtureRoot, tmp_path: Path) -> None:
    checks = run_json(cli, hardened_root.root, "--only", "secrets", "--secrets", str(tmp_path / "nope.nix"))
    assert checks["secrets.agenix.scoped"]["status"] == "fail"
    res = cli("--root", hardened_root.root, "verify", "--only", "secrets", "--secrets", tmp_path)
    assert res.exit_code == 2 and "is a directory" in res.stderr
    unreadable = tmp_path / "secrets.nix"
    unreadable.write_bytes(b"\xff\xfe{ not nix")
    checks = run_json(cli, hardened_root.root, "--only", "secrets", "--secrets", str(unreadable))
    assert checks["secrets.agenix.scoped"]["status"] == "warn"
    assert "no secret entries" in str(checks["secrets.agenix.scoped"]["reason"])


def test_corrupt_luks_header_is_a_warn(cli: CliCall, hardened_root: FixtureRoot) -> None:
    img = hardened_root.own_image()
    with open(img, "r+b") as fh:  # keep the magic, wreck the JSON area
        fh.seek(4096)
        fh.write(b"\xff" * 8192)
        fh.seek(0x4000 + 4096)
        fh.write(b"\xff" * 8192)
    checks = run_json(cli, hardened_root.root, "--only", "boot.luks")
    assert checks["boot.luks.root"]["status"] in ("warn", "fail")
    assert checks["boot.luks.fido2"]["status"] in ("warn", "n/a")


@pytest.fixture
def world_readable_root() -> Iterator[Path]:
    """A root nobody can traverse (pytest's own temp folders are 0700)."""
    d = Path(tempfile.mkdtemp(prefix="yktool-verify-"))
    os.chmod(d, 0o755)  # noqa: S103 - nobody must traverse it
    try:
        yield d
    finally:
        shutil.rmtree(d)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root to drop to nobody")
def test_unreadable_files_say_needs_root(world_readable_root: Path, hardened_template: FixtureRoot) -> None:
    from tests.fixtures.roots import copy_root

    fx = copy_root(hardened_template, world_readable_root)
    for d, _dirs, _files in os.walk(world_readable_root):
        os.chmod(d, 0o755)  # noqa: S103 - nobody must traverse it
    for f in (
        "/etc/ssh/sshd_config",
        "/etc/usbguard/rules.conf",
        "/etc/pam.d/sudo",
        "/sys/kernel/security/apparmor/profiles",
        "/var/lib/images/root.img",
        "/etc/yktool/keys.toml",
    ):
        os.chmod(fx.root / f.lstrip("/"), 0o600)
    os.chmod(fx.root / "var/lib/sbctl/keys", 0o700)
    os.chmod(fx.secrets, 0o644)
    os.chmod(fx.secrets.parent, 0o755)  # noqa: S103 - readable by nobody
    proc = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            sys.executable,
            "-m",
            "yktool",
            "--root",
            str(fx.root),
            "--json",
            "verify",
            "--secrets",
            str(fx.secrets),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode in (0, 1), proc.stderr
    assert "Traceback" not in proc.stderr
    data = json.loads(proc.stdout)
    assert data["privileged"] is False
    checks = {c["id"]: c for c in data["checks"]}
    for cid in (
        "ssh.passwordauthentication",
        "hw.usbguard.rules",
        "pam.sudo",
        "mac.apparmor.profiles",
        "boot.luks.root",
        "boot.luks.fido2",
        "hw.registry.backup",
        "boot.sbctl",
    ):
        c = checks[cid]
        assert c["status"] == "warn", c
        assert c["needs_root"] is True, c
        assert "permission denied" in str(c["reason"]) or "needs root" in str(c["reason"]), c
    # nothing that needs root was reported as a plain fail
    assert not [c for c in checks.values() if c["status"] == "fail"], [
        c for c in checks.values() if c["status"] == "fail"
    ]
