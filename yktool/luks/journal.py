"""Journals of LUKS changes that take more than one header write, so a killed run is recognised.

One small JSON file per volume (by UUID) under yktool's state folder of the root
(`/var/lib/yktool/<kind>/<uuid>.json`, mode 0600, the folder 0700). It is written *before* the
first header write and removed after the last step (for a recovery key: after the key was shown),
so a journal left behind means "a run stopped in between". It holds public header facts only
(slot numbers, a token's JSON), never a secret. Users: the FIDO2 enrollment (`luks-fido2`) and
the recovery key (`luks-recovery`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from yktool.host import Host
from yktool.lock import state_host


@dataclass(frozen=True)
class Journal:
    kind: str  # the folder under the state folder, e.g. "luks-fido2"

    def _where(self, host: Host, uuid: str) -> tuple[Host, PurePosixPath]:
        state, folder = state_host(host)
        return state, folder / self.kind / f"{uuid}.json"

    def read(self, host: Host, uuid: str) -> dict[str, Any] | None:
        """The journal of volume `uuid`, or None (none, or not a JSON object: ignored)."""
        state, path = self._where(host, uuid)
        if not state.exists(path):
            return None
        try:
            data = json.loads(state.read_text(path))
        except json.JSONDecodeError:
            return None
        return data if isinstance(data, dict) else None

    def write(self, host: Host, uuid: str, entry: dict[str, Any]) -> None:
        state, path = self._where(host, uuid)
        state.mkdir(path.parent.parent, 0o700)
        state.mkdir(path.parent, 0o700)
        state.write_file(path, json.dumps(entry, indent=2) + "\n", 0o600, backup=False)

    def clear(self, host: Host, uuid: str) -> None:
        state, path = self._where(host, uuid)
        state.remove(path, backup=False)


FAULT_ENV = "YKTOOL_FAULT"  # test hook: the name of a point where a journaled run dies like kill -9


def fault(point: str) -> None:
    """Fault injection for tests: die without cleanup, as a kill -9 would, at `point` (points:
    `after-keyslot`, `after-token` in luks.fido2; `recovery-after-enroll` in luks.recovery)."""
    if os.environ.get(FAULT_ENV) == point:
        os._exit(137)


FIDO2_JOURNAL = Journal("luks-fido2")
RECOVERY_JOURNAL = Journal("luks-recovery")
