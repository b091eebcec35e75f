"""What the global options say, handed to every command as `ctx.obj`."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

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
