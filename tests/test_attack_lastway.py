"""Attack on the last-way-in check (issue 12 item 6): "does PAM require pam_u2f?" judged from
the pam_u2f line's own control word, not from the whole stack as libpam runs it.

A stack can make the key the only way in without saying `required` on the pam_u2f line —
the form pam-auth-update writes for a sole module (`[success=1 default=ignore]`, then
`requisite pam_deny.so`), or `sufficient pam_u2f.so` followed by `pam_deny.so`, or either one
behind a `substack`. The real libpam (pamtester in a private mount namespace, the machine's
/etc/pam.d untouched) refuses a user whose authfile line is gone; yktool must then refuse to
take that line away. Stacks where another module can pass (a password) must still go ahead.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import CliCall, CliResult
from tests.flows_support import spec, tree_bytes
from tests.pamdriver import pam_d_digest
from yktool.demo import ROOT
from yktool.host import Host
from yktool.inventory import Registry
from yktool.pam.authfile import Authfile

AUTHFILE = "etc/u2f_mappings"
U2F = "pam_u2f.so authfile=/etc/u2f_mappings cue"

# (service file, extra files in pam.d), each a stack in which the key is the only way in
KEY_ONLY = {
    "pam-auth-update": (
        f"auth [success=1 default=ignore] {U2F}\nauth requisite pam_deny.so\nauth required pam_permit.so\n",
        {},
    ),
    "sufficient-deny": (f"auth sufficient {U2F}\nauth required pam_deny.so\n", {}),
    "substack": (
        "auth substack u2f-only\nauth required pam_permit.so\n",
        {"u2f-only": f"auth sufficient {U2F}\nauth requisite pam_deny.so\n"},
    ),
    "bracket-done-die": (f"auth [success=done default=ignore] {U2F}\nauth [default=die] pam_deny.so\n", {}),
}
# stacks in which another module (pam_permit standing for the password) passes without the key
KEY_OPTIONAL = {
    "sufficient-then-password": (f"auth sufficient {U2F}\nauth required pam_permit.so\n", {}),
    "skip-to-password": (
        f"auth [success=2 default=ignore] {U2F}\nauth [success=1 default=ignore] "
        "pam_permit.so\nauth requisite pam_deny.so\nauth required pam_permit.so\n",
        {},
    ),
    "substack-optional": (
        "auth substack u2f-or-pass\nauth required pam_permit.so\n",
        {"u2f-or-pass": f"auth sufficient {U2F}\nauth required pam_permit.so\n"},
    ),
}


def _alice_has_only(scratch: Path, keep: str) -> None:
    path = scratch / ROOT / AUTHFILE
    cid = next(
        str(e["credential_id"]) for k, e in Registry.load(Host(scratch / ROOT)).enrollments("pam") if k.nickname == keep
    )
    creds = Authfile.parse(path.read_text()).credentials_of("alice")
    path.write_text("alice:" + next(c.raw for c in creds if c.key_handle == cid) + "\n")


def _install_stack(scratch: Path, stack: tuple[str, dict[str, str]]) -> None:
    service, extra = stack
    pamd = scratch / ROOT / "etc/pam.d"
    for name in ("sudo", "login"):
        (pamd / name).write_text(service)
    for name, text in extra.items():
        (pamd / name).write_text(text)


def _reset(cli: CliCall, scratch: Path, role: str) -> CliResult:
    key = spec(scratch, role)
    assert cli("--device", key, "key", "replug").exit_code == 0  # opens the reset window
    return cli("--root", scratch / ROOT, "--device", key, "--yes", "key", "reset")


def libpam_passes_without_a_credential(tmp: Path, stack: tuple[str, dict[str, str]]) -> bool:
    """The real libpam and pam_u2f: does the stack let root in when root has no authfile line?"""
    service, extra = stack
    authfile = tmp / "u2f_mappings"
    authfile.write_text("somebody-else:AAAA,BBBB,es256,+presence\n")
    pamd = tmp / "pam.d"
    pamd.mkdir()
    fix = str(authfile)
    (pamd / "yktest").write_text(service.replace("/etc/u2f_mappings", fix))
    for name, text in extra.items():
        (pamd / name).write_text(text.replace("/etc/u2f_mappings", fix))
    before = pam_d_digest()
    script = 'mount --bind "$1" /etc/pam.d && exec pamtester yktest root authenticate'
    r = subprocess.run(
        ["unshare", "-m", "sh", "-c", script, "sh", str(pamd)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert pam_d_digest() == before
    return r.returncode == 0 and "successfully authenticated" in r.stdout + r.stderr


@pytest.mark.parametrize("name", sorted(KEY_ONLY))
def test_reset_refused_where_the_stack_makes_the_key_the_only_way_in(
    scratch: Path, cli: CliCall, tmp_path: Path, name: str
) -> None:
    stack = KEY_ONLY[name]
    assert not libpam_passes_without_a_credential(tmp_path, stack)  # the real consumer: no key, no entry
    _alice_has_only(scratch, "primary")
    _install_stack(scratch, stack)
    before = tree_bytes(scratch / ROOT)
    r = _reset(cli, scratch, "primary")
    assert r.exit_code == 4, r.output
    assert "without any pam_u2f credential" in r.stderr
    assert tree_bytes(scratch / ROOT) == before


@pytest.mark.parametrize("name", sorted(KEY_OPTIONAL))
def test_reset_goes_ahead_where_another_module_passes(scratch: Path, cli: CliCall, tmp_path: Path, name: str) -> None:
    stack = KEY_OPTIONAL[name]
    assert libpam_passes_without_a_credential(tmp_path, stack)  # the real consumer lets the user in
    _alice_has_only(scratch, "primary")
    _install_stack(scratch, stack)
    r = _reset(cli, scratch, "primary")
    assert r.exit_code == 0, r.output


# --------------------------------------------------------------------------- unused by absence
def test_reset_refused_when_the_registry_is_gone_but_pam_reads_the_keys_credential(scratch: Path, cli: CliCall) -> None:
    """The careless admin lost /etc/yktool/keys.toml (or enrolled the key with pamu2fcfg): the
    authfile sudo reads still holds alice's only credential, made by the key in hand. Absence
    from the registry is no proof the key is unused: the authfiles the PAM stacks name are
    probed too, and the reset is refused."""
    _alice_has_only(scratch, "primary")
    (scratch / ROOT / "etc/yktool/keys.toml").unlink()
    before = tree_bytes(scratch / ROOT)
    r = _reset(cli, scratch, "primary")
    assert r.exit_code == 4, r.output
    assert "without any pam_u2f credential" in r.stderr
    assert tree_bytes(scratch / ROOT) == before


# --------------------------------------------------------------------------- differential
CONTROLS = [
    "required",
    "requisite",
    "sufficient",
    "optional",
    "[success=1 default=ignore]",
    "[success=done default=die]",
    "[success=ok default=bad]",
    "[success=2 default=ignore]",
    "[success=ok default=reset]",
    "[success=done default=ignore]",
]
MODULES = ["pam_u2f.so authfile=/etc/u2f_mappings", "pam_deny.so", "pam_permit.so"]


def _generated_stacks(count: int) -> list[tuple[str, dict[str, str]]]:
    import random

    rng = random.Random(12)  # test data, not secrets
    out: list[tuple[str, dict[str, str]]] = []
    while len(out) < count:
        rules = [f"auth {rng.choice(CONTROLS)} {rng.choice(MODULES)}" for _ in range(rng.randint(1, 4))]
        if not any("pam_u2f" in r for r in rules):
            continue
        extra: dict[str, str] = {}
        if rng.random() < 0.3:  # part of it behind a substack
            cut = rng.randint(0, len(rules) - 1)
            extra = {"part": "\n".join(rules[cut:]) + "\n"}
            rules = [*rules[:cut], "auth substack part"]
        out.append(("\n".join(rules) + "\n", extra))
    return out


def test_passes_without_agrees_with_the_real_libpam(tmp_path: Path) -> None:
    """yktool's reading of "can the user get through without a pam_u2f credential" against the
    real libpam (pamtester, private mount namespace) on generated stacks of pam_u2f (no line for
    the user: AUTH_ERR), pam_deny and pam_permit under simple and bracketed controls."""
    from yktool.lastway import passes_without
    from yktool.pam import stack as pam_stack

    disagree = []
    stacks = _generated_stacks(30)
    for n, stack in enumerate(stacks):
        folder = tmp_path / str(n)
        folder.mkdir()
        real = libpam_passes_without_a_credential(folder, stack)
        root = folder / "root"
        (root / "etc/pam.d").mkdir(parents=True)
        (root / "etc/pam.d/yktest").write_text(stack[0])
        for name, text in stack[1].items():
            (root / "etc/pam.d" / name).write_text(text)
        service = pam_stack.parse_service(Host(root), "yktest")
        ours = passes_without(service, lambda ln: ln.module_name == "pam_u2f")
        if ours != real:
            disagree.append((stack, real, ours))
    assert not disagree, f"{len(disagree)} of {len(stacks)} disagree: {disagree[:3]}"
