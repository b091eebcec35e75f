"""The flows' plumbing: FlowState on disk (resume, other answers, damaged file) and the runner's
fault points; the wizard questions (flag, default, or an error naming the flag)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from yktool.errors import UsageError
from yktool.flows.ask import Asker
from yktool.flows.runner import FlowStep, run_steps
from yktool.flows.state import FlowState
from yktool.host import Host


def test_state_resumes_refuses_other_answers_and_restarts_after_finish(tmp_path: Path) -> None:
    host = Host(tmp_path)
    state = FlowState.load(host, "commission")
    state.begin(host, {"user": "alice"})
    state.mark(host, "a")
    path = tmp_path / "var/lib/yktool/commission.json"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    again = FlowState.load(host, "commission")
    assert again.done == ["a"] and again.resuming
    with pytest.raises(UsageError) as err:
        again.begin(host, {"user": "bob"})
    assert "user" in err.value.message and "delete" in err.value.hint
    again.begin(host, {"user": "alice"})
    again.finish(host)
    done = FlowState.load(host, "commission")
    done.begin(host, {"user": "bob"})  # a finished run with other answers: a new run
    assert done.done == [] and not done.finished


@pytest.mark.parametrize("body", ["{not json", "[1, 2]", '{"answers": 3}', '{"done": 5}', '{"extra": [1]}', "\udcff"])
def test_damaged_state_file_says_what_to_do(tmp_path: Path, body: str) -> None:
    host = Host(tmp_path)
    (tmp_path / "var/lib/yktool").mkdir(parents=True)
    (tmp_path / "var/lib/yktool/replace.json").write_bytes(body.encode("utf-8", "surrogateescape"))
    with pytest.raises(UsageError) as err:
        FlowState.load(host, "replace")
    assert "damaged" in err.value.message and "delete it" in err.value.hint


def test_runner_marks_each_step_and_stops_at_the_first_failure(tmp_path: Path) -> None:
    host = Host(tmp_path)
    state = FlowState.load(host, "t")
    ran: list[str] = []

    def ok(name: str) -> str:
        ran.append(name)
        return name

    def boom() -> str:
        raise UsageError("step two failed", "fix it")

    steps = [
        FlowStep("one", "one", lambda: ok("one")),
        FlowStep("two", "two", boom),
        FlowStep("three", "three", lambda: ok("three")),
    ]
    with pytest.raises(UsageError):
        run_steps(host, state, steps)
    assert state.done == ["one"] and ran == ["one"]
    steps[1] = FlowStep("two", "two", lambda: ok("two"))
    outcomes = run_steps(host, FlowState.load(host, "t"), steps)
    assert [o.status for o in outcomes] == ["already-done", "done", "done"] and ran == ["one", "two", "three"]


def test_fault_point_dies_like_kill_9(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from yktool.host import Host;"
        "from yktool.flows.runner import FlowStep, run_steps; from yktool.flows.state import FlowState;"
        "h = Host(Path(sys.argv[1])); s = FlowState.load(h, 't');"
        "run_steps(h, s, [FlowStep('a', 'a', lambda: 'a'), FlowStep('b', 'b', lambda: 'b')])"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        env={"YKTOOL_FAULT": "after:a", "PATH": "/usr/bin"},
        capture_output=True,
        check=False,
    )
    assert run.returncode == 137, run.stderr
    assert json.loads((tmp_path / "var/lib/yktool/t.json").read_text())["done"] == ["a"]


def test_asker_flag_default_or_error_naming_the_flag() -> None:
    asker = Asker(interactive=False)
    assert asker.text("Email?", "a@b", flag="--git-email") == "a@b"
    assert asker.text("Origin?", None, flag="--pam-origin", default="pam://x") == "pam://x"
    with pytest.raises(UsageError) as err:
        asker.text("Email?", None, flag="--git-email")
    assert err.value.hint == "pass --git-email"
    assert asker.select("Kind?", None, ["linux", "nixos"], flag="--kind", default="nixos") == "nixos"
    with pytest.raises(UsageError):
        asker.select("Kind?", "bsd", ["linux", "nixos"], flag="--kind", default="linux")
    assert asker.checkbox("Steps?", None, ["a", "b"], flag="--steps") == ["a", "b"]
    with pytest.raises(UsageError):
        asker.confirm("Go ahead?", yes=False)
    assert asker.confirm("Go ahead?", yes=True)


def test_keyring_opens_one_key_at_a_time_swaps_once_and_counts(tmp_path: Path) -> None:
    import contextlib
    from collections.abc import Iterator

    from yktool.fido.session import KeySession, open_session
    from yktool.flows.keys import ring

    swaps: list[str] = []
    opened: list[str] = []

    @contextlib.contextmanager
    def opener(role: str, spec: str | None) -> Iterator[KeySession]:
        opened.append(role)
        with open_session(f"sim:{tmp_path / role}.json") as session:
            yield session

    host = Host(tmp_path)
    with ring(
        host, opener, {"primary": None, "backup": None}, {"primary": "primary", "backup": "backup"}, swaps.append
    ) as keys:
        first = keys.session("primary")
        assert keys.session("primary") is first  # one session per key per run
        first.make_credential("ssh:")  # one touch
        keys.session("backup")
        assert swaps == ["backup"] and opened == ["primary", "backup"]
        keys.add_touches("backup", 2)  # systemd-cryptenroll's own, which the session never sees
    assert keys.totals() == {"primary": {"touches": 1, "pin_prompts": 0}, "backup": {"touches": 2, "pin_prompts": 0}}


def test_keyring_reopening_a_key_counts_its_pin_entry_once(tmp_path: Path) -> None:
    """The front end keeps one interaction per key (so the PIN is typed once per run); a key
    opened again later in the run must not have that one entry counted again."""
    import contextlib
    from collections.abc import Iterator

    from yktool.fido.interaction import KeyInteraction
    from yktool.fido.session import KeySession, open_session
    from yktool.flows.keys import ring

    class Typist(KeyInteraction):
        pin_prompts: int  # this one counts (KeyInteraction's None: one that does not)

        def __init__(self) -> None:
            self.pin: str | None = None
            self.pin_prompts = 0

        def request_pin(self, permissions: object, rp_id: str | None) -> str | None:
            if self.pin is None:
                self.pin_prompts += 1
                self.pin = "correct-horse-7"
            return self.pin

    for role in ("primary", "backup"):
        with open_session(f"sim:{tmp_path / role}.json") as s:
            s.set_pin("correct-horse-7")
    typists = {"primary": Typist(), "backup": Typist()}

    @contextlib.contextmanager
    def opener(role: str, spec: str | None) -> Iterator[KeySession]:
        with open_session(f"sim:{tmp_path / role}.json", typists[role]) as session:
            yield session

    with ring(Host(tmp_path), opener, {"primary": None, "backup": None}, {}) as keys:
        keys.session("primary").make_credential("ssh:")
        keys.session("backup").make_credential("ssh:")
        keys.session("primary").make_credential("ssh:")  # opened again: the PIN is remembered
    assert typists["primary"].pin_prompts == 1
    assert keys.totals() == {"primary": {"touches": 2, "pin_prompts": 1}, "backup": {"touches": 1, "pin_prompts": 1}}
