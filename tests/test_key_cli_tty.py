"""`yktool key pin …` on a real terminal (a pty): asked without echo, a new PIN twice."""

from __future__ import annotations

import os
import pty
import select
import sys
import time
from pathlib import Path

from yktool.fido import open_device
from yktool.fido.session import KeySession

YKTOOL = str(Path(sys.executable).parent / "yktool")


def run_on_tty(args: list[str], answers: list[str], timeout: float = 30) -> tuple[int, bytes]:
    """Run yktool with a pty as its controlling terminal; type one answer per prompt ("…: ")."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: becomes yktool, the pty is its terminal
        os.execv(YKTOOL, [YKTOOL, *args])  # noqa: S606 - a fixed program, argv without secrets
    out = b""
    answered = 0
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 1024)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
            prompts = out.count(b": ")
            while answered < min(prompts, len(answers)):
                os.write(fd, answers[answered].encode() + b"\r")
                answered += 1
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    return os.waitstatus_to_exitcode(status), out


def test_new_pin_asked_twice_without_echo(tmp_path: Path) -> None:
    spec = f"sim:{tmp_path / 'k.json'}"
    code, out = run_on_tty(["--device", spec, "key", "pin", "set"], ["tty-pin-4242", "tty-pin-4242"])
    assert code == 0, out
    assert b"New PIN: " in out and b"New PIN (again): " in out
    assert b"tty-pin-4242" not in out  # no echo
    KeySession(open_device(spec)).verify_pin("tty-pin-4242")


def test_two_different_entries_change_nothing(tmp_path: Path) -> None:
    spec = f"sim:{tmp_path / 'k.json'}"
    KeySession(open_device(spec))
    before = (tmp_path / "k.json").read_bytes()
    code, out = run_on_tty(["--device", spec, "key", "pin", "set"], ["tty-pin-4242", "tty-pin-4243"])
    assert code == 2, out
    assert b"the two entries differ" in out
    assert (tmp_path / "k.json").read_bytes() == before


def test_change_on_a_terminal(tmp_path: Path) -> None:
    spec = f"sim:{tmp_path / 'k.json'}"
    KeySession(open_device(spec)).set_pin("old-pin-1")
    code, out = run_on_tty(["--device", spec, "key", "pin", "change"], ["old-pin-1", "new-pin-2", "new-pin-2"])
    assert code == 0, out
    assert b"Current PIN: " in out and b"old-pin-1" not in out and b"new-pin-2" not in out
    KeySession(open_device(spec)).verify_pin("new-pin-2")


def test_reset_asks_first_on_a_terminal(tmp_path: Path) -> None:
    spec = f"sim:{tmp_path / 'k.json'}"
    KeySession(open_device(spec)).set_pin("some-pin-1")
    state = tmp_path / "k.json"
    before = state.read_bytes()
    code, out = run_on_tty(["--device", spec, "key", "reset"], ["n"])
    assert code == 4, out
    assert b"wipes EVERY credential" in out and b"[y/N]" in out
    assert state.read_bytes() == before
    code, out = run_on_tty(["--device", spec, "key", "reset"], ["y"])
    assert code == 0, out
    assert b"Touch your key" in out  # the spinner's line, on the terminal
    assert not KeySession(open_device(spec)).pin_is_set


CHOOSER = """
import json
import sys
from yktool.fido import devices
from yktool.cli import main

# no hidraw here: two software keys stand in for two USB keys plugged in
devices.present_hid_keys = lambda: [devices.open_sim(p) for p in sys.argv[1:3]]
sys.exit(main(json.loads(sys.argv[3])))
"""


def _pick_second_key(tmp_path: Path, argv: list[str]) -> tuple[list[str], bytes]:
    """Run yktool with `--device auto` on a pty with two keys present; pick the second one."""
    import fcntl
    import json
    import struct
    import termios

    paths = [str(tmp_path / "a.json"), str(tmp_path / "b.json")]
    for p in paths:
        open_device(f"sim:{p}")
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "YKTOOL_DEVICE")}
    pid, fd = pty.fork()
    if pid == 0:
        os.execve(sys.executable, [sys.executable, "-c", CHOOSER, *paths, json.dumps(argv)], env)  # noqa: S606
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    out = b""
    sent = False
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
        if not sent and b"which one?" in out and b"b.json" in out:
            time.sleep(0.3)
            os.write(fd, b"\x1b[B")  # down: the second key
            time.sleep(0.3)
            os.write(fd, b"\r")
            sent = True
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    assert sent, out.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, out.decode(errors="replace")
    return paths, out


def test_auto_with_two_keys_on_a_terminal_asks_which(tmp_path: Path) -> None:
    import json

    paths, out = _pick_second_key(tmp_path, ["--json", "key", "info"])
    info = json.loads(out[out.index(b"{") :].decode().replace("\r\n", "\n"))
    assert info["path"] == paths[1]


def test_building_blocks_ask_which_key_too(tmp_path: Path) -> None:
    """Commands outside `key` (here `udev install`) open the key the person picked."""
    from yktool.fido.identity import usb_identity

    paths, out = _pick_second_key(tmp_path, ["udev", "install", "--nixos"])
    serials = [usb_identity(open_device(f"sim:{p}")).serial for p in paths]
    picked, other = serials[1], serials[0]
    assert picked and picked.encode() in out and other is not None and other.encode() not in out
