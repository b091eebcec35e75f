"""The key swap with `--device auto` (yktool.fido.swap): commission waits until the primary is
out and one key is in before it opens the backup, also with --yes. The kernel's side (a real
remove and add over uhid) is in tests/vm/test_flows_hid.py; here the sequence of what the listing
shows is played back, with a clock that only moves when the wait sleeps."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from yktool.errors import NoDevice
from yktool.fido.swap import POLL_INTERVAL, SwapWait

PRIMARY = "/dev/hidraw0@0003:1050:0407.0001"
BACKUP_SAME_NODE = "/dev/hidraw0@0003:1050:0407.0002"  # the backup gets the node the primary left
OTHER = "/dev/hidraw1@0003:1050:0407.0003"


class Port:
    """What the listing shows at each poll (the last view stays), and a clock moved by sleeps."""

    def __init__(self, *views: set[str]) -> None:
        self.views: Iterator[set[str]] = iter(views)
        self.last: set[str] = set()
        self.now = 0.0
        self.polls = 0

    def present(self) -> frozenset[str]:
        self.polls += 1
        self.last = next(self.views, self.last)
        return frozenset(self.last)

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def wait(self, before: set[str]) -> SwapWait:
        return SwapWait(frozenset(before), self.present, lambda: self.now, self.sleep)


def test_waits_for_the_primary_out_then_the_backup_in_on_the_same_node() -> None:
    port = Port({PRIMARY}, {PRIMARY}, set(), set(), {BACKUP_SAME_NODE})
    removed: list[bool] = []
    port.wait({PRIMARY}).until_swapped("backup", on_removed=lambda: removed.append(True))
    assert port.polls == 5 and removed == [True]


def test_a_backup_put_in_next_to_the_primary_waits_for_the_primary_to_go() -> None:
    port = Port({PRIMARY}, {PRIMARY, OTHER}, {PRIMARY, OTHER}, {OTHER})
    port.wait({PRIMARY}).until_swapped("backup")
    assert port.polls == 4


def test_the_primary_never_removed_times_out_with_the_way_on() -> None:
    port = Port({PRIMARY})
    with pytest.raises(NoDevice) as exc:
        port.wait({PRIMARY}).until_swapped("backup", timeout=10)
    assert "not swapped in within 10 s (no key removed yet)" in str(exc.value)
    assert "run the same command again" in (exc.value.hint or "")
    assert port.now == pytest.approx(10, abs=POLL_INTERVAL)


def test_with_no_key_in_at_the_start_the_first_single_key_is_taken() -> None:
    port = Port(set(), set(), {OTHER})
    port.wait(set()).until_swapped("backup")
    assert port.polls == 3


def test_two_keys_in_after_the_removal_wait_for_exactly_one() -> None:
    port = Port(set(), {OTHER, BACKUP_SAME_NODE}, {OTHER})
    port.wait({PRIMARY}).until_swapped("backup")
    assert port.polls == 3


def test_without_a_hid_listing_there_is_nothing_to_wait_on() -> None:
    assert SwapWait.begin(lambda: None) is None
