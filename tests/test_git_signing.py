"""`yktool ssh sign` and `yktool git signing`, proven by the real ssh-keygen -Y verify and git."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest

from tests.conftest import ChildRecorder
from tests.fixtures.fido import SimKey
from tests.ssh_support import TOOLS, SshWorld, snapshot, world
from yktool.ssh.sshsig import parse_armored

__all__ = ["world"]
PIN = "4321"
EMAIL = "alice@example.com"


def _keygen(w: SshWorld, *args: str, device: str | None = None, input: str | None = None) -> None:
    res = w.yk("ssh", "keygen", "--user", "alice", *args, device=device, input=input)
    assert res.exit_code == 0, res.output


def _verify(
    w: SshWorld, sig: Path, message: bytes, namespace: str = "git", email: str = EMAIL
) -> subprocess.CompletedProcess[bytes]:
    return w.run(
        [
            "ssh-keygen",
            "-Y",
            "verify",
            "-f",
            str(w.ssh() / "allowed_signers"),
            "-I",
            email,
            "-n",
            namespace,
            "-s",
            str(sig),
        ],
        input=message,
    )


@pytest.mark.parametrize("type_name", ["ed25519-sk", "ecdsa-sk"])
def test_signature_verifies_against_yktools_allowed_signers(world: SshWorld, type_name: str) -> None:
    _keygen(world, "--type", type_name)
    stem = "id_ed25519_sk" if type_name == "ed25519-sk" else "id_ecdsa_sk"
    res = world.yk("git", "signing", "--email", EMAIL, "--user", "alice", "--key", f"/home/alice/.ssh/{stem}.pub")
    assert res.exit_code == 0, res.output
    message = b"tree 1234\n\nsigned through the security key\n"
    (world.root / "msg").write_bytes(message)
    res = world.yk("ssh", "sign", "-n", "git", "-f", f"/home/alice/.ssh/{stem}", "/msg")
    assert res.exit_code == 0, res.output
    sig = world.root / "msg.sig"
    good = _verify(world, sig, message)
    assert good.returncode == 0, good.stderr
    label = "ED25519-SK" if type_name == "ed25519-sk" else "ECDSA-SK"
    assert f'Good "git" signature for {EMAIL} with {label} key'.encode() in good.stdout
    bad = _verify(world, sig, message.replace(b"signed", b"forged"))
    assert bad.returncode != 0 and b"incorrect signature" in bad.stderr
    assert _verify(world, sig, message, namespace="file").returncode != 0
    assert _verify(world, sig, message, email="bob@example.com").returncode != 0
    assert parse_armored(sig.read_bytes()).signature.flags == 0x01  # touched, no PIN


def test_signature_flags_follow_the_key(world: SshWorld, sim_key: SimKey) -> None:
    device = sim_key("pinned", pin=PIN)
    _keygen(world, "--pin-stdin", "-O", "verify-required", device=device, input=PIN + "\n")
    (world.root / "msg").write_bytes(b"m")
    res = world.yk(
        "ssh",
        "sign",
        "--pin-stdin",
        "-n",
        "git",
        "-f",
        "/home/alice/.ssh/id_ed25519_sk.pub",
        "/msg",
        input=PIN + "\n",
        device=device,
    )
    assert res.exit_code == 0, res.output
    sig = parse_armored((world.root / "msg.sig").read_bytes()).signature
    assert sig.flags == 0x05 and sig.counter > 0  # user present + verified by the PIN
    assert world.yk("git", "signing", "--email", EMAIL, "--user", "alice").exit_code == 0
    assert _verify(world, world.root / "msg.sig", b"m").returncode == 0
    # wrong PIN: exit 6, nothing written
    (world.root / "msg.sig").unlink()
    res = world.yk(
        "ssh",
        "sign",
        "--pin-stdin",
        "-n",
        "git",
        "-f",
        "/home/alice/.ssh/id_ed25519_sk",
        "/msg",
        input="0000\n",
        device=device,
    )
    assert res.exit_code == 6 and "attempts left" in res.stderr
    assert not (world.root / "msg.sig").exists()


def test_no_touch_key_signs_without_presence(world: SshWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    _keygen(world, "-O", "no-touch-required")
    (world.root / "msg").write_bytes(b"m")
    monkeypatch.setenv("YKTOOL_SIM_PRESENCE", "deny")  # a touch would be refused
    res = world.yk("ssh", "sign", "-n", "git", "-f", "/home/alice/.ssh/id_ed25519_sk", "/msg")
    assert res.exit_code == 0, res.output
    assert parse_armored((world.root / "msg.sig").read_bytes()).signature.flags == 0x00


def test_touch_refused_while_signing(world: SshWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    _keygen(world)
    (world.root / "msg").write_bytes(b"m")
    monkeypatch.setenv("YKTOOL_SIM_PRESENCE", "deny")
    res = world.yk("ssh", "sign", "-n", "git", "-f", "/home/alice/.ssh/id_ed25519_sk", "/msg")
    assert res.exit_code == 9
    assert not (world.root / "msg.sig").exists()


def test_sign_with_another_key_is_no_device(world: SshWorld, sim_key: SimKey) -> None:
    _keygen(world)
    (world.root / "msg").write_bytes(b"m")
    res = world.yk("ssh", "sign", "-n", "git", "-f", "/home/alice/.ssh/id_ed25519_sk", "/msg", device=sim_key("b"))
    assert res.exit_code == 3, res.output
    assert not (world.root / "msg.sig").exists()


def _git_env(w: SshWorld) -> dict[str, str]:
    """What a shell of alice on the configured root would have: her HOME and global config."""
    env = w.env()
    home = w.home()
    (w.root / "tmp").mkdir(exist_ok=True)
    env.update(
        HOME=str(home),
        GIT_CONFIG_GLOBAL=str(home / ".gitconfig"),
        TMPDIR=str(w.root / "tmp"),
        YKTOOL_ROOT=str(w.root),
        YKTOOL_DEVICE=w.device,
        YKTOOL_PYTHON=sys.executable,
        GIT_AUTHOR_NAME="Alice",
        GIT_COMMITTER_NAME="Alice",
        # the test runs as root, standing in for alice in her own (alice-owned) repository
        GIT_CONFIG_COUNT="1",
        GIT_CONFIG_KEY_0="safe.directory",
        GIT_CONFIG_VALUE_0="*",
    )
    return env


@pytest.mark.parametrize("scope", ["global", "repo"])
def test_git_commit_and_tag_signed_and_verified(world: SshWorld, scope: str) -> None:
    _keygen(world, "--comment", "alice yubikey")
    env = _git_env(world)
    repo = world.home() / "project"
    repo.mkdir()
    assert world.run(["git", "init", "-q", str(repo)], env=env).returncode == 0
    if scope == "repo":  # alice's repository, configured by root: git's safe.directory must not block it
        for dirpath, _dirs, files in os.walk(repo):
            for name in [dirpath, *(os.path.join(dirpath, f) for f in files)]:
                os.chown(name, 1000, 1000)
    scope_args = ["--global"] if scope == "global" else ["--repo", "/home/alice/project"]
    res = world.yk("git", "signing", "--email", EMAIL, "--user", "alice", *scope_args)
    assert res.exit_code == 0, res.output
    assert "gpg.format=ssh" in res.stdout and "commit.gpgsign=true" in res.stdout
    # the test-only program signs through the software key; git itself is the real one
    config = repo / ".git" / "config" if scope == "repo" else world.home() / ".gitconfig"
    assert config.stat().st_uid == 1000  # git's lock-and-rename would have made it root's
    assert (
        world.run(
            ["git", "config", "--file", str(config), "gpg.ssh.program", str(TOOLS / "yktool-ssh-keygen")], env=env
        ).returncode
        == 0
    )
    (repo / "README").write_text("hello\n")
    for argv in (["git", "add", "README"], ["git", "commit", "-q", "-S", "-m", "first signed commit"]):
        done = world.run(argv, env=env, cwd=repo)
        assert done.returncode == 0, done.stderr
    verified = world.run(["git", "verify-commit", "HEAD"], env=env, cwd=repo)
    assert verified.returncode == 0, verified.stderr
    assert f'Good "git" signature for {EMAIL} with ED25519-SK key'.encode() in verified.stderr
    shown = world.run(["git", "log", "--show-signature", "-1"], env=env, cwd=repo).stdout.decode()
    assert f'Good "git" signature for {EMAIL}' in shown
    # tag.gpgsign: a plain annotated tag is signed too
    assert world.run(["git", "tag", "-m", "v1", "v1"], env=env, cwd=repo).returncode == 0
    tag = world.run(["git", "tag", "-v", "v1"], env=env, cwd=repo)
    assert tag.returncode == 0 and b'Good "git" signature' in tag.stderr
    # a commit signed by nobody in allowed_signers does not verify
    (world.ssh() / "allowed_signers").write_text("")
    assert world.run(["git", "verify-commit", "HEAD"], env=env, cwd=repo).returncode != 0


def test_allowed_signers_sorted_unique_and_idempotent(world: SshWorld) -> None:
    _keygen(world)
    signers = world.ssh() / "allowed_signers"
    signers.write_text(
        "# team signers\n\nzed@example.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB7\n"
        "adam@example.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA8\n"
    )
    signers.chmod(0o640)
    os.chown(signers, 1000, 1000)
    assert world.yk("git", "signing", "--email", EMAIL, "--user", "alice").exit_code == 0
    assert (signers.stat().st_mode & 0o777, signers.stat().st_uid) == (0o640, 1000)
    lines = signers.read_text().splitlines()
    assert lines[:2] == ["# team signers", ""]
    assert lines[2:] == sorted(lines[2:]) and len(lines) == 5
    ours = [x for x in lines if x.startswith(EMAIL)]
    assert len(ours) == 1 and ours[0].startswith(f'{EMAIL} namespaces="git" sk-ssh-ed25519@openssh.com AAAA')
    before = snapshot(world.home())
    res = world.yk("git", "signing", "--email", EMAIL, "--user", "alice")
    assert res.exit_code == 0 and "(unchanged)" in res.stdout
    assert snapshot(world.home()) == before


def test_git_never_touches_the_machines_config(world: SshWorld, child_recorder: ChildRecorder) -> None:
    _keygen(world)
    real_home = Path(os.path.expanduser("~"))
    watched = [
        p for p in (real_home / ".gitconfig", real_home / ".config/git/config", Path("/etc/gitconfig")) if p.exists()
    ]
    before = snapshot(*watched)
    assert world.yk("git", "signing", "--email", EMAIL, "--user", "alice").exit_code == 0
    assert snapshot(*watched) == before
    gits = [c for c in child_recorder.children if os.path.basename(c.argv[0]) == "git"]
    assert gits
    for child in gits:
        assert child.env["HOME"] == str(world.home())
        # git edits a private copy of the user's file (yktool writes it back without following links),
        # with no global config at all
        assert child.env["GIT_CONFIG_GLOBAL"] == os.devnull
        assert child.env["GIT_CONFIG_NOSYSTEM"] == "1"
        assert "--file" in child.argv and "/yktool-git-" in child.argv[child.argv.index("--file") + 1]
    config = (world.home() / ".gitconfig").read_text()
    assert "signingkey = ~/.ssh/id_ed25519_sk.pub" in config and "allowedSignersFile = ~/.ssh/allowed_signers" in config
    assert (world.home() / ".gitconfig").stat().st_uid == 1000


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--email", "not an email"], "cannot be an allowed_signers principal"),
        (["--email", "alice\x1b]0;owned\x07@example.org"], "has control characters"),
        (["--email", "alice\x7f@example.org"], "has control characters"),
        (["--email", EMAIL, "--global", "--repo", "/home/alice"], "exclude each other"),
        (["--email", EMAIL, "--repo", "/home/alice"], "not a git repository"),
        (["--email", EMAIL, "--key", "/home/alice/.ssh/missing.pub"], "no such file"),
    ],
)
def test_bad_input_changes_nothing(world: SshWorld, args: list[str], message: str) -> None:
    _keygen(world)
    before = snapshot(world.root)
    res = world.yk("git", "signing", "--user", "alice", *args)
    assert res.exit_code == 2, res.output
    assert message in res.stderr and "hint:" in res.stderr
    assert "\x1b" not in res.output and "\x07" not in res.output  # shown escaped, never raw
    assert snapshot(world.root) == before


def test_sign_stdin_to_stdout(world: SshWorld) -> None:
    _keygen(world)
    assert world.yk("git", "signing", "--email", EMAIL, "--user", "alice").exit_code == 0
    res = world.yk("ssh", "sign", "-n", "file", "-f", "/home/alice/.ssh/id_ed25519_sk", "-", input="piped data\n")
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("-----BEGIN SSH SIGNATURE-----\n")
    (world.tmp / "stdin.sig").write_text(res.stdout)
    signers = world.ssh() / "allowed_signers"
    signers.write_text(signers.read_text().replace('namespaces="git"', 'namespaces="file"'))
    assert _verify(world, world.tmp / "stdin.sig", b"piped data\n", namespace="file").returncode == 0


def test_sign_needs_the_key_handle_file(world: SshWorld) -> None:
    _keygen(world)
    (world.ssh() / "id_ed25519_sk").unlink()
    (world.root / "msg").write_bytes(b"m")
    res = world.yk("ssh", "sign", "-n", "git", "-f", "/home/alice/.ssh/id_ed25519_sk.pub", "/msg")
    assert res.exit_code == 2 and "key-handle file" in res.stderr
    assert not (world.root / "msg.sig").exists()


def test_expired_signer_keeps_old_commits_verified(world: SshWorld) -> None:
    """What `replace` does for a lost key: valid-before in allowed_signers. git hands each commit's
    date to ssh-keygen, so commits from before still verify and later ones do not."""
    import datetime

    from yktool.git_signing import expire_signer
    from yktool.host import Host
    from yktool.ssh.keys import SkPublicKey

    _keygen(world)
    env = _git_env(world)
    repo = world.home() / "project"
    assert world.run(["git", "init", "-q", str(repo)], env=env).returncode == 0
    assert world.yk("git", "signing", "--email", EMAIL, "--user", "alice").exit_code == 0
    signers = world.ssh() / "allowed_signers"
    other = (
        'bob@example.com namespaces="git" '
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n"
    )
    signers.write_text(other + signers.read_text())
    assert (
        world.run(
            [
                "git",
                "config",
                "--file",
                str(world.home() / ".gitconfig"),
                "gpg.ssh.program",
                str(TOOLS / "yktool-ssh-keygen"),
            ],
            env=env,
        ).returncode
        == 0
    )
    old = {**env, "GIT_COMMITTER_DATE": "2024-01-01T00:00:00Z", "GIT_AUTHOR_DATE": "2024-01-01T00:00:00Z"}
    assert world.run(["git", "commit", "-q", "--allow-empty", "-m", "old"], env=old, cwd=repo).returncode == 0
    public, _ = SkPublicKey.parse_line((world.ssh() / "id_ed25519_sk.pub").read_text())
    lost_at = datetime.datetime(2025, 6, 1, tzinfo=datetime.UTC)
    assert expire_signer(Host(world.root), PurePosixPath("/home/alice/.ssh/allowed_signers"), public, lost_at) == 1
    text = signers.read_text()
    assert text.startswith(other)
    assert f'{EMAIL} namespaces="git",valid-before="20250601000000Z" {public.line()}' in text
    assert world.run(["git", "verify-commit", "HEAD"], env=env, cwd=repo).returncode == 0
    assert world.run(["git", "commit", "-q", "--allow-empty", "-m", "new"], env=env, cwd=repo).returncode == 0
    late = world.run(["git", "verify-commit", "HEAD"], env=env, cwd=repo)
    assert late.returncode != 0
    assert world.run(["git", "verify-commit", "HEAD~1"], env=env, cwd=repo).returncode == 0


def test_existing_email_is_kept(world: SshWorld) -> None:
    _keygen(world)
    (world.home() / ".gitconfig").write_text("[user]\n\temail = alice@home.example\n\tname = Alice\n")
    os.chown(world.home() / ".gitconfig", 1000, 1000)
    res = world.yk("--json", "git", "signing", "--email", EMAIL, "--user", "alice")
    assert res.exit_code == 0, res.output
    config = (world.home() / ".gitconfig").read_text()
    assert "email = alice@home.example" in config and EMAIL not in config
    assert (world.home() / ".gitconfig").stat().st_uid == 1000
    assert "user.email stays alice@home.example" in res.stderr
    import json

    data = json.loads(res.stdout)
    assert "user.email" not in data["config"] and data["config"]["gpg.format"] == "ssh"
    backups = list((world.root / "var/backups/yktool/home/alice").glob(".gitconfig.*"))
    assert [b.read_text() for b in backups] == ["[user]\n\temail = alice@home.example\n\tname = Alice\n"]


def test_git_variables_of_the_callers_shell_do_not_redirect_the_config(
    world: SshWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run from a git hook or `git rebase --exec`, the shell has GIT_DIR (and maybe -c values
    in GIT_CONFIG_*): yktool's git must still configure the repository it was given."""
    _keygen(world)
    decoy = tmp_path / "decoy"
    assert world.run(["git", "init", "-q", str(decoy)], env=_git_env(world)).returncode == 0
    decoy_before = (decoy / ".git" / "config").read_bytes()
    repo = world.home() / "project"
    assert world.run(["git", "init", "-q", str(repo)], env=_git_env(world)).returncode == 0
    monkeypatch.setenv("GIT_DIR", str(decoy / ".git"))
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")
    monkeypatch.setenv("GIT_CONFIG_KEY_0", "gpg.format")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", "openpgp")
    res = world.yk("git", "signing", "--email", EMAIL, "--user", "alice", "--repo", "/home/alice/project")
    assert res.exit_code == 0, res.output
    assert (decoy / ".git" / "config").read_bytes() == decoy_before
    assert "format = ssh" in (repo / ".git" / "config").read_text()
    assert "gpg.format=ssh" in res.stdout


def test_allowed_signers_comments_stay_with_their_entry() -> None:
    from yktool.git_signing import merge_allowed_signers

    existing = (
        b"# team\n\n# zed's laptop\nzed@example.com ssh-ed25519 AAAAZ\n"
        b"# adam, since 2024\nadam@example.com ssh-ed25519 AAAAA\nadam@example.com ssh-ed25519 AAAAA\n"
        b"# trailing note\n"
    )
    data, changed = merge_allowed_signers(existing, "me@example.com ssh-ed25519 AAAAM")
    assert changed
    assert data.decode().splitlines() == [
        "# team",
        "",
        "# adam, since 2024",
        "adam@example.com ssh-ed25519 AAAAA",
        "me@example.com ssh-ed25519 AAAAM",
        "# zed's laptop",
        "zed@example.com ssh-ed25519 AAAAZ",
        "# trailing note",
    ]
    assert merge_allowed_signers(data, "me@example.com ssh-ed25519 AAAAM") == (data, False)
