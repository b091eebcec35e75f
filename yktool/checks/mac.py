"""Layers 6 and 7 and the NixOS-only item: AppArmor, the application sandbox, mutable users."""

from __future__ import annotations

import json
import re

from yktool.checks.base import CheckContext, Result, Verdict, check


@check(
    "mac.apparmor.enabled",
    6,
    "AppArmor enabled in the kernel",
    "boot with `apparmor=1 security=apparmor` (Debian: enabled by default)  |  NixOS: security.apparmor.enable = true;",
)
def apparmor_enabled(ctx: CheckContext, verdict: Verdict) -> Result:
    flag = ctx.read("/sys/module/apparmor/parameters/enabled")
    lsm = ctx.read("/sys/kernel/security/lsm")
    if flag is None and not ctx.is_dir("/sys/module"):
        verdict.add_evidence("/sys/module", "absent")
        return verdict.warn("no /sys under the root: cannot read the kernel's LSM state")
    verdict.add_evidence("/sys/module/apparmor/parameters/enabled", (flag or "absent").strip())
    if lsm is not None:
        verdict.add_evidence("/sys/kernel/security/lsm", lsm.strip())
    if flag is None or flag.strip() != "Y":
        return verdict.fail("AppArmor is not enabled in the running kernel")
    if lsm is not None and "apparmor" not in lsm.split(","):
        return verdict.fail("AppArmor is built in but not an active LSM")
    return verdict.ok()


@check(
    "mac.apparmor.profiles",
    6,
    "AppArmor profiles loaded in enforce mode",
    "apt install apparmor-profiles && systemctl enable --now apparmor  |  NixOS: security.apparmor.policies"
    " (and killUnconfinedConfinables = true)",
)
def apparmor_profiles(ctx: CheckContext, verdict: Verdict) -> Result:
    flag = ctx.read("/sys/module/apparmor/parameters/enabled")
    if flag is None or flag.strip() != "Y":
        return verdict.not_applicable("AppArmor is not enabled (see mac.apparmor.enabled)")
    path = "/sys/kernel/security/apparmor/profiles"
    text = ctx.read(path)
    if text is None:
        verdict.add_evidence(path, "absent")
        return verdict.fail("no AppArmor profile list: securityfs not mounted or no policy loaded")
    modes: dict[str, int] = {}
    for line in text.splitlines():
        m = re.search(r"\((\w+)\)\s*$", line)
        if m:
            modes[m.group(1)] = modes.get(m.group(1), 0) + 1
    verdict.add_evidence(path, ", ".join(f"{n} {m}" for m, n in sorted(modes.items())) or "0 profiles", "profiles")
    if modes.get("enforce", 0) == 0:
        return verdict.fail("no AppArmor profile is in enforce mode")
    return verdict.ok()


@check(
    "sandbox.bubblewrap",
    7,
    "bubblewrap available for application sandboxes (nixpak)",
    "apt install bubblewrap  |  NixOS: sandbox GUI apps with nixpak (modules/sandbox.nix)",
)
def bubblewrap(ctx: CheckContext, verdict: Verdict) -> Result:
    exe = ctx.which("bwrap")
    if exe:
        verdict.add_evidence(exe, "present")
        return verdict.ok()
    verdict.add_evidence("/usr/bin/bwrap, /run/current-system/sw/bin/bwrap", "absent")
    return verdict.warn("bubblewrap is not installed: no application sandbox")


_USERS_JSON = re.compile(r"(/nix/store/[0-9a-z]{32}-users-groups\.json)")


@check(
    "nixos.mutable_users",
    3,
    "NixOS: users.mutableUsers = false (accounts only from the configuration)",
    "set users.mutableUsers = false; (give every user hashedPasswordFile first, or you lock yourself out)",
)
def mutable_users(ctx: CheckContext, verdict: Verdict) -> Result:
    if not ctx.exists("/etc/NIXOS"):
        return verdict.not_applicable("not NixOS")
    for activate in ("/run/current-system/activate", "/nix/var/nix/profiles/system/activate"):
        text = ctx.read(activate)
        if text is None:
            continue
        m = _USERS_JSON.search(text)
        if not m:
            continue
        raw = ctx.read(m.group(1))
        if raw is None:
            verdict.add_evidence(m.group(1), "absent")
            continue
        data = json.loads(raw)
        value = data.get("mutableUsers")
        verdict.add_evidence(m.group(1), json.dumps(value), "mutableUsers", f"from {activate}")
        if value is False:
            return verdict.ok()
        return verdict.fail("users.mutableUsers is true: passwd/useradd changes survive and bypass the configuration")
    for conf in ("/etc/nixos/configuration.nix",):
        text = ctx.read(conf)
        if text:
            text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)  # a commented-out line says nothing
            text = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
            m2 = re.search(r"users\.mutableUsers\s*=\s*(true|false)\s*;", text)
            if m2:
                verdict.add_evidence(conf, m2.group(1), "users.mutableUsers")
                return verdict.ok() if m2.group(1) == "false" else verdict.fail("users.mutableUsers = true")
    verdict.add_evidence("/run/current-system/activate", "no users-groups.json reference")
    return verdict.warn("cannot tell users.mutableUsers on this NixOS (no users-groups.json found)")
