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
    quiet: bool = False
    # a JSON document went to stdout: an error after it goes to stderr only (one document a run)
    json_emitted: bool = False
    lock_wait: float | None = None  # seconds a run waits for the root's lock (None: the default)

    @cached_property
    def host(self) -> Host:
        """The Host of --root, refused (exit 2) when that folder does not exist: verifying or
        writing into a typo would answer for a tree that is not there."""
        import os

        from yktool.errors import UsageError
        from yktool.host import Host

        if not os.path.isdir(self.root):
            what = "is not a folder" if os.path.lexists(self.root) else "does not exist"
            raise UsageError(
                f"--root {self.root} {what}",
                "give the folder the offline tree is mounted at (or leave --root out for /)",
            )
        return Host(Path(self.root))

    @cached_property
    def key_spec(self) -> str:
        """--device for opening the key: with `auto` and several keys on a terminal, the one the
        person picks (asked once per command)."""
        from yktool.cli.prompts import choose_device

        return choose_device(self.device) or self.device


last_run: AppContext | None = None
"""The AppContext of the latest run, for the error handler, which runs after click's contexts
are gone."""


def current() -> AppContext | None:
    """The running command's AppContext, or None outside a command (no click context)."""
    ctx = click.get_current_context(silent=True)
    return ctx.find_object(AppContext) if ctx is not None else None


def watch_commands(verbose: int) -> Callable[[], None]:
    """-v: show each command Host runs (argv only: secrets never are in it) on stderr; -vv adds
    how long it took and its exit code. Returns the function that stops it."""
    import shlex
    import time

    from yktool import host

    def watcher(argv: list[str]) -> Callable[[int | None], None]:
        click.echo(click.style(f"+ {shlex.join(argv)}", dim=True), err=True)
        start = time.monotonic()

        def finished(code: int | None) -> None:
            if verbose >= 2:
                outcome = "timed out" if code is None else f"exit {code}"
                click.echo(click.style(f"  {time.monotonic() - start:.3f} s, {outcome}", dim=True), err=True)

        return finished

    host.command_watcher = watcher

    def stop() -> None:
        host.command_watcher = None

    return stop


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
