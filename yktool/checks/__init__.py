"""`yktool verify`'s checks: the hardening checklist and its tables (docs/verify.md), one check per item.

    from yktool.checks import run_checks, CheckContext
    results = run_checks(CheckContext(Host(root)), only=["sysctl", "2"], skip=["boot.sbctl"])

Each check has a stable id (`sysctl.kernel.kptr_restrict`, `boot.luks.fido2`, …) and a layer
0–7 as in the checklist's layers. `only`/`skip` take ids, id prefixes (`sysctl`, `ssh`) or layers
(`3`, `layer3`). Checks only read; none needs tpm2-pytss, ykman or python-fido2.
"""

from __future__ import annotations

from collections.abc import Iterable

from yktool.checks import auth, boot, hardware, kernel, mac, network, secrets  # noqa: F401 - registers
from yktool.checks.base import LAYER_NAMES, REGISTRY, Check, CheckContext, Evidence, Result
from yktool.errors import UsageError

__all__ = [
    "LAYER_NAMES",
    "REGISTRY",
    "Check",
    "CheckContext",
    "Evidence",
    "Result",
    "all_checks",
    "run_checks",
    "select",
    "summary",
]


def all_checks() -> list[Check]:
    """Every registered check, by layer then id."""
    return sorted(REGISTRY.values(), key=lambda c: (c.layer, c.id))


def _matches(check: Check, selector: str) -> bool:
    s = selector.strip().lower()
    if s.startswith("layer"):
        s = s[5:].lstrip(":= ")
    if s.isdigit():
        return check.layer == int(s)
    return check.id == s or check.id.startswith(s.rstrip(".") + ".")


def select(only: Iterable[str] = (), skip: Iterable[str] = ()) -> list[Check]:
    """The checks named by `only` (all when empty) minus those named by `skip`."""
    only, skip = [s for s in only if s], [s for s in skip if s]
    for sel in [*only, *skip]:
        if not any(_matches(c, sel) for c in REGISTRY.values()):
            raise UsageError(
                f"no check matches {sel!r}",
                "give a check id, an id prefix (sysctl, ssh, boot.luks) or a layer 0-7; "
                "`yktool verify --list` shows them",
            )
    chosen = [c for c in all_checks() if not only or any(_matches(c, s) for s in only)]
    return [c for c in chosen if not any(_matches(c, s) for s in skip)]


def run_checks(ctx: CheckContext, only: Iterable[str] = (), skip: Iterable[str] = ()) -> list[Result]:
    """Run the selected checks; never raises for what a check finds (bad files become warns)."""
    return [c.run(ctx) for c in select(only, skip)]


def summary(results: list[Result]) -> dict[str, int]:
    out = {"pass": 0, "fail": 0, "warn": 0, "n/a": 0}
    for r in results:
        out[r.status] += 1
    return out
