"""A user's effective git configuration, read under a root the way git (config.c) reads it.

Files in git's order, later values winning: the system file (/etc/gitconfig), the XDG one
($HOME/.config/git/config), then ~/.gitconfig. Inside a file: `[section]`, `[section "sub"]`
(subsection case-sensitive, `\\"` and `\\\\` escapes) or the old `[section.sub]`; keys and section
names case-insensitive; a key without `=` is true; values with quotes, `\\n \\t \\b \\" \\\\`
escapes, a trailing `\\` joining lines, `#`/`;` comments outside quotes, blanks trimmed.
`[include] path=` is read in place (relative to the including file, `~/` is HOME; a missing file
is skipped); `[includeIf …]` needs a repository to decide, so outside one (where verify looks)
it never applies — as `git config` run outside a repository sees it.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from yktool.checks.base import CheckContext

MAX_INCLUDE_DEPTH = 10  # git's limit


class GitConfigError(ValueError):
    """A line git refuses ("bad config line N in file F"): git then stops reading config at all."""


@dataclass
class GitConfig:
    values: dict[str, list[tuple[str | None, str]]] = field(default_factory=dict)  # key -> [(value, file)]
    files: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def get(self, key: str) -> tuple[str | None, str] | None:
        """The last value of `key` (`section.sub.key`, section and key any case) and its file."""
        found = self.values.get(_normal_key(key))
        return found[-1] if found else None

    def get_bool(self, key: str) -> bool | None:
        got = self.get(key)
        return None if got is None else config_bool(got[0])


def _normal_key(key: str) -> str:
    section, _, rest = key.partition(".")
    sub, _, name = rest.rpartition(".")
    return f"{section.lower()}.{sub}.{name.lower()}" if sub else f"{section.lower()}.{name.lower()}"


def config_bool(value: str | None) -> bool | None:
    """git_config_bool: no `=` is true; true/yes/on, false/no/off, "" false, integers; else None."""
    if value is None:
        return True
    v = value.lower()
    if v in ("true", "yes", "on"):
        return True
    if v in ("false", "no", "off", ""):
        return False
    try:
        return int(v, 0) != 0
    except ValueError:
        return None


class _Reader:
    def __init__(self, text: str, path: str) -> None:
        self.s, self.i, self.path, self.line = text, 0, path, 1

    def peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def get(self) -> str:
        c = self.peek()
        self.i += 1
        if c == "\n":
            self.line += 1
        return c

    def bad(self) -> GitConfigError:
        return GitConfigError(f"bad config line {self.line} in file {self.path}")


def _section(r: _Reader) -> str:
    name = ""
    while True:
        c = r.get()
        if c == "":
            raise r.bad()
        if c == "]":
            return name.lower()
        if c.isspace():
            break
        if not (c.isalnum() or c in "-."):
            raise r.bad()
        name += c
    # `[name "sub"]`
    while r.peek().isspace():
        if r.get() == "\n":
            raise r.bad()
    if r.get() != '"':
        raise r.bad()
    sub = ""
    while True:
        c = r.get()
        if c in ("", "\n"):
            raise r.bad()
        if c == '"':
            break
        if c == "\\":
            c = r.get()
            if c in ("", "\n"):
                raise r.bad()
        sub += c
    if r.get() != "]":
        raise r.bad()
    return f"{name.lower()}.{sub}"


def _value(r: _Reader) -> str:
    out, quote, space = "", False, 0
    while True:
        c = r.get()
        if c == "\n" or c == "":
            if quote:
                raise r.bad()
            return out
        if not quote and c.isspace():
            if out:
                space += 1
            continue
        if not quote and c in ";#":
            while r.peek() not in ("\n", ""):
                r.get()
            continue
        if space:
            out += " " * space
            space = 0
        if c == "\\":
            c = r.get()
            if c == "\n":
                continue
            esc = {"t": "\t", "b": "\b", "n": "\n", '"': '"', "\\": "\\"}.get(c)
            if esc is None:
                raise r.bad()
            out += esc
            continue
        if c == '"':
            quote = not quote
            continue
        out += c


def _parse(ctx: CheckContext, path: str, home: str, cfg: GitConfig, depth: int) -> None:
    text = ctx.read(path)
    if text is None:
        return
    cfg.files.append(path)
    r = _Reader(text, path)
    section = ""
    while True:
        c = r.get()
        if c == "":
            return
        if c.isspace():
            continue
        if c in "#;":
            while r.peek() not in ("\n", ""):
                r.get()
            continue
        if c == "[":
            section = _section(r)
            continue
        if not c.isalpha() or not section:
            raise r.bad()
        name = c
        while r.peek().isalnum() or r.peek() == "-":
            name += r.get()
        while r.peek() in (" ", "\t"):
            r.get()
        value: str | None
        if r.peek() in ("\n", ""):
            value = None
        elif r.peek() == "=":
            r.get()
            value = _value(r)
        else:
            raise r.bad()
        key = f"{section}.{name.lower()}"
        cfg.values.setdefault(key, []).append((value, path))
        if key == "include.path":
            if value is None:
                raise GitConfigError(f"missing value for 'include.path' in {path}")
            if depth >= MAX_INCLUDE_DEPTH:
                raise GitConfigError(f"exceeded maximum include depth ({MAX_INCLUDE_DEPTH}) in {path}")
            target = value
            if target.startswith("~/"):
                target = home.rstrip("/") + target[1:]
            elif not target.startswith("/"):
                target = str(PurePosixPath(path).parent / target)
            target = posixpath.normpath(target)  # `..` at / stays at /, as on the host
            if value:
                _parse(ctx, target, home, cfg, depth + 1)


def user_config(ctx: CheckContext, home: str) -> GitConfig:
    """What `git config` shows for a user whose HOME is `home`, outside any repository."""
    cfg = GitConfig()
    for path in ("/etc/gitconfig", f"{home.rstrip('/')}/.config/git/config", f"{home.rstrip('/')}/.gitconfig"):
        try:
            _parse(ctx, path, home, cfg, 0)
        except GitConfigError as exc:
            cfg.problems.append(str(exc))
            return cfg
    return cfg
