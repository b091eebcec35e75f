"""Device selection: `auto | hid:/dev/hidrawN | sim:PATH` -> a python-fido2 `CtapDevice`.

- `sim:PATH`: yktool's software key (`yktool.fido.softkey.SoftKey`), its state in PATH
  (created, factory-fresh, when missing). `YKTOOL_SIM_PRESENCE=deny|timeout` makes it refuse
  or time out every touch, to rehearse those failures from the command line.
- `hid:/dev/hidrawN`: that USB key, through python-fido2's HID transport; a bare `/dev/hidrawN`
  means the same.
- a YubiKey's serial (the number printed on it, e.g. `12345678`): the YubiKey yubikey-manager
  finds with that serial, as `hid:` of its FIDO interface.
- `auto`: the only FIDO2 key present; none -> NoDevice, several -> UsageError listing the
  `--device hid:…` value of each.

With no spec, `$YKTOOL_DEVICE` is used, else `auto`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from yktool.errors import NoDevice, PermissionDenied, UsageError

if TYPE_CHECKING:
    from fido2.ctap import CtapDevice
    from fido2.hid import CtapHidDevice

    from yktool.fido.softkey import Presence, SoftKey

ENV_DEVICE = "YKTOOL_DEVICE"
ENV_SIM_PRESENCE = "YKTOOL_SIM_PRESENCE"
SPEC_HELP = "auto, hid:/dev/hidrawN (or /dev/hidrawN), a YubiKey serial, or sim:PATH"


@dataclass(frozen=True)
class DeviceEntry:
    """One key present: the `--device` value naming it, its product name and USB ids."""

    spec: str
    product: str
    vendor_id: int
    product_id: int
    serial: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "device": self.spec,
            "product": self.product,
            "vendor_id": f"{self.vendor_id:04x}",
            "product_id": f"{self.product_id:04x}",
            "serial": self.serial,
        }


class MultipleDevices(UsageError):
    """Several keys are present and `auto` cannot choose; `entries` lists them, so that an
    interactive front end can ask which one (the library never prompts)."""

    def __init__(self, entries: list[DeviceEntry]) -> None:
        self.entries = entries
        lines = [
            f"--device {e.spec} ({e.product}, {e.vendor_id:04x}:{e.product_id:04x}"
            f"{f', serial {e.serial}' if e.serial else ''})"
            for e in entries
        ]
        super().__init__(
            f"{len(entries)} FIDO2 keys found; say which one: " + "; ".join(lines),
            "pass one of the --device values above (or set YKTOOL_DEVICE)",
        )


def resolve_spec(spec: str | None) -> str:
    """The spec to use: the given one, else $YKTOOL_DEVICE, else `auto`; a bare /dev/hidrawN or a
    YubiKey serial become the `hid:` spec of that key."""
    spec = spec or os.environ.get(ENV_DEVICE) or "auto"
    if spec.startswith("/dev/"):
        return f"hid:{spec}"
    if spec.isdigit():
        return f"hid:{hidraw_for_serial(int(spec))}"
    return spec


SerialLister = Callable[[], Iterable[tuple[str, int | None]]]


def yubikey_fido_paths() -> list[tuple[str, int | None]]:
    """(hidraw path of its FIDO interface, serial) of each YubiKey yubikey-manager finds."""
    from ykman.device import list_all_devices
    from yubikit.core.fido import FidoConnection

    out = []
    for device, info in list_all_devices([FidoConnection]):  # FIDO only: no pcscd needed
        path = device.fingerprint  # ykman's FIDO devices are told apart by their hidraw path
        out.append((path.decode() if isinstance(path, bytes) else str(path), info.serial))
    return out


def hidraw_for_serial(serial: int, lister: SerialLister | None = None) -> str:
    """The hidraw node of the YubiKey with this serial (NoDevice when none has it)."""
    found = list((lister or yubikey_fido_paths)())
    for path, their_serial in found:
        if their_serial == serial:
            return path
    seen = ", ".join(str(s) for _, s in found if s is not None) or "none"
    raise NoDevice(
        f"no YubiKey with serial {serial} found (serials present: {seen})",
        "check the number printed on the key, or see `yktool key list`",
    )


def sim_presence_from_env() -> Presence | None:
    """The touch behaviour $YKTOOL_SIM_PRESENCE asks for (unset: touch at once)."""
    mode = os.environ.get(ENV_SIM_PRESENCE, "").strip().lower()
    if mode in ("", "touch", "yes"):
        return None
    if mode == "deny":
        return lambda: False
    if mode == "timeout":
        return lambda: None
    raise UsageError(
        f"{ENV_SIM_PRESENCE}={mode!r} is not understood", f"set {ENV_SIM_PRESENCE} to deny or timeout, or unset it"
    )


def open_sim(path: str | Path, presence: Presence | None = None, *, create: bool = True) -> SoftKey:
    """Open (or create) the software key whose state is at `path`."""
    from yktool.fido.softkey import SoftKey
    from yktool.fido.softkey.state import StateError

    p = Path(path).expanduser()
    if not str(path):
        raise UsageError("`sim:` needs a path", "use --device sim:PATH, e.g. sim:~/.cache/yktool/key-a.json")
    if not p.parent.is_dir():
        raise UsageError(
            f"the folder of the software-key state {p} does not exist",
            "create the folder first, or choose another PATH for --device sim:PATH",
        )
    try:
        return SoftKey(p, presence if presence is not None else sim_presence_from_env(), create=create)
    except StateError as e:
        raise UsageError(
            f"cannot use software key {p}: {e}",
            "point --device sim:PATH at a state file yktool made, or at a new path to create a fresh key",
        ) from None
    except PermissionError:
        raise PermissionDenied(
            f"{p}: permission denied", "run as the user who made the software key, or give a --device sim:PATH you own"
        ) from None
    except OSError as e:
        raise UsageError(
            f"cannot use software key {p}: {e.strerror or e}", "check the path and its permissions"
        ) from None


def open_hid(path: str) -> CtapHidDevice:
    """Open the USB key at a hidraw node."""
    from fido2.hid import open_device as hid_open

    if not path:
        raise UsageError("`hid:` needs a device node", "use --device hid:/dev/hidrawN (see `yktool key list`)")
    try:
        return hid_open(path)
    except FileNotFoundError:
        raise NoDevice(f"no key at {path}", "check `yktool key list` for the keys present") from None
    except PermissionError:
        raise PermissionDenied(
            f"{path}: permission denied", "run as root, or give your user access to the key (udev uaccess rule)"
        ) from None
    except Exception as e:  # noqa: BLE001 - not a FIDO device / descriptor unreadable, many kinds
        raise NoDevice(
            f"{path} is not a usable FIDO2 key ({type(e).__name__}: {e})",
            "check `yktool key list` for the keys present",
        ) from None


def discard_stale_reports(device: CtapDevice) -> int:
    """Drop the input reports queued on our hidraw handle while another program (libfido2 in
    systemd-cryptenroll, ssh-keygen) talked to the key; how many.

    hidraw gives every input report to every open handle, and python-fido2 takes a leftover
    report of another channel for a broken connection ("Wrong channel"). Not a HID key: 0.
    """
    connection = getattr(device, "_connection", None)
    handle = getattr(connection, "handle", None)
    if not isinstance(handle, int):
        return 0
    size = getattr(getattr(connection, "descriptor", None), "report_size_in", 64)
    dropped = 0
    os.set_blocking(handle, False)
    try:
        while True:
            try:
                if not os.read(handle, size):
                    break
            except BlockingIOError:
                break
            dropped += 1
    finally:
        os.set_blocking(handle, True)
    return dropped


HidLister = Callable[[], Iterable["CtapDevice"]]


def present_hid_keys() -> list[CtapDevice]:
    """Every FIDO HID key the system shows, opened (none where there is no hidraw, e.g. in a
    container). Looked up at call time, so a test can stand in for the enumeration."""
    try:
        from fido2.hid import CtapHidDevice

        return list(CtapHidDevice.list_devices())
    except OSError:  # no hidraw at all (containers): simply no keys
        return []


def hid_spec(device: CtapDevice) -> str:
    """The `--device hid:…` value of a HID device."""
    descriptor = getattr(device, "descriptor", None)
    path = getattr(descriptor, "path", "")
    if isinstance(path, bytes):
        path = path.decode("utf-8", "replace")
    return f"hid:{path}"


def entry_for(device: CtapDevice, spec: str | None = None) -> DeviceEntry:
    """A DeviceEntry for an open device (HID or software key)."""
    from yktool.fido.identity import usb_identity

    ident = usb_identity(device)
    if spec is None:
        path = getattr(device, "path", None)
        spec = f"sim:{path}" if path is not None and hasattr(device, "replug") else hid_spec(device)
    return DeviceEntry(spec, ident.name, ident.vendor, ident.product, ident.serial)


def list_devices(lister: HidLister | None = None) -> list[DeviceEntry]:
    """Every FIDO2 USB key present (software keys are not discoverable: name them by path)."""
    entries = []
    for device in (lister or present_hid_keys)():
        try:
            entries.append(entry_for(device))
        finally:
            device.close()
    return entries


def open_auto(lister: HidLister | None = None) -> CtapDevice:
    """The only key present; NoDevice with none, MultipleDevices (a UsageError listing the
    `--device` value of each) with several."""
    devices = list((lister or present_hid_keys)())
    if not devices:
        raise NoDevice("no FIDO2 key found", "plug one in, or use --device sim:PATH to rehearse")
    if len(devices) == 1:
        return devices[0]
    try:
        entries = [entry_for(device) for device in devices]
    finally:
        for device in devices:
            device.close()
    raise MultipleDevices(entries)


def open_device(spec: str | None = None, *, lister: HidLister | None = None) -> CtapDevice:
    """Open the key named by `spec` (default: $YKTOOL_DEVICE, else `auto`).

    `lister` replaces the HID enumeration for `auto` (tests; other transports)."""
    spec = resolve_spec(spec)
    if spec == "auto":
        return open_auto(lister)
    kind, sep, rest = spec.partition(":")
    if sep and kind == "sim":
        return open_sim(rest)
    if sep and kind == "hid":
        return open_hid(rest)
    raise UsageError(f"unknown device {spec!r}", f"use --device {SPEC_HELP}")


def replug(spec: str) -> None:
    """Pull the software key at `sim:PATH` out and put it back (clears the 3-wrong-PINs block,
    opens the reset window). Real keys have to be replugged by hand."""
    kind, sep, rest = resolve_spec(spec).partition(":")
    if kind != "sim" or not sep:
        raise UsageError(
            "only a software key (--device sim:PATH) can be replugged by yktool", "pull the key out and put it back in"
        )
    open_sim(rest, create=False).replug()
