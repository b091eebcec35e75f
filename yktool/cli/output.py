"""Rendering: JSON on stdout for scripts, text for people; prompts and errors on stderr."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import click

from yktool.errors import YktoolError
from yktool.plan import Plan

SCHEMA = 1
"""Version of the --json envelope: every document is `{"schema": 1, "ok": …, …}` (docs/json.md)."""


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
    from yktool.cli.context import current

    click.echo(json.dumps(envelope(data), indent=2, sort_keys=False, default=_json_default))
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
