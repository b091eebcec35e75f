"""Layer 0: hardware — USBGuard running with real rules, the removal-lock rule, a backup key, TPM2."""

from __future__ import annotations

import re

from yktool import udev, usbguard
from yktool.checks.base import CheckContext, R, Result, check, daemon_result, lines


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


@check("hw.usbguard.running", 0, "USBGuard daemon running",
       "systemctl enable --now usbguard  |  NixOS: services.usbguard.enable = true;")
def usbguard_running(ctx: CheckContext) -> Result:
    return daemon_result(ctx, R("hw.usbguard.running"), "usbguard-daemon", "usbguard.service", "usbguard-daemon")


@check("hw.usbguard.policy", 0, "USBGuard blocks unknown devices (implicitPolicyTarget=block)",
       "set ImplicitPolicyTarget=block in usbguard-daemon.conf  |  NixOS: services.usbguard.implicitPolicyTarget"
       " = \"block\";")
def usbguard_policy(ctx: CheckContext) -> Result:
    r = R("hw.usbguard.policy")
    path, conf = _daemon_conf(ctx)
    if conf is None:
        r.ev(path, "absent")
        return r.fail(f"{path} does not exist (USBGuard not configured)")
    value = conf.get("ImplicitPolicyTarget", "block")
    r.ev(path, value, "ImplicitPolicyTarget", "" if "ImplicitPolicyTarget" in conf else "unset: default block")
    if value in ("block", "reject"):
        return r.ok()
    return r.fail(f"ImplicitPolicyTarget={value}: unknown devices are allowed")


@check("hw.usbguard.rules", 0, "USBGuard rules populated (not placeholder stubs)",
       "yktool usbguard allow   (or: usbguard generate-policy > /etc/usbguard/rules.conf)"
       "  |  NixOS: yktool usbguard allow --nixos")
def usbguard_rules(ctx: CheckContext) -> Result:
    r = R("hw.usbguard.rules")
    conf_path, conf = _daemon_conf(ctx)
    rules_path = (conf or {}).get("RuleFile") or usbguard.RULES_PATH
    if conf and conf.get("RuleFile"):
        r.ev(conf_path, rules_path, "RuleFile")
    text = ctx.read(rules_path)
    reason = usbguard.placeholder_reason(text)
    if text is None and conf and conf.get("RuleFolder"):
        return r.ev(conf_path, conf["RuleFolder"], "RuleFolder").warn("rules in RuleFolder are not read yet")
    if reason:
        r.ev(rules_path, "placeholder" if text is not None else "absent", note=reason)
        return r.fail(reason)
    rules = usbguard.parse_rules(text or "")
    r.ev(rules_path, f"{sum(1 for x in rules if x.target == 'allow')} allow rules", "rules")
    # every key recorded by `yktool usbguard allow` must still be allowed
    from yktool.inventory import Registry

    for key, enr in Registry.load(ctx.host).enrollments("usbguard"):
        usb_id = str(enr.get("usb_id", ""))
        if usb_id and not any(x.target == "allow" and x.usb_id == usb_id for x in rules):
            r.ev(rules_path, f"no allow rule for {usb_id}", key.nickname)
            return r.fail(f"key {key.nickname} ({usb_id}) was allowed by yktool but its rule is gone")
    return r.ok()


@check("hw.udev.lock_rule", 0, "removal-lock udev rule installed",
       "yktool udev install   |  NixOS: yktool udev install --nixos")
def udev_lock_rule(ctx: CheckContext) -> Result:
    r = R("hw.udev.lock_rule")
    rules = udev.installed_rules(ctx.host)
    if not rules:
        r.ev("/etc/udev/rules.d, /usr/lib/udev/rules.d", "no ACTION==\"remove\" rule that locks sessions")
        return r.fail("no removal-lock rule is installed")
    for rule in rules:
        r.ev(rule.path, f"{rule.vendor or '?'}:{rule.product or '?'}", "remove-lock",
             f"serial {rule.serial}" if rule.serial else "")
    from yktool.inventory import Registry

    for key, enr in Registry.load(ctx.host).enrollments("udev"):
        vendor, product = str(enr.get("vendor", "")), str(enr.get("product", ""))
        if vendor and not any(x.vendor == vendor and x.product == product for x in rules):
            return r.fail(f"key {key.nickname} ({vendor}:{product}) was installed by yktool but its rule is gone")
    for rule in rules:
        m = re.search(r'RUN\+?="([^"\s]+)', rule.line)
        prog = m.group(1) if m else ""
        if not prog.startswith("/") or prog.endswith("/loginctl"):
            continue
        if prog.startswith("/nix/store/") and not ctx.is_dir("/nix/store"):
            continue  # an offline NixOS /etc without its store: nothing to look at
        if not ctx.exists(prog):
            r.ev(prog, "absent", note=f"run by {rule.path}")
            return r.fail(f"the rule runs {prog}, which does not exist")
    return r.ok()


@check("hw.udev.lock_handler", 0, "a screen locker reacts to the lock (hyprlock/swaylock/i3lock/desktop)",
       "install a locker wired to logind's Lock signal, e.g. hyprlock + hypridle, swaylock + swayidle, "
       "i3lock + xss-lock")
def udev_lock_handler(ctx: CheckContext) -> Result:
    r = R("hw.udev.lock_handler")
    found = udev.find_lock_handlers(ctx.host)
    if found:
        for p in found[:5]:
            r.ev(p, "present")
        return r.ok()
    r.ev(", ".join(udev.HANDLER_DIRS[:4]) + ", …", "none of " + ", ".join(udev.LOCK_HANDLERS[:6]) + ", …")
    return r.warn("no lock handler found: loginctl lock-sessions would lock nothing on screen")


@check("hw.registry.backup", 0, "at least two keys registered (a backup key exists)",
       "enroll a backup key: yktool commission --backup-nickname backup (insert it when asked), or each "
       "building block with --nickname backup")
def registry_backup(ctx: CheckContext) -> Result:
    from yktool.inventory import REGISTRY_PATH, Registry

    r = R("hw.registry.backup")
    if ctx.read(REGISTRY_PATH) is None:
        r.ev(REGISTRY_PATH, "absent")
        return r.fail("no key registry: no key was enrolled with yktool")
    reg = Registry.load(ctx.host)
    names = [k.nickname for k in reg.keys]
    r.ev(REGISTRY_PATH, f"{len(names)} keys: {', '.join(names) or '-'}", "keys")
    if len(names) >= 2:
        return r.ok()
    return r.fail(f"only {len(names)} key registered: losing it locks you out")


@check("hw.tpm.present", 0, "TPM2 present (measured boot, LUKS key sealing)",
       "enable the TPM in firmware setup  |  NixOS: security.tpm2.enable = true;")
def tpm_present(ctx: CheckContext) -> Result:
    r = R("hw.tpm.present")
    major = ctx.read("/sys/class/tpm/tpm0/tpm_version_major")
    if major is not None:
        r.ev("/sys/class/tpm/tpm0/tpm_version_major", major.strip())
        return r.ok() if major.strip() == "2" else r.fail(f"TPM version {major.strip()}, want 2")
    if ctx.exists("/dev/tpmrm0"):
        r.ev("/dev/tpmrm0", "present")
        return r.ok()
    if not ctx.is_dir("/sys/class"):
        r.ev("/sys/class", "absent")
        return r.warn("no /sys under the root: cannot tell whether a TPM exists")
    r.ev("/sys/class/tpm", "no tpm0").ev("/dev/tpmrm0", "absent")
    return r.fail("no TPM2 device")
