"""`yktool git signing` echoes what it read from the user's git config and the paths it wrote:
run as root, a control character there (ESC, BEL, CR from a user's ~/.gitconfig or folder name)
must reach root's terminal as the text `\\xNN`, never as a terminal command (attack left open in
issue 12; verify already escapes its evidence)."""

from __future__ import annotations

import os

from tests.ssh_support import SshWorld, world
from tests.test_git_signing import EMAIL, _git_env, _keygen

__all__ = ["world"]
TITLE = "\x1b]0;owned\x07"  # retitles the terminal
ERASE = "\x1b[2J\r"  # clears the screen


def test_existing_email_with_control_characters_is_echoed_escaped(world: SshWorld) -> None:
    _keygen(world)
    (world.home() / ".gitconfig").write_text(f'[user]\n\temail = "alice{TITLE}{ERASE}@home.example"\n')
    os.chown(world.home() / ".gitconfig", 1000, 1000)
    res = world.yk("git", "signing", "--email", EMAIL, "--user", "alice")
    assert res.exit_code == 0, res.output
    assert "\x1b" not in res.output and "\x07" not in res.output and "\r" not in res.output
    assert "user.email stays alice\\x1b]0;owned\\x07\\x1b[2J\\x0d@home.example" in res.stderr


def test_repository_path_with_control_characters_is_echoed_escaped(world: SshWorld) -> None:
    _keygen(world)
    name = f"project{ERASE}"
    repo = world.home() / name
    assert world.run(["git", "init", "-q", str(repo)], env=_git_env(world)).returncode == 0
    res = world.yk("git", "signing", "--email", EMAIL, "--user", "alice", "--repo", f"/home/alice/{name}")
    assert res.exit_code == 0, res.output
    assert "\x1b" not in res.output and "\r" not in res.output
    assert "project\\x1b[2J\\x0d" in res.stdout
    assert "gpg.format=ssh" in res.stdout  # the config is still shown, one item a line
