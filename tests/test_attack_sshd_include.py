"""Attack: an sshd Include loop that fans out (two drop-ins each including the drop-in glob)."""

from __future__ import annotations

import signal
import time
from types import FrameType

from tests.fixtures.roots import FixtureRoot, w
from yktool.checks import CheckContext, run_checks
from yktool.host import Host


class TooSlow(BaseException):  # not an OSError: verify's readers would take that for a bad file
    pass


def _too_slow(_sig: int, _frame: FrameType | None) -> None:
    raise TooSlow("verify still reading the Include loop after 5 s")


def test_an_include_loop_ends_fast_and_is_not_a_pass(hardened_root: FixtureRoot) -> None:
    # sshd stops at the 17th nested Include ("Too many recursive configuration includes") and
    # refuses to start; a reader that notes the depth and goes on walks 3^16 files
    cfg = hardened_root.root / "etc/ssh/sshd_config"
    cfg.write_text("Include /etc/ssh/sshd_config.d/*.conf\n" + cfg.read_text())
    for name in ("a", "b", "c"):
        w(hardened_root.root, f"/etc/ssh/sshd_config.d/{name}.conf", "Include /etc/ssh/sshd_config.d/*.conf\n")
    old = signal.signal(signal.SIGALRM, _too_slow)
    signal.alarm(5)
    try:
        start = time.monotonic()
        results = {r.id: r for r in run_checks(CheckContext(Host(hardened_root.root)), only=["ssh"])}
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert time.monotonic() - start < 5
    assert results["ssh.passwordauthentication"].status != "pass"
