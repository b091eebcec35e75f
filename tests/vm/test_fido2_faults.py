"""The key pulled out mid-operation, through the real transport: SIGKILL on the emulator while
the key waits for a touch (the kernel drops the device), during enroll-fido2 and during
test-unlock's assertion. Each ends with a clear exit code, the header as before, and the volume
still opening with its passphrase."""

from __future__ import annotations

import threading
from pathlib import Path

from tests.conftest import CliCall
from tests.fixtures.fido import SimKey
from tests.fixtures.luks import make_image
from tests.vm.conftest import Keys
from tests.vm.support import Key

NO_TRACEBACK = "Traceback"


def pull_at_first_touch(key: Key) -> threading.Thread:
    """A person yanking the key out when it blinks: waits for the touch request, then SIGKILL."""
    key.control("policy ask")

    def pull() -> None:
        if key.control("wait 240", timeout=300).startswith("ok"):
            key.pull()

    thread = threading.Thread(target=pull, name="pull-key", daemon=True)
    thread.start()
    return thread


def test_key_pulled_during_enroll_fido2_leaves_the_header_as_it_was(
    cli: CliCall, sim_key: SimKey, keys: Keys, tmp_path: Path
) -> None:
    key = keys(sim_key("f"))
    image = make_image(tmp_path / "images")
    before = image.header_digest()
    puller = pull_at_first_touch(key)
    r = cli(
        "--device",
        key.spec,
        "luks",
        "enroll-fido2",
        image.path,
        "--backend",
        "native",
        "--no-pin",
        "--unlock-key-file",
        image.key_file,
    )
    puller.join(30)
    assert key.status is not None, "the key was not pulled"
    assert r.exit_code not in (0, 1), r.output  # a device error, not a success nor a crash
    assert NO_TRACEBACK not in r.output
    assert image.header_digest() == before
    assert image.opens_with(image.passphrase)
    # a re-run finds nothing half-done to finish
    status = cli("luks", "status", image.path)
    assert status.exit_code == 0, status.output
    assert "interrupted" not in status.stdout


def test_key_pulled_during_test_unlock_is_a_clear_failure_and_changes_nothing(
    cli: CliCall, sim_key: SimKey, keys: Keys, tmp_path: Path
) -> None:
    key = keys(sim_key("t"))
    image = make_image(tmp_path / "images")
    r = cli(
        "--device",
        key.spec,
        "luks",
        "enroll-fido2",
        image.path,
        "--backend",
        "native",
        "--no-pin",
        "--unlock-key-file",
        image.key_file,
    )
    assert r.exit_code == 0, r.output
    before = image.header_digest()
    puller = pull_at_first_touch(key)
    r = cli("--device", key.spec, "luks", "test-unlock", image.path)
    puller.join(30)
    assert key.status is not None, "the key was not pulled"
    assert r.exit_code != 0, r.output
    assert NO_TRACEBACK not in r.output
    assert image.header_digest() == before
    assert image.opens_with(image.passphrase)
