"""TPM2 enrollment on swtpm + LUKS2 images with the real systemd-cryptenroll and libcryptsetup."""

from __future__ import annotations

import json

import pytest

from tests.conftest import CliCall, CliResult
from tests.fixtures.luks import LuksImage
from tests.fixtures.tpm import SoftTpm
from yktool.host import Host
from yktool.luks.header import read_header


def tpm2_tokens(image: LuksImage) -> list[dict[str, object]]:
    header = read_header(Host(), str(image.path))
    return [t.to_json() for t in header.tokens_of_type("systemd-tpm2")]


def enroll(
    cli: CliCall, tpm: SoftTpm, image: LuksImage, *extra: object, input: str | None = None, json_out: bool = False
) -> CliResult:
    args: list[object] = ["--tpm", tpm.tcti, *(["--json"] if json_out else [])]
    args += ["luks", "enroll-tpm2", image.path]
    if input is None:
        args += ["--unlock-key-file", image.key_file]
    return cli(*args, *extra, input=input)


def test_enroll_opens_then_tamper_refuses_then_replace_opens(
    cli: CliCall, measured_tpm: SoftTpm, luks2_image: LuksImage
) -> None:
    r = enroll(cli, measured_tpm, luks2_image)
    assert r.exit_code == 0, r.output
    tokens = tpm2_tokens(luks2_image)
    assert len(tokens) == 1 and tokens[0]["pcrs"] == [0, 7] and tokens[0]["pcr_bank"] == "sha256"

    ok = cli("--tpm", measured_tpm.tcti, "luks", "test-unlock", luks2_image.path)
    assert ok.exit_code == 0, ok.output
    assert "opens" in ok.stdout

    measured_tpm.tamper(7)  # a Secure Boot db change
    bad = cli("--tpm", measured_tpm.tcti, "luks", "test-unlock", luks2_image.path)
    assert bad.exit_code == 1
    assert "PCR policy no longer matches (firmware or Secure Boot changed?)" in bad.stdout

    again = enroll(cli, measured_tpm, luks2_image, "--replace")
    assert again.exit_code == 0, again.output
    after = tpm2_tokens(luks2_image)
    assert len(after) == 1 and after[0]["id"] != tokens[0]["id"]
    ok = cli("--tpm", measured_tpm.tcti, "--json", "luks", "test-unlock", luks2_image.path)
    assert ok.exit_code == 0
    assert [t["status"] for t in json.loads(ok.stdout)["tokens"]] == ["opens"]
    assert luks2_image.opens_with(luks2_image.passphrase)  # the passphrase slot is untouched
    assert measured_tpm.flush() == 0  # yktool left no sessions behind on a TPM without a resource manager


def test_enroll_twice_leaves_one_token(cli: CliCall, measured_tpm: SoftTpm, luks2_image: LuksImage) -> None:
    assert enroll(cli, measured_tpm, luks2_image).exit_code == 0
    digest = luks2_image.header_digest()
    r = enroll(cli, measured_tpm, luks2_image, json_out=True)
    assert r.exit_code == 0
    assert json.loads(r.stdout)["changed"] is False
    assert len(tpm2_tokens(luks2_image)) == 1
    assert luks2_image.header_digest() == digest


def test_replace_when_nothing_changed_keeps_the_token(
    cli: CliCall, measured_tpm: SoftTpm, luks2_image: LuksImage
) -> None:
    assert enroll(cli, measured_tpm, luks2_image).exit_code == 0
    before = tpm2_tokens(luks2_image)
    r = enroll(cli, measured_tpm, luks2_image, "--replace")
    assert r.exit_code == 0, r.output
    assert tpm2_tokens(luks2_image) == before


def test_replace_with_pin_on_stdin_keeps_the_line_order(
    cli: CliCall, measured_tpm: SoftTpm, luks2_image: LuksImage
) -> None:
    """stdin is always passphrase line, then PIN line, even when --replace finds nothing to re-seal
    (the passphrase line must not be taken for the PIN: that would spend a TPM authorisation)."""
    lines = f"{luks2_image.passphrase.decode()}\n2468\n"
    assert enroll(cli, measured_tpm, luks2_image, "--with-pin", input=lines).exit_code == 0
    before = tpm2_tokens(luks2_image)
    r = enroll(cli, measured_tpm, luks2_image, "--with-pin", "--replace", input=lines)
    assert r.exit_code == 0, r.output
    assert tpm2_tokens(luks2_image) == before


def test_other_settings_need_replace(cli: CliCall, measured_tpm: SoftTpm, luks2_image: LuksImage) -> None:
    assert enroll(cli, measured_tpm, luks2_image).exit_code == 0
    digest = luks2_image.header_digest()
    r = enroll(cli, measured_tpm, luks2_image, "--pcrs", "7")
    assert r.exit_code == 4
    assert "--replace" in r.stderr
    assert luks2_image.header_digest() == digest
    r = enroll(cli, measured_tpm, luks2_image, "--pcrs", "7", "--replace")
    assert r.exit_code == 0
    assert [t["pcrs"] for t in tpm2_tokens(luks2_image)] == [[7]]


def test_with_pin_right_opens_wrong_is_reported_as_wrong(
    cli: CliCall, measured_tpm: SoftTpm, luks2_image: LuksImage
) -> None:
    r = enroll(cli, measured_tpm, luks2_image, "--with-pin", input=f"{luks2_image.passphrase.decode()}\n2468\n")
    assert r.exit_code == 0, r.output
    assert tpm2_tokens(luks2_image)[0]["pin"] is True
    right = cli("--tpm", measured_tpm.tcti, "luks", "test-unlock", luks2_image.path, "--pin-stdin", input="2468\n")
    assert right.exit_code == 0, right.output
    assert "opens" in right.stdout
    wrong = cli("--tpm", measured_tpm.tcti, "luks", "test-unlock", luks2_image.path, "--pin-stdin", input="1111\n")
    assert wrong.exit_code == 6
    assert "PIN wrong" in wrong.stdout and "wrong PIN" in wrong.stderr
    assert "TPM's dictionary-attack lockout" in wrong.stderr and "re-insert" not in wrong.stderr  # not a key's
    # a changed PCR is told apart from a wrong PIN, and costs no authorisation attempt
    measured_tpm.tamper(0, b"firmware 2.0")
    moved = cli("--tpm", measured_tpm.tcti, "luks", "test-unlock", luks2_image.path, "--pin-stdin", input="2468\n")
    assert moved.exit_code == 1 and "PCR policy no longer matches" in moved.stdout


def test_unmeasured_boot_is_refused_and_nothing_written(
    cli: CliCall, soft_tpm: SoftTpm, luks2_image: LuksImage
) -> None:
    digest = luks2_image.header_digest()
    r = enroll(cli, soft_tpm, luks2_image)
    assert r.exit_code == 4
    first, hint = r.stderr.strip().splitlines()
    assert "all zero" in first and "--allow-unmeasured" in hint
    assert luks2_image.header_digest() == digest
    r = enroll(cli, soft_tpm, luks2_image, "--allow-unmeasured")
    assert r.exit_code == 0, r.output


def test_wrong_passphrase_changes_nothing(cli: CliCall, measured_tpm: SoftTpm, luks2_image: LuksImage) -> None:
    digest = luks2_image.header_digest()
    r = enroll(cli, measured_tpm, luks2_image, input="not the passphrase\n")
    assert r.exit_code == 2
    assert "does not open" in r.stderr and "hint:" in r.stderr
    assert luks2_image.header_digest() == digest


def test_dry_run_prints_the_plan_and_writes_nothing(
    cli: CliCall, measured_tpm: SoftTpm, luks2_image: LuksImage
) -> None:
    digest = luks2_image.header_digest()
    r = cli("--tpm", measured_tpm.tcti, "--dry-run", "luks", "enroll-tpm2", luks2_image.path)
    assert r.exit_code == 0
    assert "Plan: TPM2 enrollment" in r.stdout and "PCR 0 measures the firmware" in r.stdout
    r = cli("--tpm", measured_tpm.tcti, "--dry-run", "--json", "luks", "enroll-tpm2", luks2_image.path)
    plan = json.loads(r.stdout)
    assert [s["id"] for s in plan["steps"]] == ["enroll", "prove"]
    assert luks2_image.header_digest() == digest


def test_pcr0_warning_in_help(cli: CliCall) -> None:
    r = cli("luks", "enroll-tpm2", "--help")
    assert "firmware update" in r.stdout and "--replace" in r.stdout


@pytest.mark.parametrize("case", ["not-luks", "luks1", "missing", "no-tpm", "pcrs"])
def test_bad_input_one_line_hint_exit_code_nothing_written(
    cli: CliCall, measured_tpm: SoftTpm, luks2_image: LuksImage, luks1_image: LuksImage, tmp_path: object, case: str
) -> None:
    from pathlib import Path

    from yktool import swtpm

    plain = Path(str(tmp_path)) / "plain.img"
    plain.write_bytes(b"x" * 65536)
    device, tcti, extra, code = {
        "not-luks": (plain, measured_tpm.tcti, [], 2),
        "luks1": (luks1_image.path, measured_tpm.tcti, [], 2),
        "missing": (Path(str(tmp_path)) / "missing.img", measured_tpm.tcti, [], 3),
        "no-tpm": (luks2_image.path, f"swtpm:host=127.0.0.1,port={swtpm.free_port_pair()}", [], 3),
        "pcrs": (luks2_image.path, measured_tpm.tcti, ["--pcrs", "0+7+junk"], 2),
    }[case]
    before = {p: p.read_bytes() for p in (plain, luks1_image.path, luks2_image.path)}
    r = cli("--tpm", tcti, "luks", "enroll-tpm2", device, "--unlock-key-file", luks2_image.key_file, *extra)
    assert r.exit_code == code, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("yktool: error: ") and lines[1].startswith("  hint: ")
    assert {p: p.read_bytes() for p in before} == before
    assert not (Path(str(tmp_path)) / "missing.img").exists()


def test_replace_killed_after_enrolling_resumes_to_one_token(
    cli: CliCall, measured_tpm: SoftTpm, luks2_image: LuksImage
) -> None:
    from yktool.luks.tpm2 import plan_enroll_tpm2
    from yktool.tpm import parse_tcti

    assert enroll(cli, measured_tpm, luks2_image).exit_code == 0
    measured_tpm.tamper(7)
    op = plan_enroll_tpm2(Host(), str(luks2_image.path), parse_tcti(measured_tpm.tcti), replace=True)
    op.unlock = luks2_image.passphrase
    first = op.plan.steps[0]
    assert first.action and first.prove
    first.action()  # the new token is in; then the process "dies" before proving and wiping
    first.prove()
    assert len(tpm2_tokens(luks2_image)) == 2
    r = enroll(cli, measured_tpm, luks2_image, "--replace")
    assert r.exit_code == 0, r.output
    assert len(tpm2_tokens(luks2_image)) == 1
    ok = cli("--tpm", measured_tpm.tcti, "luks", "test-unlock", luks2_image.path)
    assert ok.exit_code == 0 and "opens" in ok.stdout


def test_test_unlock_unknown_token_and_recovery_are_not_failures(
    cli: CliCall, measured_tpm: SoftTpm, luks2_image: LuksImage
) -> None:
    import subprocess

    token = {"type": "acme-hsm", "keyslots": ["0"]}
    subprocess.run(
        ["cryptsetup", "token", "import", str(luks2_image.path)],
        input=json.dumps(token).encode(),
        check=True,
        capture_output=True,
    )
    r = cli("--tpm", measured_tpm.tcti, "--json", "luks", "test-unlock", luks2_image.path)
    assert r.exit_code == 0, r.output
    assert [t["status"] for t in json.loads(r.stdout)["tokens"]] == ["not-tested"]
    r = cli("--tpm", measured_tpm.tcti, "luks", "test-unlock", luks2_image.path, "--token", "9")
    assert r.exit_code == 2 and "has no token 9" in r.stderr


def test_a_new_token_that_does_not_open_is_removed_again(measured_tpm: SoftTpm, luks2_image: LuksImage) -> None:
    """The proof fails (here: the PIN changes between sealing and proving): the run removes the
    keyslot it added, so the volume is as it was and a re-run does not call the broken token enrolled."""
    from yktool.errors import ToolFailed
    from yktool.luks.tpm2 import plan_enroll_tpm2
    from yktool.tpm import parse_tcti

    before = read_header(Host(), str(luks2_image.path))
    op = plan_enroll_tpm2(Host(), str(luks2_image.path), parse_tcti(measured_tpm.tcti), with_pin=True)
    op.unlock, op.pin = luks2_image.passphrase, b"2468"
    enroll_step, prove_step = op.plan.steps
    op.plan.steps = [enroll_step]
    op.plan.apply()
    assert len(tpm2_tokens(luks2_image)) == 1
    op.pin = b"1357"
    op.plan.steps = [enroll_step, prove_step]
    with pytest.raises(ToolFailed, match="removed again"):
        op.plan.apply()
    after = read_header(Host(), str(luks2_image.path))
    assert (after.keyslots.keys(), after.tokens) == (before.keyslots.keys(), before.tokens)
    assert luks2_image.opens_with(luks2_image.passphrase)
