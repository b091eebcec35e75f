"""Emitting Nix: the snippets yktool prints for a NixOS flake, quoted safely, checked by parsing.

On NixOS /etc is generated, so yktool prints what to add to the configuration instead of editing
files there. Everything printed goes through these helpers, and tests run `nix-instantiate
--parse` on it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from yktool.host import Host


def string(value: str) -> str:
    """A Nix double-quoted string literal."""
    escaped = (
        value.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("${", "\\${")
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
    )
    return f'"{escaped}"'


def indented_string(value: str, indent: str = "  ") -> str:
    """A Nix '' … '' string (for rule files): `''` and `${` inside are escaped."""
    body = value.replace("''", "'''").replace("${", "''${")
    lines = "\n".join(indent + line if line else "" for line in body.splitlines())
    return f"''\n{lines}\n{indent[:-2] if len(indent) >= 2 else ''}''"


def string_list(values: Iterable[str]) -> str:
    return "[ " + " ".join(string(v) for v in values) + " ]"


_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_'-]*")
KEYWORDS = frozenset({"let", "in", "with", "assert", "rec", "inherit", "if", "then", "else", "or"})


def attr_name(segment: str) -> str:
    """One attribute name: as is when it is an identifier, else quoted."""
    return segment if _IDENT.fullmatch(segment) and segment not in KEYWORDS else string(segment)


def attr_path(*segments: str) -> str:
    """`a.b."c d"`: an attribute path from its names (a name may hold dots or spaces)."""
    return ".".join(attr_name(s) for s in segments)


def attribute(path: str, value_expr: str) -> str:
    """`a.b.c = value;` — path segments that are not plain identifiers get quoted."""
    segments = []
    for seg in path.split("."):
        plain = seg.replace("-", "").replace("_", "").replace("'", "").isalnum() and not seg[0].isdigit()
        segments.append(seg if plain else string(seg))
    return f"{'.'.join(segments)} = {value_expr};"


def check_parse(host: Host, text: str) -> None:
    """Raise ToolFailed unless `nix-instantiate --parse` accepts `text` (a set body is wrapped)."""
    host.run(["nix-instantiate", "--parse", "-E", text])
