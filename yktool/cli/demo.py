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
    """Run the TPM2 + LUKS2 enrollment on a software TPM and a scratch image, and prove it.

    Starts a swtpm on 127.0.0.1, makes a LUKS2 image in SCRATCH with a random passphrase file,
    simulates a measured boot (PCRs 0 and 7), enrolls the TPM2 (PCRs 0+7) and a recovery key,
    proves the TPM2 token opens the image, then simulates a Secure Boot change and shows the TPM
    refusing. Stops the swtpm at the end. Run it again: every step is reported as already done.
    """
    from yktool.demo import Demo
    from yktool.errors import CheckFailed

    ctx = Demo(scratch.absolute()).run(progress=info if app.verbose and not app.json else None)
    ok = all(line.ok for line in ctx.lines)
    width = max(len(line.stage) for line in ctx.lines)
    rows = [f"  {'ok' if ln.ok else 'FAIL':<4} {ln.stage:<{width}}  {ln.outcome}" for ln in ctx.lines]
    text = "\n".join([f"yktool demo in {scratch.absolute()}:", *rows,
                      f"  result: {'everything proven' if ok else 'something did not hold'}"])
    emit(app.json, {"ok": ok, "scratch": str(scratch.absolute()), "stages": [ln.to_json() for ln in ctx.lines]}, text)
    if not ok:
        raise CheckFailed("the demo found a step that did not hold", "see the lines marked FAIL above")
