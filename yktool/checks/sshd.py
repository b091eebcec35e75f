"""The SSH server's effective settings: `sshd -T` on the live host, else sshd_config parsed.

Parsing follows sshd_config(5): keywords are case-insensitive, `Keyword value` or `Keyword=value`;
for most keywords the first value obtained wins; `Include` (globs, relative to /etc/ssh) is
expanded in place, also inside a `Match` block; a `Match` block runs to the next `Match` (or the
end of the file holding it) and its settings apply only to connections that match — so a Match
block that loosens a setting is reported separately, as the exception it is.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from yktool.checks.base import CheckContext, Unreadable

SSHD_CONFIG = "/etc/ssh/sshd_config"
ALIASES = {"challengeresponseauthentication": "kbdinteractiveauthentication"}
_LINE = re.compile(r"^([A-Za-z][A-Za-z0-9]*)(?:\s*=\s*|\s+)(.*)$")


@dataclass
class Setting:
    value: str
    source: str       # file:line, or "sshd -T"
    match: str = ""   # the Match criteria it sits under ("" = global)


@dataclass
class SshdConfig:
    origin: str                                   # "sshd -T" or the main file
    settings: dict[str, Setting] = field(default_factory=dict)         # global, first wins
    matched: dict[str, list[Setting]] = field(default_factory=dict)    # inside Match blocks
    problems: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    present: bool = True
    notes: list[str] = field(default_factory=list)


def _expand_include(ctx: CheckContext, pattern: str) -> list[str]:
    pat = pattern if pattern.startswith("/") else f"/etc/ssh/{pattern}"
    folder, name = str(PurePosixPath(pat).parent), PurePosixPath(pat).name
    if not any(c in pat for c in "*?["):
        return [pat]
    return sorted(f"{folder}/{n}" for n in ctx.listdir(folder) if fnmatch.fnmatch(n, name))


def _parse(ctx: CheckContext, path: str, cfg: SshdConfig, match: str, depth: int) -> str:
    """Parse one file into cfg; returns the Match state at its end (an Include can't leak one)."""
    if depth > 16:
        cfg.problems.append(f"{path}: Include nested too deep")
        return match
    text = ctx.read(path)
    if text is None:
        if depth == 0:
            cfg.present = False
        return match
    cfg.files.append(path)
    if "\0" in text:
        cfg.problems.append(f"{path}: binary data, not an sshd_config (sshd would refuse it)")
        return match
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if not m or not m.group(2).strip():
            cfg.problems.append(f"{path}:{n}: not `Keyword value`: {line[:60]!r} (sshd would refuse the file)")
            continue
        key, value = m.group(1).lower(), m.group(2).strip()
        key = ALIASES.get(key, key)
        if key == "include":
            for inc in value.split():
                for sub in _expand_include(ctx, inc):
                    _parse(ctx, sub, cfg, match, depth + 1)
            continue
        if key == "match":
            match = "" if value.lower() == "all" else value
            continue
        setting = Setting(value.split("#")[0].strip(), f"{path}:{n}", match)
        if match:
            cfg.matched.setdefault(key, []).append(setting)
        else:
            cfg.settings.setdefault(key, setting)
    return match


def parse_config(ctx: CheckContext, path: str = SSHD_CONFIG) -> SshdConfig:
    cfg = SshdConfig(path)
    _parse(ctx, path, cfg, "", 0)
    return cfg


def effective(ctx: CheckContext) -> SshdConfig:
    """The sshd settings (cached): `sshd -T` when live, root and sshd installed; else parsed."""
    cached = ctx._cache.get("sshd")
    if isinstance(cached, SshdConfig):
        return cached
    cfg: SshdConfig | None = None
    note = ""
    sshd = ctx.host.which("sshd")
    if ctx.live and sshd:
        if not ctx.privileged:
            note = "sshd -T needs root (host keys); parsed the files instead"
        else:
            res = ctx.host.run([sshd, "-T"], check=False, timeout=10)
            if res.returncode == 0:
                cfg = SshdConfig("sshd -T")
                for line in res.text.splitlines():
                    key, _, value = line.partition(" ")
                    if key:
                        cfg.settings.setdefault(key.lower(), Setting(value.strip(), "sshd -T"))
                # sshd -T shows the global view; Match exceptions still come from the files
                parsed = parse_config(ctx)
                cfg.matched = parsed.matched
                cfg.files = parsed.files
            else:
                note = f"sshd -T failed ({res.error_text[:80]}); parsed the files instead"
    if cfg is None:
        try:
            cfg = parse_config(ctx)
        except Unreadable:
            ctx._cache.pop("sshd", None)
            raise
        if note:
            cfg.notes.append(note)
    ctx._cache["sshd"] = cfg
    return cfg


def installed(ctx: CheckContext, cfg: SshdConfig) -> bool:
    """Is an SSH server there at all (config file or binary under the root)?"""
    return cfg.present or ctx.which("sshd") is not None
