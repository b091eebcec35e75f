"""An offline root's sysctl values are the ones systemd-sysctl would apply at boot (see
tests/test_sysctl_differential.py for its order, measured with `systemd-sysctl --cat-config`)."""

from __future__ import annotations

import shutil

from tests.fixtures.roots import FixtureRoot, w
from yktool.checks import CheckContext, run_checks
from yktool.host import Host


def kptr(fx: FixtureRoot) -> str:
    shutil.rmtree(fx.root / "proc", ignore_errors=True)  # offline: no running kernel to read
    return {r.id: r for r in run_checks(CheckContext(Host(fx.root)), only=["sysctl.kernel.kptr_restrict"])}[
        "sysctl.kernel.kptr_restrict"
    ].status


def test_sysctl_conf_alone_is_not_read_by_systemd_sysctl(hardened_root: FixtureRoot) -> None:
    # systemd-sysctl reads /etc/sysctl.conf only through a sysctl.d link (Debian's 99-sysctl.conf);
    # without one, the drop-in's 0 is what boot applies (main: /etc/sysctl.conf last, a false pass)
    w(hardened_root.root, "/etc/sysctl.d/99-z.conf", "kernel.kptr_restrict = 0\n")
    w(hardened_root.root, "/etc/sysctl.conf", "kernel.kptr_restrict = 2\n")
    assert kptr(hardened_root) == "fail"


def test_sysctl_conf_through_the_debian_link_sorts_by_its_name(hardened_root: FixtureRoot) -> None:
    w(hardened_root.root, "/etc/sysctl.conf", "kernel.kptr_restrict = 0\n")
    (hardened_root.root / "etc/sysctl.d/99-sysctl.conf").symlink_to("../sysctl.conf")
    w(hardened_root.root, "/usr/lib/sysctl.d/99-zz.conf", "kernel.kptr_restrict = 2\n")
    assert kptr(hardened_root) == "pass"  # 99-zz.conf sorts after 99-sysctl.conf: its 2 wins
