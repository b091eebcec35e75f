"""The body of `yktool key emulate` (click wiring is in cli/key.py): signals, the terminal's
Enter as a touch, the first line on stdout."""

from __future__ import annotations

import json
import signal
import sys
import threading
from types import FrameType
from typing import TYPE_CHECKING

import click

from yktool.cli.context import AppContext
from yktool.cli.output import info
from yktool.errors import UsageError

if TYPE_CHECKING:
    from yktool.fido.touch import TouchGate

TOUCH_PROMPT = "Touch requested: press Enter (n and Enter refuses)"


def _sim_path(app: AppContext, device_spec: str | None) -> str:
    from yktool.fido.devices import resolve_spec

    spec = resolve_spec(device_spec or (app.device if app.device != "auto" else None))
    kind, sep, rest = spec.partition(":")
    if kind != "sim" or not sep or not rest:
        raise UsageError(f"only the software key can be emulated, not {spec!r}",
                         "pass --device sim:PATH (its state file; made when missing)")
    return rest


def _read_terminal(gate: TouchGate) -> None:
    """Enter touches the waiting request, `n` + Enter refuses it; other lines are ignored."""
    for line in sys.stdin:
        answer = line.strip().lower()
        if answer in ("", "y", "yes"):
            gate.answer(True)
        elif answer in ("n", "no"):
            gate.answer(False)


def run_emulator(app: AppContext, device_spec: str | None, touch: str | None, touch_timeout: float,
                 control_path: str | None, uhid_path: str) -> None:
    from yktool.fido.devices import open_sim
    from yktool.fido.emulator import Emulator, Plugged, open_uhid
    from yktool.fido.emulator_control import ControlSocket, check_control_path
    from yktool.fido.touch import TouchGate, TouchPolicy

    path = _sim_path(app, device_spec)
    if control_path is not None:
        check_control_path(control_path)
    on_terminal = sys.stdin.isatty()
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
        if on_terminal or policy is TouchPolicy.ASK:
            threading.Thread(target=_read_terminal, args=(gate,), name="emulator-stdin", daemon=True).start()

        def on_plugged(plugged: Plugged) -> None:
            if app.json:
                data = {**plugged.to_json(), "control": control_path, "device": f"sim:{key.path}",
                        "touch": policy.value}
                click.echo(json.dumps(data))
            else:
                click.echo(plugged.hidraw)
            sys.stdout.flush()
            info(f"{plugged.name} {plugged.serial} is plugged in at {plugged.hidraw} "
                 f"({plugged.vendor_id:04x}:{plugged.product_id:04x}, touch: {policy.value}); "
                 "stop with Ctrl-C")

        emulator.serve(on_plugged)
        counts = gate.counts()
        info(f"unplugged ({counts.requested} touches requested, {counts.approved} approved, "
             f"{counts.denied} denied, {counts.timed_out} timed out, {counts.cancelled} cancelled)")
    finally:
        if control is not None:
            control.close()
        uhid.close()
