"""The real pam_u2f (through pamtester, in a private mount namespace) accepts what yktool wrote.

Keys are yktool's software keys; the answers to pam_u2f's manual-mode challenges come from
KeySession.get_assertion with pam_u2f's clientDataHash (the raw challenge). The machine's
/etc/pam.d is never touched: its digest is compared before and after.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import CliCall
from tests.fixtures.fido import SimKey
from tests.pamdriver import Answer, authenticate, pam_d_digest, run_stack
from yktool.fido.session import NotThisKey, open_session
from yktool.pam.authfile import Authfile
from yktool.pam.proof import manual_answers

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0
    or shutil.which("pamtester") is None
    or shutil.which("unshare") is None
    or not Path("/lib/x86_64-linux-gnu/security/pam_u2f.so").exists(),
    reason="needs root, unshare, pamtester and libpam-u2f",
)

ORIGIN = "pam://ws1"


def key_answer(spec: str) -> Answer:
    """Answer with this key's assertion for the credential pam_u2f names (None: not ours)."""

    def answer(challenge: str, origin: str, kh: str) -> list[str] | None:
        with open_session(spec) as session:
            try:
                return manual_answers(session, origin, challenge, kh)
            except NotThisKey:
                return None

    return answer


def impostor_answer(spec: str) -> Answer:
    """A key not in the authfile answers every challenge with its own credential (same origin)."""
    with open_session(spec) as session:
        own = session.make_credential(ORIGIN, user_name="root").credential_id

    def answer(challenge: str, origin: str, kh: str) -> list[str] | None:
        with open_session(spec) as session:
            return manual_answers(session, origin, challenge, base64.b64encode(own).decode())

    return answer


@pytest.fixture
def pam_root(root: Path) -> Path:
    (root / "etc").mkdir()
    (root / "etc/hostname").write_text("ws1\n")
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    return root


Register = Callable[..., None]


@pytest.fixture
def register(cli: CliCall, pam_root: Path) -> Register:
    def run(spec: str, *extra: str) -> None:
        res = cli("--root", pam_root, "--device", spec, "pam", "register", "--user", "root", *extra)
        assert res.exit_code == 0, res.output

    return run


def test_real_pam_u2f_accepts_primary_and_backup_refuses_unknown(
    tmp_path: Path, pam_root: Path, sim_key: SimKey, register: Register
) -> None:
    before = pam_d_digest()
    primary, backup, stranger = sim_key("primary"), sim_key("backup"), sim_key("stranger")
    # other users' lines must not disturb pam_u2f's reading of root's line
    (pam_root / "etc/u2f_mappings").write_text("alice:AAAA,BBBB\n")
    register(primary)
    register(backup)
    authfile = pam_root / "etc/u2f_mappings"
    line = Authfile.parse(authfile.read_text()).effective_line("root")
    assert line is not None and len(line.credentials) == 2

    ok1 = authenticate(tmp_path, authfile, ORIGIN, key_answer(primary))
    assert ok1.authenticated, ok1.stderr[-2000:]
    assert ok1.answered_with == [0]
    ok2 = authenticate(tmp_path, authfile, ORIGIN, key_answer(backup))
    assert ok2.authenticated, ok2.stderr[-2000:]
    assert ok2.answered_with == [1]  # pam_u2f went past the primary's credential
    bad = authenticate(tmp_path, authfile, ORIGIN, impostor_answer(stranger))
    assert not bad.authenticated and bad.returncode != 0
    assert bad.answered_with == [0, 1]
    assert "Authentication failure" in bad.stdout + bad.stderr
    assert pam_d_digest() == before


def test_origin_is_pinned(tmp_path: Path, pam_root: Path, sim_key: SimKey, register: Register) -> None:
    """A PAM rule with another origin refuses the key: why the origin must match."""
    key = sim_key("a")
    register(key)
    authfile = pam_root / "etc/u2f_mappings"
    assert authenticate(tmp_path, authfile, ORIGIN, key_answer(key)).authenticated
    other = authenticate(tmp_path, authfile, "pam://renamed", key_answer(key))
    assert not other.authenticated


def test_pin_option_line_is_accepted(tmp_path: Path, pam_root: Path, sim_key: SimKey, cli: CliCall) -> None:
    """+presence+pin lines made with a PIN key still parse and verify under pam_u2f."""
    key = sim_key("p", pin="4321")
    res = cli("--root", pam_root, "--device", key, "pam", "register", "--user", "root", "--pin", input="4321\n")
    assert res.exit_code == 0, res.output
    text = (pam_root / "etc/u2f_mappings").read_text()
    assert text.rstrip().endswith(",es256,+presence+pin")
    run = authenticate(tmp_path, pam_root / "etc/u2f_mappings", ORIGIN, key_answer(key))
    assert run.authenticated, run.stderr[-2000:]


def test_age_file_decrypts_with_real_age_and_authenticates(
    tmp_path: Path, pam_root: Path, sim_key: SimKey, cli: CliCall
) -> None:
    ssh_dir = pam_root / "etc/ssh"
    ssh_dir.mkdir(parents=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "host", "-f", str(ssh_dir / "ssh_host_ed25519_key")],
        check=True,
    )
    age_file = tmp_path / "secrets" / "yubikey-auth.age"
    age_file.parent.mkdir()
    primary, backup = sim_key("a"), sim_key("b")
    common = [
        "pam",
        "register",
        "--user",
        "root",
        "--age-host-key",
        "/etc/ssh/ssh_host_ed25519_key.pub",
        "--age-file",
        str(age_file),
    ]
    r1 = cli("--root", pam_root, "--device", primary, *common)
    assert r1.exit_code == 0, r1.output
    r2 = cli("--root", pam_root, "--device", backup, *common, "--age-identity", str(ssh_dir / "ssh_host_ed25519_key"))
    assert r2.exit_code == 0, r2.output
    plain = subprocess.run(
        ["age", "-d", "-i", str(ssh_dir / "ssh_host_ed25519_key"), str(age_file)], check=True, capture_output=True
    ).stdout
    parsed = Authfile.parse(plain.decode())
    assert parsed.users() == ["root"] and len(parsed.credentials_of("root")) == 2
    decrypted = tmp_path / "decrypted"
    decrypted.write_bytes(plain)
    os.chmod(decrypted, 0o644)
    run = authenticate(tmp_path, decrypted, ORIGIN, key_answer(backup))
    assert run.authenticated, run.stderr[-2000:]
    assert not (pam_root / "etc/u2f_mappings").exists()


def test_resident_credential_line_is_accepted(tmp_path: Path, pam_root: Path, sim_key: SimKey, cli: CliCall) -> None:
    """A `*` key handle (discoverable credential): pam_u2f sends no allow list, the key finds it."""
    key = sim_key("r", pin="4321")
    res = cli("--root", pam_root, "--device", key, "pam", "register", "--user", "root", "--resident", input="4321\n")
    assert res.exit_code == 0, res.output
    line = Authfile.parse((pam_root / "etc/u2f_mappings").read_text()).effective_line("root")
    assert line is not None and line.credentials[0].key_handle == "*"
    run = authenticate(tmp_path, pam_root / "etc/u2f_mappings", ORIGIN, key_answer(key))
    assert run.authenticated, run.stderr[-2000:]


def test_eddsa_is_what_pam_u2f_1_1_rejects(tmp_path: Path, pam_root: Path, sim_key: SimKey, cli: CliCall) -> None:
    """Why yktool refuses eddsa on Debian 12: this machine's pam_u2f (1.1.0) cannot verify it.
    With an unknown version yktool warns and writes; the real module then refuses the key."""
    status = Path("/var/lib/dpkg/status").read_text()
    m = re.search(r"Package: libpam-u2f\nStatus: [^\n]*installed\n(?:[^\n]+\n)*?Version: (\d+)\.(\d+)", status)
    if m is None or (int(m[1]), int(m[2])) >= (1, 2):
        pytest.skip("this machine's pam-u2f supports eddsa")
    key = sim_key("e")
    res = cli("--root", pam_root, "--device", key, "pam", "register", "--user", "root", "--algorithm", "eddsa")
    assert res.exit_code == 0 and "eddsa needs pam-u2f 1.2.0" in res.output
    run = authenticate(tmp_path, pam_root / "etc/u2f_mappings", ORIGIN, key_answer(key))
    assert not run.authenticated
    # with the target's dpkg status saying 1.1.0, yktool refuses before touching anything
    (pam_root / "var/lib/dpkg").mkdir(parents=True)
    (pam_root / "var/lib/dpkg/status").write_text(
        "Package: libpam-u2f\nStatus: install ok installed\nVersion: 1.1.0-1.1+deb12u1\n"
    )
    before = (pam_root / "etc/u2f_mappings").read_bytes()
    res = cli(
        "--root", pam_root, "--device", sim_key("e2"), "pam", "register", "--user", "root", "--algorithm", "eddsa"
    )
    assert res.exit_code == 4
    assert (pam_root / "etc/u2f_mappings").read_bytes() == before


def test_nouserok_skips_the_key_and_check_flags_it(tmp_path: Path, pam_root: Path, cli: CliCall) -> None:
    """Why `verify` fails and `pam check` flags nouserok: the real pam_u2f lets a user through a
    `required` rule with no key at all when it finds no authfile; on a pam-u2f that may predate
    the CVE-2025-23013 fix a `sufficient` rule with nouserok is an error (no password either)."""
    before = pam_d_digest()
    rule = f"auth required pam_u2f.so authfile={tmp_path}/absent origin={ORIGIN} cue nouserok\n"
    permit = "auth required pam_permit.so\n"
    assert run_stack(tmp_path, rule + permit, "nobody").authenticated
    assert not run_stack(tmp_path, rule.replace(" nouserok", "") + permit, "nobody").authenticated
    assert pam_d_digest() == before

    def nouserok_severity(module: str, control: str) -> list[str]:
        (pam_root / "etc/pam.d").mkdir(exist_ok=True)
        (pam_root / "etc/pam.d/sudo").write_text(
            f"auth {control} {module} authfile=/etc/u2f_mappings origin={ORIGIN} cue nouserok\n"
        )
        res = cli("--root", pam_root, "--json", "pam", "check", "--service", "sudo")
        data = json.loads(res.stdout)
        return [f["severity"] for f in data["findings"] if f["code"] == "nouserok"]

    assert nouserok_severity("pam_u2f.so", "sufficient") == ["error"]  # version unknown
    assert nouserok_severity("pam_u2f.so", "required") == ["warning"]  # the password stays
    fixed = "/nix/store/0abc-pam_u2f-1.3.1/lib/security/pam_u2f.so"
    assert nouserok_severity(fixed, "sufficient") == ["warning"]
    assert nouserok_severity(fixed.replace("1.3.1", "1.2.2"), "[success=done default=ignore]") == ["error"]
