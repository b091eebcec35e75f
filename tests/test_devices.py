"""Device selection (`open_device`: auto | hid:/dev/hidrawN | sim:PATH, $YKTOOL_DEVICE,
$YKTOOL_SIM_PRESENCE) and USB identities (software key attributes, hidraw sysfs uevent).
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import pytest
from fido2.ctap import CtapDevice, CtapError
from fido2.ctap2.base import Ctap2

from tests.fixtures.fido import SimDevices, SimKey
from yktool.errors import ExitCode, NoDevice, UsageError
from yktool.fido import devices, open_device
from yktool.fido.devices import DeviceEntry, MultipleDevices, list_devices, open_auto, replug
from yktool.fido.identity import UsbIdentity, hidraw_identity, parse_uevent, usb_identity
from yktool.fido.softkey import SoftKey

YUBIKEY_UEVENT = """DRIVER=hid-generic
HID_ID=0003:00001050:00000407
HID_NAME=Yubico YubiKey OTP+FIDO+CCID
HID_PHYS=usb-0000:00:14.0-2/input1
HID_UNIQ=
MODALIAS=hid:b0003g0001v00001050p00000407
"""


def test_sim_spec_creates_a_fresh_key_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "new.json"
    device = open_device(f"sim:{path}")
    assert isinstance(device, SoftKey) and isinstance(device, CtapDevice)
    assert path.exists() and (path.stat().st_mode & 0o777) == 0o600
    assert Ctap2(device).info.options["clientPin"] is False
    # The same path opens the same key (same device id, same serial).
    again = open_device(f"sim:{path}")
    assert isinstance(again, SoftKey) and again.serial_number == device.serial_number


def test_env_yktool_device_is_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YKTOOL_DEVICE", f"sim:{tmp_path / 'env.json'}")
    device = open_device(None)
    assert isinstance(device, SoftKey) and device.path == tmp_path / "env.json"
    # An explicit spec wins over the environment.
    explicit = open_device(f"sim:{tmp_path / 'flag.json'}")
    assert isinstance(explicit, SoftKey) and explicit.path == tmp_path / "flag.json"


@pytest.mark.parametrize("spec", ["usb:/dev/hidraw0", "bogus", "sim", "hid"])
def test_unknown_spec_is_a_usage_error(spec: str) -> None:
    with pytest.raises(UsageError) as err:
        open_device(spec)
    assert err.value.exit_code == ExitCode.USAGE
    assert "sim:PATH" in err.value.hint


def test_sim_in_a_missing_folder_is_a_usage_error_and_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as err:
        open_device(f"sim:{tmp_path / 'nope' / 'k.json'}")
    assert "does not exist" in err.value.message
    assert not (tmp_path / "nope").exists()


def test_malformed_sim_state_is_a_usage_error_and_untouched(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    path.write_text("not a key\n")
    with pytest.raises(UsageError) as err:
        open_device(f"sim:{path}")
    assert "not a software-key state file" in err.value.message
    assert err.value.hint
    assert path.read_text() == "not a key\n"


@pytest.mark.parametrize("node", ["/dev/hidraw-does-not-exist", "/dev/null"])
def test_hid_spec_that_is_not_a_key_is_no_device(node: str) -> None:
    with pytest.raises(NoDevice) as err:
        open_device(f"hid:{node}")
    assert err.value.exit_code == ExitCode.NO_DEVICE
    assert node in err.value.message and err.value.hint


def test_auto_with_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("YKTOOL_DEVICE", raising=False)
    with pytest.raises(NoDevice) as err:
        devices.open_device(None, lister=lambda: [])
    assert err.value.message == "no FIDO2 key found"
    assert err.value.hint == "plug one in, or use --device sim:PATH to rehearse"


def test_auto_on_this_machine_does_not_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real HID enumeration: here (no hidraw keys) that is NoDevice, never a traceback."""
    monkeypatch.delenv("YKTOOL_DEVICE", raising=False)
    try:
        device = open_device("auto")
    except (NoDevice, UsageError):
        return
    device.close()  # a machine with exactly one key plugged in


def test_auto_with_one_key_opens_it(sim_device: SimDevices) -> None:
    only = sim_device("a")
    assert open_auto(lambda: [only]) is only


class Closing(SoftKey):
    closed = 0

    def close(self) -> None:
        Closing.closed += 1


def test_auto_with_several_keys_lists_the_flags_and_closes_them(tmp_path: Path) -> None:
    keys = [Closing(tmp_path / "a.json"), Closing(tmp_path / "b.json")]
    with pytest.raises(MultipleDevices) as err:
        open_auto(lambda: keys)
    assert isinstance(err.value, UsageError) and err.value.exit_code == ExitCode.USAGE
    assert [e.spec for e in err.value.entries] == [f"sim:{k.path}" for k in keys]
    assert err.value.message.startswith("2 FIDO2 keys found")
    for key in keys:
        assert f"--device sim:{key.path}" in err.value.message
    assert "1209:0001" in err.value.message
    for key in keys:  # two keys of one model: the serial tells them apart
        assert f"serial {key.serial_number}" in err.value.message
    assert Closing.closed == 2


def test_list_devices_entries(tmp_path: Path) -> None:
    key = SoftKey(tmp_path / "a.json")
    entries = list_devices(lambda: [key])
    assert entries == [DeviceEntry(f"sim:{key.path}", "yktool software key", 0x1209, 0x0001, key.serial_number)]
    assert entries[0].to_json()["vendor_id"] == "1209"
    assert list_devices(lambda: []) == []


def test_software_key_usb_identity(sim_device: SimDevices) -> None:
    key = sim_device("a")
    ident = usb_identity(key)
    assert ident == UsbIdentity(0x1209, 0x0001, key.serial_number, "yktool software key")
    assert ident.usb_id == "1209:0001"
    assert ident.serial and len(ident.serial) == 12
    assert usb_identity(sim_device("b")).serial != ident.serial


def test_hidraw_identity_from_sysfs_uevent(tmp_path: Path) -> None:
    (tmp_path / "hidraw3" / "device").mkdir(parents=True)
    (tmp_path / "hidraw3" / "device" / "uevent").write_text(YUBIKEY_UEVENT)
    ident = hidraw_identity("/dev/hidraw3", sysfs=tmp_path)
    assert ident == UsbIdentity(0x1050, 0x0407, None, "Yubico YubiKey OTP+FIDO+CCID")
    assert ident.usb_id == "1050:0407"
    with pytest.raises(FileNotFoundError):
        hidraw_identity("/dev/hidraw9", sysfs=tmp_path)


def test_parse_uevent_serial_and_garbage() -> None:
    ident = parse_uevent("HID_ID=0003:0000096E:00000858\nHID_NAME=Feitian\nHID_UNIQ=ABC123\n")
    assert ident == UsbIdentity(0x096E, 0x0858, "ABC123", "Feitian")
    with pytest.raises(ValueError, match="HID_ID"):
        parse_uevent("DRIVER=hid-generic\n")


@pytest.mark.parametrize(
    ("mode", "code"), [("deny", CtapError.ERR.OPERATION_DENIED), ("timeout", CtapError.ERR.USER_ACTION_TIMEOUT)]
)
def test_sim_presence_env_rehearses_refusals(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str, code: CtapError.ERR
) -> None:
    monkeypatch.setenv("YKTOOL_SIM_PRESENCE", mode)
    ctap = Ctap2(open_device(f"sim:{tmp_path / 'k.json'}"))
    with pytest.raises(CtapError) as err:
        ctap.make_credential(b"\0" * 32, {"id": "x"}, {"id": b"u"}, [{"type": "public-key", "alg": -7}])
    assert err.value.code == code


def test_sim_presence_env_bad_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YKTOOL_SIM_PRESENCE", "maybe")
    with pytest.raises(UsageError, match="YKTOOL_SIM_PRESENCE"):
        open_device(f"sim:{tmp_path / 'k.json'}")
    assert not (tmp_path / "k.json").exists()


def test_replug_helper(sim_key: SimKey, tmp_path: Path) -> None:
    spec = sim_key("a")
    replug(spec)  # works on a software key
    with pytest.raises(UsageError, match="only a software key"):
        replug("hid:/dev/hidraw0")
    with pytest.raises(UsageError):
        replug(f"sim:{tmp_path / 'missing.json'}")  # replug does not invent a key
    assert not (tmp_path / "missing.json").exists()


def test_stale_hid_reports_another_program_caused_are_dropped_before_our_next_call() -> None:
    """hidraw hands each input report to every open handle: what libfido2's conversation left on
    ours is read away (without blocking), so python-fido2 does not take it for a broken channel."""
    import os
    from types import SimpleNamespace

    r, w = os.pipe()
    try:
        for _ in range(3):
            os.write(w, b"\x01" * 64)
        # a stand-in with only what discard_stale_reports reads: the connection's handle, report size
        device = cast(
            CtapDevice,
            SimpleNamespace(_connection=SimpleNamespace(handle=r, descriptor=SimpleNamespace(report_size_in=64))),
        )
        assert devices.discard_stale_reports(device) == 3
        assert devices.discard_stale_reports(device) == 0
        assert os.get_blocking(r)  # the handle blocks again for python-fido2's reads
    finally:
        os.close(r)
        os.close(w)


def test_a_software_key_has_no_stale_reports(sim_device: SimDevices) -> None:
    assert devices.discard_stale_reports(sim_device("a")) == 0
