"""verify's sysctl.d reading against the real `systemd-sysctl --cat-config` (order and masking).

Hypothesis spreads drop-ins over /etc, /run, /usr/local/lib and /usr/lib sysctl.d (the same name
in several, links to /dev/null, empty and hidden files); systemd-sysctl runs in a private mount
namespace with those folders bound over the machine's (it only prints with --cat-config; the
machine's /proc/sys is never written). The files it lists, in its order, must be the files verify
reads, in verify's order; and the value verify takes for a key must be the last one systemd-sysctl
prints. Case counts are printed in the summary.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fixtures.differential import report_cases
from yktool.checks.base import CheckContext
from yktool.checks.kernel import configured_sysctls, sysctl_files
from yktool.host import Host

CASES = int(os.environ.get("YKTOOL_SYSCTL_CASES", "120"))
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
DIRS = ("etc/sysctl.d", "run/sysctl.d", "usr/local/lib/sysctl.d", "usr/lib/sysctl.d")
NAMES = [
    "10-a.conf",
    "50-b.conf",
    "50-B.conf",
    "90-hardening.conf",
    "99-sysctl.conf",
    "99-z.conf",
    ".hidden.conf",
    "README",
    "60-nixos.conf",
]
SYSCTL = "/lib/systemd/systemd-sysctl"

entry = st.tuples(
    st.sampled_from(DIRS),
    st.sampled_from(NAMES),
    st.sampled_from(["value", "value", "value", "null", "empty"]),
    st.sampled_from(["0", "1", "2"]),
)


def _cat_config(root: Path) -> str:
    script = (
        "mount -t tmpfs tmpfs /run && mount -t tmpfs tmpfs /usr/local/lib && "
        "mkdir -p /run/sysctl.d /usr/local/lib/sysctl.d && "
        "for d in etc/sysctl.d run/sysctl.d usr/local/lib/sysctl.d usr/lib/sysctl.d; do "
        'mount --bind "$1/$d" "/$d" || exit 1; done && mount --bind "$1/etc/sysctl.conf" /etc/sysctl.conf && '
        'exec "$2" --cat-config --no-pager'
    )
    proc = subprocess.run(
        ["unshare", "-m", "sh", "-c", script, "sh", str(root), SYSCTL], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_verify_reads_sysctl_d_as_systemd_sysctl(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None or not Path(SYSCTL).exists():
        if IN_CI:
            pytest.fail("the sysctl differential test needs root, unshare and systemd-sysctl")
        pytest.skip("needs root, unshare and systemd-sysctl")
    root = tmp_path / "root"
    counts = {"cases": 0}
    started = time.monotonic()

    @settings(
        max_examples=CASES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(entries=st.lists(entry, max_size=8), debian_link=st.booleans())
    def compare(entries: list[tuple[str, str, str, str]], debian_link: bool) -> None:
        shutil.rmtree(root, ignore_errors=True)
        for d in DIRS:
            (root / d).mkdir(parents=True)
        # /etc/sysctl.conf counts only through a sysctl.d entry (Debian's 99-sysctl.conf link)
        (root / "etc/sysctl.conf").write_text("kernel.kptr_restrict = 7\n")
        if debian_link:
            (root / "etc/sysctl.d/99-sysctl.conf").symlink_to("../sysctl.conf")
        for folder, name, kind, value in entries:
            path = root / folder / name
            if path.exists() or path.is_symlink():
                continue
            if kind == "null":
                path.symlink_to("/dev/null")
            elif kind == "empty":
                path.write_text("")
            else:
                path.write_text(f"# {folder}/{name}\nkernel.kptr_restrict = {value}\n")
        out = _cat_config(root)
        counts["cases"] += 1
        listed = [line[2:].split(" ")[0] for line in out.splitlines() if line.startswith("# /")]
        ctx = CheckContext(Host(root))
        ours = sysctl_files(ctx)  # masks (links to /dev/null, empty files) listed too, as cat-config does
        assert ours == listed, f"systemd-sysctl reads {listed}, verify {ours}\n{entries}"
        values = [line.split("=")[1].strip() for line in out.splitlines() if line.startswith("kernel.kptr_restrict")]
        got = configured_sysctls(ctx).get("kernel.kptr_restrict")
        assert (got[0] if got else None) == (values[-1] if values else None), (out, got)

    try:
        compare()
    finally:
        seconds = round(time.monotonic() - started, 1)
        report_cases(request, "systemd-sysctl --cat-config", seconds=seconds, **counts)
        print(f"sysctl differential: {counts} in {seconds} s")
