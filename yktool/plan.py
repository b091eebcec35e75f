"""Plan and Step: what a command or flow will do, shown before it is done.

A Step names what it does, what it touches and how it will be proven. `Plan.apply` runs each
step that is not already done (`is_done`), then proves it (`prove`); `--dry-run` renders the plan
and stops. The library builds plans; the CLI and the flows show them and ask.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

StepStatus = Literal["pending", "already-done", "done", "skipped", "failed"]


@dataclass
class Step:
    id: str
    description: str
    touches: list[str] = field(default_factory=list)
    verify: str = ""
    action: Callable[[], object] | None = None
    # returns True when the step's outcome already holds (idempotent re-runs skip it)
    is_done: Callable[[], bool] | None = None
    # reads the result back with the consumer's own tool; raises on failure
    prove: Callable[[], object] | None = None
    status: StepStatus = "pending"
    detail: str = ""

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "description": self.description,
            "touches": list(self.touches),
            "verify": self.verify,
            "status": self.status,
            "detail": self.detail,
        }


@dataclass
class Plan:
    title: str
    steps: list[Step] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, step: Step) -> Step:
        self.steps.append(step)
        return step

    def to_json(self) -> dict[str, object]:
        return {
            "plan": self.title,
            "steps": [s.to_json() for s in self.steps],
            "notes": list(self.notes),
        }

    def render(self) -> str:
        lines = [f"Plan: {self.title}"]
        for n, step in enumerate(self.steps, 1):
            mark = {
                "already-done": " (already done)",
                "done": " (done)",
                "skipped": " (skipped)",
                "failed": " (FAILED)",
            }.get(step.status, "")
            lines.append(f"  {n}. {step.description}{mark}")
            if step.touches:
                lines.append(f"     changes: {', '.join(step.touches)}")
            if step.verify:
                lines.append(f"     proven by: {step.verify}")
            if step.detail:
                lines.append(f"     {step.detail}")
        lines.extend(f"  note: {note}" for note in self.notes)
        return "\n".join(lines)

    def apply(self, on_step: Callable[[Step], None] | None = None) -> None:
        """Run every pending step in order: skip what is already done, act, then prove.

        Stops at the first failure (the exception propagates); earlier steps stay done, so a
        re-run resumes at the failed step.
        """
        for step in self.steps:
            if step.status in ("skipped", "done", "already-done"):
                continue
            if step.is_done is not None and step.is_done():
                step.status = "already-done"
            else:
                try:
                    if step.action is not None:
                        step.action()
                    if step.prove is not None:
                        step.prove()
                except BaseException:
                    step.status = "failed"
                    if on_step:
                        on_step(step)
                    raise
                step.status = "done"
            if on_step:
                on_step(step)

    @property
    def changed(self) -> bool:
        return any(s.status == "done" for s in self.steps)
