"""yktool.pam.stack: PAM stacks under a root, read the way libpam reads them."""

from __future__ import annotations

from pathlib import Path

import pytest

from yktool.host import Host
from yktool.pam.stack import key_required, logical_lines, parse_u2f_options, scan_services, success_ends_stack, tokenize


def _write(root: Path, rel: str, text: str) -> None:
    p = root / rel.lstrip("/")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def test_tokenize_brackets_and_escapes() -> None:
    words = tokenize("auth [success=1 default=ignore] pam_u2f.so [prompt=a \\] b] cue")
    assert words == ["auth", "[success=1 default=ignore]", "pam_u2f.so", "[prompt=a ] b]", "cue"]


def test_logical_lines_comments_and_continuations() -> None:
    text = "# head\nauth required \\\n  pam_u2f.so cue # trailing\n\naccount required pam_unix.so\n"
    # libpam drops the continuation line's leading blanks and turns the backslash into one blank
    assert logical_lines(text) == [(2, "auth required  pam_u2f.so cue"), (5, "account required pam_unix.so")]


def test_scan_resolves_include_substack_and_debian_include(root: Path) -> None:
    _write(
        root,
        "/etc/pam.d/common-auth",
        "auth [success=1 default=ignore] pam_unix.so nullok\n"
        "auth sufficient pam_u2f.so authfile=/etc/u2f_mappings cue origin=pam://ws1\n",
    )
    _write(root, "/etc/pam.d/sudo", "@include common-auth\naccount include common-auth\n")
    _write(root, "/etc/pam.d/login", "auth substack common-auth\nsession required pam_env.so\n")
    _write(
        root,
        "/etc/pam.d/hyprlock",
        "-auth required /nix/store/abc-pam_u2f-1.3.0/lib/security/pam_u2f.so "
        "authfile=/run/agenix/yubikey-auth nouserok\n",
    )
    _write(root, "/etc/pam.d/loop", "auth include loop\n")
    services = {s.name: s for s in scan_services(Host(root), ["sudo", "login", "hyprlock", "greetd", "loop"])}
    sudo = services["sudo"]
    assert [u.options.authfile for u in sudo.u2f_lines] == ["/etc/u2f_mappings"]
    u = sudo.u2f_lines[0]
    assert u.options.cue and u.options.origin == "pam://ws1" and not u.options.nouserok
    assert u.control == "sufficient"
    assert u.line.file == "/etc/pam.d/common-auth" and u.line.lineno == 2
    assert u.line.via == ("/etc/pam.d/sudo",)
    assert services["login"].uses_u2f
    assert [ln.module_name for ln in services["login"].lines] == ["pam_unix", "pam_u2f", "pam_env"]
    hl = services["hyprlock"].u2f_lines[0]
    assert hl.line.ignore_missing and hl.options.nouserok and hl.options.origin is None
    assert services["hyprlock"].runs_as_user
    assert not services["greetd"].exists and not services["greetd"].uses_u2f
    assert any("include loop" in p for p in services["loop"].problems)


def test_parse_u2f_options_prefix_and_ints() -> None:
    o = parse_u2f_options(["sshformat", "pinverification=1", "max_devices=x", "appid=pam://a"])
    assert o.sshformat and o.pinverification == 1 and o.appid == "pam://a"
    assert o.other == ["max_devices=x"]


def test_default_scan_lists_present_and_expected(root: Path) -> None:
    _write(root, "/usr/lib/pam.d/sudo", "auth required pam_u2f.so\n")
    names = [s.name for s in scan_services(Host(root))]
    assert "sudo" in names and "greetd" in names
    sudo = next(s for s in scan_services(Host(root)) if s.name == "sudo")
    assert sudo.path == "/usr/lib/pam.d/sudo" and sudo.uses_u2f


@pytest.mark.parametrize(
    ("control", "required", "ends"),
    [
        ("required", True, False),
        ("requisite", True, False),
        ("sufficient", False, True),
        ("optional", False, False),
        ("[success=ok default=bad]", True, False),
        ("[success=done default=die]", True, True),
        ("[success=done default=ignore]", False, True),
        ("[success=2 default=ignore]", False, True),
        ("[success=ok]", True, False),
        ("[success=ok auth_err=ignore default=bad]", False, False),
    ],
)
def test_control_meaning_as_libpam_reads_it(control: str, required: bool, ends: bool) -> None:
    assert key_required(control) is required
    assert success_ends_stack(control) is ends
