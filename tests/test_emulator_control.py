"""The emulated key's touch policies and its control socket, as a test or a script uses them:
a touch request from python-fido2 over the CTAPHID transport, answered through the socket."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from fido2.ctap import CtapError
from fido2.ctap2.base import Ctap2

from tests.ctaphid_support import Wire, hid_device, make_wire
from yktool.errors import UsageError
from yktool.fido.emulator_control import ControlSocket, control
from yktool.fido.touch import TouchPolicy

RP = {"id": "example.com"}
USER = {"id": b"u", "name": "u"}
ALGS: list[Mapping[str, object]] = [{"type": "public-key", "alg": -7}]


@pytest.fixture
def wired(tmp_path: Path) -> Iterator[tuple[Wire, Path, list[str]]]:
    wire = make_wire(tmp_path, TouchPolicy.ASK, timeout=10)
    sock = tmp_path / "ctl.sock"
    unplugged: list[str] = []
    server = ControlSocket(sock, wire.gate, lambda: unplugged.append("unplug"))
    yield wire, sock, unplugged
    server.close()
    assert not sock.exists()


def make_credential_in_background(wire: Wire) -> tuple[threading.Thread, list[object]]:
    out: list[object] = []

    def run() -> None:
        try:
            out.append(Ctap2(hid_device(wire)).make_credential(b"\x33" * 32, RP, USER, ALGS))
        except CtapError as e:
            out.append(e.code)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def test_the_socket_is_private_to_its_owner(wired: tuple[Wire, Path, list[str]]) -> None:
    _, sock, _ = wired
    mode = os.lstat(sock).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600


def test_wait_then_approve_touches_the_key_and_status_counts_it(wired: tuple[Wire, Path, list[str]]) -> None:
    wire, sock, _ = wired
    assert control(sock, "approve") == "err no touch request is waiting"
    t, out = make_credential_in_background(wire)
    assert control(sock, "wait 10") == "ok waiting"
    assert "waiting=1" in control(sock, "status")
    assert control(sock, "approve") == "ok approved"
    t.join(10)
    assert out and not isinstance(out[0], int)  # a credential, not an error code
    assert control(sock, "status") == (
        "ok policy=ask waiting=0 requested=1 approved=1 denied=0 timed_out=0 cancelled=0"
    )


def test_deny_refuses_the_touch(wired: tuple[Wire, Path, list[str]]) -> None:
    wire, sock, _ = wired
    t, out = make_credential_in_background(wire)
    assert control(sock, "wait 10") == "ok waiting"
    assert control(sock, "deny") == "ok denied"
    t.join(10)
    assert out == [CtapError.ERR.OPERATION_DENIED]
    assert "denied=1" in control(sock, "status")


def test_policy_changes_how_later_touches_are_answered(wired: tuple[Wire, Path, list[str]]) -> None:
    wire, sock, _ = wired
    assert control(sock, "policy deny") == "ok policy=deny"
    t, out = make_credential_in_background(wire)
    t.join(10)
    assert out == [CtapError.ERR.OPERATION_DENIED]
    assert control(sock, "policy auto") == "ok policy=auto"
    t, out = make_credential_in_background(wire)
    t.join(10)
    assert out and not isinstance(out[0], int)
    assert control(sock, "policy sometimes") == "err policy takes one of auto, deny, timeout, ask"
    assert "requested=2 approved=1 denied=1" in control(sock, "status")


def test_wait_without_a_request_times_out(wired: tuple[Wire, Path, list[str]]) -> None:
    _, sock, _ = wired
    assert control(sock, "wait 0.2") == "err no touch requested within 0.2 s"
    assert control(sock, "wait soon").startswith("err wait takes seconds")


def test_unplug_asks_the_emulator_to_stop(wired: tuple[Wire, Path, list[str]]) -> None:
    _, sock, unplugged = wired
    assert control(sock, "unplug") == "ok unplugging"
    assert unplugged == ["unplug"]


def test_unknown_and_empty_commands_are_errors_listing_the_commands(wired: tuple[Wire, Path, list[str]]) -> None:
    _, sock, _ = wired
    assert control(sock, "touch").startswith("err unknown command 'touch'; commands: status approve")
    assert control(sock, "help").startswith("ok commands:")


def test_a_path_already_taken_is_refused_and_left_alone(tmp_path: Path) -> None:
    wire = make_wire(tmp_path)
    taken = tmp_path / "taken"
    taken.write_text("keep me")
    with pytest.raises(UsageError, match="already exists"):
        ControlSocket(taken, wire.gate, lambda: None)
    assert taken.read_text() == "keep me"


def test_under_ask_enter_on_stdin_touches_and_n_refuses(tmp_path: Path) -> None:
    from yktool.cli.emulate import read_answers

    wire = make_wire(tmp_path, TouchPolicy.ASK, timeout=10)
    prompts: list[str] = []
    wire.gate.prompt = lambda: prompts.append("Touch requested")
    r, w = os.pipe()
    with os.fdopen(r) as stdin, os.fdopen(w, "w") as typing:
        reader = threading.Thread(target=read_answers, args=(wire.gate, stdin), daemon=True)
        reader.start()
        for typed, expected in (("\n", None), ("n\n", CtapError.ERR.OPERATION_DENIED)):
            t, out = make_credential_in_background(wire)
            assert wire.gate.wait_for_request(10)
            typing.write(typed)
            typing.flush()
            t.join(10)
            assert (out[0] if isinstance(out[0], int) else None) == expected
    reader.join(5)
    assert prompts == ["Touch requested"] * 2 and not reader.is_alive()  # EOF ends the reader
