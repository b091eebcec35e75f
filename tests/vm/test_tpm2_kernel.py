"""TPM2 through the kernel: no --tpm (the default TCTI is /dev/tpmrm0, swtpm as the VM's chip),
and the volume mapped by systemd-cryptsetup as at boot.

yktool runs in-process (the `cli` fixture: the real CLI code, without a 6 s interpreter start
per call under TCG); systemd-cryptenroll, libcryptsetup and systemd-cryptsetup are the real ones.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from pathlib import Path

from tests.conftest import CliCall
from tests.fixtures.luks import LuksImage, make_image
from tests.vm.support import TPM, Mapper, read_through, run, write_through

ATTACH = "tpm2-device=auto,headless=true"


def pcr(index: int) -> str:
    out = run(["tpm2_pcrread", "-T", TPM, f"sha256:{index}"], check=True).stdout
    return out.strip().rsplit(":", 1)[1].strip().lower().removeprefix("0x")


def enrolled(cli: CliCall, tmp_path: Path, *extra: str, input: str | None = None) -> LuksImage:
    image = make_image(tmp_path / "images")
    r = cli(
        "luks", "enroll-tpm2", image.path, "--pcrs", "0+7", "--unlock-key-file", image.key_file, *extra, input=input
    )
    assert r.exit_code == 0, r.output
    return image


def test_tpm_status_reads_the_kernel_tpm_by_default(cli: CliCall) -> None:
    r = cli("--json", "tpm", "status")
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["present"] is True
    assert "/dev/tpmrm0" in info["tcti"]
    # the same PCR 7 the kernel's TPM gives tpm2-tools
    assert info["pcrs"]["7"] == pcr(7)


def test_tpm2_token_maps_the_volume_at_boot_until_pcr7_changes(cli: CliCall, tmp_path: Path, mapper: Mapper) -> None:
    """One volume's life (one image: each enrollment and attach costs seconds under TCG)."""
    image = enrolled(cli, tmp_path)
    r = cli("luks", "test-unlock", image.path)
    assert r.exit_code == 0, r.output
    assert "opens" in r.stdout

    # what boot runs maps it; what was written through the mapping is there after a fresh attach
    r1 = mapper.attach("vmtpm", image.path, ATTACH)
    assert r1.returncode == 0, r1.stderr
    assert mapper.mapped("vmtpm")
    note = f"written through dm-crypt {secrets.token_hex(8)}"
    write_through("vmtpm", tmp_path / "mnt", note)
    mapper.detach("vmtpm")
    r2 = mapper.attach("vmtpm", image.path, ATTACH)
    assert r2.returncode == 0, r2.stderr
    assert read_through("vmtpm", tmp_path / "mnt") == note
    mapper.detach("vmtpm")

    # what a Secure Boot db update does to PCR 7 (so until the VM reboots: every other test
    # enrolls against the PCRs as they are then)
    before = image.header_digest()
    run(["tpm2_pcrextend", "-T", TPM, f"7:sha256={hashlib.sha256(b'a new Secure Boot db').hexdigest()}"], check=True)
    refused = mapper.attach("vmtpm", image.path, ATTACH)
    assert refused.returncode != 0
    assert not mapper.mapped("vmtpm")
    r = cli("luks", "test-unlock", image.path)
    assert r.exit_code == 1, r.output
    assert "PCR policy no longer matches" in r.stdout
    assert image.header_digest() == before  # refusing and testing changed nothing

    r = cli("luks", "enroll-tpm2", image.path, "--pcrs", "0+7", "--unlock-key-file", image.key_file, "--replace")
    assert r.exit_code == 0, r.output
    opened = mapper.attach("vmtpm", image.path, ATTACH)
    assert opened.returncode == 0, opened.stderr
    assert read_through("vmtpm", tmp_path / "mnt") == note
    assert image.opens_with(image.passphrase)  # the passphrase is still a way in


def test_tpm2_pin_token_opens_with_the_pin_only(cli: CliCall, tmp_path: Path, mapper: Mapper) -> None:
    image = enrolled(cli, tmp_path, "--with-pin", input="4711\n")
    assert cli("luks", "test-unlock", image.path, "--pin-stdin", input="4711\n").exit_code == 0

    wrong = cli("luks", "test-unlock", image.path, "--pin-stdin", input="0000\n")
    assert wrong.exit_code == 6, wrong.output
    assert "PIN wrong" in wrong.stdout

    bad = mapper.attach("vmtpmpin", image.path, ATTACH, env={"PIN": "0000"})
    assert bad.returncode != 0
    assert not mapper.mapped("vmtpmpin")

    good = mapper.attach("vmtpmpin", image.path, ATTACH, env={"PIN": "4711"})
    assert good.returncode == 0, good.stderr
    assert mapper.mapped("vmtpmpin")
