"""Recovery keys, wiping keyslots without locking anyone out, and no secret leaking anywhere."""

from __future__ import annotations

import json
import re

from tests.conftest import ChildRecorder, CliCall, CliResult
from tests.fixtures.luks import LuksImage
from tests.fixtures.tpm import SoftTpm
from yktool.host import Host
from yktool.luks.header import read_header

KEY_RE = re.compile(r"\b[cbdefghijklnrtuv]{8}(?:-[cbdefghijklnrtuv]{8}){7}\b")


def add_recovery(cli: CliCall, image: LuksImage, *extra: object) -> tuple[CliResult, str | None]:
    r = cli("luks", "add-recovery", image.path, "--unlock-key-file", image.key_file, "--key-to-stderr", *extra)
    found = KEY_RE.search(r.stderr)
    return r, found.group(0) if found else None


def test_wipe_of_the_only_passphrase_is_refused_byte_identical(cli: CliCall, luks2_image: LuksImage) -> None:
    before = luks2_image.path.read_bytes()
    r = cli("--yes", "luks", "wipe", luks2_image.path, "--slot", "0")
    assert r.exit_code == 4
    first, hint = r.stderr.strip().splitlines()
    assert "no way in at all" in first and "add-recovery" in hint
    assert luks2_image.path.read_bytes() == before
    r = cli("--yes", "luks", "wipe", luks2_image.path, "--type", "password")
    assert r.exit_code == 4
    assert luks2_image.path.read_bytes() == before


def test_wipe_leaving_only_hardware_is_refused_unless_allowed(
    cli: CliCall, measured_tpm: SoftTpm, luks2_image: LuksImage
) -> None:
    r = cli(
        "--tpm", measured_tpm.tcti, "luks", "enroll-tpm2", luks2_image.path, "--unlock-key-file", luks2_image.key_file
    )
    assert r.exit_code == 0, r.output
    before = luks2_image.path.read_bytes()
    r = cli("--yes", "luks", "wipe", luks2_image.path, "--type", "password")
    assert r.exit_code == 4
    assert "only by hardware" in r.stderr and "--allow-hardware-only" in r.stderr
    assert luks2_image.path.read_bytes() == before
    # a recovery key makes removing the passphrase safe
    r, key = add_recovery(cli, luks2_image)
    assert key is not None
    r = cli("--yes", "luks", "wipe", luks2_image.path, "--type", "password")
    assert r.exit_code == 0, r.output
    header = read_header(Host(), str(luks2_image.path))
    assert header.slots_with_role("password") == [] and header.slots_with_role("recovery")
    assert not luks2_image.opens_with(luks2_image.passphrase)
    assert luks2_image.opens_with(key.encode())


def test_wipe_tpm2_slot_removes_its_token(cli: CliCall, measured_tpm: SoftTpm, luks2_image: LuksImage) -> None:
    cli("--tpm", measured_tpm.tcti, "luks", "enroll-tpm2", luks2_image.path, "--unlock-key-file", luks2_image.key_file)
    r = cli("--yes", "--json", "luks", "wipe", luks2_image.path, "--type", "tpm2")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["wiped"] == [1]
    header = read_header(Host(), str(luks2_image.path))
    assert header.tokens == {} and header.usable_slots == [0]


def test_wipe_needs_confirmation_when_not_interactive(
    cli: CliCall, measured_tpm: SoftTpm, luks2_image: LuksImage
) -> None:
    cli("--tpm", measured_tpm.tcti, "luks", "enroll-tpm2", luks2_image.path, "--unlock-key-file", luks2_image.key_file)
    before = luks2_image.path.read_bytes()
    r = cli("luks", "wipe", luks2_image.path, "--slot", "1")
    assert r.exit_code == 4 and "--yes" in r.stderr
    assert luks2_image.path.read_bytes() == before
    r = cli("--yes", "luks", "wipe", luks2_image.path, "--slot", "5")
    assert r.exit_code == 2 and "no keyslot 5" in r.stderr


def test_add_recovery_shows_the_key_once_and_it_opens(cli: CliCall, luks2_image: LuksImage) -> None:
    r, key = add_recovery(cli, luks2_image)
    assert r.exit_code == 0, r.output
    assert key is not None and r.stderr.count(key) == 1
    assert key not in r.stdout
    assert luks2_image.opens_with(key.encode())
    again, key2 = add_recovery(cli, luks2_image)
    assert again.exit_code == 0 and key2 is None
    assert "already has a recovery key" in again.stdout
    assert len(read_header(Host(), str(luks2_image.path)).slots_with_role("recovery")) == 1


def test_add_recovery_replace_proves_new_then_removes_old(cli: CliCall, luks2_image: LuksImage) -> None:
    _, old = add_recovery(cli, luks2_image)
    r, new = add_recovery(cli, luks2_image, "--replace")
    assert r.exit_code == 0, r.output
    assert old and new and old != new
    assert luks2_image.opens_with(new.encode()) and not luks2_image.opens_with(old.encode())


def test_add_recovery_without_a_terminal_refuses_and_writes_nothing(luks2_image: LuksImage) -> None:
    """A new session has no controlling terminal: /dev/tty cannot be opened, so there is nowhere to
    show the key once; refused before anything is written."""
    import subprocess
    import sys
    from pathlib import Path

    before = luks2_image.path.read_bytes()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "yktool",
            "luks",
            "add-recovery",
            str(luks2_image.path),
            "--unlock-key-file",
            str(luks2_image.key_file),
        ],
        cwd=Path(__file__).resolve().parents[1],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        start_new_session=True,
    )
    assert proc.returncode == 4, proc.stderr
    assert "no terminal" in proc.stderr and "--key-to-stderr" in proc.stderr
    assert KEY_RE.search(proc.stdout + proc.stderr) is None
    assert luks2_image.path.read_bytes() == before


def test_no_secret_in_any_child_argv_env_or_json(
    cli: CliCall, child_recorder: ChildRecorder, measured_tpm: SoftTpm, luks2_image: LuksImage
) -> None:
    passphrase = luks2_image.passphrase.decode()
    pin = "hunter2-pin-8812"
    outputs = []
    r = cli(
        "--tpm",
        measured_tpm.tcti,
        "--json",
        "luks",
        "enroll-tpm2",
        luks2_image.path,
        "--with-pin",
        input=f"{passphrase}\n{pin}\n",
    )
    assert r.exit_code == 0, r.output
    outputs.append(r.output)
    r = cli(
        "--tpm", measured_tpm.tcti, "--json", "luks", "test-unlock", luks2_image.path, "--pin-stdin", input=f"{pin}\n"
    )
    assert r.exit_code == 0, r.output
    outputs.append(r.output)
    r = cli("--json", "luks", "add-recovery", luks2_image.path, "--key-to-stderr", input=f"{passphrase}\n")
    assert r.exit_code == 0, r.output
    key = KEY_RE.search(r.stderr)
    assert key is not None
    recovery = key.group(0)
    outputs.append(r.stdout)
    measured_tpm.tamper(7)  # so --replace really enrolls again, unlocking with the recovery key
    r = cli(
        "--tpm",
        measured_tpm.tcti,
        "--json",
        "luks",
        "enroll-tpm2",
        luks2_image.path,
        "--with-pin",
        "--replace",
        input=f"{recovery}\n{pin}\n",
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["changed"] is True
    outputs.append(r.output)
    recorder = child_recorder
    children = recorder.children
    assert any("systemd-cryptenroll" in c.argv[0] for c in children)  # the recorder saw the real children
    recorder.assert_no_secret(passphrase, pin, recovery)
    for out in outputs:
        for secret in (passphrase, pin, recovery):
            assert secret not in out


def test_wipe_checks_again_when_it_acts(cli: CliCall, luks2_image: LuksImage) -> None:
    """The header may change between the plan (and the question) and the wipe: the last way in
    is still never removed."""
    import subprocess

    import pytest

    from yktool.errors import Refused
    from yktool.luks.wipe import plan_wipe

    _, key = add_recovery(cli, luks2_image)
    assert key is not None
    plan, _header, chosen = plan_wipe(Host(), str(luks2_image.path), slots=[0])
    assert chosen == [0]
    # meanwhile someone removes the recovery key
    subprocess.run(
        ["systemd-cryptenroll", "--wipe-slot=recovery", str(luks2_image.path)], check=True, capture_output=True
    )
    before = luks2_image.path.read_bytes()
    with pytest.raises(Refused, match="no way in at all"):
        plan.apply()
    assert luks2_image.path.read_bytes() == before
    assert luks2_image.opens_with(luks2_image.passphrase)


def test_wipe_leaving_only_an_unknown_token_slot_is_refused(cli: CliCall, luks2_image: LuksImage) -> None:
    """A slot opened by a token yktool does not know (clevis: a Tang server or a TPM) is not a
    passphrase anyone can type: removing the last typed one down to it is refused."""
    import os
    import subprocess

    r, w = os.pipe()
    os.write(w, os.urandom(32).hex().encode())  # clevis keeps a random secret, never shown
    os.close(w)
    subprocess.run(
        [
            "cryptsetup",
            "luksAddKey",
            "--batch-mode",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
            "--key-slot",
            "1",
            "--key-file",
            str(luks2_image.key_file),
            str(luks2_image.path),
            f"/dev/fd/{r}",
        ],
        pass_fds=(r,),
        check=True,
        capture_output=True,
    )
    os.close(r)
    token = {"type": "clevis", "keyslots": ["1"], "jwe": {"ciphertext": "x"}}
    subprocess.run(
        ["cryptsetup", "token", "import", str(luks2_image.path)],
        input=json.dumps(token).encode(),
        check=True,
        capture_output=True,
    )
    before = luks2_image.path.read_bytes()
    r2 = cli("--yes", "luks", "wipe", luks2_image.path, "--slot", "0")
    assert r2.exit_code == 4, r2.output
    assert "--allow-hardware-only" in r2.stderr
    assert luks2_image.path.read_bytes() == before


def test_a_recovery_key_that_does_not_open_is_never_shown(luks2_image: LuksImage) -> None:
    """If the key systemd printed did not open its new slot (here: garbled between add and proof),
    the slot goes again and the key is forgotten, so it can never be shown and trusted."""
    import pytest

    from yktool.errors import ToolFailed
    from yktool.luks.recovery import plan_add_recovery

    before = read_header(Host(), str(luks2_image.path))
    op = plan_add_recovery(Host(), str(luks2_image.path))
    op.unlock = luks2_image.passphrase
    step = next(s for s in op.plan.steps if s.id == "add")  # then "show", which never runs here
    assert step.action and step.prove
    step.action()
    assert op.key is not None
    op.key = op.key[:-1] + (b"c" if op.key[-1:] != b"c" else b"d")
    with pytest.raises(ToolFailed, match="removed again"):
        step.prove()
    assert op.key is None
    after = read_header(Host(), str(luks2_image.path))
    assert (after.keyslots.keys(), after.tokens) == (before.keyslots.keys(), before.tokens)
