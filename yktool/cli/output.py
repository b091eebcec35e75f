"""Rendering: JSON on stdout for scripts, text for people; prompts and errors on stderr."""

from __future__ import annotations

import codecs
import json
import re
import sys
from collections.abc import Mapping
from typing import Any

import click

from yktool.errors import YktoolError
from yktool.plan import Plan

SCHEMA = 1
"""Version of the --json envelope: every document is `{"schema": 1, "ok": …, …}` (docs/json.md)."""

ESCAPE_ERRORS = "yktool-escape"


def _escape_unencodable(exc: UnicodeError) -> tuple[str, int]:
    """Codec error handler for yktool's output streams: a byte that was not UTF-8 in a file
    (decoded with surrogateescape, so a lone surrogate U+DC80..U+DCFF) is shown as `\\xNN`,
    anything else the stream cannot encode as `\\uXXXX`, instead of UnicodeEncodeError."""
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    out = []
    for ch in exc.object[exc.start : exc.end]:
        code = ord(ch)
        out.append(
            f"\\x{code - 0xDC00:02x}"
            if 0xDC80 <= code <= 0xDCFF
            else f"\\u{code:04x}"
            if code <= 0xFFFF
            else f"\\U{code:08x}"
        )
    return "".join(out), exc.end


codecs.register_error(ESCAPE_ERRORS, _escape_unencodable)


def escape(text: str) -> str:
    """`text` as it will be printed: undecodable bytes (surrogates) as `\\xNN`."""
    return text.encode("utf-8", ESCAPE_ERRORS).decode("utf-8")


# C0 controls, DEL and C1 controls: ESC, CSI (0x9b), CR and BEL from a user's file would move the
# cursor, erase lines, retitle the window or forge a verdict on root's terminal
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """`text` safe for a terminal: control characters as `\\xNN` (a line is one line)."""
    return _CONTROLS.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def escape_streams() -> None:
    """Make stdout and stderr escape what they cannot encode (a non-UTF-8 byte from a file in
    evidence, or any text on an ASCII terminal) instead of crashing with UnicodeEncodeError:
    PYTHONIOENCODING=utf-8:strict or a strict wrapper (click's test runner) included."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if not callable(reconfigure):
            continue
        # click writes UTF-8 (with "?" for what it cannot encode) to a stream set to ASCII;
        # say UTF-8 here so that it keeps this stream and its escapes
        ascii_stream = codecs.lookup(getattr(stream, "encoding", None) or "ascii").name == "ascii"
        try:
            if ascii_stream:
                reconfigure(encoding="utf-8", errors=ESCAPE_ERRORS)
            else:
                reconfigure(errors=ESCAPE_ERRORS)
        except (ValueError, OSError, LookupError):  # closed or detached: nothing to print to
            continue


# a JSON escape of a lone surrogate (\udc80..\udcff) not preceded by an escaped backslash
_JSON_SURROGATE = re.compile(r"(?<!\\)((?:\\\\)*)\\udc([89a-f][0-9a-f])")


def _json_default(value: object) -> object:
    if isinstance(value, bytes):
        return value.hex()
    if hasattr(value, "to_json"):
        return value.to_json()
    return str(value)


def envelope(data: Mapping[str, Any], ok: bool = True) -> dict[str, Any]:
    """`data` in the one --json envelope: schema first, then ok (data's own `ok` wins)."""
    return {"schema": SCHEMA, "ok": ok, **data}


def emit_json(data: Mapping[str, Any]) -> None:
    """The envelope on stdout; a byte that was not UTF-8 in a file becomes the text `\\xNN` (a
    lone surrogate escape would be refused by strict JSON parsers)."""
    from yktool.cli.context import current

    text = json.dumps(envelope(data), indent=2, sort_keys=False, default=_json_default)
    click.echo(_JSON_SURROGATE.sub(r"\1\\\\x\2", text))
    app = current()
    if app is not None:
        app.json_emitted = True


def emit(ctx_json: bool, data: Mapping[str, Any], text: str) -> None:
    """Print `data` as JSON when --json was given, else the human `text`."""
    if ctx_json:
        emit_json(data)
    else:
        click.echo(text)


def info(message: str) -> None:
    """Progress and notes for the person: stderr, so stdout stays clean for scripts; -q drops them."""
    from yktool.cli.context import current

    app = current()
    if app is None or not app.quiet:
        click.echo(message, err=True)


def instruct(message: str) -> None:
    """What the person must do now (swap keys): stderr, also with -q."""
    click.echo(message, err=True)


def warn(message: str) -> None:
    click.echo(click.style("warning: ", fg="yellow") + message, err=True)


def emit_error(err: YktoolError, as_json: bool = False, color: bool | None = None) -> None:
    """The one error style: `yktool: error: …` and `  hint: …` on stderr (and JSON on stdout)."""
    from yktool.cli import context

    app = context.current() or context.last_run  # the handler runs after click's contexts closed
    click.echo(click.style("yktool: error: ", fg="red", bold=True) + err.message, err=True, color=color)
    if err.hint:
        click.echo(f"  hint: {err.hint}", err=True)
    wants_json = app.json if app is not None else as_json
    if wants_json and not (app is not None and app.json_emitted):  # the answer already went out
        click.echo(json.dumps(envelope(err.to_json(), ok=False), indent=2))


def show_plan(plan: Plan, as_json: bool) -> None:
    if as_json:
        emit_json(plan.to_json())
    else:
        click.echo(plan.render(), err=False)
