"""Attack: `git signing --repo` as root follows a user's `.git` gitdir file out of their checkout."""

from __future__ import annotations

import os

from tests.ssh_support import SshWorld, world
from tests.test_git_signing import EMAIL, _git_env, _keygen

__all__ = ["world"]


def test_users_gitdir_file_does_not_send_roots_write_into_a_root_repository(world: SshWorld) -> None:
    _keygen(world)
    env = _git_env(world)
    admin = world.root / "srv" / "admin"
    admin.mkdir(parents=True)
    assert world.run(["git", "init", "-q", str(admin)], env=env).returncode == 0
    before = (admin / ".git" / "config").read_bytes()
    project = world.home() / "project"
    project.mkdir()
    # alice's checkout: a plain folder whose .git file names root's repository
    (project / ".git").write_text(f"gitdir: {admin / '.git'}\n")
    for p in (project, project / ".git"):
        os.chown(p, 1000, 1000)
    res = world.yk("git", "signing", "--email", EMAIL, "--user", "alice", "--repo", "/home/alice/project")
    assert (admin / ".git" / "config").read_bytes() == before, "root's repository config was rewritten"
    assert res.exit_code != 0
    assert "Traceback" not in res.output
