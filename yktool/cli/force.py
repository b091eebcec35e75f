"""`--force` past a last-way-in refusal needs the key's name typed: on a terminal it is asked;
with --yes or without a terminal it must be given as `--confirm NAME` (--force alone is never
enough, so a script cannot lock someone out by one flag)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from yktool.errors import Refused

if TYPE_CHECKING:
    from yktool.lastway import Loss

confirm_option = click.option(
    "--confirm",
    "confirm",
    multiple=True,
    metavar="NAME",
    help="With --force and no terminal (or --yes): the key's registry name, typed out, to confirm the "
    "loss --force allows; repeatable.",
)

force_option = click.option(
    "--force",
    is_flag=True,
    help="Go ahead even when a user is left without a pam_u2f credential (where PAM requires one) or "
    "without any SSH key; the key's name must be typed (on a terminal) or given with --confirm.",
)


def confirm_forced(found: list[Loss], names: list[str], given: tuple[str, ...], *, yes: bool) -> None:
    """Nothing to confirm without losses; else every name in `names` typed, or given by --confirm."""
    if not found:
        return
    wanted = list(dict.fromkeys(names))
    if all(n in given for n in wanted):
        return
    what = "; ".join(x.message for x in found)
    if not yes and sys.stdin.isatty():
        click.echo(f"--force: {what}.", err=True)
        typed = click.prompt(f"Type {' '.join(wanted)} to go ahead anyway", default="", show_default=False, err=True)
        if typed.split() == wanted:
            return
        raise Refused(
            "not confirmed (what was typed is not the key's name); nothing changed",
            f"run again and type {' '.join(wanted)}",
        )
    raise Refused(
        f"--force needs a typed confirmation, and there is no terminal to ask ({what})",
        "pass " + " ".join(f"--confirm {n}" for n in wanted) + " as well, if you mean it",
    )
