"""`yktool verify`: the hardening checklist (docs/verify.md), checked, with evidence and a fix per miss."""

from __future__ import annotations

import os
import re
import sys
from typing import TYPE_CHECKING

import click

from yktool.cli.context import AppContext, pass_app, read_only
from yktool.cli.output import printable

if TYPE_CHECKING:
    from yktool.checks import Result

SYMBOL = {"pass": ("PASS", "green"), "fail": ("FAIL", "red"), "warn": ("WARN", "yellow"), "n/a": (" n/a", None)}


NIXOS_MARK = re.compile(r"\s*\|?\s*NixOS:\s*")


def split_fix(fix: str) -> tuple[str | None, str | None]:
    """A fix as (what to run on a plain system, what to set on NixOS): its text says
    `COMMAND  |  NixOS: OPTION`; either part may be missing."""
    if not fix:
        return None, None
    command, nixos = [*NIXOS_MARK.split(fix, maxsplit=1), ""][:2]
    return command.strip() or None, nixos.strip() or None


def _check_json(result: Result) -> dict[str, object]:
    command, nixos = split_fix(result.fix)
    return {**result.to_json(), "fix_command": command, "fix_nixos": nixos}


def _split(values: tuple[str, ...]) -> list[str]:
    return [v.strip() for raw in values for v in raw.split(",") if v.strip()]


def _pcrs(text: str) -> tuple[int, ...]:
    try:
        return tuple(sorted({int(p) for p in text.replace(",", "+").split("+") if p.strip()}))
    except ValueError:
        from yktool.errors import UsageError

        raise UsageError(f"--tpm2-pcrs {text!r} is not a list of PCR numbers", "give e.g. 7 or 0+7") from None


@read_only
@click.command("verify")
@click.option(
    "--only",
    multiple=True,
    metavar="SEL",
    help="Run only these checks: an id, an id prefix (sysctl, ssh, boot.luks) or a layer 0-7. Repeatable,"
    " or comma-separated.",
)
@click.option("--skip", multiple=True, metavar="SEL", help="Skip these checks (same forms as --only).")
@click.option(
    "--secrets",
    type=click.Path(dir_okay=False),
    default=None,
    help="agenix secrets.nix to check this host's scoping in (a path on this machine).",
)
@click.option("--user", default=None, help="The user whose sk SSH key to look for (default: every login user).")
@click.option("--tpm2-pcrs", default="7", show_default=True, help="PCRs the TPM2 token must be bound to (e.g. 0+7).")
@click.option(
    "--luks-device",
    default=None,
    metavar="PATH",
    help="Check this LUKS2 device or image (inside --root) instead of the one under `/`.",
)
@click.option("--list", "list_only", is_flag=True, help="List the checks (id, layer, title) and exit.")
@pass_app
def verify(
    app: AppContext,
    only: tuple[str, ...],
    skip: tuple[str, ...],
    secrets: str | None,
    user: str | None,
    tpm2_pcrs: str,
    luks_device: str | None,
    list_only: bool,
) -> None:
    """Check the host against the hardening checklist and its tables (see docs/verify.md).

    Every item is a check with a stable id and a layer (0-7, as in the checklist): pass, fail,
    warn (e.g. needs root to read, or a file it could not parse) or n/a. Each miss shows what was
    read, where, and the fix (a command, or the NixOS option). Works on the live host or an
    offline tree (`yktool --root DIR verify`); reads only.

    Exit 0 when nothing fails, 1 when a check fails.

    \b
    Examples:
      sudo yktool verify
      yktool verify --only ssh,boot.luks --json
      yktool --root /mnt verify --luks-device /var/lib/images/root.img
      yktool verify --list
    """
    from yktool.checks import CheckContext, all_checks, run_checks, select, summary

    if list_only:
        checks = select(_split(only), _split(skip)) if (only or skip) else all_checks()
        if app.json:
            from yktool.cli.output import emit_json

            emit_json({"checks": [{"id": c.id, "layer": c.layer, "title": c.title} for c in checks]})
        else:
            for c in checks:
                click.echo(f"{c.layer}  {c.id:<44} {c.title}")
        return
    from yktool.nixos.generation import generation_view, is_nixos, needs_rebuild

    ctx = CheckContext(
        generation_view(app.host),
        user=user,
        secrets=os.path.abspath(secrets) if secrets else None,
        tpm2_pcrs=_pcrs(tpm2_pcrs),
        luks_device=luks_device,
    )
    results = run_checks(ctx, _split(only), _split(skip))
    counts = summary(results)
    rebuild = needs_rebuild(app.host, results) if is_nixos(app.host) else None
    if app.json:
        from yktool.cli.output import emit_json

        emit_json(
            {
                "ok": counts["fail"] == 0,
                "root": str(app.host.root),
                "privileged": ctx.privileged,
                "summary": counts,
                "checks": [_check_json(r) for r in results],
                **({"nixos": rebuild.to_json()} if rebuild else {}),
            }
        )
    else:
        _render(results, counts, app.verbose)
        if rebuild and rebuild.checks:
            click.echo(click.style(rebuild.text(), fg="yellow"))
    if counts["fail"]:
        sys.exit(1)


def _render(results: list[Result], counts: dict[str, int], verbose: int) -> None:
    from yktool.checks import LAYER_NAMES

    by_layer: dict[int, list[Result]] = {}
    for r in results:
        by_layer.setdefault(r.layer, []).append(r)
    width = max((len(r.id) for rs in by_layer.values() for r in rs), default=10)
    for layer in sorted(by_layer, reverse=True):  # layer 7 first, as the checklist draws them
        click.echo(click.style(f"Layer {layer}: {LAYER_NAMES[layer]}", bold=True))
        for r in sorted(by_layer[layer], key=lambda x: x.id):
            label, colour = SYMBOL[r.status]
            click.echo(f"  {click.style(label, fg=colour, bold=r.status == 'fail')}  {r.id:<{width}}  {r.title}")
            if r.status in ("fail", "warn") or verbose:
                if r.reason:
                    click.echo(f"        {printable(r.reason)}")
                for e in r.evidence[:4]:
                    click.echo(click.style(f"        read {printable(e.render())}", dim=True))
                if r.fix and r.status in ("fail", "warn"):
                    click.echo(f"        fix: {r.fix}")
    total = sum(counts.values())
    line = f"{total} checks: {counts['pass']} pass, {counts['fail']} fail, {counts['warn']} warn, {counts['n/a']} n/a"
    needs_root = sum(1 for r in results if r.needs_root)
    if needs_root:
        line += f" ({needs_root} need root: run with sudo for a full answer)"
    click.echo(click.style(line, fg="red" if counts["fail"] else "green", bold=True))
