"""Library callers of `yktool.flows.replace.prepare` then `execute` (attack left open in issue 12):
the plan was checked before the root's lock was taken, so another run could take away what the
plan counted on between the check and the change. `execute` now checks again under the lock when
the plan was not checked under the hold in force, and refuses before any step."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.flows_support import demo_pin, passphrase_opens, tree_bytes
from tests.test_attack_lastway import _alice_has_only
from tests.test_replace_lost import lose
from yktool.demo import PASSPHRASE, ROOT, DemoInteraction
from yktool.errors import Refused
from yktool.fido.devices import open_sim
from yktool.fido.session import KeySession
from yktool.flows import replace as replace_flow
from yktool.flows.keys import ring
from yktool.host import Host
from yktool.lock import root_lock


def _revoke_primary(scratch: Path, between: object = None, *, locked: bool = False) -> replace_flow.ReplaceReport:
    """replace --lost primary (revoke only) through the library, the backup key present;
    `between()` runs after prepare and before execute (another run changing the host)."""
    host = Host(scratch / ROOT)
    pin = demo_pin(scratch)

    @contextlib.contextmanager
    def opener(role: str, spec: str | None) -> Iterator[KeySession]:
        yield KeySession(open_sim(scratch / "keys" / "backup.json"), DemoInteraction(pin))

    hold = root_lock(host, "library test") if locked else contextlib.nullcontext()
    with ring(host, opener, {"present-1": None}, {"present-1": ""}) as keys:
        found = replace_flow.find(host, keys, ["present-1"], False, [], None)
        replace_flow.mark_lost(found, ["primary"])
        answers = replace_flow.ReplaceAnswers(
            lost=["primary"], new_nickname="primary-2", unlock_key_file=str(PASSPHRASE)
        )
        io = replace_flow.ReplaceIO(lambda _r: pin, lambda _d: b"")
        with hold:
            flow, steps, _plan = replace_flow.prepare(host, answers, keys, io, found, False)
        if callable(between):
            between()
        return replace_flow.execute(flow, steps)


def test_execute_checks_again_under_the_lock(scratch: Path) -> None:
    """Planned while alice kept the backup's pam_u2f credential; before execute, another run took
    it away (her line holds only the primary's now). Revoking the primary would leave her no
    credential where PAM requires one: execute refuses, and nothing is changed."""
    lose(scratch, "primary")
    before: dict[str, dict[str, bytes]] = {}

    def other_run() -> None:
        _alice_has_only(scratch, "primary")
        before["tree"] = tree_bytes(scratch / ROOT)

    with pytest.raises(Refused) as err:
        _revoke_primary(scratch, other_run)
    assert tree_bytes(scratch / ROOT) == before["tree"]  # refused before any step, not half-way
    assert "without any pam_u2f credential" in err.value.message
    assert passphrase_opens(scratch)


def test_execute_after_a_check_under_a_hold_that_was_let_go_checks_again(scratch: Path) -> None:
    """prepare under the caller's own hold of the lock, which ends before execute: the check
    does not count any more, it runs again."""
    lose(scratch, "primary")
    before: dict[str, dict[str, bytes]] = {}

    def other_run() -> None:
        _alice_has_only(scratch, "primary")
        before["tree"] = tree_bytes(scratch / ROOT)

    with pytest.raises(Refused):
        _revoke_primary(scratch, other_run, locked=True)
    assert tree_bytes(scratch / ROOT) == before["tree"]


def test_execute_goes_ahead_when_nothing_changed(scratch: Path) -> None:
    lose(scratch, "primary")
    report = _revoke_primary(scratch)
    assert report.outcomes and all(o.status in ("done", "already-done") for o in report.outcomes)
    assert passphrase_opens(scratch)
