"""The TPM2: presence, identity, PCR banks and values, PCR policy digests, Secure Boot state.

A TPM is named by a TCTI string (`--tpm`): `auto` (the kernel's resource manager, /dev/tpmrm0),
`device:/dev/tpm0`, or `swtpm:host=127.0.0.1,port=2321` (a software TPM). tpm2-pytss is imported
only inside the functions that talk to a TPM, so commands that never touch one start fast.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from yktool.errors import NoDevice, ToolFailed, UsageError
from yktool.host import Host

if TYPE_CHECKING:
    from tpm2_pytss import ESAPI

DEFAULT_TPM_DEVICE = "/dev/tpmrm0"
EFI_GLOBAL_GUID = "8be4df61-93ca-11d2-aa0d-00e098032b8c"
EFIVARS = PurePosixPath("/sys/firmware/efi/efivars")

# TPM_ALG_ID of each PCR bank, and the hash that goes with it
BANK_ALGS: dict[str, int] = {"sha1": 0x0004, "sha256": 0x000B, "sha384": 0x000C, "sha512": 0x000D, "sm3_256": 0x0012}
TPM_CC_POLICY_PCR = 0x0000017F
TPM_CC_POLICY_AUTH_VALUE = 0x0000016B

PCR0_WARNING = (
    "PCR 0 measures the firmware itself: a firmware (BIOS/UEFI) update changes it and the TPM will "
    "refuse to unseal. Before a firmware update, make sure you have the recovery key or passphrase, "
    "and run `yktool luks enroll-tpm2 --replace` after it."
)


@dataclass(frozen=True)
class Tcti:
    """A parsed TCTI string: the tpm2-tss library name and its configuration."""

    spec: str
    name: str
    conf: str

    @property
    def direct(self) -> bool:
        """True when no resource manager sits in front (swtpm, mssim, /dev/tpm0): sessions and
        transient objects left behind by a tool stay loaded until someone flushes them."""
        if self.name in ("swtpm", "mssim"):
            return True
        return self.name == "device" and "tpmrm" not in self.conf

    @property
    def systemd_device(self) -> str:
        """The value for systemd's `--tpm2-device=` (the same TCTI, or a device path)."""
        if self.spec == "auto":
            return "auto"
        if self.name == "device":
            return self.conf
        return f"{self.name}:{self.conf}"

    def __str__(self) -> str:
        return f"auto ({self.conf})" if self.spec == "auto" else f"{self.name}:{self.conf}"


_TCTI_RE = re.compile(r"^(?P<name>device|swtpm|mssim|tabrmd|libtpms)(?::(?P<conf>.*))?$")


def parse_tcti(spec: str) -> Tcti:
    """Parse `--tpm`: `auto`, a device path, or `NAME:CONF` (device, swtpm, mssim, tabrmd)."""
    spec = spec.strip()
    if spec in ("", "auto"):
        return Tcti("auto", "device", DEFAULT_TPM_DEVICE)
    if spec.startswith("/dev/"):
        return Tcti(spec, "device", spec)
    match = _TCTI_RE.match(spec)
    if not match:
        raise UsageError(
            f"--tpm {spec!r} is not a TCTI string I understand",
            "use auto, /dev/tpmrm0, or e.g. swtpm:host=127.0.0.1,port=2321",
        )
    name, conf = match["name"], match["conf"] or ""
    if name == "device" and not conf:
        conf = DEFAULT_TPM_DEVICE
    if name in ("swtpm", "mssim") and conf:
        for part in conf.split(","):
            key, _, value = part.partition("=")
            if key not in ("host", "port") or not value or (key == "port" and not value.isdigit()):
                raise UsageError(f"--tpm {spec!r}: bad {name} option {part!r}", f"use {name}:host=127.0.0.1,port=2321")
    return Tcti(spec, name, conf)


def _quiet_tss() -> None:
    # tpm2-tss logs every TPM error to stderr; yktool reports them itself, once, with a hint
    os.environ.setdefault("TSS2_LOG", "all+NONE")


def _no_tpm(tcti: Tcti, why: str) -> NoDevice:
    if tcti.name == "device":
        hint = (
            "enable the TPM in the firmware setup (and the tpm_crb/tpm_tis driver), or name "
            "another with --tpm, e.g. --tpm swtpm:host=127.0.0.1,port=2321"
        )
    else:
        hint = f"start the TPM that should listen there (swtpm socket …), or fix --tpm {tcti}"
    return NoDevice(f"no TPM at {tcti}: {why}", hint)


@contextlib.contextmanager
def connect(tcti: Tcti) -> Iterator[ESAPI]:
    """An ESAPI context on the TPM; NoDevice (exit 3) with a hint when there is none."""
    _quiet_tss()
    if tcti.name == "device" and not Path(tcti.conf).exists():
        # the TPM is the machine's, whatever --root says
        raise _no_tpm(tcti, f"{tcti.conf} does not exist")
    from tpm2_pytss import ESAPI, TCTILdr
    from tpm2_pytss.TSS2_Exception import TSS2_Exception

    try:
        ctx = ESAPI(TCTILdr(tcti.name, tcti.conf))
    except TSS2_Exception as exc:
        raise _no_tpm(tcti, str(exc)) from None
    try:
        yield ctx
    except TSS2_Exception as exc:
        raise ToolFailed(f"the TPM at {tcti} refused: {exc}", "run `yktool tpm status` to check the TPM") from None
    finally:
        with contextlib.suppress(Exception):
            ctx.close()


# ------------------------------------------------------------------------------------------ PCRs
def parse_pcrs(text: str) -> list[int]:
    """`0+7`, `0,7` or `7` -> [0, 7]; UsageError with a hint for anything else."""
    parts = [p for p in re.split(r"[+,]", text.strip())]
    out: set[int] = set()
    for part in parts:
        part = part.strip()
        if not part.isdigit() or not 0 <= int(part) <= 23:
            raise UsageError(
                f"PCR list {text!r} is not understood", "give PCR numbers 0-23 joined by +, e.g. --pcrs 0+7"
            )
        out.add(int(part))
    return sorted(out)


def format_pcrs(pcrs: Iterable[int]) -> str:
    """[0, 7] -> `0+7` (systemd's notation)."""
    return "+".join(str(p) for p in sorted(pcrs))


def selection_bytes(bank: str, pcrs: Iterable[int]) -> bytes:
    """The marshalled TPML_PCR_SELECTION for one bank (what a PolicyPCR digest covers)."""
    if bank not in BANK_ALGS:
        raise UsageError(f"unknown PCR bank {bank!r}", f"use one of {', '.join(BANK_ALGS)}")
    mask = 0
    for pcr in pcrs:
        mask |= 1 << pcr
    return (1).to_bytes(4, "big") + BANK_ALGS[bank].to_bytes(2, "big") + bytes([3]) + mask.to_bytes(3, "little")


def pcr_policy_digest(bank: str, values: dict[int, bytes], with_pin: bool = False) -> bytes:
    """The policy digest systemd seals to: PolicyPCR over `values` (+ PolicyAuthValue for a PIN).

    This is what systemd stores as `tpm2-policy-hash`; comparing it with the digest of the
    current PCR values tells whether a token would still unseal, without trying it.
    """
    pcr_digest = hashlib.sha256(b"".join(values[p] for p in sorted(values))).digest()
    digest = hashlib.sha256(
        b"\0" * 32 + TPM_CC_POLICY_PCR.to_bytes(4, "big") + selection_bytes(bank, values) + pcr_digest
    ).digest()
    if with_pin:
        digest = hashlib.sha256(digest + TPM_CC_POLICY_AUTH_VALUE.to_bytes(4, "big")).digest()
    return digest


def read_pcrs(tcti: Tcti, pcrs: Iterable[int], bank: str = "sha256") -> dict[int, bytes]:
    """The current values of `pcrs` in `bank`."""
    from tpm2_pytss.types import TPML_PCR_SELECTION

    values: dict[int, bytes] = {}
    with connect(tcti) as ctx:
        for pcr in sorted(set(pcrs)):
            _, _, digests = ctx.pcr_read(TPML_PCR_SELECTION.parse(f"{bank}:{pcr}"))
            if len(digests) != 1:
                raise ToolFailed(f"the TPM has no PCR {pcr} in bank {bank}", "pick another bank or PCR")
            values[pcr] = bytes(digests[0])
    return values


def is_unmeasured(value: bytes) -> bool:
    """An all-zero PCR: nothing was measured into it since the TPM was reset."""
    return not any(value)


def extend_pcr(tcti: Tcti, pcr: int, event: bytes) -> None:
    """Measure `event` into `pcr` in every active bank (what firmware does at boot).

    yktool uses it on software TPMs to simulate a measured boot or a firmware change.
    """
    from tpm2_pytss.constants import ESYS_TR
    from tpm2_pytss.types import TPM2B_EVENT

    with connect(tcti) as ctx:
        ctx.pcr_event(ESYS_TR.parse(f"pcr{pcr}"), TPM2B_EVENT(event))


def flush_leftovers(tcti: Tcti) -> int:
    """Flush loaded sessions and transient objects other tools left on a TPM without a resource
    manager (swtpm holds only 3 sessions; systemd 252 leaves one per enroll or unlock).

    Does nothing for `auto` (the kernel's resource manager cleans up). Returns how many it flushed.
    """
    if not tcti.direct:
        return 0
    from tpm2_pytss.constants import TPM2_CAP, TPM2_HT

    flushed = 0
    with connect(tcti) as ctx:
        for kind in (TPM2_HT.LOADED_SESSION, TPM2_HT.TRANSIENT):
            _, data = ctx.get_capability(TPM2_CAP.HANDLES, kind << 24, 64)
            for handle in list(data.data.handles):
                ctx.flush_context(ctx.tr_from_tpmpublic(handle))
                flushed += 1
    return flushed


# ------------------------------------------------------------------------------------ identity
@dataclass
class SecureBoot:
    """Secure Boot as the firmware reports it in efivars (None: cannot tell)."""

    enabled: bool | None
    setup_mode: bool | None
    uefi: bool

    @property
    def text(self) -> str:
        if not self.uefi:
            return "unknown (no EFI variables: legacy BIOS boot, or efivarfs not mounted)"
        if self.enabled is None:
            return "unknown (no SecureBoot variable)"
        state = "enabled" if self.enabled else "disabled"
        return state + (" (setup mode: keys can be changed by anyone)" if self.setup_mode else "")

    def to_json(self) -> dict[str, Any]:
        return {"uefi": self.uefi, "enabled": self.enabled, "setup_mode": self.setup_mode}


def _efi_bool(host: Host, name: str) -> bool | None:
    path = EFIVARS / f"{name}-{EFI_GLOBAL_GUID}"
    real = host.path(path)
    try:
        data = real.read_bytes()
    except OSError:
        return None
    # efivarfs: 4 bytes of attributes, then the value (one byte for these booleans)
    if len(data) < 5:
        return None
    return data[4] == 1


def secure_boot(host: Host) -> SecureBoot:
    """Secure Boot state from efivars under the root."""
    uefi = host.path(PurePosixPath("/sys/firmware/efi")).is_dir()
    return SecureBoot(enabled=_efi_bool(host, "SecureBoot"), setup_mode=_efi_bool(host, "SetupMode"), uefi=uefi)


@dataclass
class TpmInfo:
    """What `tpm status` shows."""

    tcti: str
    manufacturer: str
    vendor: str
    firmware: str
    spec_revision: str
    banks: list[str]
    pcr_bank: str
    pcrs: dict[int, bytes] = field(default_factory=dict)
    secure_boot: SecureBoot | None = None

    @property
    def pcr7_unmeasured(self) -> bool | None:
        """True when PCR 7 (Secure Boot policy) is all zero: the boot was not measured."""
        value = self.pcrs.get(7)
        return None if value is None else is_unmeasured(value)

    def to_json(self) -> dict[str, Any]:
        return {
            "present": True,
            "tcti": self.tcti,
            "manufacturer": self.manufacturer,
            "vendor": self.vendor,
            "firmware": self.firmware,
            "spec_revision": self.spec_revision,
            "banks": self.banks,
            "pcr_bank": self.pcr_bank,
            "pcrs": {str(k): v.hex() for k, v in sorted(self.pcrs.items())},
            "pcr7_unmeasured": self.pcr7_unmeasured,
            "secure_boot": self.secure_boot.to_json() if self.secure_boot else None,
        }


def _ascii(value: int) -> str:
    return value.to_bytes(4, "big").rstrip(b"\0").decode("ascii", "replace").strip()


def read_info(tcti: Tcti, pcrs: Iterable[int] = (0, 7), bank: str = "sha256") -> TpmInfo:
    """Identity, banks and PCR values of the TPM at `tcti` (NoDevice when there is none)."""
    from tpm2_pytss.constants import TPM2_CAP, TPM2_PT

    with connect(tcti) as ctx:
        props: dict[int, int] = {}
        more, prop = True, int(TPM2_PT.FIXED)
        while more:
            more, data = ctx.get_capability(TPM2_CAP.TPM_PROPERTIES, prop, 64)
            items = list(data.data.tpmProperties)
            if not items:
                break
            for item in items:
                props[int(item.property)] = int(item.value)
            prop = int(items[-1].property) + 1
            if prop >= int(TPM2_PT.FIXED) + 0x100:
                break
        _, data = ctx.get_capability(TPM2_CAP.PCRS, 0, 16)
        banks = []
        for sel in data.data.assignedPCR:
            if any(bytes(sel.pcrSelect)[: sel.sizeofSelect]):
                name = str(sel.hash).lower().replace("tpm2_alg.", "")
                name = "sha1" if name == "sha" else name
                banks.append(name)
    fixed = int(TPM2_PT.FIXED)
    fw1, fw2 = props.get(fixed + 0x0B, 0), props.get(fixed + 0x0C, 0)
    firmware = f"{fw1 >> 16}.{fw1 & 0xFFFF}.{fw2 >> 16}.{fw2 & 0xFFFF}"
    revision = props.get(fixed + 0x02, 0)
    vendor = "".join(_ascii(props.get(fixed + n, 0)) for n in (0x06, 0x07, 0x08, 0x09))
    if bank not in banks:
        raise UsageError(
            f"the TPM has no active {bank} PCR bank (it has {', '.join(banks) or 'none'})", "pick one of those banks"
        )
    values = read_pcrs(tcti, pcrs, bank)
    return TpmInfo(
        tcti=str(tcti),
        manufacturer=_ascii(props.get(fixed + 0x05, 0)),
        vendor=vendor,
        firmware=firmware,
        spec_revision=f"{revision // 100}.{revision % 100:02d}",
        banks=banks,
        pcr_bank=bank,
        pcrs=values,
    )
