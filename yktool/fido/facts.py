"""What a key is: the facts `yktool key info` / `key list` show, gathered once, rendered twice.

The JSON field names here are a stable interface for scripts (documented in docs/keys.md):
device, path, product, software, aaguid, versions, extensions, algorithms, options,
pin_protocols, pin_set, pin_retries, pin_needs_replug, min_pin_length, usb_id, usb_serial,
yubikey, notes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fido2.ctap import CtapDevice

from yktool.fido.session import KeySession
from yktool.fido.yubikey import UNKNOWN, YubiKeyFacts, is_yubikey, read_facts


def is_software_key(device: CtapDevice) -> bool:
    """True for yktool's own software authenticator (the `sim:PATH` device)."""
    # The software key is the only device with replug(): the stand-in for pulling it out.
    return callable(getattr(device, "replug", None))


def device_path(device: CtapDevice, spec: str | None) -> str:
    """The device node of a HID key, or the state file of a software key."""
    descriptor = getattr(device, "descriptor", None)
    path = getattr(descriptor, "path", None)
    if isinstance(path, bytes):
        return path.decode("utf-8", "replace")
    if isinstance(path, str):
        return path
    for attr in ("path", "state_path"):
        value = getattr(device, attr, None)
        if value is not None:
            return str(value)
    if spec and ":" in spec:
        return spec.split(":", 1)[1]
    return spec or ""


def device_spec(device: CtapDevice, spec: str | None) -> str:
    """The `--device` value that names this key again."""
    if spec and spec != "auto":
        return spec
    path = device_path(device, spec)
    return f"sim:{path}" if is_software_key(device) else f"hid:{path}"


EMULATED_USB_ID = "1209:0001"  # the software key's own USB identity (softkey.VENDOR_ID/PRODUCT_ID)
EMULATED_AAGUID = "e2f16795-c25f-41b2-80fb-83acaa153d87"  # softkey.AAGUID


def product_name(device: CtapDevice) -> str:
    """What the key calls itself (the USB product string)."""
    for holder in (device, getattr(device, "descriptor", None)):
        name = getattr(holder, "product_name", None)
        if isinstance(name, str) and name:
            return name
    if is_software_key(device):
        return "yktool software key"
    return "unknown"


@dataclass
class KeyFacts:
    device: str
    path: str
    product: str
    software: bool
    aaguid: str
    versions: list[str]
    extensions: list[str]
    algorithms: list[str]
    options: dict[str, bool]
    pin_protocols: list[int]
    pin_set: bool
    pin_retries: int | None
    pin_needs_replug: bool | None
    min_pin_length: int
    usb_id: str | None = None
    usb_serial: str | None = None
    yubikey: YubiKeyFacts | None = None
    is_yubikey: bool = False
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The stable JSON shape of `yktool key info --json` (one element of `key list --json`)."""
        return {
            "device": self.device,
            "path": self.path,
            "product": self.product,
            "software": self.software,
            "aaguid": self.aaguid,
            "versions": self.versions,
            "extensions": self.extensions,
            "algorithms": self.algorithms,
            "options": self.options,
            "pin_protocols": self.pin_protocols,
            "pin_set": self.pin_set,
            "pin_retries": self.pin_retries,
            "pin_needs_replug": self.pin_needs_replug,
            "min_pin_length": self.min_pin_length,
            "usb_id": self.usb_id,
            "usb_serial": self.usb_serial,
            "yubikey": (
                self.yubikey.to_json()
                if self.yubikey
                else ({"serial": None, "firmware": None, "form_factor": None} if self.is_yubikey else None)
            ),
            "notes": self.notes,
        }

    def render(self) -> str:
        """The human-readable block of `yktool key info`."""
        kind = "software key (yktool's simulated authenticator; no hardware)" if self.software else "hardware key"
        if not self.software and self.usb_id == EMULATED_USB_ID and self.aaguid == EMULATED_AAGUID:
            kind = "software key plugged in over USB-HID (yktool key emulate; no hardware)"
        rows: list[tuple[str, str]] = [
            ("device", self.device),
            ("path", self.path),
            ("product", self.product),
            ("kind", kind),
            ("AAGUID", self.aaguid),
            ("CTAP versions", ", ".join(self.versions) or "none listed"),
            ("extensions", ", ".join(self.extensions) or "none"),
            ("algorithms", ", ".join(self.algorithms)),
            ("options", ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in sorted(self.options.items()))),
            ("PIN protocols", ", ".join(str(p) for p in self.pin_protocols) or "none"),
            ("PIN", "set" if self.pin_set else "not set"),
        ]
        if self.pin_retries is not None:
            left = f"{self.pin_retries} of 8" if self.pin_retries <= 8 else str(self.pin_retries)
            rows.append(("PIN retries left", left))
        if self.pin_needs_replug:
            rows.append(("PIN entry", "blocked until the key is removed and re-inserted"))
        rows.append(("min PIN length", str(self.min_pin_length)))
        if self.usb_id:
            rows.append(("USB id", self.usb_id + (f" serial {self.usb_serial}" if self.usb_serial else "")))
        if self.is_yubikey:
            yk = self.yubikey
            rows.append(("serial", str(yk.serial) if yk and yk.serial is not None else UNKNOWN))
            rows.append(("firmware", yk.firmware if yk and yk.firmware else UNKNOWN))
            rows.append(("form factor", yk.form_factor if yk and yk.form_factor else UNKNOWN))
        width = max(len(k) for k, _ in rows)
        lines = [f"{k.ljust(width)}  {v}" for k, v in rows]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def read_key_facts(session: KeySession, spec: str | None) -> KeyFacts:
    """Gather the facts of the key behind `session` (no PIN, no touch)."""
    device = session.device
    info = session.info
    retries: int | None = None
    replug: bool | None = None
    notes: list[str] = []
    if info.pin_uv_protocols and "clientPin" in info.options:
        try:
            from fido2.ctap2.pin import ClientPin

            proto = 2 if 2 in info.pin_uv_protocols else 1
            resp = session.ctap.client_pin(proto, ClientPin.CMD.GET_PIN_RETRIES)
            retries = int(resp[ClientPin.RESULT.PIN_RETRIES])
            state = resp.get(ClientPin.RESULT.POWER_CYCLE_STATE)
            replug = bool(state) if state is not None else None
        except Exception as exc:  # noqa: BLE001 - a fact we can't read is said, not fatal
            notes.append(f"could not read the PIN retries: {exc}")
    usb_id = usb_serial = None
    try:
        from yktool.fido.identity import usb_identity

        ident = usb_identity(device)
        usb_id, usb_serial = ident.usb_id, ident.serial
    except (OSError, ValueError):
        notes.append("the USB identity (vendor:product, serial) could not be read")
    yubikey = is_yubikey(device)
    yk_facts = read_facts(device) if yubikey else None
    if yubikey and yk_facts is None:
        notes.append("serial, firmware and form factor: unknown (yubikey-manager could not read them)")
    return KeyFacts(
        device=device_spec(device, spec),
        path=device_path(device, spec),
        product=product_name(device),
        software=is_software_key(device),
        aaguid=session.aaguid,
        versions=list(info.versions),
        extensions=list(info.extensions),
        algorithms=session.algorithm_names(),
        options=dict(info.options),
        pin_protocols=list(info.pin_uv_protocols),
        pin_set=session.pin_is_set,
        pin_retries=retries,
        pin_needs_replug=replug,
        min_pin_length=session.min_pin_length,
        usb_id=usb_id,
        usb_serial=usb_serial,
        yubikey=yk_facts,
        is_yubikey=yubikey,
        notes=notes,
    )


def list_present_keys(spec: str | None) -> tuple[list[KeyFacts], list[str]]:
    """Facts of every key present (HID), or of the one key `spec` names when it is not `auto`;
    and one line for each key present that could not be read (listing goes on without it)."""
    from yktool.errors import YktoolError
    from yktool.fido import open_device

    if spec and spec != "auto":
        devices = [open_device(spec)]
        specs: list[str | None] = [spec]
    else:
        from yktool.fido import devices as hid

        devices = hid.present_hid_keys()
        specs = [None] * len(devices)
    out: list[KeyFacts] = []
    problems: list[str] = []
    for device, one_spec in zip(devices, specs, strict=True):
        try:
            out.append(read_key_facts(KeySession(device), one_spec))
        except YktoolError as err:
            if one_spec is not None:
                raise
            problems.append(f"{device_spec(device, None)}: {err.message}")
        finally:
            close = getattr(device, "close", None)
            if callable(close):
                close()
    return out, problems
