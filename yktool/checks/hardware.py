"""Layer 0: hardware — USBGuard running with real rules, the removal-lock rule, a backup key, TPM2."""

from __future__ import annotations

import re

from yktool import udev, usbguard
from yktool.checks.base import CheckContext, Result, Verdict, check, daemon_result, lines


def _daemon_conf_path(ctx: CheckContext) -> tuple[str, str]:
    """(path of usbguard-daemon.conf, how it was found): the running daemon's -c, else the default."""
    for pid in ctx.running("usbguard-daemon"):
        cmdline = ctx.read(f"/proc/{pid}/cmdline") or ""
        args = [a for a in cmdline.split("\0") if a]
        for i, a in enumerate(args[:-1]):
            if a == "-c":
                return args[i + 1], f"/proc/{pid}/cmdline"
    return usbguard.DAEMON_CONF, "default path"


def _daemon_conf(ctx: CheckContext) -> tuple[str, dict[str, str] | None]:
    path, _how = _daemon_conf_path(ctx)
    text = ctx.read(path)
    if text is None:
        return path, None
    conf: dict[str, str] = {}
    for line in lines(text):
        key, _, value = line.partition("=")
        conf[key.strip()] = value.strip()
    return path, conf


@check(
    "hw.usbguard.running",
    0,
    "USBGuard daemon running",
    "systemctl enable --now usbguard  |  NixOS: services.usbguard.enable = true;",
)
def usbguard_running(ctx: CheckContext, verdict: Verdict) -> Result:
    return daemon_result(ctx, verdict, "usbguard-daemon", "usbguard.service", "usbguard-daemon")


@check(
    "hw.usbguard.policy",
    0,
    "USBGuard blocks unknown devices (implicitPolicyTarget=block)",
    "set ImplicitPolicyTarget=block in usbguard-daemon.conf  |  NixOS: services.usbguard.implicitPolicyTarget"
    ' = "block";',
)
def usbguard_policy(ctx: CheckContext, verdict: Verdict) -> Result:
    path, conf = _daemon_conf(ctx)
    if conf is None:
        verdict.add_evidence(path, "absent")
        return verdict.fail(f"{path} does not exist (USBGuard not configured)")
    value = conf.get("ImplicitPolicyTarget", "block")
    verdict.add_evidence(
        path, value, "ImplicitPolicyTarget", "" if "ImplicitPolicyTarget" in conf else "unset: default block"
    )
    if value in ("block", "reject"):
        return verdict.ok()
    return verdict.fail(f"ImplicitPolicyTarget={value}: unknown devices are allowed")


@check(
    "hw.usbguard.rules",
    0,
    "USBGuard rules populated (not placeholder stubs)",
    "yktool usbguard allow   (or: usbguard generate-policy > /etc/usbguard/rules.conf)"
    "  |  NixOS: yktool usbguard allow --nixos",
)
def usbguard_rules(ctx: CheckContext, verdict: Verdict) -> Result:
    conf_path, conf = _daemon_conf(ctx)
    rules_path = (conf or {}).get("RuleFile") or usbguard.RULES_PATH
    if conf and conf.get("RuleFile"):
        verdict.add_evidence(conf_path, rules_path, "RuleFile")
    text = ctx.read(rules_path)
    reason = usbguard.placeholder_reason(text)
    if text is None and conf and conf.get("RuleFolder"):
        verdict.add_evidence(conf_path, conf["RuleFolder"], "RuleFolder")
        return verdict.warn("rules in RuleFolder are not read yet")
    if reason:
        verdict.add_evidence(rules_path, "placeholder" if text is not None else "absent", note=reason)
        return verdict.fail(reason)
    rules = usbguard.parse_rules(text or "")
    verdict.add_evidence(rules_path, f"{sum(1 for x in rules if x.target == 'allow')} allow rules", "rules")
    # every key recorded by `yktool usbguard allow` must still be allowed
    from yktool.inventory import Registry

    for key, enr in Registry.load(ctx.host).enrollments("usbguard"):
        usb_id = str(enr.get("usb_id", ""))
        if usb_id and not any(x.target == "allow" and x.usb_id == usb_id for x in rules):
            verdict.add_evidence(rules_path, f"no allow rule for {usb_id}", key.nickname)
            return verdict.fail(f"key {key.nickname} ({usb_id}) was allowed by yktool but its rule is gone")
    return verdict.ok()


@check(
    "hw.udev.lock_rule",
    0,
    "removal-lock udev rule installed",
    "yktool udev install   |  NixOS: yktool udev install --nixos",
)
def udev_lock_rule(ctx: CheckContext, verdict: Verdict) -> Result:
    rules = udev.installed_rules(ctx.host)
    if not rules:
        verdict.add_evidence("/etc/udev/rules.d, /usr/lib/udev/rules.d", 'no ACTION=="remove" rule that locks sessions')
        return verdict.fail("no removal-lock rule is installed")
    for rule in rules:
        verdict.add_evidence(
            rule.path,
            f"{rule.vendor or '?'}:{rule.product or '?'}",
            "remove-lock",
            f"serial {rule.serial}" if rule.serial else "",
        )
    from yktool.inventory import Registry

    for key, enr in Registry.load(ctx.host).enrollments("udev"):
        vendor, product = str(enr.get("vendor", "")), str(enr.get("product", ""))
        if vendor and not any(x.vendor == vendor and x.product == product for x in rules):
            return verdict.fail(f"key {key.nickname} ({vendor}:{product}) was installed by yktool but its rule is gone")
    for rule in rules:
        m = re.search(r'RUN\+?="([^"\s]+)', rule.line)
        prog = m.group(1) if m else ""
        if not prog.startswith("/") or prog.endswith("/loginctl"):
            continue
        if prog.startswith("/nix/store/") and not ctx.is_dir("/nix/store"):
            continue  # an offline NixOS /etc without its store: nothing to look at
        if not ctx.exists(prog):
            verdict.add_evidence(prog, "absent", note=f"run by {rule.path}")
            return verdict.fail(f"the rule runs {prog}, which does not exist")
    return verdict.ok()


@check(
    "hw.udev.lock_handler",
    0,
    "a screen locker reacts to the lock (hyprlock/swaylock/i3lock/desktop)",
    "install a locker wired to logind's Lock signal, e.g. hyprlock + hypridle, swaylock + swayidle, i3lock + xss-lock",
)
def udev_lock_handler(ctx: CheckContext, verdict: Verdict) -> Result:
    found = udev.find_lock_handlers(ctx.host)
    if found:
        for p in found[:5]:
            verdict.add_evidence(p, "present")
        return verdict.ok()
    verdict.add_evidence(
        ", ".join(udev.HANDLER_DIRS[:4]) + ", …", "none of " + ", ".join(udev.LOCK_HANDLERS[:6]) + ", …"
    )
    return verdict.warn("no lock handler found: loginctl lock-sessions would lock nothing on screen")


@check(
    "hw.registry.backup",
    0,
    "at least two keys registered (a backup key exists)",
    "enroll a backup key: yktool commission --backup-nickname backup (insert it when asked), or each "
    "building block with --nickname backup",
)
def registry_backup(ctx: CheckContext, verdict: Verdict) -> Result:
    from yktool.inventory import REGISTRY_PATH, Registry

    if ctx.read(REGISTRY_PATH) is None:
        verdict.add_evidence(REGISTRY_PATH, "absent")
        return verdict.fail("no key registry: no key was enrolled with yktool")
    reg = Registry.load(ctx.host)
    names = [k.nickname for k in reg.keys]
    verdict.add_evidence(REGISTRY_PATH, f"{len(names)} keys: {', '.join(names) or '-'}", "keys")
    if len(names) >= 2:
        return verdict.ok()
    return verdict.fail(f"only {len(names)} key registered: losing it locks you out")


@check(
    "hw.tpm.present",
    0,
    "TPM2 present (measured boot, LUKS key sealing)",
    "enable the TPM in firmware setup  |  NixOS: security.tpm2.enable = true;",
)
def tpm_present(ctx: CheckContext, verdict: Verdict) -> Result:
    major = ctx.read("/sys/class/tpm/tpm0/tpm_version_major")
    if major is not None:
        verdict.add_evidence("/sys/class/tpm/tpm0/tpm_version_major", major.strip())
        return verdict.ok() if major.strip() == "2" else verdict.fail(f"TPM version {major.strip()}, want 2")
    if ctx.exists("/dev/tpmrm0"):
        verdict.add_evidence("/dev/tpmrm0", "present")
        return verdict.ok()
    if not ctx.is_dir("/sys/class"):
        verdict.add_evidence("/sys/class", "absent")
        return verdict.warn("no /sys under the root: cannot tell whether a TPM exists")
    verdict.add_evidence("/sys/class/tpm", "no tpm0").add_evidence("/dev/tpmrm0", "absent")
    return verdict.fail("no TPM2 device")
