"""verify's sshd checks reach sshd's verdict: Match applies per user and connection, like sshd.

Each row is a configuration appended to the hardened fixture's sshd_config (users: root, alice,
git with git-shell, nobody with nologin) and the verdict sshd itself gives (checked against the
real sshd in tests/test_sshd_differential.py). On the code before this change the `Match all`
rows passed (false passes) and the rows for users who do not exist failed (false fails).
"""

from __future__ import annotations

import pytest

from tests.fixtures.roots import FixtureRoot, w
from yktool.checks import CheckContext, run_checks
from yktool.host import Host

ROWS = [
    # (name, appended text, check, status)
    ("match-all-reenables-password", "Match all\n    PasswordAuthentication yes\n", "passwordauthentication", "fail"),
    ("match-all-lowercase", "match ALL\n  passwordauthentication=YES\n", "passwordauthentication", "fail"),
    ("match-all-kbd-alias", "Match all\nChallengeResponseAuthentication yes\n", "kbdinteractiveauthentication", "fail"),
    ("match-user-absent", "Match User dave\n    PasswordAuthentication yes\n", "passwordauthentication", "pass"),
    ("match-user-nologin", "Match User nobody\n    PasswordAuthentication yes\n", "passwordauthentication", "pass"),
    ("match-user-present", "Match User alice\n    PasswordAuthentication yes\n", "passwordauthentication", "fail"),
    (
        "match-user-negated-only",
        "Match User !alice\n    PasswordAuthentication yes\n",
        "passwordauthentication",
        "pass",
    ),
    (
        "match-user-negated-list",
        "Match User !alice,*\n    PasswordAuthentication yes\n",
        "passwordauthentication",
        "fail",
    ),
    (
        "match-user-case-sensitive",
        "Match User ALICE\n    PasswordAuthentication yes\n",
        "passwordauthentication",
        "pass",
    ),
    ("match-group-member", "Match Group wheel\n    PasswordAuthentication yes\n", "passwordauthentication", "fail"),
    (
        "match-group-nobody-in-it",
        "Match Group empty\n    PasswordAuthentication yes\n",
        "passwordauthentication",
        "pass",
    ),
    ("match-root-only-for-root", "Match User root\n    PermitRootLogin yes\n", "permitrootlogin", "fail"),
    ("permitroot-for-alice-is-harmless", "Match User alice\n    PermitRootLogin yes\n", "permitrootlogin", "pass"),
    ("match-host-wildcard", "Match Host *.example.com\n    X11Forwarding yes\n", "x11forwarding", "fail"),
    (
        "match-address-negated-edge",
        "Match Address 10.0.0.0/8,!10.0.0.0/9\n    MaxAuthTries 6\n",
        "maxauthtries",
        "fail",
    ),
    ("match-localport", "Match LocalPort 2222\n    PasswordAuthentication yes\n", "passwordauthentication", "fail"),
    (
        "first-match-block-wins",
        "Match User alice\n    PasswordAuthentication no\nMatch all\n    PasswordAuthentication yes\n",
        "passwordauthentication",
        "fail",
    ),
    (
        "first-match-block-wins-for-all",
        "Match all\n    PasswordAuthentication no\nMatch User alice\n    PasswordAuthentication yes\n",
        "passwordauthentication",
        "pass",
    ),
    ("quoted-value", 'Match all\n    PasswordAuthentication "yes"\n', "passwordauthentication", "fail"),
    (
        "trailing-comment",
        "Match all  # everyone\n    PasswordAuthentication yes # oops\n",
        "passwordauthentication",
        "fail",
    ),
    # LoginGraceTime is global only: under `Match all` it is read in the first pass, after the
    # global value, so the earlier global one (from the drop-in) wins
    ("global-only-under-match-all", "Match all\n    LoginGraceTime 5m\n", "logingracetime", "pass"),
]


def verdict(fx: FixtureRoot, check: str) -> tuple[str, str]:
    ctx = CheckContext(Host(fx.root), secrets=str(fx.secrets))
    result = {r.id: r for r in run_checks(ctx)}[f"ssh.{check}"]
    return result.status, result.reason


@pytest.mark.parametrize(("text", "check", "status"), [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_sshd_verdict_per_user(hardened_root: FixtureRoot, text: str, check: str, status: str) -> None:
    w(hardened_root.root, "/etc/group", "root:x:0:\nwheel:x:10:alice\nempty:x:20:\nalice:x:1000:\n")
    cfg = hardened_root.root / "etc/ssh/sshd_config"
    cfg.write_text(cfg.read_text() + text)
    got, reason = verdict(hardened_root, check)
    assert got == status, reason


def test_match_block_for_a_user_names_the_user(hardened_root: FixtureRoot) -> None:
    cfg = hardened_root.root / "etc/ssh/sshd_config"
    cfg.write_text(cfg.read_text() + "Match User git\n    PasswordAuthentication yes\n")
    status, reason = verdict(hardened_root, "passwordauthentication")
    assert status == "fail" and "user git" in reason and "Match block (User git)" in reason


def test_include_inside_a_match_block_applies_only_there(hardened_root: FixtureRoot) -> None:
    r = hardened_root.root
    w(r, "/etc/ssh/loose.conf", "PasswordAuthentication yes\n")
    cfg = r / "etc/ssh/sshd_config"
    cfg.write_text(cfg.read_text() + "Match User dave\n    Include loose.conf\n")
    assert verdict(hardened_root, "passwordauthentication")[0] == "pass"
    cfg.write_text(cfg.read_text().replace("Match User dave", "Match User alice"))
    status, reason = verdict(hardened_root, "passwordauthentication")
    assert status == "fail" and "alice" in reason


def test_match_all_in_an_include_ends_with_the_file(hardened_root: FixtureRoot) -> None:
    # an included file cannot change its includer's Match state: the line after the Include is global
    r = hardened_root.root
    w(
        r,
        "/etc/ssh/sshd_config",
        "Include extra.conf\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "Include /etc/ssh/sshd_config.d/*.conf\n",
    )
    w(r, "/etc/ssh/extra.conf", "Match User dave\n    X11Forwarding yes\n")
    assert verdict(hardened_root, "passwordauthentication")[0] == "pass"


def test_a_directive_sshd_refuses_in_a_match_block_is_a_warn(hardened_root: FixtureRoot) -> None:
    cfg = hardened_root.root / "etc/ssh/sshd_config"
    cfg.write_text(cfg.read_text() + "Match User alice\n    UsePAM yes\n")
    status, reason = verdict(hardened_root, "passwordauthentication")
    assert status == "warn" and "not allowed within a Match block" in reason


def test_unknown_keyword_is_a_warn(hardened_root: FixtureRoot) -> None:
    cfg = hardened_root.root / "etc/ssh/sshd_config"
    cfg.write_text(cfg.read_text().replace("X11Forwarding no\n", "X11Forwarding no\nPasswordAuthenticaton yes\n", 1))
    status, reason = verdict(hardened_root, "passwordauthentication")
    assert status == "warn" and "unknown keyword 'PasswordAuthenticaton'" in reason
