"""Layer 1: the kernel — every sysctl in the hardening checklist's tables, blacklisted modules, coredumps.

Values come from /proc/sys under the root (the running kernel). An offline root without /proc
falls back to what sysctl.d configures (said so in the evidence); without either it is a warn.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

from yktool.checks.base import CheckContext, CheckFunc, Result, Verdict, lines, register

SYSCTL_DIRS = ("/etc/sysctl.d", "/run/sysctl.d", "/usr/local/lib/sysctl.d", "/usr/lib/sysctl.d", "/lib/sysctl.d")


@dataclass(frozen=True)
class Sysctl:
    name: str
    want: int
    op: str  # "eq" | "ge" | "in"
    title: str
    allowed: tuple[int, ...] = ()

    def ok(self, value: int) -> bool:
        if self.op == "ge":
            return value >= self.want
        if self.op == "in":
            return value in self.allowed
        return value == self.want

    def wanted(self) -> str:
        if self.op == "ge":
            return f">= {self.want}"
        if self.op == "in":
            return " or ".join(str(a) for a in self.allowed)
        return str(self.want)


# The checklist's "Memory & Address Space" and "Network Hardening" tables, in order.
SYSCTLS = (
    Sysctl("kernel.kptr_restrict", 2, "eq", "kernel pointers hidden (kptr_restrict=2)"),
    Sysctl("kernel.dmesg_restrict", 1, "eq", "dmesg restricted to root (dmesg_restrict=1)"),
    Sysctl("vm.mmap_rnd_bits", 32, "ge", "ASLR entropy for mmap (mmap_rnd_bits=32)"),
    Sysctl("vm.mmap_rnd_compat_bits", 16, "ge", "ASLR entropy for compat mode (mmap_rnd_compat_bits=16)"),
    # 2 also disables it, and additionally stops root from turning it back on
    Sysctl("kernel.unprivileged_bpf_disabled", 1, "in", "BPF disabled for unprivileged users", (1, 2)),
    Sysctl("net.core.bpf_jit_harden", 2, "eq", "full BPF JIT hardening (bpf_jit_harden=2)"),
    Sysctl("net.ipv4.tcp_syncookies", 1, "eq", "SYN flood protection (tcp_syncookies=1)"),
    Sysctl("net.ipv4.tcp_rfc1337", 1, "eq", "TIME-WAIT assassination protection (tcp_rfc1337=1)"),
    Sysctl("net.ipv4.conf.all.rp_filter", 1, "eq", "strict reverse path filtering (rp_filter=1)"),
    Sysctl("net.ipv4.conf.all.accept_redirects", 0, "eq", "ICMP redirects ignored"),
    Sysctl("net.ipv6.conf.all.accept_redirects", 0, "eq", "ICMPv6 redirects ignored"),
    Sysctl("net.ipv4.conf.all.send_redirects", 0, "eq", "ICMP redirects not sent"),
    Sysctl("net.ipv4.icmp_echo_ignore_broadcasts", 1, "eq", "broadcast pings ignored"),
)

# boot.blacklistedKernelModules in the checklist: rare protocols, then the Dirty Frag LPE mitigation.
BLACKLIST = ("dccp", "sctp", "rds", "tipc", "esp4", "esp6", "rxrpc")
MODPROBE_DIRS = (
    "/etc/modprobe.d",
    "/run/modprobe.d",
    "/usr/local/lib/modprobe.d",
    "/usr/lib/modprobe.d",
    "/lib/modprobe.d",
)


def sysctl_fix(name: str, value: str) -> str:
    return (
        f"sysctl -w {name}={value} && echo '{name} = {value}' >> /etc/sysctl.d/90-hardening.conf"
        f'  |  NixOS: boot.kernel.sysctl."{name}" = {value};'
    )


def sysctl_files(ctx: CheckContext) -> list[str]:
    """The files systemd-sysctl reads at boot, in its order (`systemd-sysctl --cat-config`): the
    sysctl.d folders merged by file name (a name in /etc masks it in /run, /usr/local/lib,
    /usr/lib), sorted by name, later files winning. /etc/sysctl.conf only through a sysctl.d
    entry (Debian's 99-sysctl.conf link): systemd-sysctl does not read it on its own."""
    return ctx.conf_dirs("sysctl", SYSCTL_DIRS)


def configured_sysctls(ctx: CheckContext) -> dict[str, tuple[str, str]]:
    """name -> (value, file) from what systemd-sysctl reads under the root (last one wins)."""
    cached = ctx._cache.get("sysctl.d")
    if isinstance(cached, dict):
        return cached
    out: dict[str, tuple[str, str]] = {}
    files = sysctl_files(ctx)
    for path in files:
        for line in lines(ctx.read(path)):
            if "=" not in line or line.startswith(";"):
                continue
            key, _, value = line.partition("=")
            key = key.strip().lstrip("-").replace("/", ".")
            out[key] = (value.strip(), path)
    ctx._cache["sysctl.d"] = out
    return out


def read_sysctl(ctx: CheckContext, name: str) -> tuple[str | None, str]:
    """(value, source) from /proc/sys; (None, why) if the running kernel can't be read."""
    path = "/proc/sys/" + name.replace(".", "/")
    value = ctx.read(path)
    if value is not None:
        return value.strip(), path
    if not ctx.is_dir("/proc/sys"):
        return None, "no /proc/sys under the root (not a running system, or /proc not mounted)"
    return None, f"{path} does not exist (this kernel has no such setting)"


def _sysctl_check(spec: Sysctl) -> CheckFunc:
    def run(ctx: CheckContext, verdict: Verdict) -> Result:
        value, source = read_sysctl(ctx, spec.name)
        fix = sysctl_fix(spec.name, str(spec.want if spec.op != "in" else spec.allowed[0]))
        if value is None:
            conf = configured_sysctls(ctx).get(spec.name)
            verdict.add_evidence(source, "absent", spec.name)
            if conf is not None:
                val, path = conf
                verdict.add_evidence(path, val, spec.name, "configured, not read from a running kernel")
                try:
                    good = spec.ok(int(val))
                except ValueError:
                    return verdict.fail(f"{path} sets {spec.name} = {val!r}, not a number", fix)
                if good:
                    return verdict.ok(f"configured {spec.name} = {val} in {path} (no running kernel to read)")
                return verdict.fail(f"{path} sets {spec.name} = {val}, want {spec.wanted()}", fix)
            if "does not exist" in source:
                return verdict.not_applicable(source)
            return verdict.warn(f"{source}; and sysctl.d does not set {spec.name}", fix)
        verdict.add_evidence(source, value, spec.name)
        try:
            number = int(value.split()[0])
        except (ValueError, IndexError):
            return verdict.warn(f"{source} holds {value!r}, not a number")
        if spec.ok(number):
            return verdict.ok()
        return verdict.fail(f"{spec.name} = {number}, want {spec.wanted()}", fix)

    return run


for _spec in SYSCTLS:
    register("sysctl." + _spec.name, 1, _spec.title, _sysctl_check(_spec))


# ------------------------------------------------------------------------------------- modules
def modprobe_rules(ctx: CheckContext) -> dict[str, list[tuple[str, str]]]:
    """module -> [(how, file)] for `blacklist M`, `install M /bin/false|true` and module_blacklist=."""
    cached = ctx._cache.get("modprobe")
    if isinstance(cached, dict):
        return cached
    out: dict[str, list[tuple[str, str]]] = {}
    for path in modprobe_files(ctx):
        for line in lines(ctx.read(path)):
            words = line.split()
            if len(words) >= 2 and words[0] == "blacklist":
                out.setdefault(words[1].replace("-", "_"), []).append((line, path))
            elif len(words) >= 3 and words[0] == "install" and PurePosixPath(words[2]).name in ("false", "true"):
                out.setdefault(words[1].replace("-", "_"), []).append((line, path))
    cmdline = ctx.read("/proc/cmdline") or ""
    for word in cmdline.split():
        if word.startswith("module_blacklist="):
            for mod in word.partition("=")[2].split(","):
                out.setdefault(mod.replace("-", "_"), []).append((word, "/proc/cmdline"))
    ctx._cache["modprobe"] = out
    return out


def modprobe_files(ctx: CheckContext) -> list[str]:
    return ctx.conf_dirs("modprobe", MODPROBE_DIRS)


def loaded_modules(ctx: CheckContext) -> set[str] | None:
    text = ctx.read("/proc/modules")
    if text is None:
        return None
    return {line.split()[0] for line in text.splitlines() if line.strip()}


def _module_check(mod: str) -> CheckFunc:
    fix = (
        f"echo 'install {mod} /bin/false' > /etc/modprobe.d/90-blacklist-{mod}.conf && rmmod {mod}"
        f'  |  NixOS: boot.blacklistedKernelModules = [ "{mod}" ];'
    )

    def run(ctx: CheckContext, verdict: Verdict) -> Result:
        rules = modprobe_rules(ctx).get(mod, [])
        loaded = loaded_modules(ctx)
        for how, path in rules:
            verdict.add_evidence(path, how, mod)
        if loaded is None:
            verdict.add_evidence("/proc/modules", "absent", note="no /proc, or a kernel without loadable modules")
        else:
            verdict.add_evidence("/proc/modules", "loaded" if mod in loaded else "not loaded", mod)
        if loaded is not None and mod in loaded:
            return verdict.fail(f"module {mod} is loaded", fix)
        if not rules:
            read = modprobe_files(ctx)
            verdict.add_evidence(", ".join(read) if read else MODPROBE_DIRS[0], "not blacklisted", mod)
            return verdict.fail(f"{mod} is not blacklisted in modprobe.d", fix)
        return verdict.ok()

    return run


for _mod in BLACKLIST:
    register("kernel.module." + _mod, 1, f"module {_mod} blacklisted and not loaded", _module_check(_mod))


# ------------------------------------------------------------------------------------- coredumps
COREDUMP_DIRS = ("/etc/systemd/coredump.conf.d", "/run/systemd/coredump.conf.d", "/usr/lib/systemd/coredump.conf.d")


def _coredump(ctx: CheckContext, verdict: Verdict) -> Result:
    pattern, source = read_sysctl(ctx, "kernel.core_pattern")
    if pattern is None:
        conf = configured_sysctls(ctx).get("kernel.core_pattern")
        if conf is not None:
            pattern, source = conf
    if pattern is None:
        return verdict.warn(f"cannot read kernel.core_pattern: {source}")
    verdict.add_evidence(source, pattern, "kernel.core_pattern")
    if pattern.startswith("|"):
        handler = PurePosixPath(pattern[1:].split()[0]).name if pattern[1:].strip() else ""
        if handler in ("false", "true"):
            return verdict.ok("core dumps are piped to a program that drops them")
        if handler == "systemd-coredump":
            storage, process_max = "external", ""
            for path in ["/etc/systemd/coredump.conf", *ctx.conf_dirs("coredump", COREDUMP_DIRS)]:
                for line in lines(ctx.read(path)):
                    key, _, value = line.partition("=")
                    if key.strip() == "Storage":
                        storage = value.strip()
                        verdict.add_evidence(path, storage, "Storage")
                    elif key.strip() == "ProcessSizeMax":
                        process_max = value.strip()
                        verdict.add_evidence(path, process_max, "ProcessSizeMax")
            if storage == "none" or process_max == "0":
                return verdict.ok("systemd-coredump keeps nothing")
            return verdict.fail(f"systemd-coredump stores dumps (Storage={storage})")
        return verdict.fail(f"core dumps are piped to {handler}")
    return verdict.fail("core dumps are written to files")


register(
    "kernel.coredump",
    1,
    "coredumps disabled system-wide",
    _coredump,
    "echo 'kernel.core_pattern=|/bin/false' > /etc/sysctl.d/50-coredump.conf && sysctl --system"
    "  |  NixOS: systemd.coredump.enable = false;",
)
