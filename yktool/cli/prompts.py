"""Asking a person for secrets and touches: on the terminal, or from stdin when scripted.

PINs and passphrases are read here and handed to the library as values in memory; they never
go to argv, the environment, logs or exceptions.
"""

from __future__ import annotations

import contextlib
import getpass
import itertools
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import click
from fido2.ctap2.pin import ClientPin

from yktool.errors import UsageError
from yktool.fido.interaction import KeyInteraction


def read_secret(prompt: str, *, from_stdin: bool = False, confirm: bool = False) -> bytes:
    """A secret from the terminal (no echo) or, with `from_stdin` or no terminal, one stdin line.

    The trailing newline of a stdin line is dropped; nothing else is changed.
    """
    if from_stdin or not sys.stdin.isatty():
        line = sys.stdin.buffer.readline()
        if not line:
            raise UsageError(
                f"{prompt}: nothing on standard input", "pipe the secret in on stdin, or run on a terminal to be asked"
            )
        return line.rstrip(b"\n").rstrip(b"\r")
    value = getpass.getpass(f"{prompt}: ", stream=sys.stderr)
    if confirm and getpass.getpass(f"{prompt} (again): ", stream=sys.stderr) != value:
        raise UsageError("the two entries differ", "run the command again and type the same twice")
    return value.encode("utf-8")


def read_pin(prompt: str, *, from_stdin: bool = False, new: bool = False) -> str:
    """A key's PIN (see `read_secret`; a `new` one is typed twice on a terminal), as text."""
    raw = read_secret(prompt, from_stdin=from_stdin, confirm=new)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:  # its message would carry none of the PIN, but a traceback is no answer
        raise UsageError("the PIN is not valid UTF-8", "type the PIN again") from None


def read_new_pin(prompt: str, *, from_stdin: bool = False, check: Callable[[str], None] | None = None) -> str:
    """A new PIN: typed twice on a terminal, and asked again (saying why) while the two entries
    differ or `check` refuses it; from stdin one line, and an error ends the run."""
    if from_stdin or not sys.stdin.isatty():
        pin = read_pin(prompt, from_stdin=True)
        if check is not None:
            check(pin)
        return pin
    while True:
        first = read_pin(prompt)
        if check is not None:
            try:
                check(first)
            except UsageError as exc:
                click.echo(f"{exc.message}: type another", err=True)
                continue
        if read_pin(f"{prompt} (again)") == first:
            return first
        click.echo("the two entries differ: type the new PIN again (twice)", err=True)


@contextmanager
def spinner(message: str) -> Iterator[None]:
    """A spinner on stderr while the key waits for a touch; nothing when stderr is not a tty."""
    if not sys.stderr.isatty():
        click.echo(message, err=True)
        yield
        return
    stop = threading.Event()

    def spin() -> None:
        for ch in itertools.cycle("|/-\\"):
            if stop.is_set():
                break
            sys.stderr.write(f"\r{ch} {message}")
            sys.stderr.flush()
            time.sleep(0.1)
        sys.stderr.write("\r" + " " * (len(message) + 2) + "\r")

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


class CliInteraction(KeyInteraction):
    """The key's interaction on the terminal: asks for the PIN once and counts touches."""

    def __init__(self, pin: str | None = None, *, pin_from_stdin: bool = False) -> None:
        self.pin = pin
        self.pin_from_stdin = pin_from_stdin
        self.touches = 0
        self.pin_prompts: int = 0
        self._spinner: contextlib.ExitStack | None = None

    def prompt_up(self) -> None:
        """The key waits for a touch: say so (with a spinner on a terminal) until `touch_done`."""
        self.touches += 1
        if self._spinner is None:
            stack = contextlib.ExitStack()
            stack.enter_context(spinner("Touch your key…"))
            self._spinner = stack

    def touch_done(self) -> None:
        """The operation that wanted a touch is over (KeySession calls this): stop the spinner."""
        if self._spinner is not None:
            stack, self._spinner = self._spinner, None
            stack.close()

    def request_pin(self, permissions: ClientPin.PERMISSION, rp_id: str | None) -> str | None:
        if self.pin is None:
            self.pin_prompts += 1
            self.pin = read_pin("PIN of the key", from_stdin=self.pin_from_stdin)
        return self.pin

    def pin_rejected(self) -> None:
        """The key refused the PIN (KeySession calls this): never hand the same one out again."""
        self.pin = None

    def request_uv(self, permissions: ClientPin.PERMISSION, rp_id: str | None) -> bool:
        return True


def is_interactive() -> bool:
    return sys.stdin.isatty() and os.environ.get("CI") is None


def choose_device(spec: str | None) -> str | None:
    """`--device auto` with several keys plugged in, on a terminal: ask which one and return its
    `--device` value. Otherwise `spec` as given (without a terminal, opening it fails and lists
    the keys with the flag to pass)."""
    from yktool.fido.devices import list_devices, resolve_spec

    if resolve_spec(spec) != "auto" or not is_interactive():
        return spec
    entries = list_devices()
    if len(entries) < 2:
        return spec
    import questionary

    picked = questionary.select(
        "Several FIDO2 keys are plugged in: which one?",
        choices=[questionary.Choice(f"{e.product} ({e.spec})", value=e.spec) for e in entries],
    ).unsafe_ask()
    return str(picked)
