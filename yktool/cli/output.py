"""Rendering: JSON on stdout for scripts, text for people; prompts and errors on stderr."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from yktool.errors import YktoolError
from yktool.plan import Plan


def _json_default(value: object) -> object:
    if isinstance(value, bytes):
        return value.hex()
    if hasattr(value, "to_json"):
        return value.to_json()
    return str(value)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=_json_default))


def emit(ctx_json: bool, data: Any, text: str) -> None:
    """Print `data` as JSON when --json was given, else the human `text`."""
    if ctx_json:
        emit_json(data)
    else:
        click.echo(text)


def info(message: str) -> None:
    """Progress and notes for the person: stderr, so stdout stays clean for scripts."""
    click.echo(message, err=True)


def warn(message: str) -> None:
    click.echo(click.style("warning: ", fg="yellow") + message, err=True)


def emit_error(err: YktoolError, as_json: bool = False) -> None:
    click.echo(click.style("yktool: error: ", fg="red", bold=True) + err.message, err=True)
    if err.hint:
        click.echo(f"  hint: {err.hint}", err=True)
    from yktool.cli.context import AppContext

    ctx = click.get_current_context(silent=True)
    obj = ctx.find_object(AppContext) if ctx else None
    if obj is None and (as_json or "--json" in sys.argv[1:]):
        obj = AppContext(json=True)
    if obj is not None and obj.json:
        emit_json({"ok": False, **err.to_json()})


def show_plan(plan: Plan, as_json: bool) -> None:
    if as_json:
        emit_json(plan.to_json())
    else:
        click.echo(plan.render(), err=False)
