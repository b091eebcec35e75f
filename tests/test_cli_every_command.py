"""Every command of the click tree, run the way a person gets it wrong: as an unprivileged user
on a root owned by root, with --json, on a root that is not there, with a bad flag. No
traceback, an exit code that says what happened, and one JSON envelope on stdout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from tests.fixtures.luks import make_image
from yktool.cli import main_group

REPO = Path(__file__).resolve().parent.parent
NOBODY = 65534
TPM = "swtpm:host=127.0.0.1,port=9"  # nothing listens there: no TPM


def leaf_commands() -> list[tuple[str, ...]]:
    """Every runnable command of the tree, as its path of names."""
    ctx = click.Context(main_group)
    found: list[tuple[str, ...]] = []

    def walk(command: click.Command, path: tuple[str, ...]) -> None:
        if isinstance(command, click.Group):
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                assert sub is not None, name
                walk(sub, (*path, name))
        else:
            found.append(path)

    walk(main_group, ())
    return found


# A harmless argument set for each command (paths inside the root; --dry-run where it would act).
def harmless_args(img: str) -> dict[tuple[str, ...], list[str]]:
    return {
        ("commission",): [
            "--dry-run",
            "--yes",
            "commission",
            "--user",
            "alice",
            "--luks-device",
            img,
            "--steps",
            "luks-tpm2,ssh",
            "--no-backup",
            "--git-email",
            "a@example.org",
        ],
        ("demo",): ["--dry-run", "demo", "--scratch", "/proc/yktool-nope"],
        ("git", "signing"): ["git", "signing", "--email", "alice@example.org", "--user", "alice"],
        ("key", "emulate"): ["key", "emulate", "--touch", "auto"],
        ("key", "info"): ["key", "info"],
        ("key", "list"): ["key", "list"],
        ("key", "pin", "change"): ["key", "pin", "change", "--pin-stdin"],
        ("key", "pin", "set"): ["key", "pin", "set", "--pin-stdin"],
        ("key", "pin", "verify"): ["key", "pin", "verify", "--pin-stdin"],
        ("key", "replug"): ["key", "replug"],
        ("key", "reset"): ["--dry-run", "key", "reset"],
        ("keys", "list"): ["keys", "list"],
        ("luks", "add-recovery"): ["luks", "add-recovery", img],
        ("luks", "enroll-fido2"): ["luks", "enroll-fido2", img],
        ("luks", "enroll-tpm2"): ["luks", "enroll-tpm2", img],
        ("luks", "status"): ["luks", "status", img],
        ("luks", "test-unlock"): ["luks", "test-unlock", img],
        ("luks", "wipe"): ["--yes", "luks", "wipe", img, "--slot", "0"],
        ("man",): ["man"],
        ("nixos", "module"): ["--dry-run", "nixos", "module"],
        ("pam", "check"): ["pam", "check"],
        ("pam", "register"): ["pam", "register", "--user", "alice"],
        ("replace",): ["--yes", "replace"],
        ("ssh", "authorize"): ["ssh", "authorize", "--user", "alice"],
        ("ssh", "download"): ["ssh", "download", "--user", "alice"],
        ("ssh", "keygen"): ["ssh", "keygen", "--user", "alice"],
        ("ssh", "sign"): ["ssh", "sign", "-n", "file", "-f", "/home/alice/.ssh/id_ed25519_sk", "/etc/hostname"],
        ("tpm", "status"): ["tpm", "status"],
        ("udev", "install"): ["udev", "install", "--vendor", "1050", "--product", "0407", "--serial", ""],
        ("udev", "show"): ["udev", "show"],
        ("usbguard", "allow"): ["usbguard", "allow", "--vendor", "1050", "--product", "0407", "--serial", "1"],
        ("verify",): ["verify"],
    }


@pytest.fixture
def root_owned_root() -> Iterator[Path]:
    """A root as a real system has it: owned by root, secrets 0600, homes 0700; readable folders.
    Made outside pytest's tmp folder, which only its owner may enter."""
    base = Path(tempfile.mkdtemp(prefix="yktool-nobody-"))
    try:
        base.chmod(0o755)
        root = base / "root"
        (root / "etc/yktool").mkdir(parents=True)
        (root / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n")
        (root / "etc/hostname").write_text("host\n")
        (root / "etc/shadow").write_text("root:!:1::::::\n")
        (root / "etc/shadow").chmod(0o600)
        (root / "etc/yktool/keys.toml").write_text("")
        (root / "etc/yktool").chmod(0o700)
        (root / "etc/pam.d").mkdir()
        (root / "etc/pam.d/sudo").write_text("auth sufficient pam_u2f.so authfile=/etc/u2f_mappings cue\n")
        (root / "etc/u2f_mappings").write_text("alice:x\n")
        (root / "etc/u2f_mappings").chmod(0o600)
        (root / "home/alice/.ssh").mkdir(parents=True)
        (root / "home/alice/.ssh/id_ed25519_sk").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
        (root / "home/alice/.ssh/id_ed25519_sk.pub").write_text("sk-ssh-ed25519@openssh.com AAAA alice\n")
        (root / "home/alice").chmod(0o700)
        make_image(root / "var/lib", "disk.img").path.chmod(0o600)
        (base / "keys").mkdir(mode=0o700)  # the software key's folder: root's only
        yield root
    finally:
        shutil.rmtree(base)


def test_every_command_as_nobody_says_what_is_wrong(root_owned_root: Path) -> None:
    root = root_owned_root
    table = harmless_args("/var/lib/disk.img")
    assert set(table) == set(leaf_commands()), "give each new command a harmless argument set here"
    device = f"sim:{root.parent}/keys/key.json"
    runs = []
    for args in table.values():
        runs.append(["--root", str(root), "--device", device, "--tpm", TPM, *args])
        runs.append(["--json", "--root", str(root), "--device", device, "--tpm", TPM, *args])
        # a root that is not there, and a flag no command has, put after the command
        runs.append(["--root", f"{root}/nope", "--device", device, "--tpm", TPM, *args])
        runs.append(["--root", str(root), "--device", device, "--tpm", TPM, *args, "--no-such-flag"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("YKTOOL_")}
    proc = subprocess.run(
        [
            "setpriv",
            f"--reuid={NOBODY}",
            f"--regid={NOBODY}",
            "--clear-groups",
            sys.executable,
            str(REPO / "tests/tools/run_commands.py"),
        ],
        input=json.dumps(runs),
        capture_output=True,
        text=True,
        env=env,
        cwd="/",
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    problems = []
    results = json.loads(proc.stdout)
    for run in results:
        shown = " ".join(run["argv"])
        text = run["stdout"] + run["stderr"]
        if run["traceback"] or "Traceback" in text:
            problems.append(f"{shown}: traceback\n{run['traceback'] or text}")
            continue
        if "--json" in run["argv"]:
            try:
                doc = json.loads(run["stdout"])
            except ValueError:
                problems.append(f"{shown}: stdout is not one JSON document: {run['stdout'][:300]!r}")
                continue
            if doc.get("schema") != 1 or not isinstance(doc.get("ok"), bool):
                problems.append(f"{shown}: no envelope: {run['stdout'][:200]}")
        if run["argv"][-1] == "--no-such-flag":
            if run["exit_code"] != 2 or "yktool: error: No such option '--no-such-flag'" not in run["stderr"]:
                problems.append(f"{shown}: a bad flag is not a usage error: {text[:300]}")
            continue
        if run["exit_code"] not in range(12):
            problems.append(f"{shown}: exit {run['exit_code']}")
        elif run["exit_code"] not in (0, 1) and "yktool: error: " not in run["stderr"]:
            problems.append(f"{shown}: exit {run['exit_code']} without a yktool error: {text[:300]}")
        elif run["exit_code"] == 1 and run["argv"][-1] != "verify" and "pam" not in run["argv"]:
            problems.append(f"{shown}: exit 1 (a check failed) from a command that checks nothing: {text[:300]}")
    assert not problems, "\n\n".join(problems)
    # the four the issue saw end in a traceback: now "permission denied", exit 11, the way out
    # (and on a root that is not there, they say so)
    for run in results:
        if (
            not (
                run["argv"][6:8] in (["luks", "status"], ["luks", "enroll-fido2"], ["ssh", "keygen"])
                or "commission" in run["argv"]
            )
            or run["argv"][-1] == "--no-such-flag"
        ):
            continue
        if run["argv"][1].endswith("/nope"):
            assert run["exit_code"] == 2 and "/nope does not exist" in run["stderr"], run
        else:
            assert run["exit_code"] == 11, run
            assert ": permission denied" in run["stderr"] and "run as root" in run["stderr"], run
