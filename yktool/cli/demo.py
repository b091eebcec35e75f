"""`yktool demo`: the main job on the built-in default (software TPM, scratch LUKS2 image)."""

from __future__ import annotations

from pathlib import Path

import click

from yktool.cli.context import AppContext, pass_app, read_only
from yktool.cli.output import emit, info, show_plan


@read_only  # works on its own scratch root (its flows lock that one), never on --root
@click.command("demo")
@click.option(
    "--scratch",
    default="scratch",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for everything the demo makes (created; nothing outside it is touched).",
)
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

    \b
    Examples:
      yktool demo
      yktool --dry-run demo --scratch /tmp/yk-demo
      yktool demo --json
    """
    if app.dry_run:
        _show_plan(app, scratch.absolute())
        return
    from yktool.demo import Demo
    from yktool.errors import CheckFailed

    ctx = Demo(scratch.absolute()).run(progress=info if app.verbose and not app.json else None)
    ok = all(line.ok for line in ctx.lines)
    width = max(len(line.stage) for line in ctx.lines)
    rows = [f"  {'ok' if ln.ok else 'FAIL':<4} {ln.stage:<{width}}  {ln.outcome}" for ln in ctx.lines]
    counts = "; ".join(
        f"{role}: {c['touches']} touches, {c['pin_prompts']} PIN entr{'y' if c['pin_prompts'] == 1 else 'ies'}"
        for role, c in ctx.counts.items()
    )
    text = "\n".join(
        [
            f"yktool demo in {scratch.absolute()}:",
            *rows,
            f"  touches and PIN entries: {counts or 'no key was needed (nothing left to do)'}",
            f"  rehearse losing the primary key:\n    {ctx.replace_command()}",
            f"  result: {'everything proven' if ok else 'something did not hold'}",
        ]
    )
    emit(
        app.json,
        {
            "ok": ok,
            "scratch": str(scratch.absolute()),
            "stages": [ln.to_json() for ln in ctx.lines],
            "counts": ctx.counts,
            "replace_command": ctx.replace_command(),
        },
        text,
    )
    if not ok:
        raise CheckFailed("the demo found a step that did not hold", "see the lines marked FAIL above")


def _show_plan(app: AppContext, scratch: Path) -> None:
    """--dry-run: what the demo would do, and that it touches SCRATCH only (nothing is made)."""
    from yktool.plan import Plan, Step

    plan = Plan(f"yktool demo in {scratch}")
    for step_id, what in (
        ("keys", "make (or reuse) two software keys, sim:SCRATCH/keys/primary.json and backup.json"),
        ("tpm", "start a swtpm on 127.0.0.1 with its state in SCRATCH/swtpm"),
        ("root", "make a scratch root in SCRATCH/root (an /etc, alice's home)"),
        ("image", "make a 32 MiB LUKS2 image in the root, its passphrase in a 0600 file"),
        ("measured-boot", "measure firmware and Secure Boot policy into PCRs 0 and 7"),
        ("commission", "commission both keys and the TPM2 non-interactively, then verify"),
        ("test-unlock", "prove the TPM2 token opens the image"),
        ("tamper", "change PCR 7 and show the TPM2 token refusing; stop the swtpm"),
    ):
        plan.add(Step(step_id, what, touches=[str(scratch)]))
    show_plan(plan, app.json)
