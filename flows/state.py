"""A flow's progress on disk, so an interrupted wizard resumes at the step it stopped.

Kept at /var/lib/yktool/<flow>.json under the root, written atomically after every step. It
holds the answers the flow was started with (never a secret) and the ids of finished steps. A
step killed half-way is not marked: the re-run does it again, and every step is idempotent.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from yktool.errors import UsageError
from yktool.host import Host

STATE_DIR = "/var/lib/yktool"


@dataclass
class FlowState:
    flow: str
    answers: dict[str, Any] = field(default_factory=dict)
    done: list[str] = field(default_factory=list)
    started: str = ""
    finished: str = ""
    # step-private marks that must survive a kill (e.g. "a recovery key was made but not yet shown")
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> str:
        return f"{STATE_DIR}/{self.flow}.json"

    @classmethod
    def load(cls, host: Host, flow: str) -> FlowState:
        state = cls(flow)
        real = host.path(state.path)
        if not real.exists():
            return state
        try:
            raw = json.loads(host.read_text(state.path))
            return cls(
                flow,
                dict(raw.get("answers", {})),
                list(raw.get("done", [])),
                str(raw.get("started", "")),
                str(raw.get("finished", "")),
                dict(raw.get("extra", {})),
            )
        except (ValueError, AttributeError, TypeError):  # not JSON, or JSON of another shape
            raise UsageError(
                f"{state.path} is damaged", f"delete it to start the {flow} flow afresh (every step is idempotent)"
            ) from None

    def save(self, host: Host) -> None:
        host.mkdir(STATE_DIR, 0o700)
        body = {
            "flow": self.flow,
            "answers": self.answers,
            "done": self.done,
            "started": self.started,
            "finished": self.finished,
            "extra": self.extra,
        }
        host.write_file(self.path, json.dumps(body, indent=2) + "\n", 0o600, backup=False)

    def mark(self, host: Host, step_id: str) -> None:
        if step_id not in self.done:
            self.done.append(step_id)
        self.save(host)

    def check_resume(self, host: Host, answers: dict[str, Any]) -> None:
        """Refuse other answers while an unfinished run is on disk (writes nothing: --dry-run)."""
        if self.done and not self.finished and self.answers and self.answers != answers:
            changed = sorted(k for k in set(answers) | set(self.answers) if answers.get(k) != self.answers.get(k))
            raise UsageError(
                f"an unfinished {self.flow} run exists with other answers ({', '.join(changed)})",
                f"re-run with the same answers to resume, or delete {host.root}{self.path} to start over",
            )

    @property
    def resuming(self) -> bool:
        return bool(self.done) and not self.finished

    def begin(self, host: Host, answers: dict[str, Any]) -> None:
        """Start, or resume when the answers match the unfinished run on disk."""
        self.check_resume(host, answers)
        if self.finished and self.answers != answers:
            self.done, self.finished, self.extra = [], "", {}
        self.answers = answers
        self.started = self.started or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.save(host)

    def finish(self, host: Host) -> None:
        self.finished = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.save(host)
