"""verify's sshd reading against the real `sshd -T -C` (Debian's sshd, unpacked, never installed).

Hypothesis writes sshd_config trees (a main file, drop-ins pulled in by Include, Match blocks with
every criterion, negation, wildcards, comma lists, CIDR, keyword case, `=`, quotes, comments);
for each tree sshd accepts, the setting verify would judge — for several users and connections —
must get the same verdict from verify's reader as from sshd itself, and the reader must see no
problem in a file sshd accepts. The machine's /etc/ssh is never read: sshd runs in a private
mount namespace (tests/sshd_real.py). Case counts are printed in the summary.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fixtures.differential import report_cases
from tests.sshd_real import SshdNamespace
from yktool.checks.auth import SSH_TABLE
from yktool.checks.base import CheckContext
from yktool.checks.sshd import Connection, connections, group_lookup, login_users, parse_config, parse_dump
from yktool.host import Host

CASES = int(os.environ.get("YKTOOL_SSHD_CASES", "300"))
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

PASSWD = (
    "root:x:0:0:root:/root:/bin/bash\nsshd:x:101:65534::/run/sshd:/usr/sbin/nologin\n"
    "alice:x:1000:1000::/home/alice:/bin/bash\nbob:x:1001:1001::/home/bob:/bin/sh\n"
    "carol:x:1002:1002::/home/carol:/usr/sbin/nologin\n"
)
GROUP = (
    "root:x:0:\nwheel:x:10:alice\nstaff:x:50:bob,carol\nalice:x:1000:\nbob:x:1001:\ncarol:x:1002:\nnogroup:x:65534:\n"
)

YES_NO = ["yes", "no", "YES", "No"]
JUDGED = {
    "PasswordAuthentication": YES_NO,
    "KbdInteractiveAuthentication": YES_NO,
    "ChallengeResponseAuthentication": YES_NO,
    "X11Forwarding": YES_NO,
    "PermitRootLogin": ["yes", "no", "prohibit-password", "without-password", "forced-commands-only"],
    "MaxAuthTries": ["2", "3", "6", "10"],
    "LoginGraceTime": ["30", "30s", "1m", "2m", "20s"],
}
FILLER = {"PubkeyAuthentication": ["yes"], "AllowTcpForwarding": ["no"], "Banner": ["none"], "UsePAM": ["yes"]}
PATTERNS = {
    "User": ["alice", "bob", "carol", "root", "dave", "a*", "b?b", "*", "!root", "!alice", "ALICE"],
    "Group": ["wheel", "staff", "!wheel", "st*", "nogroup", "alice"],
    "Host": ["*.example.com", "gw.example.com", "db.*", "!db.example.org", "10.0.0.5", "*", "GW.EXAMPLE.COM"],
    "Address": [
        "10.0.0.0/8",
        "10.1.0.0/16",
        "!10.1.0.0/16",
        "192.168.*",
        "2001:db8::/32",
        "203.0.113.7",
        "0.0.0.0/0",
        "10.0.0.?",
    ],
    "LocalAddress": ["192.0.2.1", "10.9.0.0/16", "!192.0.2.1"],
    "LocalPort": ["22", "2222"],
    "RDomain": ["vrf1", "vrf*", "!vrf2"],
}


def _case(word: str) -> st.SearchStrategy[str]:
    return st.sampled_from([word, word.lower(), word.upper()])


@st.composite
def setting_line(draw: st.DrawFn) -> str:
    table = draw(st.sampled_from([JUDGED, JUDGED, JUDGED, FILLER]))
    keyword = draw(st.sampled_from(sorted(table)))
    value = draw(st.sampled_from(table[keyword]))
    if draw(st.booleans()) and draw(st.booleans()):
        value = f'"{value}"'
    sep = draw(st.sampled_from([" ", " ", "=", " = ", "\t"]))
    comment = draw(st.sampled_from(["", "", "", "  # why"]))
    indent = draw(st.sampled_from(["", "", "    "]))
    return f"{indent}{draw(_case(keyword))}{sep}{value}{comment}"


@st.composite
def match_line(draw: st.DrawFn) -> str:
    if draw(st.integers(0, 4)) == 0:
        return f"Match {draw(_case('all'))}"
    attrs = draw(st.lists(st.sampled_from(sorted(PATTERNS)), min_size=1, max_size=2, unique=True))
    parts = []
    for attr in attrs:
        pats = draw(st.lists(st.sampled_from(PATTERNS[attr]), min_size=1, max_size=3, unique=True))
        if attr == "LocalPort":
            pats = pats[:1]
        parts.append(f"{draw(_case(attr))} {','.join(pats)}")
    return "Match " + " ".join(parts)


INCLUDES = [
    "Include sshd_config.d/*.conf",
    "Include /etc/ssh/sshd_config.d/*.conf",
    "Include sshd_config.d/10-a.conf sshd_config.d/20-b.conf",
]


@st.composite
def config_tree(draw: st.DrawFn) -> dict[str, str]:
    def body(n_max: int, include: bool) -> str:
        kinds = st.sampled_from(["set", "set", "set", "match", "comment"] + (["include"] if include else []))
        out = []
        for kind in draw(st.lists(kinds, max_size=n_max)):
            if kind == "set":
                out.append(draw(setting_line()))
            elif kind == "match":
                out.append(draw(match_line()))
            elif kind == "include":
                out.append(draw(st.sampled_from(INCLUDES)))
            else:
                out.append("# a comment")
        return "\n".join(out) + "\n"

    tree = {"sshd_config": body(9, True)}
    for name in draw(st.lists(st.sampled_from(["10-a.conf", "20-b.conf"]), max_size=2, unique=True)):
        tree[f"sshd_config.d/{name}"] = body(4, False)
    return tree


ADDRS = ["10.0.0.5", "10.1.2.3", "192.168.1.10", "2001:db8::1", "203.0.113.7"]
connection = st.builds(
    lambda user, addr, host, laddr, lport, rdomain: Connection(user, host or addr, addr, laddr, lport, rdomain),
    st.sampled_from(["root", "alice", "bob", "carol", "dave"]),
    st.sampled_from(ADDRS),
    st.sampled_from([None, "gw.example.com", "db.example.org"]),
    st.sampled_from(["192.0.2.1", "10.9.1.1"]),
    st.sampled_from([22, 2222]),
    st.sampled_from([None, "vrf1", "vrf2"]),
)

OK = {key: (default, ok) for key, _want, default, ok, _title in SSH_TABLE}


@pytest.fixture
def sshd_root(tmp_path: Path) -> Iterator[tuple[Path, SshdNamespace]]:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        if IN_CI:
            pytest.fail("the sshd differential test needs root and unshare (a private mount namespace)")
        pytest.skip("needs root and unshare (a private mount namespace)")
    root = tmp_path / "root"
    (root / "etc/ssh").mkdir(parents=True)
    (root / "etc/passwd").write_text(PASSWD)
    (root / "etc/group").write_text(GROUP)
    ns = SshdNamespace(root)  # fetches sshd if missing; a failure to fetch fails the test
    try:
        yield root, ns
    finally:
        ns.close()


def test_verify_reads_sshd_config_as_sshd_does(
    sshd_root: tuple[Path, SshdNamespace], request: pytest.FixtureRequest
) -> None:
    root, ns = sshd_root
    etc_ssh = root / "etc/ssh"
    counts = {"cases": 0, "accepted": 0, "rejected": 0, "comparisons": 0, "rejected_unseen": 0}
    started = time.monotonic()

    @settings(
        max_examples=CASES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(tree=config_tree(), conns=st.lists(connection, min_size=3, max_size=3))
    def compare(tree: dict[str, str], conns: list[Connection]) -> None:
        shutil.rmtree(etc_ssh / "sshd_config.d", ignore_errors=True)
        (etc_ssh / "sshd_config.d").mkdir()
        for name, text in tree.items():
            (etc_ssh / name).write_text(text)
        counts["cases"] += 1
        results = ns.run([["-T", "-C", c.spec()] for c in conns])
        ctx = CheckContext(Host(root=root))
        cfg = parse_config(ctx)
        if any(rc != 0 for rc, _o, _e in results):
            counts["rejected"] += 1
            counts["rejected_unseen"] += not cfg.problems
            return
        counts["accepted"] += 1
        shown = "\n".join(f"--- {n}\n{t}" for n, t in tree.items())
        assert not cfg.problems, f"sshd accepts this, verify sees a problem: {cfg.problems}\n{shown}"
        groups = group_lookup(ctx)
        for conn, (_rc, out, _err) in zip(conns, results, strict=True):
            real = parse_dump(out)
            mine = cfg.settings_for(conn, groups)
            for key, (default, ok) in OK.items():
                counts["comparisons"] += 1
                theirs = real[key].value
                ours = mine[key].value if key in mine else default
                assert ok(ours) == ok(theirs), (
                    f"{key} for {conn.spec()}: sshd says {theirs}, verify read {ours} "
                    f"({mine[key].source if key in mine else 'default'})\n{shown}"
                )

    try:
        compare()
    finally:
        seconds = round(time.monotonic() - started, 1)
        report_cases(request, "sshd -T -C", seconds=seconds, **counts)
        print(f"sshd differential: {counts} in {seconds} s")
    assert counts["accepted"] >= CASES // 4, f"too few configurations sshd accepts: {counts}"


def test_live_verify_asks_sshd_itself_once_per_match_outcome(
    sshd_root: tuple[Path, SshdNamespace], tmp_path: Path
) -> None:
    """On the live host as root, verify takes the settings from `sshd -T -C` (here the unpacked
    sshd, on PATH through a wrapper, with the temporary /etc/ssh, passwd and group bound in)."""
    from tests.sshd_real import LIBS, SSHD

    root, _ns = sshd_root
    etc_ssh = root / "etc/ssh"
    (etc_ssh / "sshd_config").write_text(
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nMaxAuthTries 3\nLoginGraceTime 30\n"
        "Match User bob\n    PasswordAuthentication yes\nMatch User dave\n    X11Forwarding yes\n"
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "sshd-runs"
    (bin_dir / "sshd").write_text(f'#!/bin/sh\necho "$@" >> {log}\nLD_LIBRARY_PATH={LIBS} exec {SSHD} "$@"\n')
    (bin_dir / "sshd").chmod(0o755)
    script = (
        'mount --bind "$1/etc/ssh" /etc/ssh && mount --bind "$1/etc/passwd" /etc/passwd && '
        'mount --bind "$1/etc/group" /etc/group && mount --bind "$1/run" /run && '
        'exec "$2" -m yktool --json verify --only ssh'
    )
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    proc = subprocess.run(
        ["unshare", "-m", "sh", "-c", script, "sh", str(root), sys.executable],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    checks = {c["id"]: c for c in json.loads(proc.stdout[proc.stdout.index("{") :])["checks"]}
    pw = checks["ssh.passwordauthentication"]
    assert pw["status"] == "fail" and "user bob" in pw["reason"], pw
    assert any(e["source"].startswith("sshd -T -C user=bob") for e in pw["evidence"]), pw
    assert checks["ssh.x11forwarding"]["status"] == "pass", checks["ssh.x11forwarding"]
    assert checks["ssh.maxauthtries"]["status"] == "pass", checks["ssh.maxauthtries"]
    # users root, alice, bob (carol has nologin): two Match outcomes (bob's, everyone else's)
    runs = log.read_text().splitlines()
    assert all(r.startswith("-T -C user=") for r in runs) and len(runs) == 2, runs


def sshd_verdicts(ns: SshdNamespace, root: Path) -> dict[str, str] | None:
    """sshd's own verdict per ssh.* check for the root's users: fail when, for any user who can log
    in (root for PermitRootLogin) and any connection class the config distinguishes, sshd -T -C
    prints a value the hardening checklist does not allow; None when sshd refuses the configuration."""
    ctx = CheckContext(Host(root))
    cfg = parse_config(ctx)
    conns = {user: connections(cfg, user)[:24] for user in login_users(ctx)}
    flat = [c for cs in conns.values() for c in cs]
    results = ns.run([["-T", "-C", c.spec()] for c in flat])
    if any(rc != 0 for rc, _o, _e in results):
        return None
    dumps = {c: parse_dump(out) for c, (_rc, out, _e) in zip(flat, results, strict=True)}
    verdicts = {}
    for key, (_default, ok) in OK.items():
        users = ["root"] if key == "permitrootlogin" else list(conns)
        bad = any(not ok(dumps[c][key].value) for u in users for c in conns[u])
        verdicts[f"ssh.{key}"] = "fail" if bad else "pass"
    return verdicts


def test_verify_ssh_checks_give_sshds_verdict(
    sshd_root: tuple[Path, SshdNamespace], request: pytest.FixtureRequest
) -> None:
    """The checks themselves (users from the root's passwd, every connection class): each ssh.*
    verdict is the one sshd's own output gives."""
    from yktool.checks import run_checks

    root, ns = sshd_root
    etc_ssh = root / "etc/ssh"
    counts = {"cases": 0, "accepted": 0, "checks": 0}
    started = time.monotonic()

    @settings(
        max_examples=max(CASES // 5, 40),
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(tree=config_tree())
    def compare(tree: dict[str, str]) -> None:
        shutil.rmtree(etc_ssh / "sshd_config.d", ignore_errors=True)
        (etc_ssh / "sshd_config.d").mkdir()
        for name, text in tree.items():
            (etc_ssh / name).write_text(text)
        counts["cases"] += 1
        truth = sshd_verdicts(ns, root)
        if truth is None:
            return
        counts["accepted"] += 1
        results = {r.id: r for r in run_checks(CheckContext(Host(root)), only=["ssh"])}
        shown = "\n".join(f"--- {n}\n{t}" for n, t in tree.items())
        for cid, want in truth.items():
            counts["checks"] += 1
            got = results[cid]
            assert got.status == want, f"{cid}: sshd says {want}, verify {got.status} ({got.reason})\n{shown}"

    try:
        compare()
    finally:
        seconds = round(time.monotonic() - started, 1)
        report_cases(request, "ssh.* checks vs sshd -T -C", seconds=seconds, **counts)
        print(f"ssh checks differential: {counts} in {seconds} s")
