"""The native backend's FIDO2 token, opened the way boot opens it: systemd-cryptsetup (and
cryptsetup's token plugin) through libfido2 through the kernel's hidraw to the emulated key."""

from __future__ import annotations

import secrets
from pathlib import Path

from tests.conftest import CliCall
from tests.fixtures.fido import TEST_PIN, SimKey
from tests.fixtures.luks import make_image
from tests.vm.conftest import Keys
from tests.vm.support import Mapper, read_through, touches, write_through

ATTACH = "fido2-device=auto,headless=true,token-timeout=10s"


def test_native_token_without_pin_maps_the_volume_only_with_its_key_touched(
    cli: CliCall, sim_key: SimKey, keys: Keys, mapper: Mapper, tmp_path: Path
) -> None:
    key = keys(sim_key("a"))
    image = make_image(tmp_path / "images")
    with touches(key, "yktool luks enroll-fido2 --backend native --no-pin"):
        r = cli(
            "--device",
            key.spec,
            "luks",
            "enroll-fido2",
            image.path,
            "--backend",
            "native",
            "--no-pin",
            "--unlock-key-file",
            image.key_file,
        )
    assert r.exit_code == 0, r.output

    with touches(key, "systemd-cryptsetup attach (FIDO2, no PIN)"):
        a = mapper.attach("vmfido", image.path, ATTACH)
    assert a.returncode == 0, a.stderr
    note = f"written through dm-crypt {secrets.token_hex(8)}"
    write_through("vmfido", tmp_path / "mnt", note)
    mapper.detach("vmfido")

    with touches(key, "cryptsetup open --token-only (FIDO2, no PIN)"):
        o = mapper.open_token("vmfido", image.path)
    assert o.returncode == 0, o.stderr
    assert read_through("vmfido", tmp_path / "mnt") == note
    mapper.detach("vmfido")

    key.control("policy deny")
    with touches(key, "systemd-cryptsetup attach, touch denied"):
        denied = mapper.attach("vmfido", image.path, ATTACH)
    assert denied.returncode != 0
    assert not mapper.mapped("vmfido")
    key.stop()
    assert key.gone()

    other = keys(sim_key("b"))
    with touches(other, "systemd-cryptsetup attach, another key plugged in"):
        wrong = mapper.attach("vmfido", image.path, ATTACH)
    assert wrong.returncode != 0
    assert not mapper.mapped("vmfido")
    assert image.opens_with(image.passphrase)


def test_native_token_with_pin_opens_with_the_pin_and_refuses_a_wrong_one(
    cli: CliCall, sim_key: SimKey, keys: Keys, mapper: Mapper, tmp_path: Path
) -> None:
    key = keys(sim_key("p", pin=TEST_PIN))
    image = make_image(tmp_path / "images")
    with touches(key, "yktool luks enroll-fido2 --backend native --with-pin"):
        r = cli(
            "--device",
            key.spec,
            "luks",
            "enroll-fido2",
            image.path,
            "--backend",
            "native",
            "--with-pin",
            "--pin-stdin",
            "--unlock-key-file",
            image.key_file,
            input=f"{TEST_PIN}\n",
        )
    assert r.exit_code == 0, r.output

    with touches(key, "systemd-cryptsetup attach (FIDO2, wrong PIN)"):
        bad = mapper.attach("vmfidopin", image.path, ATTACH, env={"PIN": "98765"})
    assert bad.returncode != 0
    assert "PIN" in bad.stderr, bad.stderr
    assert not mapper.mapped("vmfidopin")

    # systemd-cryptsetup's first try is without a PIN; then it takes $PIN
    with touches(key, "systemd-cryptsetup attach (FIDO2, PIN from $PIN)"):
        good = mapper.attach("vmfidopin", image.path, ATTACH, env={"PIN": TEST_PIN})
    assert good.returncode == 0, good.stderr
    note = f"written through dm-crypt {secrets.token_hex(8)}"
    write_through("vmfidopin", tmp_path / "mnt", note)
    mapper.detach("vmfidopin")

    with touches(key, "cryptsetup open --token-only (FIDO2, PIN on stdin)"):
        o = mapper.open_token("vmfidopin", image.path, input=f"{TEST_PIN}\n")
    assert o.returncode == 0, o.stderr
    assert read_through("vmfidopin", tmp_path / "mnt") == note
