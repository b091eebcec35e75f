"""`yktool demo`: the main job on the built-in default (software TPM, scratch LUKS2 image)."""

from __future__ import annotations

from pathlib import Path

import click

from yktool.cli.context import AppContext, pass_app
from yktool.cli.output import emit, info


@click.command("demo")
@click.option("--scratch", default="scratch", show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for everything the demo makes (created; nothing outside it is touched).")
@pass_app
def demo(app: AppContext, scratch: Path) -> None:
    """Run `yktool commission` on the built-in default and prove every step: no hardware needed.

    In SCRATCH: two software keys (sim:), a swtpm on 127.0.0.1, a 32 MiB LUKS2 image and a
    scratch root (SCRATCH/root: an /etc, alice's home). Commissions it non-interactively (TPM2
    PCRs 0+7 and a recovery key; per key: PIN, LUKS2 FIDO2, ed25519-sk SSH key, git signing,
    pam_u2f, udev lock rule, USBGuard rule), runs verify on what the root covers, tests the TPM2
    unlock and shows the TPM refusing after a Secure Boot change. Prints touches and PIN entries
    per key, and the command to rehearse losing a key with `yktool replace`. Nothing outside
    SCRATCH is touched. Run it again: nothing changes.
    """
    from yktool.demo import Demo
    from yktool.errors import CheckFailed

    ctx = Demo(scratch.absolute()).run(progress=info if app.verbose and not app.json else None)
    ok = all(line.ok for line in ctx.lines)
    width = max(len(line.stage) for line in ctx.lines)
    rows = [f"  {'ok' if ln.ok else 'FAIL':<4} {ln.stage:<{width}}  {ln.outcome}" for ln in ctx.lines]
    counts = "; ".join(f"{role}: {c['touches']} touches, {c['pin_prompts']} PIN entr"
                       f"{'y' if c['pin_prompts'] == 1 else 'ies'}" for role, c in ctx.counts.items())
    text = "\n".join([f"yktool demo in {scratch.absolute()}:", *rows,
                      f"  touches and PIN entries: {counts or 'no key was needed (nothing left to do)'}",
                      f"  rehearse losing the primary key:\n    {ctx.replace_command()}",
                      f"  result: {'everything proven' if ok else 'something did not hold'}"])
    emit(app.json, {"ok": ok, "scratch": str(scratch.absolute()), "stages": [ln.to_json() for ln in ctx.lines],
                    "counts": ctx.counts, "replace_command": ctx.replace_command()}, text)
    if not ok:
        raise CheckFailed("the demo found a step that did not hold", "see the lines marked FAIL above")
