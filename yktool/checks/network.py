"""Layer 5: network — a firewall filtering input, fail2ban running with jails and growing bans."""

from __future__ import annotations

import configparser
import re

from yktool.checks.base import CheckContext, Result, Verdict, check, daemon_result, lines

NFT_FILES = ("/etc/nftables.conf", "/etc/sysconfig/nftables.conf")
IPT_FILES = ("/etc/iptables/rules.v4", "/etc/sysconfig/iptables", "/etc/iptables.rules")
FIREWALL_UNITS = (
    "nftables.service",
    "netfilter-persistent.service",
    "iptables.service",
    "firewalld.service",
    "ufw.service",
    "firewall.service",
)


def nft_filters_input(text: str) -> str | None:
    """The line that makes an nftables ruleset drop unmatched input, or None."""
    for m in re.finditer(r"hook\s+input[^;}\n]*;?[^}\n]*?policy\s+(drop|reject)", text):
        return m.group(0).strip()
    # a policy-accept input chain that ends in drop/reject also filters
    for chain in re.finditer(r"chain\s+\S+\s*\{(.*?)\n\s*\}", text, re.S):
        body = chain.group(1)
        if re.search(r"hook\s+input", body):
            rules = [ln.strip() for ln in body.splitlines() if ln.strip() and not ln.strip().startswith("#")]
            if rules and re.match(r"^(counter\s+)?(drop|reject)\b", rules[-1]):
                return rules[-1]
    return None


def ipt_filters_input(text: str) -> str | None:
    """The rule or policy that makes iptables-save output drop unmatched input, or None.

    Follows jumps from INPUT into user chains (NixOS's nixos-fw, ufw's chains): a chain filters
    when its policy is DROP or its last rule drops/rejects or jumps to a chain that does.
    """
    policies: dict[str, str] = {}
    rules: dict[str, list[str]] = {}
    for line in text.splitlines():
        s = line.strip()
        m = re.match(r"^:(\S+)\s+(\S+)", s)
        if m:
            policies[m.group(1)] = m.group(2)
            continue
        m = re.match(r"^-P\s+(\S+)\s+(\S+)", s)
        if m:
            policies[m.group(1)] = m.group(2)
            continue
        m = re.match(r"^-A\s+(\S+)\s+(.*)$", s)
        if m:
            rules.setdefault(m.group(1), []).append(s)

    def filters(chain: str, depth: int = 0) -> str | None:
        if depth > 10:
            return None
        if policies.get(chain) == "DROP":
            return f":{chain} DROP"
        chain_rules = rules.get(chain, [])
        if not chain_rules:
            return None
        last = chain_rules[-1]
        m = re.search(r"-j\s+(\S+)\s*$", last) or re.search(r"-j\s+(\S+)", last)
        if not m:
            return None
        target = m.group(1)
        if target in ("DROP", "REJECT"):
            return last
        if target in rules or target in policies:
            inner = filters(target, depth + 1)
            return f"{last} -> {inner}" if inner else None
        return None

    return filters("INPUT")


@check(
    "net.firewall",
    5,
    "firewall enabled, dropping unsolicited input",
    "enable nftables with an input policy drop (apt install nftables; systemctl enable --now nftables)"
    "  |  NixOS: networking.firewall.enable = true;",
)
def firewall(ctx: CheckContext, verdict: Verdict) -> Result:
    live_read = False
    # 1. the kernel's live ruleset, when we may read it
    if ctx.live:
        for tool, args, parse in (
            ("nft", ["list", "ruleset"], nft_filters_input),
            ("iptables-save", [], ipt_filters_input),
        ):
            exe = ctx.host.which(tool)
            if exe is None:
                continue
            if not ctx.privileged:
                verdict.add_evidence(f"{tool} {' '.join(args)}".strip(), "not run", note="needs root")
                continue
            res = ctx.host.run([exe, *args], check=False, timeout=10)
            if res.returncode != 0:
                verdict.add_evidence(
                    f"{tool} {' '.join(args)}".strip(), f"exit {res.returncode}", note=res.error_text[:80]
                )
                continue
            hit = parse(res.text)
            live_read = True
            verdict.add_evidence(f"{tool} {' '.join(args)}".strip(), hit or "no input filtering", "input")
            if hit:
                return verdict.ok()
    # 2. the configuration that is loaded at boot
    enabled = {u: ctx.unit_enabled(u) for u in FIREWALL_UNITS}
    for u, link in enabled.items():
        if link:
            verdict.add_evidence(link, "enabled", u)
    if live_read:
        # what the kernel does now is the answer; a configuration that would drop is only a hint
        return verdict.fail(
            "the running kernel's ruleset drops no unsolicited input"
            + (" (a firewall service is enabled: is it failing?)" if any(enabled.values()) else "")
        )
    if enabled.get("firewall.service") and ctx.exists("/etc/NIXOS"):
        return verdict.ok("NixOS firewall service enabled (drops unsolicited input by default)")
    found = None
    for path in NFT_FILES + tuple(ctx.glob("/etc/nftables.d", ".nft")):
        text = ctx.read(path)
        if text is not None:
            hit = nft_filters_input(text)
            verdict.add_evidence(path, hit or "no input drop policy", "input")
            found = found or (hit and path)
    for path in IPT_FILES:
        text = ctx.read(path)
        if text is not None:
            hit = ipt_filters_input(text)
            verdict.add_evidence(path, hit or "no INPUT DROP", "INPUT")
            found = found or (hit and path)
    ufw = ctx.read("/etc/ufw/ufw.conf")
    if ufw is not None:
        on = any(ln.replace(" ", "") == "ENABLED=yes" for ln in lines(ufw))
        verdict.add_evidence("/etc/ufw/ufw.conf", "yes" if on else "no", "ENABLED")
        if on:
            return verdict.ok()
    if not found:
        if not verdict.evidence:
            verdict.add_evidence(", ".join((*NFT_FILES, *IPT_FILES, "/etc/ufw/ufw.conf")), "absent")
        return verdict.fail("no firewall ruleset that drops unsolicited input")
    if not any(enabled.values()):
        return verdict.fail(
            f"{found} drops input, but no firewall service loads it at boot",
            "systemctl enable nftables (or netfilter-persistent)",
        )
    return verdict.ok("configured" + ("" if not ctx.live else " (live ruleset not readable)"))


@check(
    "net.fail2ban.active",
    5,
    "fail2ban running",
    "apt install fail2ban && systemctl enable --now fail2ban  |  NixOS: services.fail2ban.enable = true;",
)
def fail2ban_active(ctx: CheckContext, verdict: Verdict) -> Result:
    return daemon_result(ctx, verdict, "fail2ban-server", "fail2ban.service", "fail2ban")


def fail2ban_config(ctx: CheckContext) -> tuple[configparser.RawConfigParser, list[str]]:
    """jail.conf, jail.d/*.conf, jail.local, jail.d/*.local merged in fail2ban's order."""
    cached = ctx._cache.get("fail2ban")
    if isinstance(cached, tuple):
        return cached
    parser = configparser.RawConfigParser(strict=False, inline_comment_prefixes=("#", ";"))
    files = [
        "/etc/fail2ban/jail.conf",
        *ctx.glob("/etc/fail2ban/jail.d", ".conf"),
        "/etc/fail2ban/jail.local",
        *ctx.glob("/etc/fail2ban/jail.d", ".local"),
    ]
    read = []
    for path in files:
        text = ctx.read(path)
        if text is None:
            continue
        try:
            parser.read_string(text, source=path)
        except configparser.Error as exc:
            raise ValueError(f"{path}: not an INI file fail2ban can read ({str(exc).splitlines()[0]})") from None
        read.append(path)
    ctx._cache["fail2ban"] = (parser, read)
    return parser, read


def _truthy(v: str) -> bool:
    return v.strip().lower() in ("true", "yes", "1", "on")


@check(
    "net.fail2ban.jails",
    5,
    "fail2ban jails enabled (sshd at least, where SSH runs)",
    "enable jails in /etc/fail2ban/jail.local ([sshd] enabled = true)  |  NixOS: services.fail2ban.jails",
)
def fail2ban_jails(ctx: CheckContext, verdict: Verdict) -> Result:
    parser, files = fail2ban_config(ctx)
    if not files:
        verdict.add_evidence("/etc/fail2ban/jail.conf", "absent")
        return verdict.fail("no fail2ban configuration")
    jails = [
        s for s in parser.sections() if s not in ("INCLUDES",) and _truthy(parser.get(s, "enabled", fallback="false"))
    ]
    verdict.add_evidence(", ".join(files), ", ".join(jails) or "none", "enabled jails")
    if not jails:
        return verdict.fail("no fail2ban jail is enabled")
    from yktool.checks.sshd import effective, installed

    try:
        ssh_here = installed(ctx, effective(ctx))
    except Exception:  # noqa: BLE001 - sshd config problems are the ssh.* checks' to report
        ssh_here = False
    if ssh_here and not any(j in ("sshd", "ssh") for j in jails):
        return verdict.fail("an SSH server is installed but the sshd jail is not enabled")
    return verdict.ok()


@check(
    "net.fail2ban.bantime_increment",
    5,
    "fail2ban ban times grow on repeat offenses (exponential, capped)",
    "set `bantime.increment = true` and `bantime.maxtime = 168h` in [DEFAULT] of jail.local"
    '  |  NixOS: services.fail2ban.bantime-increment = { enable = true; maxtime = "168h"; };',
)
def fail2ban_increment(ctx: CheckContext, verdict: Verdict) -> Result:
    parser, files = fail2ban_config(ctx)
    if not files:
        return verdict.not_applicable("no fail2ban configuration (see net.fail2ban.jails)")
    value = parser.defaults().get("bantime.increment", "false")
    maxtime = parser.defaults().get("bantime.maxtime", "")
    verdict.add_evidence(", ".join(files), value, "bantime.increment")
    if maxtime:
        verdict.add_evidence(", ".join(files), maxtime, "bantime.maxtime")
    if not _truthy(value):
        return verdict.fail("bantime.increment is off: every ban has the same short length")
    return verdict.ok()
