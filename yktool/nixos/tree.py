"""Reading Nix files yktool did not write: a small lexer and the attribute bindings it defines.

Enough of Nix to answer "does this tree declare option X", "which LUKS device name has this
UUID", "which entries does secrets.nix have, and where": every `path = value;` binding with its
full attribute path (the prefixes of the attribute sets it sits in), its value's tokens, and its
span in the file. Function patterns (`{ config, ... }:`), `let … in`, `with …;` and
`assert …;` are understood; anything more dynamic (an attribute named by `${…}`) is kept as
`${…}` and never matches a name. Nothing here evaluates Nix.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

_ID = re.compile(r"[A-Za-z_][A-Za-z0-9_'-]*")
_PATH = re.compile(r"(?:\.{1,2}|~|[A-Za-z0-9._+-]*)?(?:/[A-Za-z0-9._+-]+)+/?|<[A-Za-z0-9._+/-]+>")
_NUM = re.compile(r"[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_PUNCT = ("...", "++", "//", "==", "!=", "<=", ">=", "&&", "||", "->", "${")
KEYWORDS = frozenset({"let", "in", "with", "assert", "rec", "inherit", "if", "then", "else", "or"})


class NixSyntaxError(ValueError):
    """The text is not Nix this reader can follow (an unterminated string or comment)."""


@dataclass(frozen=True)
class Token:
    kind: str  # id | str | path | num | punct
    text: str  # the source text
    start: int
    end: int
    value: str | None = None  # a string literal's value when it has no interpolation


def _string_end(text: str, i: int, indented: bool) -> tuple[int, str | None]:
    """End offset of the string starting at `i` (after its opening quote) and its value (None
    when it interpolates)."""
    out: list[str] = []
    plain = True
    n = len(text)
    while i < n:
        c = text[i]
        if indented:
            if text.startswith("''", i):
                nxt = text[i + 2 : i + 3]
                if nxt == "'":
                    out.append("''")
                    i += 3
                    continue
                if nxt == "$":
                    out.append("$")
                    i += 3
                    continue
                if nxt == "\\":
                    out.append(text[i + 3 : i + 4])
                    i += 4
                    continue
                return i + 2, "".join(out) if plain else None
        else:
            if c == "\\":
                esc = text[i + 1 : i + 2]
                out.append({"n": "\n", "t": "\t", "r": "\r"}.get(esc, esc))
                i += 2
                continue
            if c == '"':
                return i + 1, "".join(out) if plain else None
        if text.startswith("${", i):
            plain = False
            i = _skip_interpolation(text, i + 2)
            continue
        out.append(c)
        i += 1
    raise NixSyntaxError("unterminated string")


def _skip_interpolation(text: str, i: int) -> int:
    """Offset after the `}` closing an interpolation whose body starts at `i`."""
    depth = 1
    for tok in _lex(text, i):
        if tok.text in ("{", "${"):
            depth += 1
        elif tok.text == "}":
            depth -= 1
            if depth == 0:
                return tok.end
    raise NixSyntaxError("unterminated ${")


def _lex(text: str, i: int = 0) -> Iterator[Token]:
    n = len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
            continue
        if c == "#":
            j = text.find("\n", i)
            i = n if j < 0 else j + 1
            continue
        if text.startswith("/*", i):
            j = text.find("*/", i + 2)
            if j < 0:
                raise NixSyntaxError("unterminated comment")
            i = j + 2
            continue
        if c == '"' or text.startswith("''", i):
            indented = c == "'"
            end, value = _string_end(text, i + (2 if indented else 1), indented)
            yield Token("str", text[i:end], i, end, value)
            i = end
            continue
        m = _PATH.match(text, i)
        if (
            m
            and "/" in m.group(0)
            and not text.startswith("//", i)
            and (m.group(0).startswith(("./", "../", "/", "~/", "<")) or _ID.match(text, i))
        ):
            yield Token("path", m.group(0), i, m.end())
            i = m.end()
            continue
        m = _ID.match(text, i)
        if m:
            yield Token("id", m.group(0), i, m.end())
            i = m.end()
            continue
        m = _NUM.match(text, i)
        if m:
            yield Token("num", m.group(0), i, m.end())
            i = m.end()
            continue
        for p in _PUNCT:
            if text.startswith(p, i):
                yield Token("punct", p, i, i + len(p))
                i += len(p)
                break
        else:
            yield Token("punct", c, i, i + 1)
            i += 1


def tokens(text: str) -> list[Token]:
    return list(_lex(text))


@dataclass
class Binding:
    """`a.b.c = value;`: the full attribute path, the value's tokens, where it is in the file."""

    path: tuple[str, ...]
    value: list[Token]
    start: int  # offset of the first attribute name
    end: int  # offset after the `;`

    @property
    def string(self) -> str | None:
        """The value when it is one plain string literal."""
        if len(self.value) == 1 and self.value[0].kind == "str":
            return self.value[0].value
        return None

    def mentions(self, name: str) -> bool:
        return any(t.kind == "id" and (t.text == name or t.text.endswith("." + name)) for t in self.value)


@dataclass
class NixFile:
    text: str
    bindings: list[Binding] = field(default_factory=list)
    toks: list[Token] = field(default_factory=list)
    top_braces: list[tuple[int, int]] = field(default_factory=list)  # outermost attribute sets (open, close)


class _Reader:
    def __init__(self, text: str) -> None:
        self.toks = tokens(text)
        self.match: dict[int, int] = {}
        stack: list[int] = []
        for k, t in enumerate(self.toks):
            if t.text in ("{", "${", "(", "["):
                stack.append(k)
            elif t.text in ("}", ")", "]"):
                if not stack:
                    raise NixSyntaxError(f"unbalanced {t.text!r} at offset {t.start}")
                self.match[stack.pop()] = k
        if stack:
            raise NixSyntaxError("unbalanced brackets")
        self.bindings: list[Binding] = []
        self.top_braces: list[tuple[int, int]] = []

    def text(self, k: int) -> str:
        return self.toks[k].text if k < len(self.toks) else ""

    def is_pattern(self, k: int) -> bool:
        """A `{` that opens a function's argument pattern (`{ a, b ? 1, ... }:` or `… }@args`)."""
        close = self.match.get(k)
        return close is not None and self.text(close + 1) in (":", "@")

    def value(self, k: int, end: int, prefix: tuple[str, ...]) -> int:
        """Scan an expression from token `k` to its `;` (or to `end`); attribute sets inside get
        `prefix`. Returns the index of the `;` (or `end`)."""
        while k < end:
            t = self.toks[k].text
            if t == ";":
                return k
            if t in ("with", "assert"):
                k = self.value(k + 1, end, ("<" + t + ">",)) + 1
                continue
            if t == "let":
                k = self.attrs(k + 1, end, ("<let>",), stop="in") + 1
                continue
            if t == "{":
                close = self.match[k]
                if self.is_pattern(k):
                    k = close + 1
                    continue
                if prefix == ():
                    self.top_braces.append((k, close))
                self.attrs(k + 1, close, prefix)
                k = close + 1
                continue
            if t in ("(", "["):
                close = self.match[k]
                self.value(k + 1, close, prefix)
                k = close + 1
                continue
            if t == "${":
                k = self.match[k] + 1
                continue
            k += 1
        return end

    def attrs(self, k: int, end: int, prefix: tuple[str, ...], stop: str = "") -> int:
        """Bindings from token `k` up to `end` (or the keyword `stop`); returns where it ended."""
        while k < end:
            t = self.toks[k]
            if stop and t.text == stop:
                return k
            if t.text == "inherit":
                while k < end and self.text(k) != ";":
                    k = self.match.get(k, k) + 1 if self.text(k) == "(" else k + 1
                k += 1
                continue
            if t.text == ";":
                k += 1
                continue
            names: list[str] = []
            first = k
            while k < end:
                tk = self.toks[k]
                if tk.kind == "id":
                    names.append(tk.text)
                elif tk.kind == "str":
                    names.append(tk.value if tk.value is not None else "${…}")
                elif tk.text == "${":
                    names.append("${…}")
                    k = self.match[k]
                else:
                    break
                k += 1
                if self.text(k) != ".":
                    break
                k += 1
            if not names or self.text(k) != "=":
                # not a binding we can read: skip to the next `;` at this level
                k = self.value(k + 1 if not names else k, end, prefix) + 1
                continue
            path = prefix + tuple(names)
            semi = self.value(k + 1, end, path)
            start_off = self.toks[first].start
            end_off = self.toks[semi].end if semi < len(self.toks) else self.toks[-1].end
            self.bindings.append(Binding(path, self.toks[k + 1 : semi], start_off, end_off))
            k = semi + 1
        return end


def parse(text: str) -> NixFile:
    """Every binding of a Nix file; NixSyntaxError when the lexer cannot follow it."""
    reader = _Reader(text)
    reader.value(0, len(reader.toks), ())
    return NixFile(text, reader.bindings, reader.toks, reader.top_braces)
