"""The software key's "physical" side: touches refused or timed out, cancel, keepalive, reset
window, and the state file (mode 0600, atomic: a kill -9 mid-write leaves a loadable key).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from fido2.ctap import STATUS, CtapError
from fido2.ctap2.base import Ctap2
from fido2.ctap2.pin import ClientPin

from tests.fixtures.fido import TEST_PIN, SimDevices, SimKey, credential_id, presence_script
from yktool.fido.softkey import SoftKey
from yktool.fido.softkey.state import StateError, load_state

ERR = CtapError.ERR
RP_ID = "example.com"
CDH = b"\x01" * 32
ES256: list[Mapping[str, object]] = [{"type": "public-key", "alg": -7}]


def make(ctap: Ctap2, **kw: Any) -> bytes:
    """makeCredential with python-fido2's keyword arguments (options, event, …)."""
    return credential_id(ctap.make_credential(CDH, {"id": RP_ID}, {"id": b"u"}, ES256, **kw))


@pytest.mark.parametrize(
    ("answer", "code"), [(False, ERR.OPERATION_DENIED), (None, ERR.USER_ACTION_TIMEOUT)], ids=["refused", "timeout"]
)
def test_refused_or_timed_out_touch_changes_nothing(
    sim_key: SimKey, sim_device: SimDevices, answer: bool | None, code: CtapError.ERR
) -> None:
    spec = sim_key("a", pin=TEST_PIN)
    ok = Ctap2(sim_device(spec))
    cid = make(ok)
    path = Path(spec.removeprefix("sim:"))
    before = path.read_bytes()

    device = sim_device(spec, presence=lambda: answer)
    ctap = Ctap2(device)
    cp = ClientPin(ctap)
    token = cp.get_pin_token(TEST_PIN, ClientPin.PERMISSION.MAKE_CREDENTIAL, RP_ID)
    before = path.read_bytes()  # after the PIN was used (that resets the retry counter)
    pin_auth = cp.protocol.authenticate(token, CDH)
    calls: list[Callable[[], object]] = [
        lambda: make(ctap, options={"rk": True}, pin_uv_param=pin_auth, pin_uv_protocol=cp.protocol.VERSION),
        lambda: make(ctap),
        lambda: ctap.get_assertion(RP_ID, CDH, [{"type": "public-key", "id": cid}]),
        lambda: make(ctap, exclude_list=[{"type": "public-key", "id": cid}]),
        lambda: ctap.selection(),
        lambda: ctap.reset(),
    ]
    for call in calls:
        with pytest.raises(CtapError) as err:
            call()
        assert err.value.code == code
        assert path.read_bytes() == before
    assert device.touches == 0
    assert device.presence_requests == len(calls)


def test_touch_counter_and_keepalive(sim_device: SimDevices) -> None:
    device = sim_device("a")
    ctap = Ctap2(device)
    seen: list[int] = []
    cid = make(ctap, on_keepalive=seen.append)
    assert seen == [STATUS.UPNEEDED]
    ctap.get_assertion(RP_ID, CDH, [{"type": "public-key", "id": cid}])
    ctap.get_assertion(RP_ID, CDH, [{"type": "public-key", "id": cid}], options={"up": False})  # no touch
    assert device.touches == 2


def test_cancel_event_gives_keepalive_cancel(sim_device: SimDevices) -> None:
    event = threading.Event()

    def presence() -> bool:
        event.set()  # the user hits Ctrl-C while the key blinks
        return True

    device = sim_device("a", presence=presence)
    path = device.path
    before = path.read_bytes()
    with pytest.raises(CtapError) as err:
        make(Ctap2(device), event=event)
    assert err.value.code == ERR.KEEPALIVE_CANCEL
    assert path.read_bytes() == before


def test_presence_script_helper(sim_device: SimDevices) -> None:
    device = sim_device("a", presence=presence_script(False, None))
    ctap = Ctap2(device)
    codes = []
    for _ in range(3):
        try:
            make(ctap)
            codes.append(ERR.SUCCESS)
        except CtapError as e:
            codes.append(e.code)
    assert codes == [ERR.OPERATION_DENIED, ERR.USER_ACTION_TIMEOUT, ERR.SUCCESS]


def test_reset_only_in_window_after_power_up_and_wipes_everything(
    sim_key: SimKey, sim_device: SimDevices, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = sim_key("a", pin=TEST_PIN)
    device = sim_device(spec)
    ctap = Ctap2(device)
    cid = make(ctap)
    serial = device.serial_number

    # 11 s after power-up: too late, like a real key.
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 11)
    path = device.path
    before = path.read_bytes()
    with pytest.raises(CtapError) as err:
        ctap.reset()
    assert err.value.code == ERR.NOT_ALLOWED
    assert path.read_bytes() == before
    assert device.touches == 1  # refused before asking for a touch

    sim_device.replug(spec)  # replug opens the window again
    ctap.reset()
    assert device.touches == 2
    info = ctap.get_info()
    assert info.options["clientPin"] is False
    with pytest.raises(CtapError) as err:
        ctap.get_assertion(RP_ID, CDH, [{"type": "public-key", "id": cid}], options={"up": False})
    assert err.value.code == ERR.NO_CREDENTIALS
    assert SoftKey(path).serial_number == serial  # the serial (USB identity) survives a reset


def test_state_file_mode_and_contents(sim_key: SimKey) -> None:
    spec = sim_key("a", pin=TEST_PIN)
    path = Path(spec.removeprefix("sim:"))
    assert (path.stat().st_mode & 0o777) == 0o600
    data = json.loads(path.read_text())
    assert data["format"] == "yktool-softkey" and data["pin_retries"] == 8
    assert TEST_PIN not in path.read_text()
    leftovers = [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


BAD_STATES = [b"", b"{not json", b'{"format": "other"}', b'{"format": "yktool-softkey", "version": 1}', b"\xff\xfe"]


@pytest.mark.parametrize("content", BAD_STATES, ids=["empty", "json", "format", "fields", "binary"])
def test_malformed_state_file_is_a_clear_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "k.json"
    path.write_bytes(content)
    with pytest.raises(StateError, match="software-key state"):
        SoftKey(path)
    assert path.read_bytes() == content


WRITER = r"""
import sys
from fido2.ctap2.base import Ctap2
from yktool.fido.softkey import SoftKey
ctap = Ctap2(SoftKey(sys.argv[1]))
print("ready", flush=True)
n = 0
while True:  # every makeCredential rewrites the state file; twenty users cycle so it stays ~20 KB
    n += 1
    ctap.make_credential(b"\0" * 32, {"id": "example.com"}, {"id": bytes([n % 20]), "name": "u" * 600},
                         [{"type": "public-key", "alg": -8}], options={"rk": True})
"""


def test_state_survives_kill_9_during_writes(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    SoftKey(path)
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    counters = set()
    for delay in (0.15, 0.23, 0.31, 0.37, 0.45):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, env=env)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(delay)
        assert proc.poll() is None, "the writer stopped by itself"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
        state = load_state(path)  # never torn: old or new
        counters.add(state.counter)
        assert (path.stat().st_mode & 0o777) == 0o600
        # The key still works after the crash, and opening it tidies a half-written temp file.
        Ctap2(SoftKey(path)).get_info()
        assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    assert len(counters) == 5  # the writer really was writing between the kills


def test_opening_removes_only_its_own_stale_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "k[1].json"
    SoftKey(path)
    stale = tmp_path / ".k[1].json.x1y2z3.tmp"
    stale.write_bytes(b'{"half": ')
    unrelated = [tmp_path / ".other.json.abc.tmp", tmp_path / "k[1].json.tmp"]
    for p in unrelated:
        p.write_text("keep")
    SoftKey(path)
    assert not stale.exists()
    assert all(p.read_text() == "keep" for p in unrelated)
