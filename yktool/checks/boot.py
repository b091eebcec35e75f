"""Layer 2: boot — root on LUKS2, FIDO2 and TPM2 tokens, TPM2 PCRs, Secure Boot, sbctl.

The root's backing device is found the way the system finds it: the `/` mount (from
/proc/self/mounts on a running system, else /etc/fstab), its /dev/mapper name looked up in
/etc/crypttab (or, live, the device-mapper's own uuid and slaves in /sys), and the crypttab
device (`UUID=`, `PARTUUID=`, `LABEL=` or a path — a LUKS2 image file in fixture roots) resolved
under the root. The header is read with `yktool.luks.header.read_header` (cryptsetup's JSON).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from yktool.checks.base import CheckContext, Evidence, Result, Verdict, check, lines
from yktool.errors import YktoolError

EFI_GLOBAL = "8be4df61-93ca-11d2-aa0d-00e098032b8c"
EFIVARS = "/sys/firmware/efi/efivars"
SBCTL_BUNDLES = (
    "/var/lib/sbctl/keys/db/db.key",
    "/etc/secureboot/keys/db/db.key",
    "/var/lib/sbctl/keys/db",
    "/etc/secureboot/keys/db",
)


@dataclass
class RootDevice:
    """What was found about the root filesystem's backing device."""

    evidence: list[Evidence] = field(default_factory=list)
    source: str = ""  # the `/` mount source
    mapper: str = ""  # the dm-crypt name, when `/` is on one
    device: str = ""  # the LUKS device inside the root
    dm_luks_version: int | None = None  # from the live device-mapper uuid (CRYPT-LUKS2-…)
    header: Any = None  # yktool.luks.header.LuksHeader
    header_error: str = ""
    header_needs_root: bool = False
    problem: str = ""  # why `/` is not (known to be) on LUKS


def _unescape_mount(s: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)


def _root_source(ctx: CheckContext, rd: RootDevice) -> str | None:
    mounts = ctx.read("/proc/self/mounts")
    if mounts is not None:
        src = None
        for line in mounts.splitlines():
            parts = line.split()
            if len(parts) >= 3 and _unescape_mount(parts[1]) == "/":
                src = _unescape_mount(parts[0])
                fstype = parts[2]
        if src is not None:
            rd.evidence.append(Evidence("/proc/self/mounts", f"{src} ({fstype})", "/"))
            return src
    fstab = ctx.read("/etc/fstab")
    for line in lines(fstab):
        parts = line.split()
        if len(parts) >= 2 and parts[1] == "/":
            rd.evidence.append(Evidence("/etc/fstab", parts[0], "/"))
            return parts[0]
    rd.evidence.append(Evidence("/proc/self/mounts, /etc/fstab", "no / entry"))
    return None


def crypttab(ctx: CheckContext) -> dict[str, tuple[str, str]]:
    """name -> (device, options) from /etc/crypttab under the root."""
    out: dict[str, tuple[str, str]] = {}
    for line in lines(ctx.read("/etc/crypttab")):
        parts = line.split()
        if len(parts) >= 2:
            out[parts[0]] = (parts[1], parts[3] if len(parts) >= 4 else "")
    return out


def resolve_spec(spec: str) -> str:
    """`UUID=…`, `PARTUUID=…`, `LABEL=…` or a path → a path inside the root."""
    for prefix, folder in (
        ("UUID=", "by-uuid"),
        ("PARTUUID=", "by-partuuid"),
        ("LABEL=", "by-label"),
        ("PARTLABEL=", "by-partlabel"),
    ):
        if spec.startswith(prefix):
            return f"/dev/disk/{folder}/{spec[len(prefix) :].strip(chr(34))}"
    return spec


def _live_dm(ctx: CheckContext, rd: RootDevice, source: str) -> None:
    """Follow /dev/dm-N (or /dev/mapper/X) through /sys/block: crypt uuid and backing device."""
    real = ctx.host.path(source)
    name = real.name
    if not name.startswith("dm-"):
        return
    seen = 0
    while name.startswith("dm-") and seen < 8:
        seen += 1
        uuid = (ctx.read(f"/sys/block/{name}/dm/uuid") or "").strip()
        if not uuid:
            return
        rd.evidence.append(Evidence(f"/sys/block/{name}/dm/uuid", uuid))
        m = re.match(r"CRYPT-LUKS(\d)-", uuid)
        slaves = ctx.listdir(f"/sys/block/{name}/slaves")
        if m:
            rd.dm_luks_version = int(m.group(1))
            rd.mapper = (ctx.read(f"/sys/block/{name}/dm/name") or "").strip()
            if slaves:
                rd.device = f"/dev/{slaves[0]}"
            return
        if len(slaves) != 1:
            return
        name = slaves[0]  # LVM on LUKS: one level down


def root_device(ctx: CheckContext) -> RootDevice:
    """Find (once) the LUKS device under `/` and read its header."""
    cached = ctx._cache.get("root_device")
    if isinstance(cached, RootDevice):
        return cached
    rd = RootDevice()
    ctx._cache["root_device"] = rd
    if ctx.luks_device:
        rd.device = ctx.luks_device
        rd.evidence.append(Evidence("--luks-device", ctx.luks_device, note="given, not discovered from /"))
        _read_header(ctx, rd)
        return rd
    source = _root_source(ctx, rd)
    if source is None:
        rd.problem = "cannot tell what `/` is mounted from"
        return rd
    rd.source = source
    table = crypttab(ctx)
    mapper = ""
    if source.startswith("/dev/mapper/"):
        mapper = source[len("/dev/mapper/") :]
    if mapper and mapper in table:
        spec, opts = table[mapper]
        rd.mapper = mapper
        rd.device = resolve_spec(spec)
        rd.evidence.append(Evidence("/etc/crypttab", f"{spec} {opts}".strip(), mapper))
    elif ctx.live:
        _live_dm(ctx, rd, source)
    if not rd.device and rd.dm_luks_version is None:
        if mapper and table:
            rd.problem = f"`/` is on {source}, which /etc/crypttab does not list ({', '.join(table)})"
        else:
            rd.problem = f"`/` is on {source}, not on a dm-crypt (LUKS) device"
        return rd
    if rd.device:
        _read_header(ctx, rd)
    return rd


def _read_header(ctx: CheckContext, rd: RootDevice) -> None:
    try:
        from yktool.luks.pending import read_header_seeing_pending

        # slots an interrupted run left are judged for what they are: an unseen recovery key is
        # no typed fallback (luks.pending)
        rd.header = read_header_seeing_pending(ctx.host, rd.device)
        rd.evidence.append(
            Evidence(rd.device, f"LUKS{rd.header.version}", "header", "cryptsetup luksDump --dump-json-metadata")
        )
    except YktoolError as exc:
        rd.header_error = exc.message
        rd.header_needs_root = "permission denied" in exc.message and not ctx.privileged
        rd.evidence.append(Evidence(rd.device, "unreadable", "header", exc.message))
        if type(exc).__name__ == "NotLuks":
            rd.problem = exc.message
        elif type(exc).__name__ == "Luks1Device":
            rd.dm_luks_version = 1


def _luks_version(rd: RootDevice) -> int | None:
    if rd.header is not None:
        return int(rd.header.version)
    return rd.dm_luks_version


@check(
    "boot.luks.root",
    2,
    "root filesystem on LUKS2",
    "reinstall with LUKS2 on the root partition (or `cryptsetup convert --type luks2` a LUKS1 one)"
    "  |  NixOS: boot.initrd.luks.devices.<name>.device = …;",
)
def luks_root(ctx: CheckContext, verdict: Verdict) -> Result:
    rd = root_device(ctx)
    verdict.evidence.extend(rd.evidence)
    if rd.problem:
        return verdict.fail(rd.problem)
    version = _luks_version(rd)
    if version is None:
        if rd.header_needs_root:
            return verdict.needs_root(f"reading the LUKS header of {rd.device}")
        return verdict.warn(f"cannot read the LUKS header of {rd.device}: {rd.header_error}")
    if version != 2:
        return verdict.fail(
            f"root is on LUKS{version}; systemd's FIDO2/TPM2 tokens need LUKS2",
            f"cryptsetup convert --type luks2 {rd.device} (after a luksHeaderBackup)",
        )
    return verdict.ok()


def _tokens(ctx: CheckContext, verdict: Verdict, type_name: str) -> list[Any] | Result:
    rd = root_device(ctx)
    if rd.problem or (_luks_version(rd) not in (None, 2)):
        return verdict.not_applicable("the root is not on LUKS2 (see boot.luks.root)")
    if rd.header is None:
        verdict.evidence.extend(e for e in rd.evidence if e.key == "header")
        if rd.header_needs_root:
            return verdict.needs_root(f"reading the LUKS header of {rd.device or rd.mapper}")
        return verdict.warn(f"cannot read the LUKS header of {rd.device or rd.mapper}: {rd.header_error or 'unknown'}")
    toks = [t for t in rd.header.tokens_of_type(type_name) if t.keyslots]
    return toks


def _enrolled(
    ctx: CheckContext, verdict: Verdict, type_name: str, note: Callable[[Any], str] = lambda _t: ""
) -> Result:
    """Pass when the root's header has a `type_name` token bound to a keyslot (each one listed)."""
    toks = _tokens(ctx, verdict, type_name)
    if isinstance(toks, Result):
        return toks
    dev = root_device(ctx).device
    if not toks:
        verdict.add_evidence(dev, "none", f"{type_name} tokens")
        return verdict.fail(f"no {type_name} token in the LUKS header")
    for t in toks:
        verdict.add_evidence(dev, f"token {t.id} -> keyslots {t.keyslots}", type_name, note(t))
    return verdict.ok()


@check(
    "boot.luks.fido2",
    2,
    "FIDO2 key enrolled in the root's LUKS header",
    "yktool luks enroll-fido2 DEVICE   (or: systemd-cryptenroll --fido2-device=auto DEVICE)",
)
def luks_fido2(ctx: CheckContext, verdict: Verdict) -> Result:
    from yktool.inventory import Registry

    registry: list[Registry | None] = []

    def owner(token: Any) -> str:
        # the registry names the key behind each credential; loaded once, only when tokens exist
        if not registry:
            try:
                registry.append(Registry.load(ctx.host))
            except YktoolError:
                registry.append(None)
        reg = registry[0]
        found = reg.owner_of(getattr(token, "credential", "")) if reg else None
        return f"key {found.nickname}" if found else ""

    return _enrolled(ctx, verdict, "systemd-fido2", owner)


@check(
    "boot.luks.fallback",
    2,
    "a typed way into the root volume remains (password or recovery key)",
    "add one before you need it: yktool luks add-recovery DEVICE (systemd-cryptenroll --recovery-key DEVICE)",
)
def luks_fallback(ctx: CheckContext, verdict: Verdict) -> Result:
    toks = _tokens(ctx, verdict, "systemd-fido2")
    if isinstance(toks, Result):
        return toks
    rd = root_device(ctx)
    header = rd.header
    typed = list(header.knowledge_slots)
    verdict.add_evidence(rd.device, ",".join(str(s) for s in typed) or "none", "password/recovery keyslots")
    verdict.add_evidence(rd.device, ",".join(str(s) for s in header.hardware_slots) or "none", "hardware keyslots")
    if typed:
        return verdict.ok()
    if len(toks) >= 2:
        return verdict.ok("no typed fallback, but two FIDO2 keys are enrolled")
    return verdict.fail(
        "every keyslot needs one piece of hardware: lose the key or change the firmware and the disk stays locked"
    )


@check(
    "boot.luks.tpm2",
    2,
    "TPM2 enrolled in the root's LUKS header",
    "yktool luks enroll-tpm2 DEVICE   (or: systemd-cryptenroll --tpm2-device=auto --tpm2-pcrs=7 DEVICE)",
)
def luks_tpm2(ctx: CheckContext, verdict: Verdict) -> Result:
    return _enrolled(ctx, verdict, "systemd-tpm2")


@check(
    "boot.luks.tpm2_pcrs",
    2,
    "TPM2 token sealed to the configured PCRs (incl. 7: Secure Boot state)",
    "re-enroll: yktool luks enroll-tpm2 --pcrs 7 DEVICE (systemd-cryptenroll --wipe-slot=tpm2 --tpm2-pcrs=7)",
)
def luks_tpm2_pcrs(ctx: CheckContext, verdict: Verdict) -> Result:
    toks = _tokens(ctx, verdict, "systemd-tpm2")
    if isinstance(toks, Result):
        return toks
    if not toks:
        return verdict.not_applicable("no TPM2 token (see boot.luks.tpm2)")
    dev = root_device(ctx).device
    want = set(ctx.tpm2_pcrs)
    bad = []
    for t in toks:
        pcrs = set(getattr(t, "pcrs", []) or []) | set(getattr(t, "pubkey_pcrs", []) or [])
        verdict.add_evidence(dev, "+".join(str(p) for p in sorted(pcrs)) or "none", f"token {t.id} tpm2-pcrs")
        if not want <= pcrs:
            bad.append(t)
    if bad:
        missing = "+".join(str(p) for p in sorted(want))
        return verdict.fail(f"a TPM2 token is not bound to PCRs {missing}: the key unseals whatever booted")
    return verdict.ok(f"bound to {'+'.join(str(p) for p in sorted(want))}")


def _efivar(ctx: CheckContext, name: str) -> tuple[int | None, str]:
    path = f"{EFIVARS}/{name}-{EFI_GLOBAL}"
    data = ctx.read(path)
    if data is None:
        return None, path
    raw = data.encode("utf-8", "surrogateescape")
    # efivarfs: 4 bytes of attributes, then the value (one byte for these two)
    return (raw[4] if len(raw) >= 5 else None), path


@check(
    "boot.secureboot",
    2,
    "Secure Boot enabled (efivars)",
    "enroll your keys (sbctl create-keys && sbctl enroll-keys --microsoft) and turn Secure Boot on in the "
    "firmware  |  NixOS: boot.lanzaboote.enable = true;",
)
def secureboot(ctx: CheckContext, verdict: Verdict) -> Result:
    if not ctx.is_dir("/sys/firmware"):
        verdict.add_evidence("/sys/firmware", "absent")
        return verdict.warn("no /sys under the root: cannot read the firmware's Secure Boot state")
    if not ctx.is_dir("/sys/firmware/efi"):
        verdict.add_evidence("/sys/firmware/efi", "absent")
        return verdict.fail("not booted through UEFI: no Secure Boot")
    value, path = _efivar(ctx, "SecureBoot")
    if value is None:
        verdict.add_evidence(path, "absent")
        return verdict.fail("the firmware does not report a SecureBoot variable")
    verdict.add_evidence(path, value, "SecureBoot")
    return verdict.ok() if value == 1 else verdict.fail("Secure Boot is disabled in the firmware")


@check(
    "boot.secureboot.setup_mode",
    2,
    "firmware not in Secure Boot setup mode (platform key enrolled)",
    "sbctl enroll-keys --microsoft, then reboot",
)
def setup_mode(ctx: CheckContext, verdict: Verdict) -> Result:
    if not ctx.is_dir("/sys/firmware/efi"):
        return verdict.not_applicable("not a UEFI system (see boot.secureboot)")
    value, path = _efivar(ctx, "SetupMode")
    if value is None:
        verdict.add_evidence(path, "absent")
        return verdict.warn("the firmware does not report SetupMode")
    verdict.add_evidence(path, value, "SetupMode")
    return verdict.ok() if value == 0 else verdict.fail("the firmware is in setup mode: anyone can enroll keys")


@check(
    "boot.sbctl",
    2,
    "Secure Boot signing keys present and boot files signed (sbctl / lanzaboote)",
    "sbctl create-keys && sbctl enroll-keys --microsoft && sbctl sign-all  |  NixOS: "
    'boot.lanzaboote = { enable = true; pkiBundle = "/etc/secureboot"; };',
)
def sbctl(ctx: CheckContext, verdict: Verdict) -> Result:
    bundle = None
    for path in SBCTL_BUNDLES:
        try:
            if ctx.host.path(path).exists():
                bundle = path
                break
        except (OSError, YktoolError):
            continue
    if bundle is None:
        for folder in ("/var/lib/sbctl/keys", "/etc/secureboot/keys"):
            try:
                ctx.listdir(folder)
            except Exception:  # noqa: BLE001 - Unreadable: the bundle exists but is root-only
                verdict.add_evidence(folder, "unreadable")
                return verdict.needs_root(f"listing {folder}")
        verdict.add_evidence(", ".join(SBCTL_BUNDLES[:2]), "absent")
        return verdict.fail("no Secure Boot signing keys (sbctl / lanzaboote pkiBundle)")
    verdict.add_evidence(bundle, "present")
    sbctl_bin = ctx.host.which("sbctl")
    if not (ctx.live and sbctl_bin):
        return verdict.ok("keys present" + ("" if ctx.live else " (offline root: `sbctl verify` not run)"))
    if not ctx.privileged:
        return verdict.needs_root("sbctl verify reads the EFI system partition")
    res = ctx.host.run([sbctl_bin, "verify"], check=False, timeout=20)
    unsigned = [ln.strip() for ln in res.text.splitlines() if "not signed" in ln]
    verdict.add_evidence("sbctl verify", f"exit {res.returncode}, {len(unsigned)} unsigned")
    for ln in unsigned[:5]:
        verdict.add_evidence("sbctl verify", ln)
    if res.returncode != 0 or unsigned:
        return verdict.fail("sbctl verify reports unsigned boot files", "sbctl sign-all (or rebuild with lanzaboote)")
    return verdict.ok()
