"""The systemd backend for real: `yktool luks enroll-fido2 --backend systemd` runs
systemd-cryptenroll --fido2-device against the emulated key over hidraw."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import CliCall
from tests.fixtures.fido import SimKey
from tests.fixtures.luks import make_image
from tests.vm.conftest import Keys
from tests.vm.support import Mapper, touches

ATTACH = "fido2-device=auto,headless=true,token-timeout=10s"


def test_systemd_backend_enrolls_with_systemd_cryptenroll_and_systemd_opens_it(
    cli: CliCall, sim_key: SimKey, keys: Keys, mapper: Mapper, tmp_path: Path
) -> None:
    key = keys(sim_key("s"))
    image = make_image(tmp_path / "images")
    with touches(key, "yktool luks enroll-fido2 --backend systemd (systemd-cryptenroll)"):
        r = cli(
            "--device",
            key.spec,
            "luks",
            "enroll-fido2",
            image.path,
            "--backend",
            "systemd",
            "--no-pin",
            "--nickname",
            "desk-key",
            "--unlock-key-file",
            image.key_file,
        )
    assert r.exit_code == 0, r.output

    with touches(key, "systemd-cryptsetup attach (systemd-enrolled token)"):
        a = mapper.attach("vmfidosd", image.path, ATTACH)
    assert a.returncode == 0, a.stderr
    mapper.detach("vmfidosd")

    with touches(key, "yktool luks status (silent probe)"):
        status = cli("--device", key.spec, "luks", "status", image.path)
    assert status.exit_code == 0, status.output
    key_lines = [line for line in status.stdout.splitlines() if line.strip().startswith("key:")]
    assert key_lines and "desk-key" in key_lines[0], status.stdout
