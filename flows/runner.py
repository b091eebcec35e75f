"""Running a flow's steps in order, resumably: plan → (confirm) → act + prove, step by step.

Each FlowStep is idempotent: it looks at the host first and does only what is missing, then
proves its outcome with the consumer's own tool. After a step succeeds its id is written to the
FlowState (atomically), so a killed run resumes at the first step not marked done.

Fault injection for the tests (and for rehearsing a crash by hand): `YKTOOL_FAULT=after:<step-id>`
ends the process with `os._exit(137)` (as kill -9 would) right after that step was marked done;
`YKTOOL_FAULT=before:<step-id>` just before the step starts; `interrupt-after:<step-id>` is a
Ctrl-C there.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from yktool.host import Host
from yktool.plan import Plan, Step

from .state import FlowState

FAULT_ENV = "YKTOOL_FAULT"


@dataclass
class FlowStep:
    """One step of a flow. `run` acts (idempotently) and proves; it returns a one-line outcome."""

    id: str
    description: str
    run: Callable[[], str]
    touches: list[str] = field(default_factory=list)
    verify: str = ""
    role: str | None = None  # the key the step needs in hand (primary / backup / …)
    always: bool = False  # read-only steps (verify) run again on every run


@dataclass
class Outcome:
    id: str
    description: str
    status: str  # done | already-done
    detail: str = ""

    def to_json(self) -> dict[str, str]:
        return {"id": self.id, "description": self.description, "status": self.status, "detail": self.detail}


def fault_point(where: str, step_id: str) -> None:
    """Die like kill -9 when $YKTOOL_FAULT names this point (`after:ID`, `before:ID`), or act as
    if Ctrl-C was pressed there (`interrupt-after:ID`). Tests and crash rehearsals only."""
    wanted = os.environ.get(FAULT_ENV, "")
    if not wanted:
        return
    if wanted == f"{where}:{step_id}":
        os._exit(137)
    if wanted == f"interrupt-{where}:{step_id}":
        raise KeyboardInterrupt


def make_plan(title: str, steps: list[FlowStep], state: FlowState) -> Plan:
    """The Plan shown before acting: steps marked done by an earlier (interrupted) run say so."""
    plan = Plan(title)
    for s in steps:
        done = s.id in state.done and not s.always
        plan.add(Step(s.id, s.description, list(s.touches), s.verify, status="already-done" if done else "pending"))
    return plan


def run_steps(
    host: Host, state: FlowState, steps: list[FlowStep], on_step: Callable[[Outcome], None] | None = None
) -> list[Outcome]:
    """Run every step not yet done; mark each in `state` as it succeeds. Stops at the first error
    (it propagates; the steps before it stay marked, so a re-run resumes there).

    Under the root's lock: the CLI already holds it from the flow's first look at the host (this
    nests); a library caller such as the demo gets it here."""
    from yktool.lock import root_lock

    with root_lock(host, f"yktool {state.flow}"):
        return _run_steps(host, state, steps, on_step)


def _run_steps(
    host: Host, state: FlowState, steps: list[FlowStep], on_step: Callable[[Outcome], None] | None
) -> list[Outcome]:
    outcomes: list[Outcome] = []
    for s in steps:
        if s.id in state.done and not s.always:
            out = Outcome(s.id, s.description, "already-done", "done by an earlier run")
        else:
            fault_point("before", s.id)
            detail = s.run()
            state.mark(host, s.id)
            out = Outcome(s.id, s.description, "done", detail)
            fault_point("after", s.id)
        outcomes.append(out)
        if on_step is not None:
            on_step(out)
    return outcomes
