"""The body of `yktool key emulate` (click wiring is in cli/key.py): signals, the terminal's
Enter as a touch, the first line on stdout."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from types import FrameType
from typing import TYPE_CHECKING, TextIO

import click

from yktool.cli.context import AppContext
from yktool.cli.output import envelope, info
from yktool.errors import NoDevice, UsageError

if TYPE_CHECKING:
    from yktool.fido.touch import TouchGate

TOUCH_PROMPT = "Touch requested: press Enter (n and Enter refuses)"


def _sim_path(app: AppContext, device_spec: str | None) -> str:
    from yktool.fido.devices import resolve_spec

    spec = resolve_spec(device_spec or (app.device if app.device != "auto" else None))
    kind, sep, rest = spec.partition(":")
    if kind != "sim" or not sep or not rest:
        raise UsageError(
            f"only the software key can be emulated, not {spec!r}",
            "pass --device sim:PATH (its state file; made when missing)",
        )
    return rest


def read_answers(gate: TouchGate, stream: TextIO) -> None:
    """Enter touches the waiting request, `n` + Enter refuses it; other lines are ignored."""
    try:
        for line in stream:
            answer = line.strip().lower()
            if answer in ("", "y", "yes"):
                gate.answer(True)
            elif answer in ("n", "no"):
                gate.answer(False)
    except (OSError, ValueError):  # stdin closed or not text: the control socket still answers
        return


def run_emulator(
    app: AppContext,
    device_spec: str | None,
    touch: str | None,
    touch_timeout: float,
    control_path: str | None,
    uhid_path: str,
) -> None:
    from yktool.fido.devices import open_sim
    from yktool.fido.emulator import Emulator, Plugged, open_uhid
    from yktool.fido.emulator_control import ControlSocket, check_control_path
    from yktool.fido.touch import TouchGate, TouchPolicy

    path = _sim_path(app, device_spec)
    if control_path is not None:
        check_control_path(control_path)
    on_terminal = sys.stdin is not None and sys.stdin.isatty()
    policy = TouchPolicy(touch) if touch else (TouchPolicy.ASK if on_terminal else TouchPolicy.AUTO)
    uhid = open_uhid(uhid_path)  # before the key: without uhid nothing is made (no key file, no socket)
    control = None
    try:
        key = open_sim(path)
        gate = TouchGate(policy, timeout=touch_timeout, prompt=lambda: info(TOUCH_PROMPT))
        emulator = Emulator(key, gate, uhid)
        if control_path is not None:
            control = ControlSocket(control_path, gate, emulator.stop)

        def on_signal(signum: int, frame: FrameType | None) -> None:
            emulator.stop()

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, on_signal)
        if sys.stdin is not None and (on_terminal or policy is TouchPolicy.ASK):
            threading.Thread(target=read_answers, args=(gate, sys.stdin), name="emulator-stdin", daemon=True).start()

        def on_plugged(plugged: Plugged) -> None:
            line = plugged.hidraw
            if app.json:
                line = json.dumps(
                    envelope(
                        {
                            **plugged.to_json(),  # one line: read as soon as it comes
                            "control": os.path.abspath(control_path) if control_path else None,
                            "device": f"sim:{key.path.absolute()}",
                            "touch": policy.value,
                        }
                    )
                )
            try:
                click.echo(line)
                sys.stdout.flush()
            except OSError:  # nobody reads stdout any more (`| head -1`): the key stays plugged in
                sys.stdout = open(os.devnull, "w")  # for good: later prints and the exit flush
            info(
                f"{plugged.name} {plugged.serial} is plugged in at {plugged.hidraw} "
                f"({plugged.vendor_id:04x}:{plugged.product_id:04x}, touch: {policy.value}); "
                "stop with Ctrl-C"
            )

        try:
            emulator.serve(on_plugged)
        except OSError as e:  # /dev/uhid itself failed under us
            raise NoDevice(f"the uhid device failed: {e.strerror or e}", "check `dmesg`, then run again") from None
        counts = gate.counts()
        info(
            f"unplugged ({counts.requested} touches requested, {counts.approved} approved, "
            f"{counts.denied} denied, {counts.timed_out} timed out, {counts.cancelled} cancelled)"
        )
    finally:
        if control is not None:
            control.close()
        uhid.close()
