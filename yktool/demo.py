"""The demo: the whole TPM2 + LUKS2 job on a software TPM and a scratch image, start to finish.

Everything lives in one scratch folder (used as the Host root): the swtpm state, a 32 MiB LUKS2
image and its random passphrase file (0600). The TPM is a swtpm on 127.0.0.1, started for the
run and stopped at its end. Running it again reuses the image and the TPM state and reports each
step as already done. Later capabilities add stages (`Demo.stages`).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from yktool import swtpm
from yktool.errors import ToolFailed
from yktool.host import Host
from yktool.luks.header import read_header
from yktool.luks.recovery import plan_add_recovery
from yktool.luks.tpm2 import plan_enroll_tpm2
from yktool.luks.unlock import PCR_CHANGED, UnlockContext, test_tokens
from yktool.tpm import extend_pcr, is_unmeasured, read_pcrs

IMAGE = PurePosixPath("/disk.img")
PASSPHRASE = PurePosixPath("/disk.passphrase")
TPM_STATE = PurePosixPath("/swtpm")


@dataclass
class DemoLine:
    stage: str
    outcome: str
    ok: bool = True

    def to_json(self) -> dict[str, Any]:
        return {"stage": self.stage, "outcome": self.outcome, "ok": self.ok}


@dataclass
class DemoContext:
    """What the stages share: the scratch Host, the running swtpm, the report so far."""

    host: Host
    scratch: Path
    tpm: swtpm.SwTpm | None = None
    lines: list[DemoLine] = field(default_factory=list)
    progress: Callable[[str], None] | None = None

    def report(self, stage: str, outcome: str, ok: bool = True) -> None:
        self.lines.append(DemoLine(stage, outcome, ok))
        if self.progress:
            self.progress(f"{'ok ' if ok else '!! '} {stage}: {outcome}")

    @property
    def device(self) -> str:
        return str(IMAGE)

    @property
    def passphrase(self) -> bytes:
        return self.host.read_bytes(PASSPHRASE)

    def require_tpm(self) -> swtpm.SwTpm:
        if self.tpm is None:
            raise ToolFailed("the demo's software TPM is not running", "this is a bug in yktool")
        return self.tpm


def stage_tpm(ctx: DemoContext) -> None:
    ctx.tpm = swtpm.start(ctx.host, TPM_STATE)
    ctx.report("software TPM", f"swtpm on {ctx.tpm.tcti_spec} (state in {ctx.scratch / 'swtpm'})")


def stage_image(ctx: DemoContext) -> None:
    if ctx.host.exists(IMAGE):
        header = read_header(ctx.host, IMAGE)  # NotLuks etc. if someone broke it: says what to do
        ctx.report("LUKS2 image", f"{ctx.scratch / 'disk.img'} already there ({len(header.usable_slots)} keyslots)")
        return
    # the passphrase file is the demo's artefact (a scratch secret): mode 0600 before content
    ctx.host.write_file(PASSPHRASE, secrets.token_urlsafe(32), 0o600, backup=False)
    real = ctx.host.path(IMAGE)
    with open(real, "wb") as fh:
        fh.truncate(32 * 1024 * 1024)
    ctx.host.run(["cryptsetup", "luksFormat", "--type", "luks2", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations",
                  "1000", "--batch-mode", "--key-file", str(ctx.host.path(PASSPHRASE)), str(real)])
    ctx.report("LUKS2 image", f"made {ctx.scratch / 'disk.img'} (passphrase in disk.passphrase, mode 0600)")


def stage_measured_boot(ctx: DemoContext) -> None:
    tpm = ctx.require_tpm()
    if is_unmeasured(read_pcrs(tpm.tcti, [7])[7]):
        swtpm.measure_boot(tpm)
        ctx.report("measured boot", "firmware and Secure Boot policy measured into PCRs 0 and 7")
    else:
        ctx.report("measured boot", "PCRs 0 and 7 already measured")


def stage_enroll_tpm2(ctx: DemoContext) -> None:
    tpm = ctx.require_tpm()
    op = plan_enroll_tpm2(ctx.host, IMAGE, tpm.tcti, [0, 7])
    op.unlock = ctx.passphrase
    op.plan.apply()
    what = "enrolled and proven to open" if op.plan.changed else "already enrolled"
    ctx.report("TPM2 enrollment", f"token {op.new_token} sealed to PCRs 0+7: {what}")


def stage_recovery(ctx: DemoContext) -> None:
    op = plan_add_recovery(ctx.host, IMAGE)
    op.unlock = ctx.passphrase
    op.plan.apply()
    op.key = None  # a scratch image's recovery key is not worth showing; it was proven, now forgotten
    if op.new_slot is not None:
        ctx.report("recovery key", f"keyslot {op.new_slot}, proven with cryptsetup --test-passphrase (not shown)")
    else:
        ctx.report("recovery key", "already enrolled")


def stage_test_unlock(ctx: DemoContext) -> None:
    tpm = ctx.require_tpm()
    results = test_tokens(UnlockContext(ctx.host, IMAGE, read_header(ctx.host, IMAGE), tpm.tcti),
                          [t.id for t in read_header(ctx.host, IMAGE).tokens_of_type("systemd-tpm2")])
    for r in results:
        ctx.report("test-unlock", f"TPM2 token {r.token_id}: {r.message}", r.ok)


def stage_tamper(ctx: DemoContext) -> None:
    tpm = ctx.require_tpm()
    extend_pcr(tpm.tcti, 7, b"yktool demo: an attacker's Secure Boot db")
    header = read_header(ctx.host, IMAGE)
    results = test_tokens(UnlockContext(ctx.host, IMAGE, header, tpm.tcti),
                          [t.id for t in header.tokens_of_type("systemd-tpm2")])
    for r in results:
        refused = r.status == PCR_CHANGED
        ctx.report("tamper (PCR 7 changed)", f"TPM2 token {r.token_id} refuses: {r.message}" if refused
                   else f"TPM2 token {r.token_id} did NOT refuse: {r.message}", refused)


DEFAULT_STAGES: list[Callable[[DemoContext], None]] = [
    stage_tpm, stage_image, stage_measured_boot, stage_enroll_tpm2, stage_recovery, stage_test_unlock, stage_tamper,
]


@dataclass
class Demo:
    """The demo run: `stages` in order, then the swtpm stopped whatever happened."""

    scratch: Path
    stages: list[Callable[[DemoContext], None]] = field(default_factory=lambda: list(DEFAULT_STAGES))

    def run(self, progress: Callable[[str], None] | None = None) -> DemoContext:
        self.scratch.mkdir(parents=True, exist_ok=True, mode=0o700)
        ctx = DemoContext(Host(self.scratch), self.scratch, progress=progress)
        try:
            for stage in self.stages:
                stage(ctx)
        finally:
            if ctx.tpm is not None:
                swtpm.stop(ctx.tpm)
        return ctx
