"""The SSH server's settings as sshd itself applies them to a connection (user, host, address …).

Reading follows OpenSSH 9.2's servconf.c, not a guess at it: keywords are case-insensitive,
`Keyword value` or `Keyword=value`, arguments split as argv_split does (quotes, `\\` escapes, a
`#` word starts a comment); for a connection, the first value from a matching `Match` block wins
over the global one (copy_set_server_options), and the first global value wins among the global
lines. `Match all` is a Match block that matches everyone: a `PasswordAuthentication yes` under
it is in force for every connection. `Include` (globs, relative to /etc/ssh) is read in place;
an included file cannot change its includer's Match state, and its own Match blocks can only
narrow the block it sits in. Match criteria: All, User, Group, Host, Address, LocalAddress,
LocalPort, RDomain, with negation (`!`), wildcards (`*`, `?`), comma lists and CIDR.

A verdict is given per user that can log in (see `ssh_users`), over every connection class the
config distinguishes (`connections`), so a Match block for a user who does not exist changes
nothing, while one for a real user (or for everyone) counts. On the live host, as root, the
settings come from `sshd -T -C` itself, run once per distinct set of matching Match blocks.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import itertools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from yktool.checks.base import CheckContext, Unreadable

SSHD_CONFIG = "/etc/ssh/sshd_config"
ALIASES = {"challengeresponseauthentication": "kbdinteractiveauthentication"}
MAX_DEPTH = 16
MAX_CONNECTIONS = 512  # connection classes judged per user; beyond, a sample (said in a note)

# servconf.c's keyword table (9.2): allowed in Match blocks, and global-only. Debian's patches add
# a few global ones (GSSAPI key exchange, DebianBanner).
MATCH_KEYWORDS = frozenset(
    """
acceptenv allowagentforwarding allowgroups allowstreamlocalforwarding allowtcpforwarding allowusers
authenticationmethods authorizedkeyscommand authorizedkeyscommanduser authorizedkeysfile authorizedkeysfile2
authorizedprincipalscommand authorizedprincipalscommanduser authorizedprincipalsfile banner casignaturealgorithms
challengeresponseauthentication channeltimeout chrootdirectory clientalivecountmax clientaliveinterval denygroups
denyusers disableforwarding exposeauthinfo forcecommand gatewayports gssapiauthentication
hostbasedacceptedalgorithms hostbasedacceptedkeytypes hostbasedauthentication hostbasedusesnamefrompacketonly
ignorerhosts include ipqos kbdinteractiveauthentication kerberosauthentication loglevel logverbose match
maxauthtries maxsessions passwordauthentication permitemptypasswords permitlisten permitopen permitrootlogin
permittty permittunnel permituserrc pubkeyacceptedalgorithms pubkeyacceptedkeytypes pubkeyauthentication
pubkeyauthoptions rdomain rekeylimit requiredrsasize revokedkeys rhostsrsaauthentication rsaauthentication setenv
skeyauthentication streamlocalbindmask streamlocalbindunlink trustedusercakeys unusedconnectiontimeout
x11displayoffset x11forwarding x11uselocalhost
""".split()
)
GLOBAL_KEYWORDS = frozenset(
    """
addressfamily afstokenpassing checkmail ciphers compression dsaauthentication fingerprinthash
gssapicleanupcredentials gssapistrictacceptorcheck hostcertificate hostdsakey hostkey hostkeyagent
hostkeyalgorithms ignoreuserknownhosts keepalive kerberosgetafstoken kerberosorlocalpasswd kerberostgtpassing
kerberosticketcleanup kexalgorithms keyregenerationinterval listenaddress logingracetime macs maxstartups
modulifile pamauthenticationviakbdint permituserenvironment persourcemaxstartups persourcenetblocksize pidfile
port printlastlog printmotd protocol reversemappingcheck rhostsauthentication securitykeyprovider serverkeybits
strictmodes subsystem syslogfacility tcpkeepalive usedns uselogin usepam useprivilegeseparation
verifyreversemapping versionaddendum xauthlocation
debianbanner gssapikeyexchange gssapistorecredentialsonrekey gssapikexalgorithms
""".split()
)
# Keywords whose value sshd takes from a matching Match block (copy_set_server_options); the
# others keep their global value even when a Match block that applies sets them.
MATCH_COPIED = MATCH_KEYWORDS - {"include", "match", "rdomain"}
MULTI_VALUED = frozenset(
    {
        "acceptenv",
        "allowgroups",
        "allowusers",
        "denygroups",
        "denyusers",
        "hostkey",
        "listenaddress",
        "port",
        "setenv",
        "subsystem",
        "permitopen",
        "permitlisten",
        "authorizedkeysfile",
        "hostcertificate",
        "channeltimeout",
        "logverbose",
    }
)

# Values of the keywords verify judges, as servconf.c accepts them (case-insensitive).
_FLAG = ("yes", "no")
_VALUES: dict[str, tuple[str, ...]] = {
    "passwordauthentication": _FLAG,
    "kbdinteractiveauthentication": _FLAG,
    "x11forwarding": _FLAG,
    "permitrootlogin": ("without-password", "prohibit-password", "forced-commands-only", "yes", "no"),
}
WHITESPACE = " \t\r\n"


@dataclass(frozen=True)
class Connection:
    """What sshd matches on (sshd -T -C user=,host=,addr=,laddr=,lport=,rdomain=)."""

    user: str
    host: str = "203.0.113.7"
    addr: str = "203.0.113.7"
    laddr: str = "192.0.2.1"
    lport: int = 22
    rdomain: str | None = None

    def spec(self) -> str:
        parts = [
            f"user={self.user}",
            f"host={self.host}",
            f"addr={self.addr}",
            f"laddr={self.laddr}",
            f"lport={self.lport}",
        ]
        if self.rdomain is not None:
            parts.append(f"rdomain={self.rdomain}")
        return ",".join(parts)

    def describe(self) -> str:
        return f"user {self.user} from {self.addr}" + (f" (host {self.host})" if self.host != self.addr else "")


@dataclass(frozen=True)
class MatchLine:
    criteria: tuple[tuple[str, str], ...]  # (attribute lower-case, argument); () for `all`
    text: str  # as written after `Match`
    source: str  # file:line

    @property
    def is_all(self) -> bool:
        return not self.criteria


@dataclass
class Setting:
    value: str
    source: str  # file:line, or "sshd -T"
    match: str = ""  # the Match criteria it sits under ("" = global)


@dataclass(frozen=True)
class Directive:
    key: str  # lower-case, alias resolved
    args: tuple[str, ...]
    source: str  # file:line
    chain: tuple[MatchLine, ...] = ()  # the Match blocks it sits under, outermost first

    @property
    def value(self) -> str:
        return " ".join(self.args)

    def setting(self) -> Setting:
        return Setting(self.value, self.source, " / ".join(m.text for m in self.chain))


@dataclass
class SshdConfig:
    origin: str  # "sshd -T" or the main file
    directives: list[Directive] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    folders: list[str] = field(default_factory=list)  # folders an Include glob was expanded in
    present: bool = True
    notes: list[str] = field(default_factory=list)
    too_deep: bool = False  # sshd's fatal "Too many recursive configuration includes": stop reading
    # filled when the settings come from sshd itself: Connection -> sshd -T's settings
    dumps: dict[Connection, dict[str, Setting]] = field(default_factory=dict)

    @property
    def match_lines(self) -> list[MatchLine]:
        seen: dict[MatchLine, None] = {}
        for d in self.directives:
            for m in d.chain:
                seen.setdefault(m)
        return list(seen)

    def global_value(self, key: str) -> Setting | None:
        """The value before any connection is known (sshd's first pass: only `Match all` applies)."""
        for d in self.directives:
            if d.key == key and all(m.is_all for m in d.chain):
                return d.setting()
        return None

    def active_blocks(self, conn: Connection, groups: Callable[[str], set[str] | None]) -> tuple[bool, ...]:
        """Which Match lines match `conn` (the "Match outcome": same outcome, same settings)."""
        return tuple(match_applies(m, conn, groups) for m in self.match_lines)

    def settings_for(self, conn: Connection, groups: Callable[[str], set[str] | None]) -> dict[str, Setting]:
        """Every keyword's value for one connection, as `sshd -T -C` would print it (unset: absent)."""
        if conn in self.dumps:
            return self.dumps[conn]
        verdict = dict(zip(self.match_lines, self.active_blocks(conn, groups), strict=True))
        out: dict[str, Setting] = {}
        for d in self.directives:  # first pass: global lines (and `Match all`), first wins
            if all(m.is_all for m in d.chain):
                out.setdefault(d.key, d.setting())
        matched: dict[str, Setting] = {}
        for d in self.directives:  # the Match pass: first value from a matching block wins, then copied over
            if d.chain and d.key in MATCH_COPIED and all(verdict[m] for m in d.chain):
                matched.setdefault(d.key, d.setting())
        out.update(matched)
        return out


# ------------------------------------------------------------------------------------ matching
def match_pattern(string: str, pattern: str) -> bool:
    """match.c's match_pattern: `*` and `?` only (no character classes)."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, string, re.DOTALL) is not None


def match_pattern_list(string: str, patterns: str, dolower: bool = False) -> int:
    """match.c: 1 when a positive pattern matches, -1 when a negated one does, else 0."""
    got = 0
    for sub in patterns.split(","):
        negated = sub.startswith("!")
        if negated:
            sub = sub[1:]
        if dolower:
            sub = sub.lower()
        if len(sub) >= 1023:
            return 0
        if match_pattern(string, sub):
            if negated:
                return -1
            got = 1
    return got


def _cidr(entry: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None | str:
    """addr_pton_cidr: a network, None when not an address at all, "bad" for host bits set."""
    addr, slash, bits = entry.partition("/")
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return None
    if slash:
        if not bits.isdigit() or int(bits) > ip.max_prefixlen:
            return None
        try:
            return ipaddress.ip_network(entry, strict=True)
        except ValueError:
            return "bad"
    return ipaddress.ip_network(addr)


def addr_match_list(addr: str | None, patterns: str) -> int:
    """addrmatch.c: 1 match, 0 none, -1 negated match, -2 a bad entry."""
    try:
        try_addr = ipaddress.ip_address(addr) if addr is not None else None
    except ValueError:
        return 0
    ret = 0
    for entry in patterns.split(","):
        neg = entry.startswith("!")
        if neg:
            entry = entry[1:]
        if not entry:
            return -2
        net = _cidr(entry)
        if net == "bad":
            return -2
        found = False
        if isinstance(net, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
            found = try_addr is not None and try_addr.version == net.version and try_addr in net
        elif addr is not None:
            found = match_pattern(addr, entry)
        if found:
            if neg:
                return -1
            ret = 1
    return ret


def match_applies(m: MatchLine, conn: Connection, groups: Callable[[str], set[str] | None]) -> bool:
    """servconf.c match_cfg_line for a known connection: every criterion must hold."""
    for attrib, arg in m.criteria:
        if attrib == "user":
            ok = match_pattern_list(conn.user, arg) == 1
        elif attrib == "group":
            user_groups = groups(conn.user)
            ok = False
            if user_groups:  # groupaccess.c: a negated match on any group wins
                results = [match_pattern_list(g, arg) for g in sorted(user_groups)]
                ok = -1 not in results and 1 in results
        elif attrib == "host":
            ok = match_pattern_list(conn.host.lower(), arg, dolower=True) == 1
        elif attrib == "address":
            ok = addr_match_list(conn.addr, arg) == 1
        elif attrib == "localaddress":
            ok = addr_match_list(conn.laddr, arg) == 1
        elif attrib == "localport":
            ok = arg.isdigit() and int(arg) == conn.lport
        elif attrib == "rdomain":
            ok = conn.rdomain is not None and match_pattern_list(conn.rdomain, arg) == 1
        else:
            ok = False
        if not ok:
            return False
    return True


def _examples(pattern_list: str, *, address: bool) -> list[str]:
    """Values that match each entry of a pattern list (and, for a network, its edges)."""
    out: list[str] = []
    for entry in pattern_list.split(","):
        entry = entry.lstrip("!")
        if address:
            net = _cidr(entry)
            if isinstance(net, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
                out += [str(net.network_address), str(net.broadcast_address)]
                if net.num_addresses > 2:
                    out.append(str(net.network_address + 1))
                continue
        if not address:
            value = entry.replace("*", "x").replace("?", "x")
            if value:
                out.append(value)
            continue
        # a wildcard address (`192.168.*`): a real address it matches (`*` may stand for octets)
        for fill in ("1", "1.1", "1.1.1", "0:1"):
            value = entry.replace("*", fill).replace("?", "1")
            try:
                ipaddress.ip_address(value)
            except ValueError:
                continue
            if match_pattern(value, entry):
                out.append(value)
                break
    return out


def connections(cfg: SshdConfig, user: str) -> list[Connection]:
    """One connection per class of (host, address, local address, port, rdomain) the config's
    Match lines can tell apart, for `user`: each is real, so none gives a false fail."""
    hosts: dict[str, None] = {"203.0.113.7": None}
    addrs: dict[str, None] = {"203.0.113.7": None}
    laddrs: dict[str, None] = {"192.0.2.1": None}
    ports: dict[int, None] = {22: None}
    rdomains: dict[str | None, None] = {}
    for m in cfg.match_lines:
        for attrib, arg in m.criteria:
            if attrib == "host":
                hosts.update(dict.fromkeys(v.lower() for v in _examples(arg, address=False)))
            elif attrib == "address":
                addrs.update(dict.fromkeys(_examples(arg, address=True)))
            elif attrib == "localaddress":
                laddrs.update(dict.fromkeys(_examples(arg, address=True)))
            elif attrib == "localport" and arg.isdigit():
                ports[int(arg)] = None
            elif attrib == "rdomain":
                rdomains.update(dict.fromkeys(_examples(arg, address=False)))
    if rdomains:
        rdomains = {"0": None, **rdomains}
    else:
        rdomains = {None: None}
    # with UseDNS no (the default) sshd's "host" is the address itself
    for a in addrs:
        hosts.setdefault(a)
    out = []
    for host, addr, laddr, port, rdom in itertools.product(hosts, addrs, laddrs, ports, rdomains):
        out.append(Connection(user, host, addr, laddr, port, rdom))
        if len(out) >= MAX_CONNECTIONS:
            cfg.notes.append(f"more than {MAX_CONNECTIONS} connection classes: judged the first {MAX_CONNECTIONS}")
            break
    return out


# ------------------------------------------------------------------------------------ parsing
def argv_split(s: str) -> list[str] | None:
    """misc.c argv_split with terminate_on_comment: None on an unclosed quote."""
    argv: list[str] = []
    i, n = 0, len(s)
    while i < n:
        if s[i] in " \t":
            i += 1
            continue
        if s[i] == "#":
            break
        quote = ""
        arg = []
        while i < n:
            c = s[i]
            if c == "\\" and i + 1 < n and (s[i + 1] in "'\"\\" or (not quote and s[i + 1] == " ")):
                arg.append(s[i + 1])
                i += 2
                continue
            if not quote and c in " \t":
                break
            if not quote and c in "\"'":
                quote = c
            elif quote and c == quote:
                quote = ""
            else:
                arg.append(c)
            i += 1
        if quote:
            return None
        argv.append("".join(arg))
    return argv


def _strdelim(s: str, split_equals: bool = True) -> tuple[str, str | None] | None:
    """misc.c strdelim: (token, rest) — rest None at the end; None on an unclosed quote."""
    delims = WHITESPACE + '"' + ("=" if split_equals else "")
    idx = next((i for i, c in enumerate(s) if c in delims), -1)
    if idx < 0:
        return s, None
    if s[idx] == '"':
        body = s[idx + 1 :]
        close = body.find('"')
        if close < 0:
            return None
        token = s[:idx] + body[:close]
        rest = body[close + 1 :]
        return token, rest.lstrip(WHITESPACE)
    token, rest = s[:idx], s[idx:]
    wspace = split_equals and rest[0] == "="
    rest = rest[1:].lstrip(WHITESPACE)
    if split_equals and rest.startswith("=") and not wspace:
        rest = rest[1:].lstrip(WHITESPACE)
    return token, rest


def parse_match(rest: str, source: str) -> MatchLine | str:
    """A Match line's criteria (match_cfg_line's syntax), or the reason sshd refuses it."""
    criteria: list[tuple[str, str]] = []
    cp: str | None = rest
    attributes = 0
    while cp:
        got = _strdelim(cp)
        if got is None:
            return "unclosed quote in Match"
        attrib, cp = got
        if not attrib:
            continue
        if attrib.startswith("#"):
            break
        attributes += 1
        if attrib.lower() == "all":
            nxt = _strdelim(cp) if cp else None
            if attributes > 1 or (nxt is not None and nxt[0] and not nxt[0].startswith("#")):
                return "'all' cannot be combined with other Match attributes"
            return MatchLine((), rest.strip(), source)
        got = _strdelim(cp) if cp else None
        if got is None or not got[0] or got[0].startswith("#"):
            return f"Missing Match criteria for {attrib}"
        arg, cp = got
        low = attrib.lower()
        if low not in ("user", "group", "host", "address", "localaddress", "localport", "rdomain"):
            return f"Unsupported Match attribute {attrib}"
        if low in ("address", "localaddress") and addr_match_list(None, arg) != 0:
            return f"Invalid Match {low} argument '{arg}'"
        if low == "localport" and not (arg.isdigit() and 0 < int(arg) <= 65535):
            return f"Invalid LocalPort '{arg}' on Match line"
        criteria.append((low, arg))
    if attributes == 0:
        return "One or more attributes required for Match"
    return MatchLine(tuple(criteria), rest.strip(), source)


def _expand_include(ctx: CheckContext, pattern: str, listed: list[str]) -> list[str]:
    pat = pattern if pattern.startswith(("/", "~")) else f"/etc/ssh/{pattern}"
    if pat.startswith("~"):
        return []  # glob(3) without GLOB_TILDE: a literal `~` path, never there
    if not any(c in pat for c in "*?["):
        return [pat] if ctx.exists(pat) else []
    parts = PurePosixPath(pat).parts[1:]
    found = ["/"]
    for part in parts:  # glob(3) expands every component, sorted
        nxt: list[str] = []
        for base in found:
            if any(c in part for c in "*?["):
                listed.append(base)  # who can write it can add a drop-in the glob picks up
                nxt += [
                    str(PurePosixPath(base) / n)
                    for n in ctx.listdir(base)
                    if fnmatch.fnmatchcase(n, part) and (not n.startswith(".") or part.startswith("."))
                ]
            else:
                nxt.append(str(PurePosixPath(base) / part))
        found = nxt
    return sorted(p for p in found if ctx.exists(p))


def _check_value(key: str, args: list[str]) -> str | None:
    """Why sshd refuses the value of a judged keyword (None: accepted)."""
    if key in _VALUES:
        if len(args) != 1 or args[0].lower() not in _VALUES[key]:
            return f"unsupported option {' '.join(args)!r}"
    elif key == "maxauthtries":
        if len(args) != 1 or not re.fullmatch(r"[-+]?\d+", args[0]) or not -(2**31) <= int(args[0]) < 2**31:
            return f"integer value {' '.join(args)!r} invalid"
    elif key == "logingracetime":
        if len(args) != 1 or convtime(args[0]) is None:
            return f"invalid time value {' '.join(args)!r}"
    return None


def convtime(value: str) -> int | None:
    """misc.c convtime: 30, 30s, 1m, 1m30s (seconds), None when invalid."""
    if not value or not re.fullmatch(r"(\d+[smhdwSMHDW]?)+", value):
        return None
    total = 0
    for num, unit in re.findall(r"(\d+)([smhdwSMHDW]?)", value):
        total += int(num) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[unit.lower()]
        if total > 2**31 - 1:
            return None
    return total


def _parse(ctx: CheckContext, path: str, cfg: SshdConfig, chain: tuple[MatchLine, ...], depth: int) -> None:
    """Parse one file into cfg, its lines under `chain` (the includer's Match blocks)."""
    if cfg.too_deep:
        return
    if depth > MAX_DEPTH:
        # sshd dies at the first one; going on would walk an Include loop that fans out
        # (drop-ins including their own glob) n^16 times and hang verify
        cfg.problems.append(f"{path}: Include nested too deep (sshd would refuse the file)")
        cfg.too_deep = True
        return
    text = ctx.read(path)
    if text is None:
        if depth == 0:
            cfg.present = False
        return
    cfg.files.append(path)
    if "\0" in text:
        cfg.problems.append(f"{path}: binary data, not an sshd_config (sshd would refuse it)")
        return
    block: tuple[MatchLine, ...] = chain
    for n, raw in enumerate(text.split("\n"), 1):
        where = f"{path}:{n}"
        line = raw.lstrip(" \t\r").rstrip(WHITESPACE + "\f")
        got = _strdelim(line) if line else None
        if got is None:
            if line:
                cfg.problems.append(f"{where}: unclosed quote (sshd would refuse the file)")
            continue
        keyword, rest = got
        if not keyword and rest:
            got = _strdelim(rest)
            if got is None:
                continue
            keyword, rest = got
        if not keyword or keyword.startswith("#"):
            continue
        if not rest:
            cfg.problems.append(f"{where}: no argument after keyword {keyword!r} (sshd would refuse the file)")
            continue
        key = keyword.lower()
        if key not in MATCH_KEYWORDS and key not in GLOBAL_KEYWORDS:
            cfg.problems.append(f"{where}: unknown keyword {keyword!r} (sshd would refuse the file)")
            continue
        key = ALIASES.get(key, key)
        if key == "match":
            m = parse_match(rest, where)
            if isinstance(m, str):
                cfg.problems.append(f"{where}: {m} (sshd would refuse the file)")
                continue
            block = (*chain, m)
            continue
        args = argv_split(rest)
        if args is None:
            cfg.problems.append(f"{where}: invalid quotes (sshd would refuse the file)")
            continue
        if key not in MATCH_KEYWORDS and not all(m.is_all for m in block):
            cfg.problems.append(f"{where}: {keyword} is not allowed within a Match block (sshd would refuse the file)")
            continue
        if key == "include":
            for inc in args:
                for sub in _expand_include(ctx, inc, cfg.folders):
                    _parse(ctx, sub, cfg, block, depth + 1)
            continue
        bad = _check_value(key, args)
        if bad:
            cfg.problems.append(f"{where}: {keyword} {bad} (sshd would refuse the file)")
            continue
        if key in _VALUES:
            args = [args[0].lower()]
        elif key == "maxauthtries":
            args = [str(int(args[0]))]
        cfg.directives.append(Directive(key, tuple(args), where, block))


def parse_config(ctx: CheckContext, path: str = SSHD_CONFIG) -> SshdConfig:
    cfg = SshdConfig(path)
    _parse(ctx, path, cfg, (), 0)
    return cfg


# ------------------------------------------------------------------------------------ users
NOLOGIN_SHELLS = ("nologin", "false")


def login_users(ctx: CheckContext) -> list[str]:
    """The users whose SSH settings matter: --user (and root), else root and every user with a
    login shell in the root's /etc/passwd; without a passwd, the users the Match lines name."""
    if ctx.user:
        return [ctx.user] + (["root"] if ctx.user != "root" else [])
    text = ctx.read("/etc/passwd")
    if text is None:
        return ["root", "user"]  # config only: judge root and an ordinary user
    users = ["root"]
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) < 7 or not parts[0] or parts[0] == "root":
            continue
        if PurePosixPath(parts[6].strip() or "/bin/sh").name in NOLOGIN_SHELLS:
            continue
        users.append(parts[0])
    return users


def group_lookup(ctx: CheckContext) -> Callable[[str], set[str] | None]:
    """user -> names of its groups (primary and supplementary) from the root's passwd/group."""
    passwd = ctx.read("/etc/passwd") or ""
    group = ctx.read("/etc/group") or ""
    primary = {p[0]: p[3] for p in (ln.split(":") for ln in passwd.splitlines()) if len(p) >= 4}
    by_gid: dict[str, str] = {}
    members: dict[str, set[str]] = {}
    for ln in group.splitlines():
        p = ln.split(":")
        if len(p) < 4:
            continue
        by_gid.setdefault(p[2], p[0])
        for u in filter(None, p[3].split(",")):
            members.setdefault(u.strip(), set()).add(p[0])

    def groups(user: str) -> set[str] | None:
        if user not in primary:
            return None  # getpwnam fails: sshd matches no Group
        out = set(members.get(user, set()))
        if primary[user] in by_gid:
            out.add(by_gid[primary[user]])
        return out

    return groups


# ------------------------------------------------------------------------------------ sshd -T
def parse_dump(text: str, source: str = "sshd -T") -> dict[str, Setting]:
    """`sshd -T` output: keyword value per line (several lines for some keywords, first kept)."""
    out: dict[str, Setting] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key:
            out.setdefault(key.lower(), Setting(value.strip(), source))
    return out


def dump_command(sshd: str, conn: Connection, config: str | None = None) -> list[str]:
    cmd = [sshd, "-T", "-C", conn.spec()]
    return cmd + (["-f", config] if config else [])


def _fill_from_sshd(ctx: CheckContext, sshd: str, cfg: SshdConfig, users: Iterable[str]) -> str:
    """Run `sshd -T -C` once per distinct Match outcome; '' or why it could not."""
    groups = group_lookup(ctx)
    by_outcome: dict[tuple[bool, ...], dict[str, Setting]] = {}
    for user in users:
        for conn in connections(cfg, user):
            outcome = cfg.active_blocks(conn, groups)
            if outcome not in by_outcome:
                res = ctx.host.run(dump_command(sshd, conn), check=False, timeout=10)
                if res.returncode != 0:
                    return f"sshd -T -C failed ({res.error_text[:80]})"
                by_outcome[outcome] = parse_dump(res.text, f"sshd -T -C {conn.spec()}")
            cfg.dumps[conn] = by_outcome[outcome]
    return ""


def effective(ctx: CheckContext) -> SshdConfig:
    """The sshd configuration (cached): the files parsed, and on the live host as root the
    settings per connection from `sshd -T -C` itself."""
    cached = ctx._cache.get("sshd")
    if isinstance(cached, SshdConfig):
        return cached
    try:
        cfg = parse_config(ctx)
    except Unreadable:
        ctx._cache.pop("sshd", None)
        raise
    sshd = ctx.host.which("sshd")
    if ctx.live and sshd and cfg.present:
        if not ctx.privileged:
            cfg.notes.append("sshd -T needs root (host keys); parsed the files instead")
        else:
            why = _fill_from_sshd(ctx, sshd, cfg, login_users(ctx))
            if why:
                cfg.dumps.clear()
                cfg.notes.append(f"{why}; parsed the files instead")
            else:
                cfg.origin = "sshd -T"
    ctx._cache["sshd"] = cfg
    return cfg


def installed(ctx: CheckContext, cfg: SshdConfig) -> bool:
    """Is an SSH server there at all (config file or binary under the root)?"""
    return cfg.present or ctx.which("sshd") is not None
