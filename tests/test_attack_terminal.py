"""Attack: bytes from a user's file reach root's terminal raw through verify's evidence."""

from __future__ import annotations

from tests.conftest import CliCall
from tests.fixtures.roots import FixtureRoot

# erase the line above, then write a forged verdict; set the window title on the way
FORGED = "\x1b[1A\x1b[2K\rPASS git.signing alice signs commits with a security key\x1b]0;owned\x07"


def test_escape_sequences_in_a_users_gitconfig_are_not_sent_to_the_terminal(
    hardened_root: FixtureRoot, cli: CliCall
) -> None:
    home = hardened_root.root / "home/alice"
    (home / ".gitconfig").write_text(f'[gpg]\n\tformat = "{FORGED}"\n[commit]\n\tgpgsign = true\n')
    res = cli("--root", hardened_root.root, "verify", "--only", "git.signing")
    assert "Traceback" not in res.stdout + res.stderr
    out = res.stdout + res.stderr
    assert "\x1b" not in out and "\x07" not in out, repr(out)
