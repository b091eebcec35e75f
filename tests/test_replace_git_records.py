"""A lost key stops being trusted for git everywhere yktool set it up (issue 12's spirit).

Key A (primary) signs, then `yktool git signing` switches to key B: A's allowed_signers line stays,
and so must A's registry record, or `replace --lost primary` leaves A's line as it was. Proven with
the real git: the finder of A (its software key's state kept aside) signs a commit after the
revoke, and `git verify-commit` must not call it good. The same with a `--repo` setup, and there
the new key signs where A signed, in that repository's own allowed_signers file."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import CliCall
from tests.flows_support import EMAIL, demo_pin, git_commit, spec
from yktool.demo import KEYS, PASSPHRASE, ROOT
from yktool.host import Host
from yktool.inventory import Registry

SIGNERS = "/home/alice/.config/git/project2_signers"


def _good(result: subprocess.CompletedProcess[bytes]) -> bool:
    return result.returncode == 0 and b'Good "git" signature' in result.stderr


def _keep_finders_copy(scratch: Path) -> tuple[str, Path]:
    """A's software key and key files, kept aside as whoever finds the lost key has them; then
    A is lost (its state file gone from the demo's keys)."""
    root = scratch / ROOT
    finder = root / "home/alice/finder"
    finder.mkdir()
    for name in ("id_ed25519_sk", "id_ed25519_sk.pub"):
        shutil.copy2(root / "home/alice/.ssh" / name, finder / name)
    shutil.copy2(scratch / KEYS / "primary.json", finder / "primary.json")
    (scratch / KEYS / "primary.json").unlink()
    return f"sim:{finder / 'primary.json'}", finder / "id_ed25519_sk.pub"


def _signing(cli: CliCall, root: Path, key: str, *extra: str) -> None:
    r = cli("--root", root, "git", "signing", "--email", EMAIL, "--user", "alice", "--key", key, *extra)
    assert r.exit_code == 0, r.output


def _replace(cli: CliCall, scratch: Path, *extra: str) -> None:
    r = cli(
        "--root",
        scratch / ROOT,
        "--device",
        spec(scratch, "backup"),
        "--yes",
        "replace",
        "--lost",
        "primary",
        "--new-device",
        spec(scratch, "new"),
        "--unlock-key-file",
        str(PASSPHRASE),
        "--new-pin-stdin",
        *extra,
        input=demo_pin(scratch) + "\n",
    )
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("extra", [(), ("--keep-old-signatures",)], ids=["revoked", "keep-old-signatures"])
def test_a_key_switched_away_from_and_then_lost_signs_nothing_good(
    scratch: Path, cli: CliCall, extra: tuple[str, ...]
) -> None:
    root = scratch / ROOT
    repo = root / "home/alice/project"
    assert _good(git_commit(root, repo, spec(scratch, "primary")))
    _signing(cli, root, "/home/alice/.ssh/id_ed25519_sk_backup.pub")  # B signs from now on
    assert _good(git_commit(root, repo, spec(scratch, "backup")))
    a_blob = (root / "home/alice/.ssh/id_ed25519_sk.pub").read_text().split()[1]
    device, finder_pub = _keep_finders_copy(scratch)

    _replace(cli, scratch, *extra)

    assert not _good(git_commit(root, repo, device, signing_key=finder_pub, later=True))
    line = next(ln for ln in (root / "home/alice/.ssh/allowed_signers").read_text().splitlines() if a_blob in ln)
    assert "valid-before=" in line
    # B still signs (the new key took A's place, not B's) and the new key's commits verify
    assert (root / "home/alice/.gitconfig").read_text().count("id_ed25519_sk_backup.pub") == 1
    assert _good(git_commit(root, repo, spec(scratch, "backup"), later=True))
    new_pub = root / "home/alice/.ssh/id_ed25519_sk.pub"
    assert _good(git_commit(root, repo, spec(scratch, "new"), signing_key=new_pub, later=True))


def test_a_repository_switched_to_another_key_trusts_the_lost_one_no_more(scratch: Path, cli: CliCall) -> None:
    root = scratch / ROOT
    repo = root / "home/alice/project2"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    _signing(
        cli, root, "/home/alice/.ssh/id_ed25519_sk.pub", "--repo", "/home/alice/project2", "--allowed-signers", SIGNERS
    )
    assert _good(git_commit(root, repo, spec(scratch, "primary")))
    _signing(
        cli,
        root,
        "/home/alice/.ssh/id_ed25519_sk_backup.pub",
        "--repo",
        "/home/alice/project2",
        "--allowed-signers",
        SIGNERS,
    )
    assert _good(git_commit(root, repo, spec(scratch, "backup")))
    device, finder_pub = _keep_finders_copy(scratch)

    _replace(cli, scratch, "--keep-old-signatures")  # the expiry alone has to hold

    assert not _good(git_commit(root, repo, device, signing_key=finder_pub, later=True))
    assert _good(git_commit(root, repo, spec(scratch, "backup"), later=True))


def test_a_repository_the_lost_key_signed_in_signs_with_the_new_key(scratch: Path, cli: CliCall) -> None:
    root = scratch / ROOT
    repo = root / "home/alice/project2"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    _signing(
        cli, root, "/home/alice/.ssh/id_ed25519_sk.pub", "--repo", "/home/alice/project2", "--allowed-signers", SIGNERS
    )
    assert _good(git_commit(root, repo, spec(scratch, "primary")))
    device, finder_pub = _keep_finders_copy(scratch)

    _replace(cli, scratch)

    assert not _good(git_commit(root, repo, device, signing_key=finder_pub, later=True))
    # the repository's config signs with the new key, and its own allowed_signers accepts it
    new_blob = (root / "home/alice/.ssh/id_ed25519_sk.pub").read_text().split()[1]
    assert new_blob in (root / SIGNERS.lstrip("/")).read_text()
    assert _good(git_commit(root, repo, spec(scratch, "new"), later=True))
    names = {
        k.nickname
        for k, e in Registry.load(Host(root)).enrollments("git")
        if str(e.get("config_scope")) == "repo:/home/alice/project2"
    }
    assert names == {"primary-2"}


def test_a_registry_with_one_git_record_still_loads_and_keeps_the_others_known(tmp_path: Path) -> None:
    """The registry of yktool before one record per key (one git record per email and config)
    loads; a switch to another key keeps that record, as only accepted."""
    (tmp_path / "etc/yktool").mkdir(parents=True)
    (tmp_path / "etc/yktool/keys.toml").write_text(
        'version = 1\n[[keys]]\nnickname = "primary"\naaguid = ""\nadded = "2026-11-28"\n'
        '[[keys.enrollments]]\nkind = "git"\nemail = "alice@demo-host.example"\nuser = "alice"\n'
        'allowed_signers = "/home/alice/.ssh/allowed_signers"\nconfig_scope = "global"\n'
        'config_file = "/home/alice/.gitconfig"\npublic_key = "sk-ssh-ed25519@openssh.com AAAA"\n'
        'fingerprint = "SHA256:a"\n'
    )
    registry = Registry.load(Host(tmp_path))
    [(_key, a)] = registry.enrollments("git")
    b = {k: v for k, v in a.items() if k != "kind"} | {
        "public_key": "sk-ssh-ed25519@openssh.com BBBB",
        "fingerprint": "SHA256:b",
    }
    registry.record_git("backup", b)
    registry.record_git("backup", b)  # the same again: still one record
    by_key = {k.nickname: [e for e in k.enrollments if e["kind"] == "git"] for k in registry.keys}
    assert by_key["backup"] == [{"kind": "git", **b}]
    assert [(e["public_key"], e["config_file"]) for e in by_key["primary"]] == [(a["public_key"], "")]
