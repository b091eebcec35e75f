"""Helpers for the flow tests: a commissioned demo scratch, and the consumers' own checks
(cryptsetup on the LUKS image, the real pam_u2f through pamtester, ssh-keygen -Y verify)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from yktool.demo import IMAGE, KEYS, PASSPHRASE, PIN_FILE, ROOT
from yktool.host import Host

EMAIL = "alice@demo-host.example"
ORIGIN = "pam://demo-host"
YKTOOL = str(Path(__file__).resolve().parent.parent / ".venv" / "bin" / "yktool")


def copy_scratch(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def spec(scratch: Path, role: str) -> str:
    return f"sim:{scratch / KEYS / (role + '.json')}"


def demo_pin(scratch: Path) -> str:
    return (scratch / KEYS / PIN_FILE).read_text()


# sha512-crypt of "sesame" (openssl passwd -6 -salt abcdefgh sesame): a test password, no secret
PASSWORD = "sesame"
PASSWORD_HASH = "$6$abcdefgh$Bk2D4uYVcw0FbFPsWa0iJZ1DNfy8v6OjKcRcuBfMkWD1KdADPVnmQf5cr0O8HfAYpq1XrrjdgIRINkwgSKJ8/1"


def set_shadow(root: Path, **hashes: str) -> None:
    """Write the root's /etc/shadow (mode 0640) with these users' stored passwords (the demo root
    has none: without it pam_unix lets nobody in, and the last-way-in check says so)."""
    shadow = root / "etc/shadow"
    shadow.write_text("".join(f"{user}:{h}:19000:0:99999:7:::\n" for user, h in {"root": "*", **hashes}.items()))
    shadow.chmod(0o640)


def root_host(scratch: Path) -> Host:
    return Host(scratch / ROOT)


def passphrase_opens(scratch: Path) -> bool:
    """The image's original passphrase still opens it (cryptsetup --test-passphrase)."""
    host = root_host(scratch)
    r = subprocess.run(
        ["cryptsetup", "open", "--test-passphrase", "--key-file", str(host.path(PASSPHRASE)), str(host.path(IMAGE))],
        capture_output=True,
        check=False,
    )
    return r.returncode == 0


def key_opens_image(scratch: Path, key_spec: str, pin: str) -> bool:
    """This key's FIDO2 token opens the image: hmac-secret → passphrase → cryptsetup --test-passphrase."""
    from yktool.demo import DemoInteraction
    from yktool.fido.session import open_session
    from yktool.luks import cryptenroll
    from yktool.luks import fido2 as luks_fido2
    from yktool.luks.header import read_header
    from yktool.luks.tokens import Fido2Token

    host = root_host(scratch)
    header = read_header(host, IMAGE)
    with open_session(key_spec, DemoInteraction(pin)) as session:
        for token in header.tokens_of_type("systemd-fido2"):
            if isinstance(token, Fido2Token) and luks_fido2.owns(session, token):
                passphrase = luks_fido2.derive_passphrase(session, token)
                return cryptenroll.check_passphrase(host, IMAGE, passphrase, token.keyslots[0])
    return False


def authfile_whole(scratch: Path) -> bool:
    """The pam_u2f authfile, if there, parses with no malformed line and ends with a newline."""
    from yktool.pam.authfile import Authfile

    path = scratch / ROOT / "etc/u2f_mappings"
    if not path.exists():
        return True
    text = path.read_text()
    return text.endswith("\n") and not Authfile.parse(text).malformed


def ssh_signs(scratch: Path, key_file: str, key_spec: str, pin: str, tmp: Path) -> subprocess.CompletedProcess[bytes]:
    """Sign with the security key through yktool, verify with the real ssh-keygen -Y verify."""
    from yktool.demo import DemoInteraction
    from yktool.fido.session import open_session
    from yktool.ssh.enroll import load_private, sign

    host = root_host(scratch)
    key = load_private(host, key_file)
    message = b"a commit to sign\n"
    with open_session(key_spec, DemoInteraction(pin)) as session:
        signature = sign(session, key, "git", message)
    (tmp / "msg.sig").write_bytes(signature)
    signers = host.path("/home/alice/.ssh/allowed_signers")
    return subprocess.run(
        ["ssh-keygen", "-Y", "verify", "-f", str(signers), "-I", EMAIL, "-n", "git", "-s", str(tmp / "msg.sig")],
        input=message,
        capture_output=True,
        check=False,
    )


def pam_accepts(scratch: Path, key_spec: str, tmp: Path, user: str = "alice") -> bool:
    """The real pam_u2f (pamtester, private mount namespace) accepts this key for `user`'s line.

    pam_u2f looks the user up on this machine, which has no alice: her line is checked as root's.
    The real module is part of the test set-up (scripts/setup): without it this fails, never skips.
    """
    assert _pam_real_available(), "the real pam_u2f check needs root, pamtester, unshare and pam_u2f.so"
    from tests.pamdriver import authenticate
    from yktool.fido.session import NotThisKey, open_session
    from yktool.pam.proof import manual_answers

    text = (scratch / ROOT / "etc/u2f_mappings").read_text()
    authfile = tmp / "u2f_mappings"
    authfile.write_text(
        "".join(
            "root:" + ln.split(":", 1)[1] if ln.startswith(f"{user}:") else ln
            for ln in text.splitlines(keepends=True)
            if not ln.startswith("root:")
        )
    )

    def answer(challenge: str, origin: str, kh: str) -> list[str] | None:
        with open_session(key_spec) as session:
            try:
                return manual_answers(session, origin, challenge, kh)
            except NotThisKey:
                return None

    return authenticate(tmp, authfile, ORIGIN, answer).authenticated


def _pam_real_available() -> bool:
    return (
        os.geteuid() == 0
        and shutil.which("pamtester") is not None
        and shutil.which("unshare") is not None
        and Path("/lib/x86_64-linux-gnu/security/pam_u2f.so").exists()
    )


def tree_bytes(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (relative path -> bytes), to prove nothing changed."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


@contextlib.contextmanager
def fresh_setup(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """An uncommissioned demo set-up (scratch root, LUKS2 image, measured swtpm running): (scratch, TCTI)."""
    from yktool import swtpm
    from yktool.demo import TPM_STATE, DemoContext, stage_image, stage_measured_boot, stage_root

    scratch = tmp_path / "demo"
    scratch.mkdir()
    (scratch / ROOT).mkdir()
    ctx = DemoContext(Host(scratch / ROOT), scratch)
    ctx.tpm = swtpm.start(ctx.scratch_host, TPM_STATE)
    try:
        for stage in (stage_root, stage_image, stage_measured_boot):
            stage(ctx)
        yield scratch, ctx.tpm.tcti_spec
    finally:
        swtpm.stop(ctx.tpm)


def git_commit(
    root: Path, repo: Path, device: str, *, signing_key: Path | None = None, later: bool = False
) -> subprocess.CompletedProcess[bytes]:
    """alice makes a signed commit with the real git in `repo` (signing through the software key
    with the test-only gpg.ssh.program), with `signing_key` if given; `later`: dated a minute from
    now (after any revoke). Then `git verify-commit` checks it with her allowed_signers."""
    import datetime
    import sys

    home = root / "home/alice"
    (root / "tmp").mkdir(exist_ok=True)
    tool = Path(__file__).resolve().parent / "tools" / "yktool-ssh-keygen"
    env = {
        **os.environ,
        "HOME": str(home),
        "GIT_CONFIG_GLOBAL": str(home / ".gitconfig"),
        "GIT_CONFIG_NOSYSTEM": "1",
        "TMPDIR": str(root / "tmp"),
        "YKTOOL_ROOT": str(root),
        "YKTOOL_DEVICE": device,
        "YKTOOL_PYTHON": sys.executable,
        "GIT_AUTHOR_NAME": "Alice",
        "GIT_COMMITTER_NAME": "Alice",
        "GIT_CONFIG_COUNT": "2",
        "GIT_CONFIG_KEY_0": "safe.directory",
        "GIT_CONFIG_VALUE_0": "*",
        "GIT_CONFIG_KEY_1": "gpg.ssh.program",
        "GIT_CONFIG_VALUE_1": str(tool),
    }
    if later:
        when = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        env |= {"GIT_AUTHOR_DATE": when, "GIT_COMMITTER_DATE": when}
    if not repo.exists():
        subprocess.run(["git", "init", "-q", str(repo)], env=env, check=True)
    (repo / "file").write_text(f"signed by {device} {datetime.datetime.now()}\n")
    key = ["-c", f"user.signingkey={signing_key}"] if signing_key else []
    for argv in (["git", "add", "file"], ["git", *key, "commit", "-q", "-S", "-m", "signed"]):
        subprocess.run(argv, env=env, cwd=repo, check=True, capture_output=True)
    return subprocess.run(["git", "verify-commit", "HEAD"], env=env, cwd=repo, capture_output=True, check=False)


def git_commit_verifies(scratch: Path, key_spec: str) -> subprocess.CompletedProcess[bytes]:
    """git_commit in the demo root's ~alice/project."""
    root = scratch / ROOT
    return git_commit(root, root / "home/alice/project", key_spec)
