"""verify's pam.* checks reach libpam's and pam_u2f's verdict (libpam 1.5 and pam-u2f 1.1 as their source reads;
the stack semantics are measured against pamtester in tests/test_pam_differential.py).
The hardened fixture's sudo service is rewritten per row. On the code before this change the
rows marked (main: …) got the other verdict.
"""

from __future__ import annotations

import os

import pytest

from tests.fixtures.roots import PAM_U2F, FixtureRoot, w
from yktool.checks import CheckContext, run_checks
from yktool.host import Host

U2F = PAM_U2F.strip()
ROWS = [
    # include/substack are case-insensitive in libpam (main: "no pam_u2f", a false fail)
    ("include-any-case", "auth INCLUDE common-u2f\n@include common-auth\n", "pass", ""),
    # `done` in a substack ends the substack only: pam_u2f after it still decides (main: fail)
    ("substack-done-ends-substack", f"auth substack sub-permit\n{U2F}\n@include common-auth\n", "pass", ""),
    # value=action is case-sensitive: `OK` is a syntax error, every result bad (main: warn)
    (
        "bracket-case-locks-out",
        U2F.replace("required", "[success=OK default=ignore]") + "\n@include common-auth\n",
        "fail",
        "everyone is locked out",
    ),
    # a bad type is installed to fail, not skipped (main: pass, the lockout unseen)
    (
        "bad-type-locks-out",
        f"auht required pam_unix.so\n{U2F}\n@include common-auth\n",
        "fail",
        "everyone is locked out",
    ),
    # a missing include fails the stack (main: pass)
    (
        "missing-include-locks-out",
        f"auth include common-missing\n{U2F}\n@include common-auth\n",
        "fail",
        "everyone is locked out",
    ),
    # `reset` wipes pam_u2f's failure (main: pass, anyone gets in)
    (
        "reset-after-u2f",
        f"auth required pam_permit.so\n{U2F}\nauth [default=reset] pam_deny.so\nauth required pam_permit.so\n",
        "fail",
        "anyone gets in",
    ),
    # a jump past the end leaves nothing positive: denied (main: warn)
    ("jump-over-last-rule", f"auth [success=1 default=ignore] pam_unix.so\n{U2F}\n", "pass", ""),
    # a missing `-auth` module answers MODULE_UNKNOWN; `sufficient` ignores it
    ("missing-optional-module", f"-auth sufficient pam_nothere.so\n{U2F}\n@include common-auth\n", "pass", ""),
    # a continuation carries on past a comment line: the permit rule swallows the u2f line
    ("continuation-past-comment", f"auth sufficient pam_permit.so \\\n# note\n{U2F}\n", "fail", "no pam_u2f"),
]


def pam_result(fx: FixtureRoot) -> tuple[str, str]:
    result = {r.id: r for r in run_checks(CheckContext(Host(fx.root)), only=["pam.sudo"])}["pam.sudo"]
    return result.status, result.reason


@pytest.mark.parametrize(("sudo", "status", "reason"), [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_pam_verdict_as_libpam(hardened_root: FixtureRoot, sudo: str, status: str, reason: str) -> None:
    w(hardened_root.root, "/etc/pam.d/sub-permit", "auth sufficient pam_permit.so\n")
    w(hardened_root.root, "/etc/pam.d/sudo", sudo)
    got, why = pam_result(hardened_root)
    assert got == status and reason in why, why


def test_relative_authfile_is_under_each_home(hardened_root: FixtureRoot) -> None:
    # pam_u2f: authfile=REL is $HOME/REL (main: read REL itself, "no credential", a false fail)
    r = hardened_root.root
    w(r, "/home/alice/.config/u2f", (r / "etc/u2f_mappings").read_text())
    w(
        r,
        "/etc/pam.d/sudo",
        U2F.replace("authfile=/etc/u2f_mappings", "authfile=.config/u2f") + "\n@include common-auth\n",
    )
    assert pam_result(hardened_root)[0] == "pass"


def test_authfile_others_can_write_fails(hardened_root: FixtureRoot) -> None:
    # pam_u2f does not look at the mode: anyone who can write the file adds their own key (main: pass)
    os.chmod(hardened_root.root / "etc/u2f_mappings", 0o666)  # noqa: S103 - the case under test
    status, reason = pam_result(hardened_root)
    assert status == "fail" and "writable by others" in reason


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another uid needs root")
def test_central_authfile_owned_by_a_user_fails(hardened_root: FixtureRoot) -> None:
    # pam_u2f refuses an authfile owned by neither the user nor root (main: pass)
    os.chown(hardened_root.root / "etc/u2f_mappings", 1000, 1000)
    status, reason = pam_result(hardened_root)
    assert status == "fail" and "owned by alice" in reason
