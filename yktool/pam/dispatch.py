"""What libpam makes of a stack, given what each rule returns: pam_dispatch.c's _pam_dispatch_aux.

`run(handlers, result)` is the verdict for one result per rule (`success`, `auth_err`, …);
`passing_path(handlers, outcomes)` looks for results, each drawn from `outcomes(rule)`, that let
pam_authenticate succeed, and returns the rules run with their results (None when no choice
does). Substacks, jumps (`success=2`, counted over the handlers of the same level, a substack
counting as one), `done`/`die` (ending the current substack level), `reset`, and libpam's "bad
jump" and final sanity check are as in Linux-PAM 1.5.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from yktool.pam.stack import PamLine

MUST_FAIL = "perm_denied"  # PAM_MUST_FAIL_CODE
UNDEF, POSITIVE, NEGATIVE = 0, 1, 2
MAX_PATHS = 50_000


class TooManyPaths(Exception):
    """The stack has more result combinations than are worth trying."""


@dataclass(frozen=True)
class Step:
    line: PamLine
    result: str
    action: str


@dataclass(frozen=True)
class _State:
    index: int
    impression: int
    status: str
    substates: tuple[tuple[int, int, str], ...]  # (level, impression, status) saved on entry
    prev_level: int
    trail: tuple[Step, ...]


def _skip_to_level_end(handlers: Sequence[PamLine], k: int, level: int) -> int:
    while k + 1 < len(handlers) and handlers[k + 1].level >= level:
        k += 1
    return k


def _explore(
    handlers: Sequence[PamLine], outcomes: Callable[[PamLine], Sequence[str]], budget: list[int]
) -> Iterator[tuple[str, tuple[Step, ...]]]:
    if not handlers:
        yield MUST_FAIL, ()
        return
    todo = [_State(0, UNDEF, MUST_FAIL, ((0, UNDEF, MUST_FAIL),), 0, ())]
    while todo:
        s = todo.pop()
        if s.index >= len(handlers):
            status = MUST_FAIL if s.status == "success" and s.impression != POSITIVE else s.status
            budget[0] -= 1
            if budget[0] < 0:
                raise TooManyPaths
            yield status, s.trail
            continue
        h = handlers[s.index]
        level = h.level
        subs = s.substates
        if s.prev_level < level:
            subs = (*[x for x in subs if x[0] != level], (level, s.impression, s.status))
        if h.substack:
            todo.append(_State(s.index + 1, s.impression, s.status, subs, level, s.trail))
            continue
        results = (MUST_FAIL,) if h.must_fail else tuple(outcomes(h))
        actions = h.actions
        for retval in reversed(results):
            action = actions.get(retval, "bad")
            imp, status, k = s.impression, s.status, s.index
            if action == "reset":
                saved = next((x for x in subs if x[0] == level), (level, UNDEF, MUST_FAIL))
                imp, status = saved[1], saved[2]
            elif action in ("ok", "done"):
                if imp == UNDEF or (imp == POSITIVE and status == "success"):
                    imp, status = POSITIVE, retval
                if imp == POSITIVE and action == "done":
                    k = _skip_to_level_end(handlers, k, level)
            elif action in ("bad", "die"):
                if imp != NEGATIVE:
                    imp, status = NEGATIVE, (MUST_FAIL if retval == "ignore" else retval)
                if action == "die":
                    k = _skip_to_level_end(handlers, k, level)
            elif action.isdigit():
                jump = int(action)
                while k + 1 < len(handlers) and handlers[k + 1].level >= level and jump > 0:
                    k += 1
                    while k + 1 < len(handlers) and handlers[k + 1].level > level:
                        k += 1
                    jump -= 1
                if jump:  # "bad jump in stack"
                    imp, status = NEGATIVE, MUST_FAIL
            todo.append(_State(k + 1, imp, status, subs, level, (*s.trail, Step(h, retval, action))))


def run(handlers: Sequence[PamLine], result: Callable[[PamLine], str]) -> str:
    """pam_authenticate's return value when every rule returns `result(rule)`."""
    for status, _trail in _explore(handlers, lambda h: (result(h),), [MAX_PATHS]):
        return status
    return MUST_FAIL


def passing_path(
    handlers: Sequence[PamLine],
    outcomes: Callable[[PamLine], Sequence[str]],
    limit: int = MAX_PATHS,
    accept: Callable[[tuple[Step, ...]], bool] | None = None,
) -> tuple[Step, ...] | None:
    """The rules run, with their results, on a way through that ends in success and that `accept`
    takes, if given (None: none); TooManyPaths past `limit` combinations."""
    for status, trail in _explore(handlers, outcomes, [limit]):
        if status == "success" and (accept is None or accept(trail)):
            return trail
    return None
