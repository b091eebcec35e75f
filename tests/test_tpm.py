"""`yktool tpm status`, the swtpm product feature, and the PCR policy arithmetic, on a real swtpm."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import CliCall
from tests.fixtures.tpm import SoftTpm
from yktool import swtpm
from yktool.errors import NoDevice, UsageError
from yktool.host import Host
from yktool.tpm import EFI_GLOBAL_GUID, parse_pcrs, parse_tcti, pcr_policy_digest, read_info


def test_status_of_a_fresh_tpm_says_pcr7_unmeasured(cli: CliCall, soft_tpm: SoftTpm) -> None:
    r = cli("--tpm", soft_tpm.tcti, "--json", "tpm", "status")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["present"] is True
    assert data["manufacturer"] == "IBM"  # swtpm reports IBM's libtpms
    assert "sha256" in data["banks"]
    assert data["pcrs"]["7"] == "00" * 32
    assert data["pcr7_unmeasured"] is True
    text = cli("--tpm", soft_tpm.tcti, "tpm", "status")
    assert "PCR 7 is all zero" in text.stdout


def test_status_after_measured_boot_shows_the_values(cli: CliCall, measured_tpm: SoftTpm) -> None:
    r = cli("--tpm", measured_tpm.tcti, "--json", "tpm", "status", "--pcrs", "0+2+7")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    values = measured_tpm.pcrs(0, 2, 7)
    assert data["pcrs"] == {str(k): v.hex() for k, v in values.items()}
    assert data["pcr7_unmeasured"] is False
    assert data["pcrs"]["2"] == "00" * 32  # not measured by the simulation


def test_reboot_resets_pcrs(measured_tpm: SoftTpm) -> None:
    assert any(measured_tpm.pcrs(7)[7])
    measured_tpm.reboot()
    assert measured_tpm.pcrs(0, 7) == {0: bytes(32), 7: bytes(32)}
    measured_tpm.measure_boot()  # the same firmware measures the same values again
    assert any(measured_tpm.pcrs(7)[7])


def test_secure_boot_read_from_efivars_under_root(cli: CliCall, soft_tpm: SoftTpm, root: Path) -> None:
    efivars = root / "sys/firmware/efi/efivars"
    efivars.mkdir(parents=True)
    (efivars / f"SecureBoot-{EFI_GLOBAL_GUID}").write_bytes(b"\x06\x00\x00\x00\x01")
    (efivars / f"SetupMode-{EFI_GLOBAL_GUID}").write_bytes(b"\x06\x00\x00\x00\x00")
    r = cli("--root", root, "--tpm", soft_tpm.tcti, "--json", "tpm", "status")
    assert json.loads(r.stdout)["secure_boot"] == {"uefi": True, "enabled": True, "setup_mode": False}
    (efivars / f"SecureBoot-{EFI_GLOBAL_GUID}").write_bytes(b"\x06\x00\x00\x00\x00")
    r = cli("--root", root, "--tpm", soft_tpm.tcti, "tpm", "status")
    assert "Secure Boot    disabled" in r.stdout


def test_no_tpm_at_the_tcti_is_exit_3_with_a_hint(cli: CliCall) -> None:
    port = swtpm.free_port_pair()  # nothing listens there
    r = cli("--tpm", f"swtpm:host=127.0.0.1,port={port}", "tpm", "status")
    assert r.exit_code == 3
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith("yktool: error: no TPM at swtpm:host=127.0.0.1")
    assert lines[1].startswith("  hint: start the TPM")


@pytest.mark.parametrize("bad", ["7;rm", "0+99", "x", "0++7", ""])
def test_pcr_list_garbage_is_a_usage_error(cli: CliCall, soft_tpm: SoftTpm, bad: str) -> None:
    r = cli("--tpm", soft_tpm.tcti, "tpm", "status", "--pcrs", bad)
    assert r.exit_code == 2
    assert "PCR list" in r.stderr and "hint: give PCR numbers 0-23" in r.stderr


def test_garbage_tcti_is_a_usage_error(cli: CliCall) -> None:
    r = cli("--tpm", "swtpm:port=abc", "tpm", "status")
    assert r.exit_code == 2 and "hint:" in r.stderr


def test_parse_pcrs_and_tcti() -> None:
    assert parse_pcrs("7+0") == [0, 7]
    assert parse_pcrs("0,7,7") == [0, 7]
    with pytest.raises(UsageError):
        parse_pcrs("24")
    assert parse_tcti("auto").systemd_device == "auto"
    assert parse_tcti("swtpm:host=127.0.0.1,port=2321").direct
    assert not parse_tcti("auto").direct


def test_swtpm_start_is_idempotent_and_stop_ends_it(tmp_path: Path) -> None:
    host = Host()
    first = swtpm.start(host, str(tmp_path / "st"))
    try:
        again = swtpm.start(host, str(tmp_path / "st"))
        assert (again.pid, again.port) == (first.pid, first.port)
        assert read_info(first.tcti).manufacturer == "IBM"
    finally:
        assert swtpm.stop(first)
    assert not first.alive()
    with pytest.raises(NoDevice):
        read_info(first.tcti)


def test_policy_digest_is_sensitive_to_every_input() -> None:
    values = {0: bytes(32), 7: b"\x01" * 32}
    base = pcr_policy_digest("sha256", values)
    assert pcr_policy_digest("sha256", values, with_pin=True) != base
    assert pcr_policy_digest("sha256", {0: bytes(32), 7: b"\x02" * 32}) != base
    assert pcr_policy_digest("sha256", {7: b"\x01" * 32}) != base
