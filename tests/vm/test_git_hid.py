"""git through OpenSSH through libfido2 against the emulated key: `git commit -S` with the
configuration `yktool git signing` wrote signs with the key `yktool ssh keygen` made (one
touch), and `git verify-commit` says good. One emulated key for the module."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.vm.ssh_support import Yk, scratch_root, timed, tool_env
from tests.vm.support import plug, touches
from yktool.fido.softkey import SoftKey


def test_git_commit_signed_through_libfido2_verifies(tmp_path: Path) -> None:
    state = tmp_path / "git-key.json"
    SoftKey(state)
    yk = Yk(scratch_root(tmp_path))
    home = yk.root / "home/alice"
    with timed("plug"):
        key = plug(state, tmp_path / "emulated")
    try:
        yk(key.spec, "ssh", "keygen", "--user", "alice")
        yk(key.spec, "git", "signing", "--email", "alice@example.com", "--user", "alice")
        # alice's git: her ~/.gitconfig as yktool wrote it (no test-only gpg.ssh.program)
        env = {
            **tool_env(tmp_path, home=home),
            "GIT_CONFIG_GLOBAL": str(home / ".gitconfig"),
            "GIT_AUTHOR_NAME": "Alice",
            "GIT_AUTHOR_EMAIL": "alice@example.com",
            "GIT_COMMITTER_NAME": "Alice",
            "GIT_COMMITTER_EMAIL": "alice@example.com",
        }
        repo = tmp_path / "project"

        def git(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                ["git", "-c", "safe.directory=*", *args],
                cwd=repo,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
                stdin=subprocess.DEVNULL,
            )

        repo.mkdir()
        assert git("init", "-q").returncode == 0
        (repo / "file").write_text("signed through libfido2\n")
        assert git("add", "file").returncode == 0
        with touches(key, "git commit -S (ssh-keygen -Y sign)"), timed("git commit -S"):
            committed = git("commit", "-q", "-m", "signed")  # commit.gpgsign = true: signed
        assert committed.returncode == 0, committed.stdout + committed.stderr
        after = key.counts()
        with timed("git verify-commit"):
            verified = git("verify-commit", "HEAD")
        assert verified.returncode == 0, verified.stderr
        assert 'Good "git" signature for alice@example.com with ED25519-SK key' in verified.stderr, verified.stderr
        assert key.counts()["requested"] == after["requested"]  # verifying needs no key
        assert "gpgsig -----BEGIN SSH SIGNATURE-----" in git("cat-file", "commit", "HEAD").stdout
    finally:
        key.stop()
        key.gone()
