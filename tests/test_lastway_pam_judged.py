"""The last-way-in check judges the other PAM modules as they really behave (attack left open in
issue 12): a locked password (`!`/`*` in /etc/shadow) is no way in for pam_unix, and a `-auth`
module whose .so is not installed returns PAM_MODULE_UNKNOWN — neither may be counted as the way
in that lets a user's last pam_u2f credential go.

The real consumers decide what is right: libpam and pam_unix through pamtester, in a private
mount namespace with a temporary pam.d, passwd and shadow bound over the machine's (which stay
untouched).
"""

from __future__ import annotations

import hashlib
import random
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import CliCall
from tests.fixtures.differential import report_cases
from tests.flows_support import PASSWORD, PASSWORD_HASH, set_shadow, tree_bytes
from tests.test_attack_lastway import _alice_has_only, _install_stack, _reset
from yktool.demo import ROOT
from yktool.host import Host
from yktool.lastway import passes_without
from yktool.pam.stack import parse_service

U2F = "pam_u2f.so authfile=/etc/u2f_mappings cue"
PASSWD = "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000:Alice:/home/alice:/bin/bash\n"
# alice's stored password in /etc/shadow -> the cases pam_unix tells apart
SHADOWS = {
    "hash": PASSWORD_HASH,
    "locked": "!" + PASSWORD_HASH,
    "star": "*",
    "bang": "!",
    "double-bang": "!!",
    "empty": "",
    "not-a-hash": "LK",
    "unknown-prefix": "$zz$abcdefgh$abcdef",
}


def _digest(*paths: str) -> str:
    return hashlib.sha256(b"".join(Path(p).read_bytes() for p in paths)).hexdigest()


def real_libpam_lets_alice_in(tmp: Path, service: str, extra: dict[str, str], stored: str | None) -> bool:
    """pamtester as alice, with her right password and then a wrong one on stdin: True when
    either run gets in (yktool's question is whether any way through is left). `stored`: her
    shadow field (None: no shadow line)."""
    pamd, etc = tmp / "pam.d", tmp / "etc"
    pamd.mkdir(exist_ok=True)
    etc.mkdir(exist_ok=True)
    authfile = tmp / "u2f_mappings"
    authfile.write_text("somebody-else:AAAA,BBBB,es256,+presence\n")
    (pamd / "yktest").write_text(service.replace("/etc/u2f_mappings", str(authfile)))
    for name, text in extra.items():
        (pamd / name).write_text(text.replace("/etc/u2f_mappings", str(authfile)))
    (etc / "passwd").write_text(PASSWD)
    (etc / "shadow").write_text(
        "root:*:19000:0:99999:7:::\n" + (f"alice:{stored}:19000:0:99999:7:::\n" if stored is not None else "")
    )
    before = _digest("/etc/passwd", "/etc/shadow")
    script = (
        'mount --bind "$1/pam.d" /etc/pam.d && mount --bind "$1/etc/passwd" /etc/passwd && '
        'mount --bind "$1/etc/shadow" /etc/shadow && exec pamtester yktest alice authenticate'
    )
    got_in = False
    for typed in (PASSWORD, "wrong"):
        r = subprocess.run(
            ["unshare", "-m", "sh", "-c", script, "sh", str(tmp)],
            input=(typed + "\n") * 6,
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        got_in = got_in or (r.returncode == 0 and "successfully authenticated" in r.stdout + r.stderr)
    assert _digest("/etc/passwd", "/etc/shadow") == before
    return got_in


def yktool_says_alice_gets_in(tmp: Path, service: str, extra: dict[str, str], stored: str | None) -> bool:
    """passes_without on the same stack in a root like the machine: its modules installed (the
    ones the stacks name), alice's passwd and shadow lines."""
    root = tmp / "root"
    (root / "etc/pam.d").mkdir(parents=True, exist_ok=True)
    (root / "etc/pam.d/yktest").write_text(service)
    for name, text in extra.items():
        (root / "etc/pam.d" / name).write_text(text)
    (root / "etc/passwd").write_text(PASSWD)
    set_shadow(root, **({"alice": stored} if stored is not None else {}))
    modules = root / "usr/lib/x86_64-linux-gnu/security"
    modules.mkdir(parents=True, exist_ok=True)
    for module in ("pam_u2f.so", "pam_unix.so", "pam_deny.so", "pam_permit.so"):
        (modules / module).write_bytes(b"\x7fELF")
    host = Host(root)
    return passes_without(
        parse_service(host, "yktest"), lambda ln: ln.module_name == "pam_u2f", host=host, user="alice"
    )


@pytest.mark.parametrize("nullok", ["", " nullok"], ids=["plain", "nullok"])
@pytest.mark.parametrize("case", [*sorted(SHADOWS), "no-shadow-line"])
def test_pam_unix_is_judged_from_the_roots_shadow_as_pam_unix_does(tmp_path: Path, case: str, nullok: str) -> None:
    """`sufficient pam_u2f` then `required pam_unix`: only alice's password can let her in
    without the key. yktool's reading of her shadow line agrees with the real pam_unix's."""
    stored = SHADOWS.get(case)
    service = f"auth sufficient {U2F}\nauth required pam_unix.so nodelay{nullok}\n"
    real = real_libpam_lets_alice_in(tmp_path, service, {}, stored)
    assert yktool_says_alice_gets_in(tmp_path, service, {}, stored) == real


NO_OTHER_WAY_STACKS = {
    "dash-sufficient": (f"-auth sufficient pam_nothere.so\nauth sufficient {U2F}\nauth required pam_deny.so\n", False),
    "dash-jump": (
        f"-auth [success=2 default=ignore] pam_nothere.so\nauth [success=1 default=ignore] {U2F}\n"
        "auth requisite pam_deny.so\nauth required pam_permit.so\n",
        False,
    ),
    "plain-required": (f"auth sufficient {U2F}\nauth required pam_nothere.so\nauth required pam_permit.so\n", False),
    "dash-optional-then-permit": (
        f"-auth optional pam_nothere.so\nauth sufficient {U2F}\nauth required pam_permit.so\n",
        True,
    ),
    # not a missing module, a missing password: use_first_pass checks one an earlier pam_unix asked
    "use-first-pass-alone": (f"auth sufficient {U2F}\nauth required pam_unix.so nodelay use_first_pass\n", False),
    "use-first-pass-after-unix": (
        f"auth sufficient {U2F}\nauth optional pam_unix.so nodelay\nauth required pam_unix.so nodelay use_first_pass\n",
        True,
    ),
}


@pytest.mark.parametrize("name", sorted(NO_OTHER_WAY_STACKS))
def test_a_missing_module_or_password_is_no_way_in(tmp_path: Path, name: str) -> None:
    service, gets_in = NO_OTHER_WAY_STACKS[name]
    assert real_libpam_lets_alice_in(tmp_path, service, {}, PASSWORD_HASH) is gets_in
    assert yktool_says_alice_gets_in(tmp_path, service, {}, PASSWORD_HASH) is gets_in


CONTROLS = [
    "required",
    "requisite",
    "sufficient",
    "optional",
    "[success=1 default=ignore]",
    "[success=done default=die]",
    "[success=ok default=bad]",
    "[success=2 default=ignore]",
    "[default=ignore success=bad]",
    "[success=done default=ignore]",
]
MODULES = [
    U2F,
    "pam_deny.so",
    "pam_permit.so",
    "pam_unix.so nodelay",
    "pam_unix.so nodelay nullok",
    "pam_unix.so nodelay use_first_pass",
    "pam_nothere.so",
]


def test_passes_without_agrees_with_the_real_libpam_on_generated_stacks(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """pam_u2f (no credential for alice), pam_unix (alice's shadow line varied), pam_deny,
    pam_permit and a module not installed (with and without `-`), under simple and bracketed
    controls, one level or behind a substack: yktool's "can alice get through without the key"
    against the real libpam's, over both a right and a wrong password."""
    started = time.monotonic()
    rng = random.Random(21)  # test data, not secrets
    disagree, count, passing = [], 0, 0
    while count < 50:
        rules = [
            ("-" if rng.random() < 0.2 else "") + f"auth {rng.choice(CONTROLS)} {rng.choice(MODULES)}"
            for _ in range(rng.randint(1, 4))
        ]
        if not any("pam_u2f" in r for r in rules):
            continue
        extra: dict[str, str] = {}
        if rng.random() < 0.25:
            cut = rng.randint(0, len(rules) - 1)
            extra = {"part": "\n".join(rules[cut:]) + "\n"}
            rules = [*rules[:cut], "auth substack part"]
        service = "\n".join(rules) + "\n"
        stored = rng.choice([*SHADOWS.values(), None])
        folder = tmp_path / str(count)
        folder.mkdir()
        real = real_libpam_lets_alice_in(folder, service, extra, stored)
        ours = yktool_says_alice_gets_in(folder, service, extra, stored)
        passing += real
        if real != ours:
            disagree.append((service, extra, stored, real, ours))
        count += 1
    report_cases(
        request,
        "last way in vs pamtester",
        seconds=round(time.monotonic() - started, 1),
        cases=count,
        let_in=passing,
        disagree=len(disagree),
    )
    assert not disagree, f"{len(disagree)} of {count} disagree: {disagree[:3]}"


# --------------------------------------------------------------------------- through yktool key reset
PASSWORD_STACK: tuple[str, dict[str, str]] = (f"auth sufficient {U2F}\nauth required pam_unix.so\n", {})


@pytest.mark.parametrize("stored", ["!" + PASSWORD_HASH, "*", ""], ids=["locked", "star", "empty-no-nullok"])
def test_reset_refused_when_the_password_left_is_locked(scratch: Path, cli: CliCall, stored: str) -> None:
    """alice's only other way in is her password, and it is locked: the reset of her only key
    would lock her out of sudo and login, so it is refused and nothing changes."""
    _alice_has_only(scratch, "primary")
    _install_stack(scratch, PASSWORD_STACK)
    set_shadow(scratch / ROOT, alice=stored)
    before = tree_bytes(scratch / ROOT)
    r = _reset(cli, scratch, "primary")
    assert r.exit_code == 4, r.output
    assert "without any pam_u2f credential" in r.stderr and "pam_unix" in r.stderr
    assert tree_bytes(scratch / ROOT) == before


def test_reset_goes_ahead_when_the_password_left_works(scratch: Path, cli: CliCall) -> None:
    _alice_has_only(scratch, "primary")
    _install_stack(scratch, PASSWORD_STACK)
    set_shadow(scratch / ROOT, alice=PASSWORD_HASH)
    r = _reset(cli, scratch, "primary")
    assert r.exit_code == 0, r.output


def test_reset_refused_when_the_other_way_in_is_a_module_not_installed(scratch: Path, cli: CliCall) -> None:
    """`-auth sufficient pam_sss.so` looks like another way in, but the module is not installed:
    libpam skips it, and without the key pam_deny is all that is left."""
    _alice_has_only(scratch, "primary")
    _install_stack(scratch, (f"-auth sufficient pam_sss.so\nauth sufficient {U2F}\nauth required pam_deny.so\n", {}))
    before = tree_bytes(scratch / ROOT)
    r = _reset(cli, scratch, "primary")
    assert r.exit_code == 4, r.output
    assert "pam_sss" in r.stderr
    assert tree_bytes(scratch / ROOT) == before
