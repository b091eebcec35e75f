"""The software key as a USB-HID FIDO2 device: what libfido2, python-fido2's HID client and
yktool's own `--device auto` see through the kernel's hidraw."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.conftest import CliCall
from tests.fixtures.fido import SimKey
from tests.vm.support import run
from yktool.fido.emulate_process import emulated_key


def test_the_emulated_key_is_a_fido2_device_to_libfido2_python_fido2_and_yktool(
    cli: CliCall, sim_key: SimKey, tmp_path: Path
) -> None:
    state = Path(sim_key("a").removeprefix("sim:"))
    # as a person runs it: `yktool --json key emulate --device sim:PATH` (its own interpreter)
    with emulated_key(state, yktool=[sys.executable, "-m", "yktool"], timeout=300) as key:
        assert (str(key.info["vendor_id"]), str(key.info["product_id"])) == ("1209", "0001"), key.info

        listed = run(["fido2-token", "-L"], check=True).stdout
        assert key.hidraw in listed

        facts = run(["fido2-token", "-I", key.hidraw], check=True).stdout
        assert "FIDO_2_1" in facts or "FIDO_2_0" in facts
        assert "hmac-secret" in facts and "credProtect" in facts
        assert "aaguid:" in facts and "options:" in facts
        aaguid = facts.split("aaguid:", 1)[1].split()[0]

        from fido2.ctap2.base import Ctap2
        from fido2.hid import CtapHidDevice

        found = [d for d in CtapHidDevice.list_devices() if d.descriptor.path == key.hidraw]
        assert len(found) == 1
        with found[0] as device:
            info = Ctap2(device).get_info()
        assert info.aaguid.hex() == aaguid.replace("-", "").lower()
        assert "hmac-secret" in info.extensions

        r = cli("--json", "--device", "auto", "key", "info")
        assert r.exit_code == 0, r.output
        seen = json.loads(r.stdout)
        assert str(seen.get("aaguid", "")).replace("-", "").lower() == aaguid.replace("-", "").lower(), seen
    # left: SIGTERM, unplugged (UHID_DESTROY), exit status 0 checked by emulated_key
    assert not Path(key.hidraw).exists()
