"""What the global options say, handed to every command as `ctx.obj`."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:  # imported when a command first needs it: `yktool --help` skips subprocess & co.
    from yktool.host import Host


@dataclass
class AppContext:
    root: str = "/"
    dry_run: bool = False
    json: bool = False
    yes: bool = False
    tpm: str = "auto"
    device: str = "auto"
    verbose: int = 0
    lock_wait: float | None = None  # seconds a run waits for the root's lock (None: the default)

    @cached_property
    def host(self) -> Host:
        from yktool.host import Host

        return Host(Path(self.root))

    @cached_property
    def key_spec(self) -> str:
        """--device for opening the key: with `auto` and several keys on a terminal, the one the
        person picks (asked once per command)."""
        from yktool.cli.prompts import choose_device

        return choose_device(self.device) or self.device


def app() -> AppContext:
    """The AppContext of the running command (works in any nested command)."""
    ctx = click.get_current_context()
    obj = ctx.find_object(AppContext)
    if obj is None:  # a command invoked on its own, e.g. in a test
        obj = AppContext()
        ctx.obj = obj
    return obj


pass_app = click.make_pass_decorator(AppContext, ensure=True)


# --------------------------------------------------------------------------- the root's lock
C = TypeVar("C", bound=click.Command)
READ_ONLY = "yktool_read_only"
GUARDED = "yktool_guarded"


def read_only(command: C) -> C:
    """Mark a command that changes nothing on the root: it runs without the root's lock, so it
    never waits for (or blocks) a run that changes something. Everything else takes the lock."""
    setattr(command, READ_ONLY, True)
    return command


def guard(command: C) -> C:
    """Make every command under `command` (a group or one command) hold the root's lock for its
    whole run, from the first read that decides to the last write, unless it is `read_only` or
    asked for --dry-run. Called once where commands are looked up (LazyGroup.get_command), so a
    new command cannot forget the lock: it is locked until someone marks it read-only."""
    if getattr(command, GUARDED, False):
        return command
    setattr(command, GUARDED, True)
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            guard(sub)
        return command
    if getattr(command, READ_ONLY, False) or command.callback is None:
        return command
    command.callback = _locked(command.callback)
    return command


def _locked(callback: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(callback)
    def run(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        obj = app()
        if obj.dry_run:
            return callback(*args, **kwargs)
        from yktool.lock import root_lock

        with root_lock(obj.host, ctx.command_path, obj.lock_wait):
            return callback(*args, **kwargs)

    return run
