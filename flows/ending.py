"""What commission and replace share around their steps: the one-screen summary's pieces, the
touch budget, and the report behind the one ending (verify on what the run owns, the other
layers' results apart, Next steps). The rendering is in yktool/cli/flows.py."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from yktool.host import Host

from .runner import Outcome

if TYPE_CHECKING:
    from yktool.checks import Result

NIXOS_REBUILD = (
    "Rebuild NixOS with the module yktool wrote: sudo nixos-rebuild switch --flake .#HOST "
    "(PAM, udev and USBGuard come from it)"
)


def hostname(host: Host) -> str:
    """The root's /etc/hostname, or "" (the summary names the host it acts on)."""
    if host.exists("/etc/hostname"):
        return host.read_text("/etc/hostname").strip()
    return ""


def summary_item(head: str, items: list[str], width: int = 78) -> list[str]:
    """One summary entry, "head: a, b, c", wrapped to the screen (an 80-column terminal)."""
    text = f"{head}: {', '.join(items) if items else 'nothing left to do'}"
    return textwrap.wrap(text, width, initial_indent="  ", subsequent_indent="      ")


def luks_touches(spec: str | None) -> int:
    """A LUKS enrollment's touches: one for yktool's own (native) enrollment; a real key goes
    through systemd-cryptenroll, which asks its own two (make, then derive the secret)."""
    from yktool.luks.fido2 import SYSTEMD_ENROLL_TOUCHES, default_backend

    return 1 if default_backend(spec or "auto") == "native" else SYSTEMD_ENROLL_TOUCHES


def budget(touches: int) -> str:
    """ "3 touches, 1 PIN": one touch per credential made, one PIN entry per key."""
    return f"{touches} touch{'es' if touches != 1 else ''}, 1 PIN"


@dataclass
class FlowReport:
    """What a run did: each step's outcome, verify's results, touches and PIN prompts per key.
    `owned`: the verify checks that prove this run's own steps (the others are listed apart)."""

    outcomes: list[Outcome]
    results: list[Result]  # verify's
    counts: dict[str, dict[str, int]]  # role -> touches and PIN prompts
    notes: list[str]
    nothing_to_do: bool
    owned: set[str] = field(default_factory=set)

    @property
    def changed(self) -> bool:
        return any(o.status == "done" and o.id != "verify" for o in self.outcomes)

    @property
    def verify_ok(self) -> bool:
        """Every check of what this run owns passes (other layers' failures do not count)."""
        return not any(r.status == "fail" for r in self.results if r.id in self.owned)

    @property
    def not_ours(self) -> list[Result]:
        return [r for r in self.results if r.id not in self.owned]

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.verify_ok,
            "changed": self.changed,
            "nothing_to_do": self.nothing_to_do,
            "steps": [o.to_json() for o in self.outcomes],
            "verify": [r.to_json() for r in self.results],
            "not_part_of_this_run": sorted(r.id for r in self.not_ours),
            "counts": self.counts,
            "notes": list(self.notes),
        }
