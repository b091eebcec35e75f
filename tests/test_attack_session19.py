"""Attack (session 19) on the pam package and verify's pam.* checks: stacks and authfiles a local user
can rewrite, judged by the real libpam and pam_u2f (pamtester in a private mount namespace, the
machine's /etc/pam.d never touched), against what verify said of the same files.

- a module file a user owns (or in a folder they own) decides the stack: libpam loads whatever is
  there, a copy of pam_permit.so named pam_u2f.so lets root in with no key;
- a second pam_u2f rule's authfile, and every user's authfile after the first with a credential,
  were never judged: pam_u2f reads a file others may write (it only warns that its mode is too
  open) and takes the credential someone else put there.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.roots import PAM_U2F, U2F_MAPPINGS, FixtureRoot, w
from tests.pam_real_ns import PamNamespace
from tests.pamdriver import pam_d_digest
from yktool.checks import CheckContext, Result, run_checks
from yktool.host import Host

MODULES = Path("/lib/x86_64-linux-gnu/security")
# someone else's credential for root, in pam_u2f's format
STRANGER = (
    "root:"
    + base64.b64encode(b"\x05" * 48).decode()
    + ","
    + base64.b64encode(b"\x06" * 64).decode()
    + ",es256,+presence\n"
)


def _sudo(fx: FixtureRoot) -> Result:
    return {r.id: r for r in run_checks(CheckContext(Host(fx.root)), only=["pam.sudo"])}["pam.sudo"]


def _shown(result: Result) -> str:
    return "\n".join(f"{e.source}: {e.value}" for e in result.evidence)


@pytest.fixture
def libpam(tmp_path: Path) -> Iterator[tuple[Path, PamNamespace]]:
    """A private /etc/pam.d served to pamtester (the judge)."""
    if (
        os.geteuid() != 0
        or shutil.which("unshare") is None
        or shutil.which("pamtester") is None
        or not (MODULES / "pam_u2f.so").exists()
    ):
        pytest.skip("needs root, unshare, pamtester and pam_u2f")
    pamd = tmp_path / "judge-pam.d"
    pamd.mkdir()
    before = pam_d_digest()
    ns = PamNamespace(pamd)
    try:
        yield pamd, ns
    finally:
        ns.close()
        assert pam_d_digest() == before, "the machine's /etc/pam.d changed"


def _judge(libpam: tuple[Path, PamNamespace], stack: str, user: str = "root") -> str:
    pamd, ns = libpam
    (pamd / "yktest").write_text(stack)
    ((_rc, out),) = ns.authenticate([("yktest", user)])
    return out


# ------------------------------------------------------------------ a module a user can replace
@pytest.mark.parametrize("how", ["module-in-users-home", "module-folder-user-owned"])
def test_a_pam_module_a_user_can_replace_is_not_a_pass(
    hardened_root: FixtureRoot, how: str, libpam: tuple[Path, PamNamespace]
) -> None:
    root = hardened_root.root
    if how == "module-in-users-home":
        lib = root / "home/alice/lib"
        w(root, "/home/alice/lib/pam_u2f.so", (MODULES / "pam_permit.so").read_bytes(), 0o755)
        for p in (root / "home/alice", lib, lib / "pam_u2f.so"):
            os.chown(p, 1000, 1000)
        w(
            root,
            "/etc/pam.d/sudo",
            PAM_U2F.replace("pam_u2f.so", "/home/alice/lib/pam_u2f.so") + "@include common-auth\n",
        )
        named = "/home/alice: owner alice (uid 1000)"
    else:
        os.chown(root / "usr/lib/x86_64-linux-gnu/security", 1000, 1000)
        named = "/usr/lib/x86_64-linux-gnu/security: owner alice (uid 1000)"
    # the judge: whatever file sits where libpam looks is the rule; alice's pam_permit named pam_u2f
    # lets root through a `required` pam_u2f rule with no key at all
    alice_module = root / "home/alice/lib/pam_u2f.so"
    if not alice_module.exists():
        alice_module.parent.mkdir(parents=True)
        shutil.copyfile(MODULES / "pam_permit.so", alice_module)
    out = _judge(libpam, PAM_U2F.replace("pam_u2f.so", str(alice_module)))
    assert "successfully authenticated" in out, out
    result = _sudo(hardened_root)
    assert result.status == "fail", (result.status, result.reason)
    assert named in _shown(result), _shown(result)


def test_the_real_module_folders_pass(hardened_root: FixtureRoot) -> None:
    # the fix looks at the module files: root's own, in root's folders, are no writer
    assert _sudo(hardened_root).status == "pass"


# ------------------------------------------------------------------ authfiles never judged
def _stranger_accepted(libpam: tuple[Path, PamNamespace], authfile: Path) -> None:
    """pam_u2f takes a credential from a file others may write (it only warns about the mode)."""
    out = _judge(libpam, f"auth required pam_u2f.so debug cue authfile={authfile} origin=pam://fixture\n")
    assert "too open" in out and "Found 1 device(s) for user root" in out, out


def test_a_second_pam_u2f_rules_writable_authfile_is_not_a_pass(
    hardened_root: FixtureRoot, tmp_path: Path, libpam: tuple[Path, PamNamespace]
) -> None:
    # sudo: a key from /etc/u2f_mappings or one from /etc/u2f_extra, which everyone may write
    root = hardened_root.root
    w(root, "/etc/u2f_extra", U2F_MAPPINGS, 0o666)
    one = PAM_U2F.replace("required", "sufficient")
    w(
        root,
        "/etc/pam.d/sudo",
        one + one.replace("/etc/u2f_mappings", "/etc/u2f_extra") + "auth requisite pam_deny.so\n",
    )
    judged = tmp_path / "extra"
    judged.write_text(STRANGER)
    judged.chmod(0o666)
    _stranger_accepted(libpam, judged)
    result = _sudo(hardened_root)
    assert result.status == "fail" and "/etc/u2f_extra is writable by others" in result.reason, result.reason


def test_every_users_authfile_is_judged_not_only_the_first_with_a_key(
    hardened_root: FixtureRoot, tmp_path: Path, libpam: tuple[Path, PamNamespace]
) -> None:
    # no authfile=: each user's ~/.config/Yubico/u2f_keys; root's is fine and holds keys, alice's may
    # be written by anyone (verify stopped at root's)
    root = hardened_root.root
    w(root, "/root/.config/Yubico/u2f_keys", U2F_MAPPINGS.replace("alice", "root"), 0o600)
    w(root, "/home/alice/.config/Yubico/u2f_keys", U2F_MAPPINGS, 0o666)
    os.chown(root / "home/alice/.config/Yubico/u2f_keys", 1000, 1000)
    w(root, "/etc/pam.d/sudo", PAM_U2F.replace(" authfile=/etc/u2f_mappings", "") + "@include common-auth\n")
    judged = tmp_path / "u2f_keys"
    judged.write_text(STRANGER)
    judged.chmod(0o666)
    _stranger_accepted(libpam, judged)
    result = _sudo(hardened_root)
    assert result.status == "fail", (result.status, result.reason)
    assert "/home/alice/.config/Yubico/u2f_keys is writable by others" in result.reason, result.reason


# ------------------------------------------------------------------ `expand` before pam-u2f 1.3.0
DEBIAN_12_PAM_U2F = "Package: libpam-u2f\nStatus: install ok installed\nVersion: 1.1.0-1.1+deb12u1\n"


def test_expand_on_a_pam_u2f_that_predates_it_reads_the_literal_path(
    hardened_root: FixtureRoot, tmp_path: Path, libpam: tuple[Path, PamNamespace]
) -> None:
    # `expand` (%u, %h) came with pam-u2f 1.3.0; Debian 12's 1.1.0 reads /etc/u2f/%u as written, which
    # does not exist: the `required` rule locks everyone out while verify read /etc/u2f/alice and passed
    from yktool.pam.check import check

    root = hardened_root.root
    w(root, "/var/lib/dpkg/status", DEBIAN_12_PAM_U2F)
    w(root, "/etc/u2f/root", U2F_MAPPINGS.replace("alice", "root"), 0o600)
    w(root, "/etc/u2f/alice", U2F_MAPPINGS, 0o600)
    os.chown(root / "etc/u2f/alice", 1000, 1000)
    w(
        root,
        "/etc/pam.d/sudo",
        PAM_U2F.replace("authfile=/etc/u2f_mappings", "expand authfile=/etc/u2f/%u") + "@include common-auth\n",
    )
    if not Path("/var/lib/dpkg/status").read_text().count("Version: 1.1.0-1.1+deb12u1"):
        pytest.skip("the judge needs Debian 12's pam-u2f 1.1.0")
    judged = tmp_path / "peruser"
    judged.mkdir()
    (judged / "root").write_text(STRANGER)
    (judged / "root").chmod(0o600)
    out = _judge(libpam, f"auth required pam_u2f.so debug cue expand authfile={judged}/%u origin=pam://fixture\n")
    assert f"Cannot open file: {judged}/%u" in out and "cannot retrieve authentication info" in out, out
    result = _sudo(hardened_root)
    assert result.status == "fail" and "/etc/u2f/%u" in result.reason, (result.status, result.reason)
    report = check(Host(root), ["sudo"])
    assert not report.ok and any("/etc/u2f/%u" in f.message for f in report.findings), report.to_json()


def test_expand_from_pam_u2f_1_3_0_reads_each_users_file(hardened_root: FixtureRoot) -> None:
    root = hardened_root.root
    w(root, "/var/lib/dpkg/status", DEBIAN_12_PAM_U2F.replace("1.1.0-1.1+deb12u1", "1.3.0-1"))
    w(root, "/etc/u2f/alice", U2F_MAPPINGS, 0o600)
    os.chown(root / "etc/u2f/alice", 1000, 1000)
    w(
        root,
        "/etc/pam.d/sudo",
        PAM_U2F.replace("authfile=/etc/u2f_mappings", "expand authfile=/etc/u2f/%u") + "@include common-auth\n",
    )
    assert _sudo(hardened_root).status == "pass"


# ------------------------------------------------------------------ the authfile's folder
def test_a_central_authfile_in_a_folder_a_user_owns_is_not_a_pass(
    hardened_root: FixtureRoot, tmp_path: Path, libpam: tuple[Path, PamNamespace]
) -> None:
    # /etc/yubico is alice's: she swaps u2f_keys for a link to a root-owned file whose lines she
    # writes (root's mailbox: `mail root` with a body line `root:KH,PK,es256,+presence`); pam_u2f opens
    # the authfile without O_NOFOLLOW and only asks that the file it reaches be root's
    from yktool.pam.check import check

    judged = tmp_path / "alices"
    judged.mkdir()
    os.chown(judged, 1000, 1000)
    mailbox = tmp_path / "mailbox"
    mailbox.write_text("From alice\n\n" + STRANGER)
    mailbox.chmod(0o600)
    (judged / "u2f_keys").symlink_to(mailbox)
    out = _judge(libpam, f"auth required pam_u2f.so debug cue authfile={judged}/u2f_keys origin=pam://fixture\n")
    assert "Found 1 device(s) for user root" in out, out
    root = hardened_root.root
    w(root, "/etc/yubico/u2f_keys", U2F_MAPPINGS)
    os.chown(root / "etc/yubico", 1000, 1000)
    w(root, "/etc/pam.d/sudo", PAM_U2F.replace("/etc/u2f_mappings", "/etc/yubico/u2f_keys") + "@include common-auth\n")
    result = _sudo(hardened_root)
    assert result.status == "fail" and "/etc/yubico" in result.reason, (result.status, result.reason)
    report = check(Host(root), ["sudo"])
    assert not report.ok and any(f.code == "authfile-folder-writable" for f in report.findings), report.to_json()


def test_a_central_authfile_in_roots_folders_passes(hardened_root: FixtureRoot) -> None:
    root = hardened_root.root
    w(root, "/etc/yubico/u2f_keys", U2F_MAPPINGS)
    w(root, "/etc/pam.d/sudo", PAM_U2F.replace("/etc/u2f_mappings", "/etc/yubico/u2f_keys") + "@include common-auth\n")
    assert _sudo(hardened_root).status == "pass"


# ------------------------------------------------------------------ last way in: a gate before the password
# pam_succeed_if in front of pam_unix: counted as "may succeed", it let alice's password count as her way
# in where the gate shuts it (the first two: the removal of her last key was allowed)
GATE = (
    "auth [success=ignore default=1] pam_succeed_if.so {cond} quiet\nauth sufficient pam_unix.so nodelay\n"
    "auth required pam_u2f.so authfile=/etc/u2f_mappings cue\n"
)
GATED = {
    "uid-jumps-over-password": GATE.format(cond="uid >= 2000"),
    "requisite-before-password": (
        "auth sufficient pam_u2f.so authfile=/etc/u2f_mappings cue\n"
        "auth requisite pam_succeed_if.so uid >= 2000 quiet\n"
        "auth required pam_unix.so nodelay\n"
    ),
    "user-not-in-list": GATE.format(cond="user in bob:carol"),
    "shell-glob": GATE.format(cond="shell =~ */zsh"),
    "second-condition-fails": GATE.format(cond="uid >= 1000 user != alice"),
    # the gate open: the password is her way in
    "uid-open": GATE.format(cond="uid >= 1000"),
    "user-in-list": GATE.format(cond="user in bob:alice"),
    "home-glob": GATE.format(cond="home =~ /home/*"),
    "user-eq": GATE.format(cond="user = alice"),
}
OPEN = {"uid-open", "user-in-list", "home-glob", "user-eq"}


@pytest.mark.parametrize("name", sorted(GATED))
def test_a_gate_before_the_password_is_judged_as_pam_succeed_if_does(tmp_path: Path, name: str) -> None:
    from tests.flows_support import PASSWORD_HASH
    from tests.test_lastway_pam_judged import real_libpam_lets_alice_in, yktool_says_alice_gets_in

    if os.geteuid() != 0 or shutil.which("pamtester") is None:
        pytest.skip("needs root and pamtester")
    service = GATED[name]
    real = real_libpam_lets_alice_in(tmp_path, service, {}, PASSWORD_HASH)
    assert real is (name in OPEN), real
    # the root yktool reads has pam_succeed_if installed, like the machine pamtester ran on
    w(tmp_path / "root", "/usr/lib/x86_64-linux-gnu/security/pam_succeed_if.so", b"\x7fELF")
    assert yktool_says_alice_gets_in(tmp_path, service, {}, PASSWORD_HASH) is real


def test_an_unjudged_gate_before_the_password_is_no_way_in(tmp_path: Path) -> None:
    from tests.flows_support import PASSWORD_HASH
    from tests.test_lastway_pam_judged import real_libpam_lets_alice_in, yktool_says_alice_gets_in

    if os.geteuid() != 0 or shutil.which("pamtester") is None:
        pytest.skip("needs root and pamtester")
    allowed = tmp_path / "password-users"
    allowed.write_text("bob\n")
    service = (
        f"auth [success=ignore default=1] pam_listfile.so item=user sense=allow file={allowed} onerr=fail\n"
        "auth sufficient pam_unix.so nodelay\nauth required pam_u2f.so authfile=/etc/u2f_mappings cue\n"
    )
    assert real_libpam_lets_alice_in(tmp_path, service, {}, PASSWORD_HASH) is False
    w(tmp_path / "root", "/usr/lib/x86_64-linux-gnu/security/pam_listfile.so", b"\x7fELF")
    assert yktool_says_alice_gets_in(tmp_path, service, {}, PASSWORD_HASH) is False


# a module lastway cannot judge is never taken as "may succeed" on the way to the password; the modules
# that pass in normal use (pam_env, pam_nologin without its file, …) still leave the password a way in.
# {nologin}: a file pam_nologin reads (there in the "-present" cases); {gate}: a file the gate reads
U2F_RULE = "pam_u2f.so authfile=/etc/u2f_mappings cue"
DEBIAN_COMMON_AUTH = (
    "auth\t[success=1 default=ignore]\tpam_unix.so nullok\nauth\trequisite\t\t\tpam_deny.so\n"
    "auth\trequired\t\t\tpam_permit.so\n"
)
BEFORE_PASSWORD = {
    # Debian 12's sudo with pam_u2f in front of the default common-auth (pam-auth-update's)
    "debian-sudo": (f"auth sufficient {U2F_RULE}\n@include common-auth\n", True),
    # Debian 12's login: faildelay, nologin (its default files), then common-auth
    "debian-login": (
        "auth optional pam_faildelay.so delay=3000000\nauth requisite pam_nologin.so\n"
        f"auth sufficient {U2F_RULE}\n@include common-auth\n",
        True,
    ),
    "env-nologin-absent": (
        "auth required pam_env.so\nauth requisite pam_nologin.so file={nologin}\n"
        f"auth sufficient {U2F_RULE}\nauth required pam_unix.so nodelay\n",
        True,
    ),
    "nologin-present": (
        "auth requisite pam_nologin.so file={nologin}-present\n"
        f"auth sufficient {U2F_RULE}\nauth required pam_unix.so nodelay\n",
        False,
    ),
    "nologin-present-successok": (
        "auth [success=ok default=bad] pam_nologin.so successok file={nologin}-present\n"
        f"auth sufficient {U2F_RULE}\nauth required pam_unix.so nodelay\n",
        False,
    ),
    "keyinit-warn-echo-mail-required": (
        "auth required pam_keyinit.so\nauth required pam_warn.so\n"
        "auth required pam_echo.so welcome\nauth required pam_mail.so\n"
        f"auth sufficient {U2F_RULE}\nauth required pam_unix.so nodelay\n",
        True,
    ),
    # session-only modules have no auth function: libpam fails a `required` one, skips an `optional` one
    "session-only-optional": (
        "auth optional pam_limits.so\nauth optional pam_umask.so\n"
        f"auth sufficient {U2F_RULE}\nauth required pam_unix.so nodelay\n",
        True,
    ),
    "session-only-required": (
        f"auth required pam_limits.so\nauth sufficient {U2F_RULE}\nauth required pam_unix.so nodelay\n",
        False,
    ),
    # gates lastway cannot judge, shut for alice: the password is no way in
    "listfile-gate": (
        "auth [success=ignore default=1] pam_listfile.so item=user sense=allow file={gate} onerr=fail\n"
        f"auth sufficient pam_unix.so nodelay\nauth required {U2F_RULE}\n",
        False,
    ),
    "access-gate": (
        "auth [success=ignore default=1] pam_access.so accessfile={gate}\n"
        f"auth sufficient pam_unix.so nodelay\nauth required {U2F_RULE}\n",
        False,
    ),
    "listfile-requisite": (
        f"auth sufficient {U2F_RULE}\n"
        "auth requisite pam_listfile.so item=user sense=allow file={gate} onerr=fail\n"
        "auth required pam_unix.so nodelay\n",
        False,
    ),
}
GATE_TEXT = {"listfile": "bob\n", "access": "-:alice:ALL\n+:ALL:ALL\n"}


def _before_password(tmp_path: Path, name: str) -> str:
    from tests.fixtures.roots import w as write_in

    nologin, gate = tmp_path / "nologin", tmp_path / "gate"
    service = BEFORE_PASSWORD[name][0].format(nologin=nologin, gate=gate)
    # the judge reads them where the stack names them; yktool inside its root, at the same paths
    for base in (Path("/"), tmp_path / "root"):
        write_in(base, f"{nologin}-present", "no logins: maintenance\n")
        write_in(base, str(gate), GATE_TEXT.get(name.split("-")[0], ""))
    return service


@pytest.mark.parametrize("name", sorted(BEFORE_PASSWORD))
def test_modules_before_the_password_are_judged_as_libpam_runs_them(tmp_path: Path, name: str) -> None:
    from tests.flows_support import PASSWORD_HASH
    from tests.test_lastway_pam_judged import real_libpam_lets_alice_in, yktool_says_alice_gets_in

    if os.geteuid() != 0 or shutil.which("pamtester") is None:
        pytest.skip("needs root and pamtester")
    if name == "debian-login" and any(Path(p).exists() for p in ("/etc/nologin", "/var/run/nologin")):
        pytest.skip("this machine has a nologin file: the judge would shut alice out")
    service = _before_password(tmp_path, name)
    extra = {"common-auth": DEBIAN_COMMON_AUTH}
    real = real_libpam_lets_alice_in(tmp_path, service, extra, PASSWORD_HASH)
    assert real is BEFORE_PASSWORD[name][1], real
    modules = tmp_path / "root/usr/lib/x86_64-linux-gnu/security"
    for module in set(re.findall(r"pam_\w+\.so", service)):
        w(tmp_path / "root", str(modules.relative_to(tmp_path / "root") / module), b"\x7fELF")
    assert yktool_says_alice_gets_in(tmp_path, service, extra, PASSWORD_HASH) is real


@pytest.mark.parametrize(
    "module",
    [
        "pam_access.so accessfile=/etc/security/access.conf",
        "pam_wheel.so",
        "pam_time.so",
        "pam_sss.so",
        "pam_shells.so",
    ],
)
def test_a_way_through_a_module_lastway_cannot_judge_is_not_counted_and_named(tmp_path: Path, module: str) -> None:
    # even where it would let alice through: yktool cannot tell, so the password behind it is not
    # counted, and the refusal says which module and why
    from tests.flows_support import PASSWORD_HASH, set_shadow
    from yktool.lastway import Judge, passes_without
    from yktool.pam.stack import parse_service

    root = tmp_path / "root"
    w(root, "/etc/pam.d/yktest", f"auth sufficient {U2F_RULE}\nauth required {module}\nauth required pam_unix.so\n")
    w(root, "/etc/passwd", "alice:x:1000:1000:Alice:/home/alice:/bin/bash\n")
    set_shadow(root, alice=PASSWORD_HASH)
    for so in ("pam_u2f.so", "pam_unix.so", module.split()[0]):
        w(root, f"/usr/lib/x86_64-linux-gnu/security/{so}", b"\x7fELF")
    host = Host(root)
    judge = Judge(host, "alice")
    assert not passes_without(parse_service(host, "yktest"), lambda ln: ln.module_name == "pam_u2f", judge=judge)
    name = module.split(".")[0]
    assert "not counted" in judge.doubts.get(name, ""), judge.doubts


# ------------------------------------------------------------------ replace: an authorized key the registry lost
def test_replace_revokes_the_lost_keys_ssh_login_the_registry_does_not_record(
    scratch: Path, cli: object, tmp_path: Path
) -> None:
    # `ssh authorize` appends to authorized_keys, then records: a kill -9 between the two (or a
    # registry restored from before) leaves alice's line for the primary unrecorded. replace --lost
    # primary must still take it out: the finder of the key would keep SSH login
    import subprocess

    from tests.test_replace_lost import AUTHORIZED, authorized_fingerprints, fingerprint_of, lose, replace
    from yktool.demo import ROOT
    from yktool.inventory import Registry

    root = scratch / ROOT
    primary = fingerprint_of(scratch, "primary")
    assert primary in authorized_fingerprints(scratch)
    with Registry.update(Host(root)) as registry:
        dropped = registry.forget("ssh", role="authorized_keys", path="/" + AUTHORIZED)
    assert dropped >= 1
    lose(scratch, "primary")
    r = replace(cli, scratch, "--lost", "primary")  # type: ignore[arg-type]
    assert r.exit_code == 0, r.output
    assert (
        subprocess.run(["ssh-keygen", "-l", "-f", str(root / AUTHORIZED)], capture_output=True, check=False).returncode
        == 0
    )
    assert primary not in authorized_fingerprints(scratch), "the lost key still logs in by SSH"


# ------------------------------------------------------------------ an include loop
LOOPS = {
    # libpam includes the file again and again until it gives up (pamtester: a crash, or denied)
    "include": (
        "auth required pam_permit.so\nauth include yk-loop\n",
        "auth required pam_permit.so\nauth include yk-loop\n",
    ),
    "at-include": (
        "auth required pam_permit.so\n@include yk-loop\n",
        "auth required pam_permit.so\n@include yk-loop\n",
    ),
    "substack": (
        "auth substack yk-loop\nauth required pam_permit.so\n",
        "auth required pam_permit.so\nauth substack yk-loop\n",
    ),
}


@pytest.mark.parametrize("name", sorted(LOOPS))
def test_an_include_loop_lets_nobody_in(name: str, tmp_path: Path, libpam: tuple[Path, PamNamespace]) -> None:
    from yktool.pam import dispatch
    from yktool.pam.stack import parse_service

    service, looping = LOOPS[name]
    pamd, _ns = libpam
    (pamd / "yk-loop").write_text(looping)
    out = _judge(libpam, service)
    assert "successfully authenticated" not in out, out
    root = tmp_path / "root"
    w(root, "/etc/pam.d/yktest", service)
    w(root, "/etc/pam.d/yk-loop", looping)
    svc = parse_service(Host(root), "yktest")
    assert dispatch.run(svc.handlers("auth"), lambda line: "success") != "success"


def test_verify_sees_the_lockout_of_an_include_loop(hardened_root: FixtureRoot) -> None:
    w(hardened_root.root, "/etc/pam.d/common-auth", "auth required pam_unix.so\n@include common-auth\n")
    result = _sudo(hardened_root)
    assert result.status == "fail" and "locked out" in result.reason, (result.status, result.reason)


# ------------------------------------------------------------------ last way in: a stored password no password matches
def _hashes() -> dict[str, str]:
    import subprocess

    from tests.flows_support import PASSWORD, PASSWORD_HASH

    made = {
        f"openssl-{m}": subprocess.run(
            ["openssl", "passwd", f"-{m}", "-salt", "yktoolsalt", PASSWORD], capture_output=True, text=True, check=True
        ).stdout.strip()
        for m in ("1", "5", "6")
    }
    return {
        **made,
        "sha512": PASSWORD_HASH,
        # shapes a broken provisioning leaves: crypt(3) reads none of them as a hash
        "bad-sha512-setting-only": "$6$x",
        "bad-sha512-empty-digest": "$6$abcdefgh$",
        "bad-sha512-cut-off": PASSWORD_HASH[:-5],
        "bad-sha512-one-more": PASSWORD_HASH + "x",
        "bad-md5-short": "$1$x$y",
        "bad-yescrypt-garbled": "$y$j9T$abc$def",
    }


@pytest.mark.parametrize("name", sorted(_hashes()))
def test_a_stored_password_counts_only_when_crypt_reads_it_as_a_hash(tmp_path: Path, name: str) -> None:
    from tests.test_lastway_pam_judged import real_libpam_lets_alice_in, yktool_says_alice_gets_in

    if os.geteuid() != 0 or shutil.which("pamtester") is None:
        pytest.skip("needs root and pamtester")
    stored = _hashes()[name]
    service = "auth sufficient pam_u2f.so authfile=/etc/u2f_mappings cue\nauth required pam_unix.so nodelay\n"
    real = real_libpam_lets_alice_in(tmp_path, service, {}, stored)
    assert real is not name.startswith("bad-")
    assert yktool_says_alice_gets_in(tmp_path, service, {}, stored) is real


# ------------------------------------------------------------------ an offline root's /run
def test_an_authfile_in_a_users_run_folder_is_not_taken_for_a_boot_secret(hardened_root: FixtureRoot) -> None:
    # offline, verify passed any authfile under /run as "decrypted at boot (agenix)"; /run/user/1000
    # is alice's on the running system: she writes root's credential line there
    w(
        hardened_root.root,
        "/etc/pam.d/sudo",
        PAM_U2F.replace("/etc/u2f_mappings", "/run/user/1000/u2f_keys") + "@include common-auth\n",
    )
    result = _sudo(hardened_root)
    assert result.status == "fail", (result.status, result.reason)


def test_an_agenix_authfile_offline_is_still_a_boot_secret(hardened_root: FixtureRoot) -> None:
    w(
        hardened_root.root,
        "/etc/pam.d/sudo",
        PAM_U2F.replace("/etc/u2f_mappings", "/run/agenix/yubikey-auth") + "@include common-auth\n",
    )
    assert _sudo(hardened_root).status == "pass"


# ------------------------------------------------------------------ a second required pam_u2f rule with no credential
def test_a_required_pam_u2f_rule_whose_authfile_holds_no_credential_locks_everyone_out(
    hardened_root: FixtureRoot, tmp_path: Path, libpam: tuple[Path, PamNamespace]
) -> None:
    # the first rule's file holds keys; the second, also required, reads a file that is not there:
    # pam_u2f answers AUTHINFO_UNAVAIL to everyone, key or not (verify assumed the key passes both)
    missing = tmp_path / "not-there"
    out = _judge(libpam, f"auth required pam_u2f.so cue authfile={missing} origin=pam://fixture\n")
    assert "cannot retrieve authentication info" in out, out
    w(
        hardened_root.root,
        "/etc/pam.d/sudo",
        PAM_U2F + PAM_U2F.replace("/etc/u2f_mappings", "/etc/u2f_other") + "@include common-auth\n",
    )
    result = _sudo(hardened_root)
    assert result.status == "fail" and "locked out" in result.reason, (result.status, result.reason)


# ------------------------------------------------------------------ through yktool key reset
@pytest.mark.parametrize("gate", ["listfile", "none"])
def test_reset_of_the_last_key_refused_behind_a_gate_yktool_cannot_judge(scratch: Path, cli: object, gate: str) -> None:
    # alice's only other way in is her password, behind a pam_listfile gate: the reset of her only key
    # is refused and names the module; with Debian's common-auth and no gate it goes ahead
    from tests.flows_support import PASSWORD_HASH, set_shadow, tree_bytes
    from tests.test_attack_lastway import _alice_has_only, _install_stack, _reset
    from yktool.demo import ROOT

    root = scratch / ROOT
    _alice_has_only(scratch, "primary")
    listfile = (
        "auth [success=ignore default=1] pam_listfile.so item=user sense=allow file=/etc/password-users onerr=fail\n"
    )
    front = listfile if gate == "listfile" else "auth optional pam_faildelay.so\nauth requisite pam_nologin.so\n"
    _install_stack(
        scratch, (f"auth sufficient {U2F_RULE}\n{front}@include common-auth\n", {"common-auth": DEBIAN_COMMON_AUTH})
    )
    w(root, "/etc/password-users", "bob\n")
    set_shadow(root, alice=PASSWORD_HASH)
    before = tree_bytes(root)
    r = _reset(cli, scratch, "primary")  # type: ignore[arg-type]
    if gate == "none":
        assert r.exit_code == 0, r.output
        return
    assert r.exit_code == 4, r.output
    assert "without any pam_u2f credential" in r.stderr and "pam_listfile (yktool cannot tell" in r.stderr, r.stderr
    assert tree_bytes(root) == before
